"""Offline checks of the Anvil side: the app passes, and the checker catches planted mistakes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from apphost.anvil_check import check_app, main

ROOT = Path(__file__).resolve().parent.parent
APP_PARTS = ("anvil.yaml", "client_code", "server_code", "uplink", "docs/DEVELOPING.md")


def test_the_app_passes_every_check():
    findings = check_app(ROOT)
    assert findings == [], "\n".join(map(str, findings))


def test_the_app_layout_is_genuine_anvil():
    app = yaml.safe_load((ROOT / "anvil.yaml").read_text())
    assert app["startup"] == {"type": "form", "module": "Main"}
    assert not (ROOT / "server_code" / "__init__.py").exists()
    for form in ("Main", "Classify", "Classify/ResultCard", "History", "History/HistoryRow",
                 "History/PredictionDetail", "ExperimentSummary", "Models", "Models/ModelCard"):
        assert (ROOT / "client_code" / form / "form_template.yaml").exists(), form
        assert (ROOT / "client_code" / form / "__init__.py").exists(), form
    classify = yaml.safe_load((ROOT / "client_code/Classify/form_template.yaml").read_text())
    loader = next(c for c in classify["components"] if c["type"] == "FileLoader")
    assert loader["properties"]["multiple"] is True and ".tif" in loader["properties"]["file_types"]
    columns = {c["name"]: c["type"] for c in app["db_schema"]["predictions"]["columns"]}
    assert columns["image"] == "media" and columns["user"] == "link_single"
    assert columns["probabilities"] == columns["warnings"] == "simpleObject"
    assert "role" in {c["name"] for c in app["db_schema"]["users"]["columns"]}


@pytest.fixture
def app(tmp_path):
    """A copy of the app to plant mistakes in."""
    for part in APP_PARTS:
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, tmp_path / part)
    assert check_app(tmp_path) == []
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def messages(app_dir: Path) -> str:
    return "\n".join(map(str, check_app(app_dir)))


def test_catches_a_misspelt_component_type(app):
    edit(app / "client_code/Classify/form_template.yaml", "type: Button", "type: Buton")
    assert "unknown component type 'Buton'" in messages(app)


def test_catches_a_misspelt_component_in_form_code(app):
    edit(app / "client_code/Classify/__init__.py", "self.classify_button.enabled = False",
         "self.clasify_button.enabled = False")
    assert "self.clasify_button is not a component" in messages(app)


def test_catches_an_event_bound_to_a_missing_handler(app):
    edit(app / "client_code/History/__init__.py", "def export_button_click(", "def export_click(")
    assert "bound to 'export_button_click', which is not a method of History" in messages(app)


def test_catches_an_unknown_event_name(app):
    edit(app / "client_code/Main/form_template.yaml", "event_bindings: {click: sign_in_button_click}",
         "event_bindings: {clicked: sign_in_button_click}")
    assert "Button has no event 'clicked'" in messages(app)


def test_catches_a_misspelt_property(app):
    edit(app / "client_code/Classify/form_template.yaml", "multiple: true", "multipel: true")
    assert "FileLoader has no property 'multipel'" in messages(app)


def test_catches_an_unknown_callable(app):
    edit(app / "client_code/Classify/__init__.py", 'anvil.server.call("classify_cell_images"',
         'anvil.server.call("clasify_cell_images"')
    assert "anvil.server.call('clasify_cell_images') matches no callable" in messages(app)


def test_catches_an_unknown_table(app):
    edit(app / "server_code/predictions.py", "app_tables.predictions.add_rows(", "app_tables.prediction.add_rows(")
    assert "app_tables.prediction is not a table in db_schema" in messages(app)


def test_catches_a_missing_item_template_and_startup_form(app):
    edit(app / "client_code/Classify/form_template.yaml", "item_template: Classify.ResultCard",
         "item_template: Classify.Card")
    edit(app / "anvil.yaml", "module: Main}", "module: Home}")
    found = messages(app)
    assert "item_template 'Classify.Card' is not a form" in found
    assert "startup form 'Home' does not exist" in found


def test_catches_secrets_and_connect_in_server_code(app):
    fake_key = "server_" + "ABCDEFGHIJKLMNOPQRSTUVWX" + "-" + "ABCDEFGHIJKLMNOP"
    (app / "server_code/keys.py").write_text(
        "import anvil.server\n\nanvil.server.connect(%r)\n" % fake_key)
    found = messages(app)
    assert "what looks like an Anvil uplink key" in found
    assert "server modules must not call anvil.server.connect" in found


def test_catches_browser_unavailable_imports_and_bad_relative_imports(app):
    edit(app / "client_code/History/__init__.py", "import anvil.server\n", "import anvil.server\nimport csv\n")
    edit(app / "client_code/History/__init__.py", "from .. import charts", "from .. import chart")
    found = messages(app)
    assert "client code cannot import 'csv'" in found
    assert "imports 'chart', which is not a form or module" in found


def test_catches_a_server_function_shadowed_by_the_worker(app):
    edit(app / "server_code/predictions.py", "def get_model_cards(plots=False):", "def list_models(plots=False):")
    edit(app / "client_code/Models/__init__.py", '"get_model_cards"', '"list_models"')
    assert "server function 'list_models' has the same name as a worker function" in messages(app)


def test_catches_broken_yaml_and_schema(app):
    (app / "client_code/Models/form_template.yaml").write_text("container: {type: ColumnPanel\n")
    edit(app / "anvil.yaml", "type: simpleObject", "type: json")
    found = messages(app)
    assert "form_template.yaml: is not valid YAML" in found
    assert "unknown type 'json'" in found


def test_command_line(app, capsys):
    assert main([str(app)]) == 0
    edit(app / "client_code/Classify/form_template.yaml", "type: Button", "type: Buton")
    assert main([str(app)]) == 1
    assert "1 problem(s) found" in capsys.readouterr().out
