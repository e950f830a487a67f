import io
import json

import numpy as np
import pytest

from nscfate.errors import (ImageError, ModelError, NotAnImageError, UnknownModelError,
                            UnsupportedFormatError)
from nscfate.modeldir import write_checksums
from nscfate.predictor import Predictor, single_cell_warnings
from nscfate.testing import add_cell, cell_image, make_tiny_model_dir, to_png_bytes


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny", task="medium4", input_size=(32, 32))


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.from_directory(model_dir)


def _png(seed=0, radius=9.0, **kw):
    return to_png_bytes(cell_image(np.random.default_rng(seed), radius=radius, **kw))


def test_describes_its_model(predictor):
    assert (predictor.name, predictor.version, predictor.task) == ("tiny-medium4", "0.0.1", "medium4")
    assert predictor.classes == ("astro", "oligo", "rashh", "nt3")
    assert predictor.display_names["rashh"] == "RA + SHH (neuronal)"
    assert predictor.input_size == (32, 32)
    card = predictor.card()
    assert card["name"] == "tiny-medium4" and card["synthetic_training_data"] is True
    json.dumps(card)


def test_result_dict_follows_the_contract(predictor, tmp_path):
    path = tmp_path / "cell.png"
    path.write_bytes(_png())
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes())):
        d = predictor.predict(source).to_dict()
        assert set(d) >= {"model", "predicted_class", "predicted_display_name", "confidence", "classes",
                          "probabilities", "warnings", "timings_ms", "image"}
        assert d["model"] == {"name": "tiny-medium4", "version": "0.0.1"}
        assert list(d["probabilities"]) == ["astro", "oligo", "rashh", "nt3"]
        assert sum(d["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert d["confidence"] == max(d["probabilities"].values())
        assert d["predicted_class"] == max(d["probabilities"], key=d["probabilities"].get)
        assert d["image"]["format"] == "png" and d["image"]["original_shape"] == [47, 60]
        json.dumps(d)


def test_prediction_follows_the_input(predictor):
    small = predictor.predict(_png(radius=6)).predicted_class
    large = predictor.predict(_png(radius=15)).predicted_class
    assert small != large


def test_serving_path_equals_training_path(predictor):
    """Decode + prepare_image + model (what training sees) == Predictor output."""
    from nscfate.io import decode_image
    from nscfate.preprocessing import prepare_image

    data = to_png_bytes(cell_image(np.random.default_rng(3)), bits=16)
    x = prepare_image(decode_image(data).pixels, predictor.input_size)[np.newaxis]
    direct = np.asarray(predictor.model(x, training=False))[0]
    np.testing.assert_allclose(predictor.predict(data).probabilities, direct, atol=1e-6)


def test_batch_equals_single_and_does_not_retrace(predictor):
    sources = [_png(seed, radius=6 + seed) for seed in range(5)]
    prepared = [predictor.prepare(s) for s in sources]
    batch = predictor.predict_prepared(prepared)
    traces = predictor._infer.experimental_get_tracing_count()
    for p, b in zip(prepared, batch):
        np.testing.assert_allclose(predictor.predict_prepared([p])[0].probabilities, b.probabilities, atol=1e-5)
    predictor.predict_prepared(prepared[:3])
    assert predictor._infer.experimental_get_tracing_count() == traces == 1
    assert batch[0].timings_ms["batch_size"] == 5


def test_predict_many_keeps_order_and_reports_bad_images(predictor):
    results = predictor.predict_many([_png(1), b"not an image at all", _png(2), b""], batch_size=2)
    assert len(results) == 4
    assert isinstance(results[1], NotAnImageError) and isinstance(results[3], ImageError)
    assert results[0].to_dict()["model"]["name"] == "tiny-medium4" and results[2].probabilities


def test_bad_input_raises_typed_error(predictor):
    with pytest.raises(UnsupportedFormatError, match="x.png"):
        predictor.prepare(b"<html>hello</html>", filename="x.png")


def test_warnings(predictor):
    rng = np.random.default_rng(5)
    doublet = add_cell(cell_image(rng, radius=8, centre=(20, 15)), rng, (25, 45), 8)
    assert any("single cell" in w for w in predictor.predict(to_png_bytes(doublet)).warnings)
    clean = predictor.predict(_png(radius=9)).warnings
    assert [w for w in clean if not w.startswith("low confidence")] == []  # a clear single cell
    big = cell_image(rng, size=(400, 500), radius=80, noise=0.002)
    assert any("much larger" in w for w in predictor.predict(to_png_bytes(big)).warnings)
    import cv2
    grey = np.round(cell_image(rng) * 255).astype(np.uint8)
    colour = cv2.merge([grey, grey // 2, grey])  # real colour, not R=G=B
    ok, buf = cv2.imencode(".png", colour)
    assert any("colour" in w.lower() or "color" in w.lower() for w in predictor.predict(buf.tobytes()).warnings)
    old = predictor.low_confidence
    try:
        predictor.low_confidence = 1.01
        assert any("low confidence" in w for w in predictor.predict(_png()).warnings)
    finally:
        predictor.low_confidence = old


def test_a_marker_channel_file_is_refused_by_its_name(predictor):
    """As datasets refuse them: a fluorescence channel shows the label the model is meant to predict."""
    from nscfate.errors import MarkerChannelError

    for name in ("astro_D3B_000001_Ch2.ome.tif", "123_Ch4.png"):
        with pytest.raises(MarkerChannelError) as info:
            predictor.prepare(_png(), filename=name)
        assert isinstance(info.value, ImageError) and info.value.code == "marker_channel"
    for name in ("astro_D3B_000001_Ch1.png", "cell.png", None):
        predictor.prepare(_png(), filename=name)


def test_single_cell_heuristic():
    rng = np.random.default_rng(0)
    assert single_cell_warnings(cell_image(rng, radius=10)) == []
    assert single_cell_warnings(cell_image(rng, radius=6)) == []
    flat = np.full((47, 60), 0.4, np.float32) + rng.normal(0, 0.004, (47, 60)).astype(np.float32)
    assert any("no cell" in w for w in single_cell_warnings(flat))
    doublet = add_cell(cell_image(rng, radius=9, centre=(22, 16)), rng, (24, 44), 9)
    assert any("single cell" in w for w in single_cell_warnings(doublet))


def test_the_server_reads_every_judgement_the_predictor_makes(predictor):
    """The worker's warnings are text, and server_code reads their starts (it cannot import nscfate on
    Anvil): each warning the Predictor can give is read as what it means, and none is missed."""
    import cv2

    from server_code.predictions import FLAG_WARNINGS, _not_a_cell

    rng = np.random.default_rng(3)
    grey = np.round(cell_image(rng) * 255).astype(np.uint8)
    flat = np.full((47, 60), 0.4, np.float32) + rng.normal(0, 0.004, (47, 60)).astype(np.float32)
    specks = flat.copy()
    for y, x in ((8, 8), (8, 30), (8, 50), (36, 10), (36, 30), (36, 50)):
        specks[y:y + 2, x:x + 2] = 0.9  # bright dots, none of a cell's size
    doublet = add_cell(cell_image(rng, radius=9, centre=(22, 16)), rng, (24, 44), 9)
    yy, xx = np.mgrid[:40, :40]
    filled = np.where((yy - 19.5) ** 2 + (xx - 19.5) ** 2 < 400, 0.7, 0.4).astype(np.float32)  # edge to edge
    big = cell_image(rng, size=(400, 500), radius=80, noise=0.002)
    cases = {  # image -> (the start of the warning it must get, what the server makes of it)
        "flat": (to_png_bytes(flat), "no cell found: the image is nearly uniform", "no cell found"),
        "specks": (to_png_bytes(specks), "no cell found: no object", "no cell found"),
        "doublet": (to_png_bytes(doublet), "does not look like a single cell:", "not a single cell"),
        "filled": (to_png_bytes(filled), "does not look like a single-cell crop", None),
        "big": (to_png_bytes(big), "image is 500x400 px", None),
        "colour": (cv2.imencode(".png", cv2.merge([grey, grey // 2, grey]))[1].tobytes(), "colour", None),
    }
    for name, (data, start, not_a_cell) in cases.items():
        warnings = [w for w in predictor.predict(data).warnings if not w.startswith("low confidence")]
        got = [w for w in warnings if w.startswith(start)]
        assert got, f"{name}: no warning starting {start!r} in {warnings}"
        assert _not_a_cell(got) == not_a_cell, name
        assert all(w.startswith(FLAG_WARNINGS) != (name == "colour") for w in got), name  # a decoding note is no flag
    old = predictor.low_confidence
    try:
        predictor.low_confidence = 1.01
        unsure = [w for w in predictor.predict(_png()).warnings if w.startswith("low confidence")]
    finally:
        predictor.low_confidence = old
    assert unsure and unsure[0].startswith(FLAG_WARNINGS) and _not_a_cell(unsure) is None


def test_gradcam_png(predictor):
    import cv2

    prepared = predictor.prepare(_png())
    png = predictor.gradcam_png(prepared)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (32 * 4, 32 * 4, 3)
    assert predictor.predict(_png(), explain=True).gradcam_png.startswith(b"\x89PNG")


def test_refuses_a_model_whose_golden_pair_fails(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    out = np.load(broken / "golden_output.npy")
    np.save(broken / "golden_output.npy", out[:, ::-1])
    write_checksums(broken)  # consistent checksums, wrong golden output
    with pytest.raises(ModelError, match="golden"):
        Predictor.from_directory(broken)


def test_load_by_registry_name(model_dir, tmp_path, monkeypatch):
    import shutil

    from nscfate.registry import Registry

    root = tmp_path / "models"
    shutil.copytree(model_dir, root / "tiny")
    Registry(root).add(root / "tiny", default=True)
    monkeypatch.setenv("NSCFATE_MODELS_DIR", str(root))
    assert Predictor.load().name == "tiny-medium4"
    assert Predictor.load("tiny-medium4@0.0.1").version == "0.0.1"
    with pytest.raises(UnknownModelError):
        Predictor.load("resnet9000")


def test_load_shipped_gives_every_registered_model_default_first(tmp_path, monkeypatch):
    from nscfate.predictor import Predictor
    from nscfate.registry import Registry
    from nscfate.testing import make_tiny_model_dir

    make_tiny_model_dir(tmp_path / "b", task="astro_vs_oligo")
    make_tiny_model_dir(tmp_path / "a", task="medium4")
    names = {}
    for d in ("a", "b"):
        names[d] = Predictor.from_directory(tmp_path / d).name
    assert names["a"] != names["b"]
    registry = Registry(tmp_path)
    registry.add(tmp_path / "b")
    registry.add(tmp_path / "a", default=True)
    monkeypatch.setenv("NSCFATE_MODELS_DIR", str(tmp_path))
    loaded = Predictor.load_shipped()
    assert [p.name for p in loaded] == [names["a"], names["b"]]


def test_load_shipped_with_an_empty_registry_is_a_clear_error(tmp_path, monkeypatch):
    from nscfate.errors import UnknownModelError
    from nscfate.predictor import Predictor

    monkeypatch.setenv("NSCFATE_MODELS_DIR", str(tmp_path))
    with pytest.raises(UnknownModelError, match="no shipped model"):
        Predictor.load_shipped()
