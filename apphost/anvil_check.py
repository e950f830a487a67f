"""Offline checks of the Anvil app, reading it the way Anvil would.

Anvil itself only logs a console warning for a missing event handler and silently ignores an unknown
event name, and a misspelt server-function name fails only when clicked; these checks catch such
mistakes before deployment:

- ``anvil.yaml``: required keys, client version 3, known services, a Users table with a role,
  a valid ``db_schema`` (types, link targets), a startup form that exists, no uplink key;
- every ``form_template.yaml`` parses; component names are unique identifiers; component types,
  properties and event names are known for the type; ``item_template`` and ``form:`` types point to
  existing forms; data-binding code is a Python expression;
- every event binding names a method of the form class; every ``self.<name>`` the form code reads
  is a component, defined in the class, or part of Anvil's form API;
- client code imports only what Anvil's browser Python (Skulpt) provides, and relative imports
  point to existing forms/modules;
- every literal ``anvil.server.call("name")`` matches a callable registered in ``server_code/`` or
  by the uplink worker (``uplink/``); no server function shadows a worker function of the same name;
- every ``app_tables.X`` is a table of ``db_schema`` (and client code only uses tables it may read);
- no secrets (uplink keys, private keys) in the app's files, no ``anvil.server.connect`` in server code.

Run ``python -m apphost.anvil_check [APP_DIR]``; it exits non-zero when it finds a problem.
"""

from __future__ import annotations

import argparse
import ast
import keyword
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from apphost.tables import SchemaError, parse_db_schema


@dataclass(frozen=True)
class Finding:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


# --------------------------------------------------------------------------------------------------
# What Anvil's classic components accept (from anvil-runtime's component definitions and type stubs)

_LAYOUT = frozenset({"visible", "tooltip", "role", "tag", "spacing_above", "spacing_below", "spacing", "margin"})
_TEXT = frozenset({"text", "font", "font_size", "bold", "italic", "underline", "foreground", "background",
                   "border", "align", "icon", "icon_align"})
_BOX = frozenset({"background", "foreground", "border"})
_MOUSE = frozenset({"mouse_enter", "mouse_leave", "mouse_move", "mouse_down", "mouse_up"})
_FOCUS = frozenset({"focus", "lost_focus"})


@dataclass(frozen=True)
class ComponentSpec:
    properties: frozenset[str] | None  # None: not checked
    events: frozenset[str]
    container: bool = False


def _spec(props: set[str] | frozenset[str] | None, events: set[str] | frozenset[str] = frozenset(),
          container: bool = False) -> ComponentSpec:
    return ComponentSpec(None if props is None else frozenset(props) | _LAYOUT,
                         frozenset(events) | {"show", "hide"}, container)


