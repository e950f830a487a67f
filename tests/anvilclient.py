"""The Anvil client forms run under CPython, against the real server code (tests/test_client_forms.py).

The real Anvil client cannot run here, so this stands in for the little of it the forms use: each
form's ``_anvil_designer`` template is made from its ``form_template.yaml`` (every component an attribute
with the yaml's properties and event handlers; data bindings evaluated after ``init_components``), a
RepeatingPanel builds one item template per item (as Anvil does, so an item the template cannot read
fails here), a DataRowPanel with ``auto_display_data`` reads its grid's ``data_key`` of each item, and
``alert``/``confirm``/``download`` are recorded. ``anvil.server.call`` goes to the caller's function
(the local runtime, signed in).

Not Anvil: no layout, no rendering, no serialization of what crosses the wire. What it checks is that a
form reads only what the server sends and its handlers do not raise.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Callable

import yaml

CLIENT = Path(__file__).resolve().parents[1] / "client_code"
PACKAGE = "anvil_client_under_test"


class Component:
    """Any Anvil component: properties are plain attributes; events go to handlers set on it."""

    def __init__(self, **properties: Any) -> None:
        self._handlers: dict[str, Callable[..., Any]] = {}
        self._children: list[Any] = []
        self.parent = None
        self.visible = True
        self.enabled = True
        for k, v in properties.items():
            setattr(self, k, v)

    def set_event_handler(self, name, handler):
        self._handlers[name] = handler

    def raise_event(self, name, **event_args):
        handler = self._handlers.get(name)
        if handler is not None:
            return handler(sender=self, event_name=name, **event_args)

    def add_component(self, component, **layout):
        component.parent = self
        self._children.append(component)

    def clear(self):
        self._children = []

    def get_components(self):
        return list(self._children)


class RepeatingPanel(Component):
    item_template = None
    _items: Any = ()

    @property
    def items(self):
        return self._items

    @items.setter
    def items(self, value):
        self._items = value
        self._children = []
        for item in value or []:
            form = Client.current.forms[self.item_template](item=item)
            form.parent = self
            self._children.append(form)


class FileLoader(Component):
    files: Any = ()

    def clear(self):
        self.files = []


_DEFAULTS = {"Label": {"text": ""}, "TextBox": {"text": ""}, "TextArea": {"text": ""}, "Link": {"text": ""},
             "Button": {"text": ""}, "CheckBox": {"checked": False}, "DatePicker": {"date": None},
             "DropDown": {"items": (), "selected_value": None}, "Image": {"source": None},
             "Plot": {"data": None, "layout": None}}
_PLAIN = ("Label", "Image", "Button", "Link", "TextBox", "TextArea", "CheckBox", "DatePicker", "DropDown", "Plot",
          "ColumnPanel", "FlowPanel", "LinearPanel", "DataGrid", "DataRowPanel")


class Client:
    """The client package loaded once per process; ``current`` is the one calls and alerts go to."""

    current: "Client"

    def __init__(self) -> None:
        self.forms: dict[str, type] = {}
        self.alerts: list[Any] = []
        self.calls: list[str] = []
        self.call: Callable[..., Any] = lambda name, *a, **k: (_ for _ in ()).throw(RuntimeError("no server"))
        self.confirm_answer = True
        self._grid_keys: dict[str, list[str]] = {}
        self._fakes = self._fake_modules()
        builtins_ = dict(vars(builtins))
        builtins_["__import__"] = self._import
        self._builtins = builtins_

    # ---- the client's anvil and plotly
    def _fake_modules(self) -> dict[str, types.ModuleType]:
        anvil = types.ModuleType("anvil")
        for name in _PLAIN:
            setattr(anvil, name, type(name, (Component,), dict(_DEFAULTS.get(name, {}))))
        anvil.Component, anvil.RepeatingPanel, anvil.FileLoader = Component, RepeatingPanel, FileLoader
        anvil.alert = lambda content=None, **kw: self.alerts.append(content)
        anvil.download = lambda media: self.alerts.append(("download", media))

        def confirm(content=None, **kw):
            self.alerts.append(content)
            return self.confirm_answer

        anvil.confirm = confirm
        anvil.__all__ = [n for n in vars(anvil) if not n.startswith("_")]
        server = types.ModuleType("anvil.server")

        def call(name, *args, **kwargs):
            self.calls.append(name)
            return self.call(name, *args, **kwargs)

        server.call = call
        users = types.ModuleType("anvil.users")
        users.login_with_form = lambda **kw: None
        users.logout = lambda: None
        anvil.server, anvil.users = server, users
        plotly = types.ModuleType("plotly")
        go = types.ModuleType("plotly.graph_objects")
        go.Bar = lambda **kw: ("Bar", kw)
        plotly.graph_objects = go
        return {"anvil": anvil, "anvil.server": server, "anvil.users": users, "plotly": plotly,
                "plotly.graph_objects": go}

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.split(".")[0] in ("anvil", "plotly"):
            return self._fakes[name] if fromlist else self._fakes[name.split(".")[0]]
        return builtins.__import__(name, globals, locals, fromlist, level)

    # ---- loading
    def load(self) -> "Client":
        for path in CLIENT.rglob("form_template.yaml"):
            self._collect_grid_keys(yaml.safe_load(path.read_text()).get("components"))
        sys.meta_path.insert(0, _Finder(self))
        try:
            for path in sorted(CLIENT.rglob("form_template.yaml")):
                parts = path.parent.relative_to(CLIENT).parts
                module = importlib.import_module(".".join((PACKAGE,) + parts))
                self.forms[".".join(parts)] = getattr(module, parts[-1])
        finally:
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
        return self

    def module(self, name: str) -> types.ModuleType:
        return importlib.import_module(PACKAGE + "." + name)

    def _collect_grid_keys(self, components) -> None:
        for c in components or []:
            if c.get("type") == "DataGrid":
                keys = [col.get("data_key") for col in c["properties"]["columns"]]
                for sub in c.get("components") or []:
                    if sub.get("type") == "RepeatingPanel":
                        self._grid_keys[sub["properties"]["item_template"]] = keys
            self._collect_grid_keys(c.get("components"))

    def template_class(self, form_dir: Path, short: str) -> type:
        template = yaml.safe_load((form_dir / "form_template.yaml").read_text())
        container = template["container"]
        components: list[dict[str, Any]] = []

        def walk(comps):
            for c in comps or []:
                components.append(c)
                walk(c.get("components"))

        walk(template.get("components"))
        anvil = self._fakes["anvil"]
        dotted = ".".join(form_dir.relative_to(CLIENT).parts)
        client = self

        def init_components(form, **properties):
            for k, v in (container.get("properties") or {}).items():
                setattr(form, k, v)
            for c in components:
                component = getattr(anvil, c["type"])(**(c.get("properties") or {}))
                for event, handler in (c.get("event_bindings") or {}).items():
                    component.set_event_handler(event, getattr(form, handler))
                setattr(form, c["name"], component)
            if "item" in properties:
                form.item = properties["item"]
            for c in components:
                for binding in c.get("data_bindings") or []:
                    setattr(getattr(form, c["name"]), binding["property"], eval(binding["code"], {"self": form}))
            if container["type"] == "DataRowPanel" and (container.get("properties") or {}).get(
                    "auto_display_data", True):
                for key in client._grid_keys.get(dotted, []):
                    if key:
                        form.item[key]  # what the row shows in that column

        base = getattr(anvil, container["type"])
        return type(short + "Template", (base,), {"init_components": init_components, "item": None})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports client_code as PACKAGE, each module with the client's anvil, each form with its template."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def find_spec(self, fullname, path, target=None):
        if fullname != PACKAGE and not fullname.startswith(PACKAGE + "."):
            return None
        parts = fullname.split(".")[1:]
        if parts and parts[-1] == "_anvil_designer":
            return importlib.util.spec_from_loader(fullname, self)
        where = CLIENT.joinpath(*parts)
        if where.is_dir():
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if where.with_suffix(".py").exists():
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        parts = module.__name__.split(".")[1:]
        if parts and parts[-1] == "_anvil_designer":
            setattr(module, parts[-2] + "Template", self.client.template_class(CLIENT.joinpath(*parts[:-1]), parts[-2]))
            return
        where = CLIENT.joinpath(*parts)
        if where.is_dir():
            module.__path__ = [str(where)]
            where = where / "__init__.py"
            if not where.exists():
                return
        else:
            where = where.with_suffix(".py")
        module.__builtins__ = self.client._builtins
        exec(compile(where.read_text(), str(where), "exec"), module.__dict__)


def client() -> Client:
    """The client package (loaded once per process), with its calls and alerts cleared."""
    if not hasattr(Client, "current"):
        Client.current = Client().load()
    c = Client.current
    c.alerts.clear()
    c.calls.clear()
    c.confirm_answer = True
    return c
