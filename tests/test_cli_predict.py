import json
import shutil

import numpy as np
import pytest

from nscfate.cli import main
from nscfate.testing import cell_image, make_tiny_model_dir, to_png_bytes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny", task="astro_vs_oligo")


def test_predict_json_lines_and_refused_files(model_dir, tmp_path, capsys):
    good = tmp_path / "cell.png"
    good.write_bytes(to_png_bytes(cell_image(np.random.default_rng(0))))
    bad = tmp_path / "notes.png"
    bad.write_text("this is text")
    missing = tmp_path / "missing.tif"
    code = main(["predict", str(good), str(bad), str(missing), "--model", str(model_dir), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1
    assert [line["file"] for line in lines] == [str(good), str(bad), str(missing)]
    ok = lines[0]
    assert set(ok["probabilities"]) == {"astro", "oligo"}
    assert ok["model"] == {"name": "tiny-astro_vs_oligo", "version": "0.0.1"}
    assert ok["predicted_class"] in ("astro", "oligo") and isinstance(ok["warnings"], list)
    assert lines[1]["error"]["code"] == "not_an_image"
    assert lines[2]["error"]["code"] and "missing.tif" in lines[2]["error"]["message"]


def test_predict_all_good_exits_zero_and_prints_text(model_dir, tmp_path, capsys):
    good = tmp_path / "cell.png"
    good.write_bytes(to_png_bytes(cell_image(np.random.default_rng(1))))
    assert main(["predict", str(good), "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert str(good) in out and "astro=" in out


def test_predict_a_folder_reads_every_image_in_it(model_dir, tmp_path, capsys, caplog):
    folder = tmp_path / "plate1"
    (folder / "well-B2").mkdir(parents=True)
    for i, name in enumerate(["b.png", "a.png", "well-B2/c.png"]):
        (folder / name).write_bytes(to_png_bytes(cell_image(np.random.default_rng(i))))
    (folder / "layout.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"skipped")
    assert main(["predict", str(folder), "--model", str(model_dir), "--json"]) == 0
    files = [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()]
    assert files == [str(folder / "a.png"), str(folder / "b.png"), str(folder / "well-B2" / "c.png")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--model", str(model_dir)]) == 2
    assert "a folder with no image files" in caplog.text


def test_predict_a_folder_skips_marker_channels_and_refuses_named_ones(model_dir, tmp_path, capsys, caplog):
    """An IFC export folder holds every channel of every cell: only brightfield Ch1 (and un-numbered
    files) is predicted; a marker-channel file named on the command line is refused."""
    folder = tmp_path / "export"
    folder.mkdir()
    png = to_png_bytes(cell_image(np.random.default_rng(3)))
    names = [f"astro_D3B_000001_Ch{ch}.ome.tif" for ch in (1, 2, 3, 4)] + ["7_Ch1.png", "7_Ch2.png", "plain.png"]
    for name in names:
        (folder / name).write_bytes(png)  # PNG bytes under .tif names decode all the same
    caplog.set_level("INFO")
    assert main(["predict", str(folder), "--model", str(model_dir), "--json"]) == 0
    files = [json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()]
    assert files == [str(folder / n) for n in ("7_Ch1.png", "astro_D3B_000001_Ch1.ome.tif", "plain.png")]
    assert "skipped 4 marker-channel files" in caplog.text
    marker, good = folder / "astro_D3B_000001_Ch3.ome.tif", folder / "plain.png"
    assert main(["predict", str(marker), str(good), "--model", str(model_dir), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["file"] for line in lines] == [str(marker), str(good)]
    assert lines[0]["error"]["code"] == "marker_channel" and "Ch3" in lines[0]["error"]["message"]
    assert "predicted_class" in lines[1]
    only_markers = tmp_path / "markers"
    only_markers.mkdir()
    (only_markers / "1_Ch2.png").write_bytes(png)
    assert main(["predict", str(only_markers), "--model", str(model_dir)]) == 2
    assert "no brightfield" in caplog.text


def test_unknown_model_is_a_clean_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NSCFATE_MODELS_DIR", str(tmp_path))
    good = tmp_path / "cell.png"
    good.write_bytes(to_png_bytes(cell_image(np.random.default_rng(1))))
    assert main(["predict", str(good), "--model", "nope"]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""


def test_models_lists_the_registry(model_dir, tmp_path, capsys):
    shutil.copytree(model_dir, tmp_path / "tiny")
    assert main(["models", "--root", str(tmp_path), "--register", str(tmp_path / "tiny"), "--default"]) == 0
    capsys.readouterr()
    assert main(["models", "--root", str(tmp_path), "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["default"]) for c in cards] == [("tiny-astro_vs_oligo", True)]
    assert main(["models", "--root", str(tmp_path)]) == 0
    assert "tiny-astro_vs_oligo@0.0.1" in capsys.readouterr().out


def test_models_register_mistakes_are_said_not_raised(model_dir, tmp_path, capsys, caplog):
    root = tmp_path / "registry"
    shutil.copytree(model_dir, root / "tiny")
    for wrong in (model_dir, root / "missing", tmp_path):  # outside the registry, no such folder, not a model
        assert main(["models", "--root", str(root), "--register", str(wrong)]) == 2
    assert main(["models", "--root", str(root), "--default"]) == 2  # --default alone did nothing, silently
    assert "Traceback" not in capsys.readouterr().err
    assert main(["models", "--root", str(root), "--register", str(root / "tiny")]) == 0
    shutil.copytree(model_dir, root / "tiny-again")  # the same name@version from another folder
    caplog.clear()
    assert main(["models", "--root", str(root), "--register", str(root / "tiny-again")]) == 0
    assert "now points to" in caplog.text


def test_an_output_path_that_cannot_be_written_is_said_not_raised(model_dir, tmp_path, capsys, caplog):
    for k, label in enumerate(("astro", "oligo")):
        image = tmp_path / "data" / label / "cell.png"
        image.parent.mkdir(parents=True)
        image.write_bytes(to_png_bytes(cell_image(np.random.default_rng(k))))
    assert main(["explain", str(model_dir), str(image), "--out", str(tmp_path / "no" / "such" / "h.png")]) == 2
    assert "No such file or directory" in caplog.text
    caplog.clear()
    assert main(["evaluate", str(model_dir), "--data", str(tmp_path / "data"), "--out", str(image)]) == 2  # a file
    assert "File exists" in caplog.text
    assert "Traceback" not in capsys.readouterr().err + caplog.text


def test_explain_writes_an_overlay_png(model_dir, tmp_path, capsys):
    image = tmp_path / "cell.png"
    image.write_bytes(to_png_bytes(cell_image(np.random.default_rng(2))))
    out = tmp_path / "heat.png"
    assert main(["explain", str(model_dir), str(image), "--out", str(out), "--class", "oligo"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
    line = json.loads(capsys.readouterr().out)
    assert line["explained_class"] == "oligo" and line["heatmap"] == str(out)
    assert main(["explain", str(model_dir), str(image), "--out", str(out), "--class", "neuron"]) == 2
    assert main(["explain", str(model_dir), str(tmp_path / "none.png"), "--out", str(out)]) == 2


def test_a_synthetic_models_predictions_are_flagged_and_explain_writes_png_only(model_dir, tmp_path, caplog):
    image = tmp_path / "cell.png"
    image.write_bytes(to_png_bytes(cell_image(np.random.default_rng(4))))
    assert main(["predict", str(image), "--model", str(model_dir)]) == 0
    assert "trained on SYNTHETIC data" in caplog.text  # the tiny test model is
    assert main(["explain", str(model_dir), str(image), "--out", str(tmp_path / "heat.jpg")]) == 2


def test_inspect_sums_up_a_long_group_table():
    from nscfate.commands.inspect import MAX_ROWS, format_report

    groups = {f"astro/{k}": 1 for k in range(MAX_ROWS + 60)}
    report = {"source": "x", "images": len(groups), "files": len(groups), "classes": {"astro": len(groups)},
              "groups": groups, "channels": {"1": len(groups)}, "copies": {"images": 0}, "height": None,
              "bit_depths": {}, "formats": {}, "unreadable": {}}
    text = format_report(report)
    assert f"... 60 more groups (60 images" in text and "names carry no acquisition batch" in text
    assert text.count("astro/") == MAX_ROWS


@pytest.mark.parametrize("argv, message", [
    (["inspect", "data", "--max-images", "-1"], "argument --max-images: must be at least 1, got -1"),
    (["audit", "data", "--max-images", "0"], "argument --max-images: must be at least 1, got 0"),
    (["evaluate", "m", "--data", "d", "--out", "o", "--bootstrap", "-5"], "argument --bootstrap: must be at least 0"),
    (["predict", "x.png", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
])
def test_counts_out_of_range_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2 and message in capsys.readouterr().err