COMPONENTS: dict[str, ComponentSpec] = {
    "Label": _spec(_TEXT),
    "Link": _spec(_TEXT | {"url", "text_padding", "col_widths", "col_spacing", "wrap_on"}, {"click"}, True),
    "Button": _spec(_TEXT | {"enabled"}, {"click"}),
    "TextBox": _spec(_TEXT | {"enabled", "placeholder", "type", "hide_text"}, {"change", "pressed_enter"} | _FOCUS),
    "TextArea": _spec(_TEXT | {"enabled", "placeholder", "auto_expand", "height"}, {"change"} | _FOCUS),
    "CheckBox": _spec(_TEXT | {"enabled", "checked", "allow_indeterminate"}, {"change"}),
    "RadioButton": _spec(_TEXT | {"enabled", "selected", "value", "group_name"}, {"clicked"}),
    "DropDown": _spec(_TEXT | {"enabled", "items", "selected_value", "include_placeholder", "placeholder"},
                      {"change"}),
    "DatePicker": _spec(_TEXT | {"enabled", "date", "min_date", "max_date", "format", "pick_time", "placeholder"},
                        {"change"}),
    "FileLoader": _spec(_TEXT | {"enabled", "file", "files", "multiple", "show_state", "file_types"},
                        {"change"} | _FOCUS),
    "Image": _spec({"source", "alt_text", "display_mode", "horizontal_align", "vertical_align", "height",
                    "border_radius"} | _BOX, _MOUSE),
    "Spacer": _spec({"height"}),
    "RichText": _spec(_TEXT | {"content", "format", "enable_slots", "data"}, container=True),
    "Plot": _spec({"data", "layout", "config", "figure", "interactive", "height"},
                  {"click", "double_click", "afterplot", "hover", "unhover", "select"}),
    "Canvas": _spec({"width", "height"} | _BOX, {"reset"} | _MOUSE),
    "Timer": _spec({"interval"}, {"tick"}),
    "YouTubeVideo": _spec({"youtube_id", "autoplay", "mute", "loop", "start_time", "height"} | _BOX,
                          {"state_change"}),
    "GoogleMap": _spec(None, {"click", "dbl_click", "bounds_changed", "center_changed", "idle", "zoom_changed"}),
    "ColumnPanel": _spec({"col_widths", "col_spacing", "wrap_on"} | _BOX, container=True),
    "FlowPanel": _spec({"align", "vertical_align", "gap"} | _BOX, container=True),
    "LinearPanel": _spec(_BOX, container=True),
    "GridPanel": _spec(_BOX, container=True),
    "XYPanel": _spec({"height", "width", "align"} | _BOX, container=True),
    "DataGrid": _spec({"columns", "rows_per_page", "show_page_controls", "auto_header", "wrap_on"} | _BOX,
                      container=True),
    "DataRowPanel": _spec({"item", "auto_display_data", "align", "font_size", "font", "bold", "italic",
                           "underline"} | _BOX, container=True),
    "RepeatingPanel": _spec({"items", "item_template"} | _BOX, container=True),
    "HtmlTemplate": _spec({"html"} | _BOX, container=True),
    "HtmlPanel": _spec({"html"} | _BOX, container=True),
}
FORM_EVENTS = frozenset({"show", "hide", "refreshing_data_bindings"})
# Attributes every form has besides its components (Anvil's Form/Container API).
FORM_ATTRIBUTES = frozenset({
    "item", "parent", "init_components", "refresh_data_bindings", "raise_event", "set_event_handler",
    "add_event_handler", "remove_event_handler", "get_event_handlers", "add_component", "clear",
    "get_components", "remove_from_parent", "raise_event_on_children", "scroll_into_view", "layout",
    "__class__", "__dict__",
})
# Modules Anvil's browser Python provides (Skulpt's standard library subset plus Anvil's own).
CLIENT_MODULES = frozenset({
    "anvil", "plotly", "datetime", "math", "json", "time", "random", "re", "string", "collections",
    "functools", "itertools", "operator", "copy", "typing", "abc", "bisect", "heapq", "textwrap", "uuid",
    "base64", "keyword", "numbers", "types", "__future__",
})
KNOWN_SERVICES = frozenset({
    "/runtime/services/tables.yml", "/runtime/services/google.yml", "/runtime/services/uplink.yml",
    "/runtime/services/stripe.yml", "/runtime/services/segment.yml", "/runtime/services/facebook.yml",
    "/runtime/services/anvil/users.yml", "/runtime/services/anvil/secrets.yml", "/runtime/services/anvil/saml.yml",
    "/runtime/services/anvil/microsoft.yml", "/runtime/services/anvil/email.yml",
    "/runtime/services/anvil/files.yml", "/runtime/services/anvil/tableau.yml",
})
_SECRET_PATTERNS = (
    (re.compile(r"\b(?:server|client)_[A-Z0-9]{20,}(?:-[A-Z0-9]{6,})?\b"), "what looks like an Anvil uplink key"),
    (re.compile(r"-----BEGIN (?:RSA |EC |OPENSSH |DSA )?PRIVATE KEY-----"), "a private key"),
)
_SKIP_DIRS = frozenset({".git", ".venv", "venv", "node_modules", "__pycache__", ".pytest_cache", "data", "runs",
                        ".nscfate-data", "models", "test-artifacts", ".hypothesis"})


