import json
import os

import numpy as np
import pytest

from nscfate.architectures import build_model
from nscfate.errors import ConfigError, ModelError, UnknownModelError
from nscfate.modeldir import (CONTENT_FILES, attach_plots, check_golden, load_keras_model, read_model_dir,
                              save_model_dir, verify_model_dir)
from nscfate.registry import Registry, resolve

SIZE = (32, 32)


def _golden(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, *SIZE, 1)) * 0.5 + 0.2).astype("float32")


def _save(path, arch="cnn", task="astro_vs_oligo", **kw):
    model = build_model(arch, 2 if task == "astro_vs_oligo" else 4, SIZE)
    args = dict(name="tiny", version="0.1.0", task=task, arch=arch, golden_input=_golden(),
                config={"arch": arch}, metrics={"test": {"accuracy": 0.5, "n": 10}},
                training_data={"description": "synthetic test images", "synthetic": True},
                reproduce_command="nscfate train ...")
    args.update(kw)
    return model, save_model_dir(path, model, **args)


def test_save_writes_every_file_and_reloads_identically(tmp_path):
    model, info = _save(tmp_path / "m")
    for name in (*CONTENT_FILES, "checksums.sha256"):
        assert (tmp_path / "m" / name).is_file(), name
    assert info.classes == ("astro", "oligo")
    assert info.display_names["oligo"] == "Oligodendrocyte medium"
    assert info.input_size == SIZE and info.synthetic
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["versions"]["keras"] and meta["versions"]["tensorflow"] and meta["created"]
    assert meta["weights_dtype"] == "float32"
    card = (tmp_path / "m" / "README.md").read_text()
    assert "SYNTHETIC" in card and "nscfate train ..." in card
    reloaded = load_keras_model(tmp_path / "m")
    x = _golden(5, seed=1)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))
    verify_model_dir(tmp_path / "m")


def test_half_precision_weights_load_as_float32_and_golden_reproduces(tmp_path):
    model, info = _save(tmp_path / "h", arch="resnet18", weights_dtype="float16")
    assert info.metadata["weights_dtype"] == "float16"
    f32 = tmp_path / "f"
    _save(f32, arch="resnet18", weights_dtype="float32")
    half_size = (tmp_path / "h" / "model.keras").stat().st_size
    assert half_size < 0.6 * (f32 / "model.keras").stat().st_size
    reloaded = load_keras_model(tmp_path / "h")
    assert {v.dtype for v in reloaded.weights} == {"float32"}
    x = _golden()
    np.testing.assert_allclose(np.asarray(reloaded(x)), np.asarray(model(x)), atol=1e-2)
    verify_model_dir(tmp_path / "h")


def test_half_precision_that_changes_the_answers_is_refused(tmp_path):
    """float16 holds at most 65,504: a larger weight becomes inf, and the stored model would not be the one
    the metrics describe. Export refuses it and writes nothing."""
    model = build_model("cnn", 2, SIZE)
    dense = model.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 1e6, bias])
    with pytest.raises(ConfigError, match="beyond float16's range: export with weights_dtype='float32'"):
        save_model_dir(tmp_path / "h", model, name="tiny", version="0.1.0", task="astro_vs_oligo", arch="cnn",
                       golden_input=_golden(), config={}, metrics={}, weights_dtype="float16",
                       training_data={"description": "synthetic", "synthetic": True}, reproduce_command="x")
    assert list(tmp_path.iterdir()) == []


def test_half_precision_is_held_to_the_golden_tolerance(tmp_path, monkeypatch):
    import nscfate.modeldir as modeldir

    monkeypatch.setattr(modeldir, "DEFAULT_GOLDEN_ATOL", 0.0)  # any rounding at all is now too much
    with pytest.raises(ConfigError, match=r"change the golden outputs by [0-9.e-]+ \(more than 0\)"):
        _save(tmp_path / "h", arch="resnet18", weights_dtype="float16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o077, 0o700)])
def test_model_directory_permissions_follow_the_umask(tmp_path, umask, mode):
    """A model directory is for sharing (readable as the umask allows), not private like a temp dir."""
    old = os.umask(umask)
    try:
        _save(tmp_path / "m")
    finally:
        os.umask(old)
    assert (tmp_path / "m").stat().st_mode & 0o777 == mode
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left


def test_tampering_is_detected(tmp_path):
    _save(tmp_path / "m")
    labels = tmp_path / "m" / "labels.json"
    labels.write_text(labels.read_text().replace("Astrocyte", "Astro"))
    with pytest.raises(ModelError, match="checksum mismatch"):
        read_model_dir(tmp_path / "m")


def _plots():
    from nscfate.evaluation import card_plots

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    probs = rng.dirichlet([1, 1], size=20).astype("float32")
    return card_plots({"test": (labels, probs), "grouped_test": (labels[:6], probs[:6])}, ("astro", "oligo"),
                      {"astro": "Astrocyte medium", "oligo": "Oligodendrocyte medium"})


def test_plots_are_stored_listed_checksummed_and_shown_in_the_card(tmp_path):
    plots = _plots()
    assert [(f, t) for f, t, _ in plots] == [
        ("confusion_matrix_test.png", "Confusion matrix, test split (n=20)"),
        ("roc_test.png", "One-vs-rest ROC curves, test split (n=20)"),
        ("reliability_test.png", "Calibration (reliability diagram), test split (n=20)"),
        ("confusion_matrix_grouped_test.png", "Confusion matrix, unseen acquisition batches (n=6)")]
    _, info = _save(tmp_path / "m", plots=plots)
    assert [(t, p.name) for t, p in info.plots] == [(t, f) for f, t, _ in plots]
    assert [p.read_bytes() for _, p in info.plots] == [png for _, _, png in plots]
    listed = (tmp_path / "m" / "checksums.sha256").read_text()
    assert all(f"  plots/{f}\n" in listed for f, _, _ in plots)
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.index("## Plots") < card.index("## Provenance")
    assert "![Confusion matrix, test split (n=20)](plots/confusion_matrix_test.png)" in card
    verify_model_dir(tmp_path / "m")
    # a changed plot, or one nobody listed, is caught like any other file
    (tmp_path / "m" / "plots" / "roc_test.png").write_bytes(plots[0][2])
    with pytest.raises(ModelError, match="checksum mismatch"):
        read_model_dir(tmp_path / "m")
    (tmp_path / "m" / "plots" / "roc_test.png").write_bytes(plots[1][2])
    (tmp_path / "m" / "plots" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # a desktop's litter is not the model
    read_model_dir(tmp_path / "m")
    (tmp_path / "m" / "plots" / "extra.png").write_bytes(plots[1][2])
    with pytest.raises(ModelError, match="does not list plots/extra.png"):
        read_model_dir(tmp_path / "m")


def test_attach_plots_to_an_existing_directory(tmp_path):
    _, before = _save(tmp_path / "m")
    assert before.plots == [] and "## Plots" not in (tmp_path / "m" / "README.md").read_text()
    weights = (tmp_path / "m" / "model.keras").read_bytes()
    plots = _plots()
    info = attach_plots(tmp_path / "m", plots[:2])
    info = attach_plots(tmp_path / "m", plots)  # again: replaces, never duplicates
    assert [p.name for _, p in info.plots] == [f for f, _, _ in plots]
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.count("## Plots") == 1 and card.count("plots/roc_test.png") == 1
    assert card.index("## Plots") < card.index("## Provenance")
    assert (tmp_path / "m" / "model.keras").read_bytes() == weights
    verify_model_dir(tmp_path / "m")
    with pytest.raises(ConfigError, match="PNG"):
        attach_plots(tmp_path / "m", [("../escape.png", "x", plots[0][2])])
    with pytest.raises(ConfigError, match="PNG"):
        attach_plots(tmp_path / "m", [("notes.png", "x", b"not a png")])
    # a directory that was modified is not re-signed
    labels = tmp_path / "m" / "labels.json"
    labels.write_text(labels.read_text().replace("Astrocyte", "Astro"))
    with pytest.raises(ModelError, match="checksum mismatch"):
        attach_plots(tmp_path / "m", plots)


def test_golden_mismatch_is_detected(tmp_path):
    _save(tmp_path / "m")
    out = np.load(tmp_path / "m" / "golden_output.npy")
    wrong = out.copy()
    wrong[0, 0] += 0.1  # a clear mismatch whatever the (random) model's outputs are
    with pytest.raises(ModelError, match="does not reproduce"):
        check_golden(wrong, out, 1e-3)
    assert check_golden(out + 1e-5, out, 1e-3) == pytest.approx(1e-5, rel=0.01)


def test_nothing_half_written_on_error(tmp_path):
    with pytest.raises(ConfigError):
        _save(tmp_path / "m", golden_input=np.zeros((2, 8, 8, 1), "float32"))
    assert list(tmp_path.iterdir()) == []
    _save(tmp_path / "m")
    with pytest.raises(ConfigError, match="already exists"):
        _save(tmp_path / "m")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "registry.json").write_text("{}")
    with pytest.raises(ConfigError, match="not a model directory .* overwriting would delete it"):
        _save(tmp_path / "lab", overwrite=True)
    assert (tmp_path / "lab" / "registry.json").read_text() == "{}"


def test_registry_lookup_default_and_unknown(tmp_path):
    _save(tmp_path / "a", name="alpha", version="1.0.0")
    _save(tmp_path / "b", name="alpha", version="1.10.0")
    _save(tmp_path / "c", name="beta", version="2.0.0")
    reg = Registry(tmp_path)
    reg.add(tmp_path / "a")
    reg.add(tmp_path / "b")
    reg.add(tmp_path / "c", default=True)
    reg = Registry(tmp_path)  # from the file
    assert reg.get().name == "beta"
    assert reg.get("alpha").version == "1.10.0"
    assert reg.get("alpha@1.0.0").path == (tmp_path / "a").resolve()
    assert reg.info("alpha@1.0.0").version == "1.0.0"
    assert [c["name"] for c in reg.list()][0] == "beta"
    with pytest.raises(UnknownModelError, match="alpha@1.0.0"):
        reg.get("gamma")
    assert resolve("beta", reg) == (tmp_path / "c").resolve()
    assert resolve(tmp_path / "a", reg) == tmp_path / "a"
    with pytest.raises(UnknownModelError):
        resolve(tmp_path / "nowhere", reg)


def test_registry_serves_a_release_before_its_release_candidate(tmp_path):
    from nscfate.registry import _version_key

    order = ["0.9", "1.0.0-beta.2", "1.0.0-beta.10", "1.0.0-rc1", "1.0.0rc2", "1.0.0", "1.9.0", "1.10.0"]
    assert sorted(reversed(order), key=_version_key) == order
    _save(tmp_path / "r", name="alpha", version="1.0.0")
    _save(tmp_path / "c", name="alpha", version="1.0.0-rc1")
    reg = Registry(tmp_path)
    reg.add(tmp_path / "r")
    reg.add(tmp_path / "c")
    assert Registry(tmp_path).get("alpha").version == "1.0.0"


def test_registry_hash_pins_directory_content(tmp_path):
    _save(tmp_path / "a", name="alpha")
    reg = Registry(tmp_path)
    reg.add(tmp_path / "a")
    # a re-exported directory with the same name/version no longer matches the pinned hash
    import shutil
    shutil.rmtree(tmp_path / "a")
    _save(tmp_path / "a", name="alpha", metrics={"test": {"accuracy": 0.9}})
    with pytest.raises(ModelError, match="does not match"):
        reg.info("alpha")


def test_the_card_says_how_test_was_split(tmp_path):
    metrics = {"test": {"accuracy": 0.9, "n": 10}, "grouped_test": {"accuracy": 0.8, "n": 10}}
    _save(tmp_path / "r", metrics=metrics,
          training_data={"description": "synthetic test images", "synthetic": True, "split": "random"})
    card = (tmp_path / "r" / "README.md").read_text()
    assert "`test` is a random split by image; `grouped_test` holds out whole acquisition batches" in card
    _save(tmp_path / "g", metrics=metrics,
          training_data={"description": "synthetic test images", "synthetic": True, "split": "grouped"})
    card = (tmp_path / "g" / "README.md").read_text()
    assert "`test` holds out whole acquisition batches" in card and "random split" not in card
    _save(tmp_path / "s", metrics=metrics, training_data={"description": "x", "synthetic": True, "split": "random",
                                                           "groups": "single images (the names carry no batch)"})
    card = (tmp_path / "s" / "README.md").read_text()
    assert "`grouped_test` holds out single images" in card and "honest number" not in card
    _save(tmp_path / "m", metrics=metrics, training_data={"description": "x", "synthetic": True, "split": "random",
                                                           "groups": "acquisition batches", "unbatched_classes": ["nt3"]})
    card = (tmp_path / "m" / "README.md").read_text()
    assert "holds out whole acquisition batches (day + replicate) and single images of nt3" in card