# --------------------------------------------------------------------------------------------------
# The app


@dataclass
class Form:
    name: str  # dotted, e.g. "History.HistoryRow"
    directory: Path
    template: dict[str, Any] | None
    code: ast.Module | None


class AppChecker:
    """Collects findings for one app directory."""

    def __init__(self, app_dir: str | Path):
        self.root = Path(app_dir).resolve()
        self.findings: list[Finding] = []
        self.config: dict[str, Any] = {}
        self.tables: dict[str, Any] = {}
        self.table_access: dict[str, str] = {}
        self.forms: dict[str, Form] = {}
        self.modules: set[str] = set()  # dotted client module names (forms excluded)

    def add(self, path: Path | str, message: str) -> None:
        rel = path.relative_to(self.root) if isinstance(path, Path) and path.is_absolute() else path
        self.findings.append(Finding(str(rel), message))

    def run(self) -> list[Finding]:
        self.check_anvil_yaml()
        self.discover_client_code()
        for form in self.forms.values():
            self.check_form(form)
        self.check_client_imports()
        self.check_calls_and_tables()
        self.check_secrets()
        return self.findings

    # ---- anvil.yaml

    def check_anvil_yaml(self) -> None:
        path = self.root / "anvil.yaml"
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            self.add(path, f"cannot be read as YAML: {e}")
            return
        if not isinstance(config, dict):
            self.add(path, "is not a YAML map")
            return
        self.config = config
        for key in ("name", "package_name", "runtime_options"):
            if key not in config:
                self.add(path, f"missing '{key}'")
        pkg = config.get("package_name")
        if pkg is not None and (not isinstance(pkg, str) or not pkg.isidentifier()):
            self.add(path, f"package_name {pkg!r} is not a Python identifier")
        if str((config.get("runtime_options") or {}).get("client_version")) != "3":
            self.add(path, "runtime_options.client_version should be '3' (Python 3 client)")
        services = config.get("services") or []
        sources = []
        for svc in services:
            source = svc.get("source") if isinstance(svc, dict) else None
            sources.append(source)
            if source not in KNOWN_SERVICES:
                self.add(path, f"unknown service source {source!r}")
            for section in ("client_config", "server_config"):
                for k, v in ((svc or {}).get(section) or {}).items():
                    if "key" in k.lower() and v and source == "/runtime/services/uplink.yml":
                        self.add(path, "an uplink key is stored in anvil.yaml; keys belong in the environment")
        try:
            self.tables = parse_db_schema(config.get("db_schema"))
            self.table_access = {n: str((t or {}).get("client", "none")) for n, t in config["db_schema"].items()}
        except SchemaError as e:
            self.add(path, f"db_schema: {e}")
        users = next((s for s in services if isinstance(s, dict) and s.get("source") == "/runtime/services/anvil/users.yml"),
                     None)
        if users is not None:
            table = (users.get("server_config") or {}).get("user_table")
            if table not in self.tables:
                self.add(path, f"the Users service's user_table {table!r} is not in db_schema")
            else:
                have = {c.name for c in self.tables[table].columns}
                for col in ("email", "enabled", "password_hash", "role"):
                    if col not in have:
                        self.add(path, f"users table {table!r} lacks the column '{col}'")
        if "/runtime/services/tables.yml" not in sources and self.tables:
            self.add(path, "db_schema is defined but the Data Tables service is not added")

    def check_startup(self) -> None:
        startup = self.config.get("startup")
        if isinstance(startup, dict):
            kind, name = startup.get("type"), startup.get("module")
        else:
            kind, name = "form", self.config.get("startup_form")
        if not name:
            self.add(self.root / "anvil.yaml", "no startup form or module")
        elif kind == "form" and name not in self.forms:
            self.add(self.root / "anvil.yaml", f"startup form {name!r} does not exist in client_code/")
        elif kind == "module" and name not in self.modules:
            self.add(self.root / "anvil.yaml", f"startup module {name!r} does not exist in client_code/")

    # ---- client_code layout

    def discover_client_code(self) -> None:
        client = self.root / "client_code"
        if not client.is_dir():
            self.add(client, "missing")
            return
        for init in sorted(client.rglob("__init__.py")):
            directory = init.parent
            dotted = ".".join(directory.relative_to(client).parts)
            if not dotted:
                continue
            if (directory / "form_template.yaml").exists():
                self.forms[dotted] = Form(dotted, directory, self._load_template(directory), self._parse(init))
            elif (directory / "form_template.html").exists():
                self.forms[dotted] = Form(dotted, directory, None, self._parse(init))
            else:
                self.modules.add(dotted)
        for py in sorted(client.rglob("*.py")):
            if py.name != "__init__.py" and py.name != "_anvil_designer.py":
                self.modules.add(".".join(py.relative_to(client).with_suffix("").parts))
                self._parse(py)
        if (client / "__init__.py").exists():
            self.add(client / "__init__.py", "client_code itself must not be a package")
        if (self.root / "server_code" / "__init__.py").exists():
            self.add(self.root / "server_code" / "__init__.py", "server_code must not have an __init__.py")
        self.check_startup()

    def _load_template(self, directory: Path) -> dict[str, Any] | None:
        path = directory / "form_template.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            self.add(path, f"is not valid YAML: {e}")
            return None
        if not isinstance(data, dict):
            self.add(path, "is not a YAML map")
            return None
        return data

    def _parse(self, path: Path) -> ast.Module | None:
        try:
            return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:
            self.add(path, f"syntax error on line {e.lineno}: {e.msg}")
            return None

    # ---- forms

    def check_form(self, form: Form) -> None:
        tpl_path = form.directory / "form_template.yaml"
        code_path = form.directory / "__init__.py"
        short = form.name.split(".")[-1]
        cls = self._form_class(form, short, code_path)
        methods, assigned = _class_members(cls) if cls is not None else (set(), set())
        components: dict[str, str] = {}
        container_type = None
        if form.template is not None:
            tpl = form.template
            container = tpl.get("container")
            if container is None and "layout" not in tpl:
                self.add(tpl_path, "has neither 'container' nor 'layout'")
            if isinstance(container, dict):
                container_type = container.get("type")
                self._check_type(tpl_path, "the form container", container_type, require_container=True)
                self._check_properties(tpl_path, "the form container", container_type, container.get("properties"))
                for event, handler in (container.get("event_bindings") or {}).items():
                    if event not in FORM_EVENTS:
                        self.add(tpl_path, f"the form has no event {event!r} (form events: {', '.join(sorted(FORM_EVENTS))})")
                    self._check_handler(tpl_path, "the form", event, handler, methods, cls)
            comps = tpl.get("components") or []
            if "components_by_slot" in tpl:
                comps = [c for slot in (tpl.get("components_by_slot") or {}).values() for c in slot or []]
            self._walk_components(tpl_path, comps, container_type, components, methods, cls)
        if cls is not None:
            self._check_self_reads(code_path, cls, components, methods | assigned, container_type)

    def _form_class(self, form: Form, short: str, code_path: Path) -> ast.ClassDef | None:
        if form.code is None:
            return None
        cls = next((n for n in form.code.body if isinstance(n, ast.ClassDef) and n.name == short), None)
        if cls is None:
            self.add(code_path, f"defines no class {short} (the form's class must be named after its folder)")
            return None
        bases = {b.id for b in cls.bases if isinstance(b, ast.Name)}
        if f"{short}Template" not in bases:
            self.add(code_path, f"class {short} must inherit from {short}Template")
        imports = [n for n in form.code.body if isinstance(n, ast.ImportFrom) and n.module == "_anvil_designer"]
        if not any(a.name == f"{short}Template" for n in imports for a in n.names):
            self.add(code_path, f"must import {short}Template from ._anvil_designer")
        return cls

    def _check_type(self, path: Path, where: str, ctype: Any, require_container: bool = False) -> None:
        if not isinstance(ctype, str):
            self.add(path, f"{where} has no component type")
            return
        if ctype.startswith("form:"):
            target = ctype[len("form:"):]
            if ":" not in target and target not in self.forms:
                self.add(path, f"{where} uses form {target!r}, which does not exist")
            return
        spec = COMPONENTS.get(ctype)
        if spec is None:
            self.add(path, f"{where} has unknown component type {ctype!r}")
        elif require_container and not spec.container:
            self.add(path, f"{where} type {ctype!r} is not a container")

    def _check_properties(self, path: Path, where: str, ctype: Any, props: Any) -> None:
        spec = COMPONENTS.get(ctype) if isinstance(ctype, str) else None
        if props is None:
            return
        if not isinstance(props, dict):
            self.add(path, f"{where}: properties must be a map")
            return
        if spec is not None and spec.properties is not None:
            for prop in props:
                if prop not in spec.properties:
                    self.add(path, f"{where}: {ctype} has no property {prop!r}")
        template = props.get("item_template")
        if template is not None and template not in self.forms:
            self.add(path, f"{where}: item_template {template!r} is not a form in client_code/")

    def _walk_components(self, path: Path, comps: Any, parent_type: Any, seen: dict[str, str],
                         methods: set[str], cls: ast.ClassDef | None) -> None:
        if not isinstance(comps, list):
            self.add(path, "'components' must be a list")
            return
        for comp in comps:
            if not isinstance(comp, dict):
                self.add(path, "each component must be a map")
                continue
            name, ctype = comp.get("name"), comp.get("type")
            where = f"component {name!r}"
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                self.add(path, f"{where}: the name must be a Python identifier")
                continue
            if name in seen:
                self.add(path, f"{where}: name used twice")
            if name in methods or name in FORM_ATTRIBUTES:
                self.add(path, f"{where}: name clashes with the form's attribute or method {name!r}")
            seen[name] = ctype
            self._check_type(path, where, ctype)
            self._check_properties(path, where, ctype, comp.get("properties"))
            spec = COMPONENTS.get(ctype) if isinstance(ctype, str) else None
            for event, handler in (comp.get("event_bindings") or {}).items():
                if spec is not None and event not in spec.events:
                    self.add(path, f"{where}: {ctype} has no event {event!r} "
                                   f"(it has: {', '.join(sorted(spec.events))})")
                self._check_handler(path, where, event, handler, methods, cls)
            for binding in comp.get("data_bindings") or []:
                prop, code = (binding or {}).get("property"), (binding or {}).get("code")
                if spec is not None and spec.properties is not None and prop not in spec.properties:
                    self.add(path, f"{where}: data binding to unknown property {prop!r}")
                try:
                    ast.parse(str(code), mode="eval")
                except SyntaxError:
                    self.add(path, f"{where}: data binding code {code!r} is not a Python expression")
            children = comp.get("components")
            if children:
                if spec is not None and not spec.container:
                    self.add(path, f"{where}: {ctype} cannot contain components")
                self._walk_components(path, children, ctype, seen, methods, cls)

    def _check_handler(self, path: Path, where: str, event: str, handler: Any, methods: set[str],
                       cls: ast.ClassDef | None) -> None:
        if cls is None:
            return
        if not isinstance(handler, str) or handler not in methods:
            self.add(path, f"{where}: the {event!r} event is bound to {handler!r}, which is not a method of {cls.name}")

    def _check_self_reads(self, path: Path, cls: ast.ClassDef, components: dict[str, str], defined: set[str],
                          container_type: Any) -> None:
        spec = COMPONENTS.get(container_type) if isinstance(container_type, str) else None
        known = set(components) | defined | FORM_ATTRIBUTES | set(spec.properties if spec and spec.properties else ())
        for node in ast.walk(cls):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                    and isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr not in known):
                self.add(path, f"line {node.lineno}: self.{node.attr} is not a component of the form "
                               "nor defined in the class")

    # ---- imports in client code

    def check_client_imports(self) -> None:
        client = self.root / "client_code"
        if not client.is_dir():
            return
        for py in sorted(client.rglob("*.py")):
            tree = self._quiet_parse(py)
            if tree is None:
                continue
            package = list(py.relative_to(client).parent.parts)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        self._check_client_module(py, node.lineno, alias.name)
                elif isinstance(node, ast.ImportFrom):
                    if node.level == 0:
                        self._check_client_module(py, node.lineno, node.module or "")
                    elif node.module != "_anvil_designer":
                        self._check_relative_import(py, node, package)

    def _check_client_module(self, py: Path, line: int, module: str) -> None:
        if module.split(".")[0] not in CLIENT_MODULES:
            self.add(py, f"line {line}: client code cannot import {module!r} (not available in the browser)")

    def _check_relative_import(self, py: Path, node: ast.ImportFrom, package: list[str]) -> None:
        # ``package`` is the containing package (for a form's __init__.py: the form itself); level 1 is it.
        up = node.level - 1
        if up > len(package):
            self.add(py, f"line {node.lineno}: relative import goes above client_code")
            return
        anchor = package[:len(package) - up]
        prefix = anchor + (node.module.split(".") if node.module else [])
        targets = [prefix] if node.module else [prefix + [a.name] for a in node.names]
        for parts in targets:
            dotted = ".".join(parts)
            if dotted and dotted not in self.forms and dotted not in self.modules:
                self.add(py, f"line {node.lineno}: imports {dotted!r}, which is not a form or module in client_code/")

    def _quiet_parse(self, path: Path) -> ast.Module | None:
        try:
            return ast.parse(path.read_text(encoding="utf-8"))
        except SyntaxError:
            return None  # reported elsewhere

    # ---- server calls and tables

    def check_calls_and_tables(self) -> None:
        server = _registered_callables(self.root / "server_code")
        uplink_dir = self.root / "uplink"
        if any(uplink_dir.rglob("*.py")) if uplink_dir.is_dir() else False:
            worker = _registered_callables(uplink_dir)
        else:
            worker = _contract_worker_callables(self.root / "docs" / "DEVELOPING.md")
        for name in sorted(set(server) & set(worker)):
            self.add(server[name], f"server function {name!r} has the same name as a worker function; on Anvil "
                                   "the uplink's registration shadows it")
        known = set(server) | set(worker)
        for part in ("client_code", "server_code"):
            for py in sorted((self.root / part).rglob("*.py")) if (self.root / part).is_dir() else []:
                tree = self._quiet_parse(py)
                if tree is None:
                    continue
                for node in ast.walk(tree):
                    called = _called_function_name(node)
                    if called is not None:
                        name, line = called
                        if name.startswith("anvil.private."):
                            continue
                        if name not in known:
                            self.add(py, f"line {line}: anvil.server.call({name!r}) matches no callable in "
                                         "server_code/ or the uplink worker")
                        elif part == "client_code" and ":" in name:
                            self.add(py, f"line {line}: browser code cannot call {name!r}")
                    table = _app_table_name(node)
                    if table is not None:
                        if self.tables and table not in self.tables:
                            self.add(py, f"line {node.lineno}: app_tables.{table} is not a table in db_schema")
                        elif part == "client_code" and self.table_access.get(table, "none") == "none":
                            self.add(py, f"line {node.lineno}: client code uses app_tables.{table}, but the table's "
                                         "client access is 'none'; use a server function")
                    if part == "server_code" and _is_connect_call(node):
                        self.add(py, f"line {node.lineno}: server modules must not call anvil.server.connect")

    # ---- secrets

    def check_secrets(self) -> None:
        for path in _text_files(self.root):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for pattern, what in _SECRET_PATTERNS:
                for match in pattern.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    self.add(path, f"line {line}: {what}; secrets belong in the environment, not in the repository")


# --------------------------------------------------------------------------------------------------
# AST helpers


def _class_members(cls: ast.ClassDef) -> tuple[set[str], set[str]]:
    """(methods and class attributes, attributes assigned on self anywhere in the class)."""
    methods: set[str] = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            methods.add(node.name)
        elif isinstance(node, ast.Assign):
            methods.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            methods.add(node.target.id)
    assigned: set[str] = set()
    for node in ast.walk(cls):
        if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name) and node.value.id == "self"):
            assigned.add(node.attr)
    return methods, assigned


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _literal_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _called_function_name(node: ast.AST) -> tuple[str, int] | None:
    if isinstance(node, ast.Call) and _dotted(node.func) in ("anvil.server.call", "anvil.server.call_s") and node.args:
        name = _literal_str(node.args[0])
        if name is not None:
            return name, node.lineno
    return None


def _app_table_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Attribute) and _dotted(node.value) in ("app_tables", "anvil.tables.app_tables"):
        return node.attr
    return None


def _is_connect_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _dotted(node.func) == "anvil.server.connect"


_CALLABLE_DECORATORS = ("anvil.server.callable", "server.callable", "callable")


def _registered_callables(directory: Path) -> dict[str, Path]:
    """Names registered with ``@anvil.server.callable`` (any form) in a directory's Python files."""
    found: dict[str, Path] = {}
    if not directory.is_dir():
        return found
    for py in sorted(directory.rglob("*.py")):
        try:
            tree = ast.parse(py.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for dec in node.decorator_list:
                    if _dotted(dec) in _CALLABLE_DECORATORS:
                        found[node.name] = py
                    elif isinstance(dec, ast.Call) and _dotted(dec.func) in _CALLABLE_DECORATORS:
                        alias = _literal_str(dec.args[0]) if dec.args else None
                        found[alias or node.name] = py
            elif isinstance(node, ast.Call):
                # anvil.server.callable("name")(fn) / anvil.server.callable(fn) / anvil.server.register(fn, "name")
                if isinstance(node.func, ast.Call) and _dotted(node.func.func) in _CALLABLE_DECORATORS:
                    alias = _literal_str(node.func.args[0]) if node.func.args else None
                    target = node.args[0] if node.args else None
                    name = alias or (target.id if isinstance(target, ast.Name) else None)
                    if name:
                        found[name] = py
                elif _dotted(node.func) == "anvil.server.register" and len(node.args) >= 2:
                    name = _literal_str(node.args[1])
                    if name:
                        found[name] = py
    return found


def _contract_worker_callables(developing_md: Path) -> dict[str, Path]:
    """Before uplink/ exists: the worker callables promised in docs/DEVELOPING.md."""
    found: dict[str, Path] = {}
    try:
        text = developing_md.read_text(encoding="utf-8")
    except OSError:
        return found
    section = text.split("## Uplink worker callables", 1)
    if len(section) == 2:
        body = section[1].split("\n## ", 1)[0]
        for match in re.finditer(r"^- `([A-Za-z_][A-Za-z0-9_]*)\(", body, re.MULTILINE):
            found[match.group(1)] = developing_md
    return found


def _text_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            path = Path(dirpath) / name
            if path.suffix not in (".pyc", ".keras", ".npy", ".png", ".tif", ".tiff") and \
                    path.stat().st_size < 1_000_000:
                out.append(path)
    return sorted(out)


def check_app(app_dir: str | Path) -> list[Finding]:
    """All findings for the Anvil app in ``app_dir`` (empty when the app is clean)."""
    return AppChecker(app_dir).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check the Anvil app (anvil.yaml, client_code/, server_code/) offline.")
    parser.add_argument("app_dir", nargs="?", default=".", help="the app's directory (holds anvil.yaml)")
    args = parser.parse_args(argv)
    findings = check_app(args.app_dir)
    for f in findings:
        sys.stdout.write(f"{f}\n")
    sys.stdout.write(f"{len(findings)} problem(s) found\n" if findings else "The Anvil app passed all checks\n")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
