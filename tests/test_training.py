import json

import pytest

from nscfate.config import load_config
from nscfate.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from nscfate.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("synth") / "bench"
    write_dataset(SynthConfig(per_class=30, seed=5, replicates=4), root)
    return root


def _cfg(tmp_path, synth_dir, **train):
    return load_config(overrides={
        "task": "medium4", "out": str(tmp_path / "model"),
        "data": {"path": str(synth_dir), "grouped_holdout": 0.25, "shuffle_buffer": 64},
        "model": {"arch": "cnn", "input_size": "32x32"},
        "train": {"epochs": 2, "batch_size": 16, "steps_per_epoch": 3, "learning_rate": 3e-3,
                  "eval_bootstrap": 20, **train},
        "export": {"name": "tiny-run", "version": "0.1.0"},
    })


def test_train_exports_a_verified_model_directory(tmp_path, synth_dir, monkeypatch):
    from nscfate import memory
    from nscfate.modeldir import read_model_dir, verify_model_dir
    from nscfate.predictor import Predictor
    from nscfate.training import train

    pinned = []
    monkeypatch.setattr(memory, "pin_malloc_thresholds", lambda: pinned.append(True) or True)
    cfg = _cfg(tmp_path, synth_dir)
    result = train(cfg, command="nscfate train ...")
    assert pinned == [True]  # glibc's thresholds fixed for the run (nscfate.memory)
    info = verify_model_dir(result.model_dir)
    assert (info.name, info.version, info.task, info.arch) == ("tiny-run", "0.1.0", "medium4", "cnn")
    assert info.synthetic  # read from the synth.json beside the data
    meta = info.metadata["training_data"]
    assert meta["num_grouped_test"] > 0 and len(meta["manifest_sha256"]) == 64
    for split in ("val", "test", "grouped_test"):
        assert 0.0 <= info.metrics[split]["accuracy"] <= 1.0
    assert info.metrics["training"]["epochs_run"] == 2
    assert load_config(result.run_dir / "config.yaml") == cfg  # the run's config is saved
    manifest = json.loads((result.run_dir / "split.json").read_text())
    subsets = {e["subset"] for e in manifest["samples"]}
    assert subsets == {"train", "val", "test", "grouped_test"}
    groups = {s: {e["group"] for e in manifest["samples"] if e["subset"] == s} for s in subsets}
    assert not groups["grouped_test"] & (groups["train"] | groups["val"] | groups["test"])
    assert read_model_dir(result.model_dir).config["model"]["arch"] == "cnn"
    # the exported model serves through the Predictor
    p = Predictor.from_directory(result.model_dir)
    some = next(iter(sorted(synth_dir.glob("astro/*.tif"))))
    assert p.predict(some).to_dict()["model"]["name"] == "tiny-run"
    # evaluating the held-out batches through the Predictor gives the numbers training recorded
    from nscfate.evaluation import evaluate

    m = evaluate(result.model_dir, result.run_dir / "split.json", tmp_path / "eval", subset="grouped_test",
                 n_boot=0, progress=False)
    assert m["n"] == meta["num_grouped_test"]
    assert m["accuracy"] == pytest.approx(info.metrics["grouped_test"]["accuracy"])
    assert m["model_reported"]["test"]["accuracy"] == info.metrics["test"]["accuracy"]
    # the card carries plots of the held-out predictions; the grouped confusion matrix is that split's
    titles = [title for title, _ in info.plots]
    assert [path.name for _, path in info.plots] == ["confusion_matrix_test.png", "roc_test.png",
                                                      "reliability_test.png", "confusion_matrix_grouped_test.png"]
    assert f"n={meta['num_grouped_test']}" in titles[-1] and f"n={meta['num_test']}" in titles[0]
    assert all(path.read_bytes().startswith(b"\x89PNG") for _, path in info.plots)
    assert "![" + titles[0] + "](plots/confusion_matrix_test.png)" in (result.model_dir / "README.md").read_text()
    with pytest.raises(ConfigError, match="already exists"):
        train(cfg)


def test_held_out_metrics_say_how_many_images_could_not_be_read(tmp_path, synth_dir):
    """The pipeline skips an unreadable file: the split's metrics count what was read and say the rest."""
    import shutil

    from nscfate import data as D
    from nscfate.architectures import build_model
    from nscfate.training import Splits, evaluate_splits

    cfg = _cfg(tmp_path, synth_dir)
    samples = D.read_dataset(synth_dir, task="medium4")[:6]
    broken = tmp_path / "broken_Ch1.ome.tif"
    shutil.copy(samples[0].path, broken)
    broken.write_bytes(broken.read_bytes()[:40])
    test = [*samples[1:], D.Sample(str(broken), samples[0].label, samples[0].group, 1)]
    splits = Splits(*(D.SampleTable(part) for part in ([], [], test, [])))
    metrics, _ = evaluate_splits(build_model("cnn", 4, (32, 32)), splits, cfg, ["astro", "oligo", "rashh", "nt3"])
    assert (metrics["test"]["n"], metrics["test"]["refused"]) == (5, 1)


def test_restart_and_overwrite_delete_only_what_training_made(tmp_path, synth_dir):
    """--restart and --overwrite remove a whole folder: one that is not a run folder or a model directory,
    or folders that contain one another (or the data), are refused before anything is read or written."""
    import dataclasses

    from nscfate.training import train

    others = tmp_path / "runs"
    (others / "other-model").mkdir(parents=True)
    (others / "notes.md").write_text("a lab's notes")
    cfg = _cfg(tmp_path, synth_dir)
    with pytest.raises(ConfigError, match="--restart would delete .*runs, which is not a run folder"):
        train(dataclasses.replace(cfg, run_dir=str(others)), restart=True)
    with pytest.raises(ConfigError, match="--overwrite would delete .*runs, which is not a model directory"):
        train(dataclasses.replace(cfg, out=str(others)), overwrite=True)
    assert (others / "notes.md").read_text() == "a lab's notes" and (others / "other-model").is_dir()
    for changes, message in (({"run_dir": str(synth_dir)}, "run folder .* and the data .* must not contain"),
                             ({"run_dir": str(tmp_path / "model")}, "must be separate folders"),
                             ({"out": str(synth_dir / "models" / "m"), "run_dir": str(tmp_path / "r")},
                              "model directory .* and the data")):
        with pytest.raises(ConfigError, match=message):
            train(dataclasses.replace(cfg, **changes), restart=True, overwrite=True)
    assert (synth_dir / "astro").is_dir() and not (tmp_path / "model").exists()


def test_an_unreadable_held_out_image_does_not_block_the_export(tmp_path, synth_dir):
    """The golden pair takes the first held-out images that can be read: one broken file made a
    finished run impossible to export, again at every try."""
    import shutil

    from nscfate.modeldir import verify_model_dir
    from nscfate.training import train

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    for i in range(12):  # enough that the test split holds some
        (data / "astro" / f"aa_broken_{i}.tif").write_bytes(b"not a TIFF")
    cfg = load_config(overrides={**_cfg(tmp_path, synth_dir).to_dict(), "data": {
        "path": str(data), "grouped_holdout": 0.25, "shuffle_buffer": 64}, "train": {
        "epochs": 1, "batch_size": 16, "steps_per_epoch": 1, "eval_bootstrap": 0}})
    result = train(cfg)
    info = verify_model_dir(result.model_dir)
    assert info.metrics["test"].get("refused", 0) + info.metrics["val"].get("refused", 0) > 0


def test_a_run_resumes_however_its_data_path_is_spelled_and_a_real_change_is_named(tmp_path, synth_dir,
                                                                                    monkeypatch):
    import dataclasses

    from nscfate.training import _check_run_dir

    monkeypatch.chdir(synth_dir.parent)
    cfg = _cfg(tmp_path, synth_dir)
    _check_run_dir(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=synth_dir.name)), False)
    # the same folder, spelled as tab completion types it, or from elsewhere
    _check_run_dir(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=synth_dir.name + "/")), False)
    _check_run_dir(cfg, False)
    changed = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=5))
    with pytest.raises(ConfigError, match=r"holds a different config \(train.epochs: 2 -> 5\)"):
        _check_run_dir(changed, False)


def test_a_csv_of_synthetic_images_trains_a_model_marked_synthetic(tmp_path, synth_dir):
    """The synthetic flag (the card's and the web app's warning) followed only a synth.json beside the CSV."""
    import dataclasses

    from nscfate import data as D
    from nscfate.training import _is_synthetic

    (tmp_path / "csvs").mkdir()
    cfg = _cfg(tmp_path, synth_dir)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(tmp_path / "csvs" / "g.csv")))
    samples = D.read_dataset(synth_dir, task="medium4")[:3]
    assert _is_synthetic(cfg, samples)
    own = [D.Sample(str(tmp_path / "lab" / "astro" / "cell.tif"), "astro", "g", None)]
    assert not _is_synthetic(cfg, own)


def test_interrupted_run_resumes_where_it_stopped(tmp_path, synth_dir):
    import keras

    from nscfate.training import history, train

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt

    cfg = _cfg(tmp_path, synth_dir, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[Interrupt()])
    assert [row["epoch"] for row in history(cfg.run_path)] == [0]
    assert not cfg.run_path.joinpath("..", "model").resolve().exists()  # nothing exported
    info = train(cfg)  # same command again: continues with the second epoch
    assert [row["epoch"] for row in history(cfg.run_path)] == [0, 1]
    summary = info.metrics["training"]  # the speed is of this session's epoch, not of both
    assert (summary["epochs_run"], summary["epochs_this_session"]) == (2, 1)
    # 3 steps of 16 images in this session (seconds are rounded to 0.1 s; counting both epochs doubles it)
    assert summary["train_images_per_second"] == pytest.approx(3 * 16 / summary["seconds_this_session"], rel=0.15)

    changed = load_config(overrides={**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "epochs": 5}})
    with pytest.raises(ConfigError, match="different config"):
        train(changed, overwrite=True)


@pytest.mark.slow  # float16 on CPU is slow; the path matters on GPUs
def test_mixed_precision_run_exports_float32(tmp_path, synth_dir):
    from nscfate.modeldir import load_keras_model
    from nscfate.training import train

    cfg = _cfg(tmp_path, synth_dir, epochs=1, mixed_precision="on")
    result = train(cfg)
    model = load_keras_model(result.model_dir)
    assert {w.dtype for w in model.weights} == {"float32"}
    assert all(layer.dtype_policy.name == "float32" for layer in model.layers)


def test_history_reads_what_csvlogger_writes_for_a_diverged_epoch(tmp_path):
    import math

    from nscfate.training import HISTORY_FILE, MONITOR, _best_so_far, _training_summary, history

    (tmp_path / HISTORY_FILE).write_text(f"epoch,accuracy,loss,{MONITOR},val_loss\n"
                                         "0,0.5,0.9,0.55,0.8\n1,0.25,nan,nan,NA\n")
    rows = history(tmp_path)
    assert rows[0] == {"epoch": 0, "accuracy": 0.5, "loss": 0.9, MONITOR: 0.55, "val_loss": 0.8}
    assert math.isnan(rows[1]["loss"]) and math.isnan(rows[1][MONITOR]) and rows[1]["val_loss"] is None
    assert _best_so_far(tmp_path) == 0.55
    cfg = _cfg(tmp_path, tmp_path)
    summary = _training_summary(tmp_path, 10.0, 3, cfg, epochs_before=1)
    assert (summary["best_epoch"], summary["best_val_accuracy"], summary["epochs_this_session"]) == (1, 0.55, 1)


def test_class_weights_are_balanced():
    from nscfate.data import Sample
    from nscfate.training import class_weights

    samples = [Sample(f"{i}.tif", "astro" if i < 30 else "oligo", "g", 1) for i in range(40)]
    w = class_weights(samples, ["astro", "oligo"])
    assert w[0] * 30 == pytest.approx(w[1] * 10)
    assert w[0] * 30 + w[1] * 10 == pytest.approx(40)


def test_bad_data_fails_before_anything_is_written(tmp_path):
    from nscfate.errors import DatasetError
    from nscfate.training import train

    (tmp_path / "empty").mkdir()
    cfg = load_config(overrides={"out": str(tmp_path / "model"), "data": {"path": str(tmp_path / "empty")},
                                 "model": {"arch": "cnn"}})
    with pytest.raises(DatasetError):
        train(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


class _StopAfterFirstEpoch:
    """A Keras callback that stops the session (like Ctrl-C) after epoch 0 has been saved."""

    def __new__(cls):
        import keras

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    raise KeyboardInterrupt

        return Interrupt()


def _subset_paths(run_dir, subset):
    from nscfate.training import SPLIT_FILE, read_manifest

    return {s.path for s in read_manifest(run_dir / SPLIT_FILE, subset, verify=False)}


def test_resumed_run_keeps_its_split_and_refuses_changed_data(tmp_path, synth_dir):
    import shutil

    from nscfate.errors import DatasetError
    from nscfate.training import SPLIT_FILE, history, train

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    cfg = _cfg(tmp_path, data, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, extra_callbacks=[_StopAfterFirstEpoch()])
    manifest = (cfg.run_path / SPLIT_FILE).read_bytes()
    trained = _subset_paths(cfg.run_path, "train")
    # one more image between the sessions: a new random split would move trained images into the test set
    extra = sorted((data / "astro").iterdir())[0]
    added = extra.with_name("astro_D3A_009999_Ch1.ome.tif")
    shutil.copy(extra, added)
    with pytest.raises(DatasetError, match=r"1 file\(s\) added, 0 removed, 0 changed.*--restart"):
        train(cfg)
    assert (cfg.run_path / SPLIT_FILE).read_bytes() == manifest  # the run's split is untouched
    assert [row["epoch"] for row in history(cfg.run_path)] == [0]  # nothing trained on the changed data
    # the data as it was: the run resumes on its own split, and no held-out image is trained on
    added.unlink()
    result = train(cfg)
    assert [row["epoch"] for row in history(cfg.run_path)] == [0, 1]
    assert (cfg.run_path / SPLIT_FILE).read_bytes() == manifest
    assert _subset_paths(cfg.run_path, "train") == trained
    held_out = set().union(*(_subset_paths(cfg.run_path, s) for s in ("val", "test", "grouped_test")))
    assert held_out and not held_out & trained
    assert result.metrics["training"]["epochs_this_session"] == 1


def test_copies_across_subsets_are_warned_about_only_for_the_split_a_run_uses(tmp_path, synth_dir, caplog):
    """A resume refused because the data changed says so without first warning about the copies in the
    split it refuses; a resume on the run's own split warns about that split's copies."""
    import logging
    import shutil

    from nscfate.training import HISTORY_FILE, _check_run_dir, _run_split, load_splits

    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    for k, src in enumerate(sorted((data / "astro").glob("astro_D3A_*"))[:6]):  # the same pictures in batch D3B
        shutil.copy(src, data / "astro" / f"astro_D3B_{900 + k:06d}_Ch1.ome.tif")
    cfg = _cfg(tmp_path, data)
    run = _check_run_dir(cfg, restart=False)
    copies = "have the same content (file SHA-256) as an image in another subset"
    with caplog.at_level(logging.INFO, logger="nscfate"):
        _run_split(run, load_splits(cfg), cfg)
        assert copies in caplog.text  # the first session's split has copies across subsets
        (run / HISTORY_FILE).write_text("epoch,val_accuracy\n0,0.5\n")  # an epoch has run
        added = data / "astro" / "astro_D3A_009999_Ch1.ome.tif"
        shutil.copy(src, added)
        caplog.clear()
        with pytest.raises(DatasetError, match=r"1 file\(s\) added"):
            _run_split(run, load_splits(cfg), cfg)
        assert copies not in caplog.text
        added.unlink()
        caplog.clear()
        _run_split(run, load_splits(cfg), cfg)
    messages = [r.getMessage() for r in caplog.records]
    assert "resuming on it" in messages[-2] and copies in messages[-1]


def test_finished_run_is_exported_again_not_retrained(tmp_path, synth_dir, monkeypatch):
    from nscfate import training
    from nscfate.modeldir import verify_model_dir
    from nscfate.training import MONITOR, history, train

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    cfg = _cfg(tmp_path, synth_dir, epochs=2)
    with monkeypatch.context() as m:  # training finishes, the export fails
        m.setattr(training, "export", disk_full)
        with pytest.raises(OSError, match="No space"):
            train(cfg)
    rows = history(cfg.run_path)
    assert [row["epoch"] for row in rows] == [0, 1] and not cfg.run_path.joinpath("backup").exists()
    best = max(rows, key=lambda r: r[MONITOR])
    # the same command again: the run is complete, so its best weights are exported without training
    first = train(cfg).metrics
    # and again with --overwrite (it replaces the model directory; it does not retrain the run)
    second = train(cfg, overwrite=True).metrics
    assert [row["epoch"] for row in history(cfg.run_path)] == [0, 1]  # no epoch trained twice
    for summary in (first["training"], second["training"]):
        assert (summary["epochs_run"], summary["epochs_this_session"]) == (2, 0)
        assert summary["train_images_per_second"] is None
        assert (summary["best_epoch"], summary["best_val_accuracy"]) == (best["epoch"] + 1, best[MONITOR])
    assert second["test"]["accuracy"] == first["test"]["accuracy"]  # the same weights
    assert verify_model_dir(cfg.out).metrics["training"]["epochs_run"] == 2


def test_a_grouped_split_of_data_without_batches_says_so(tmp_path, synth_dir, caplog):
    """Names that carry no acquisition batch make each image its own group: a 'grouped' split is then
    a random one, and the run says so (its card too, test_modeldir); too few batches for the parts
    asked for is explained in terms of the options."""
    import logging
    import shutil

    from nscfate.data import classes_without_batches
    from nscfate.training import load_splits

    flat = tmp_path / "flat"
    for k, path in enumerate(sorted(synth_dir.rglob("*.tif"))):
        (flat / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, flat / path.parent.name / f"{k}_Ch1.ome.tif")  # IDEAS's default names: no batch
    cfg = _cfg(tmp_path, flat)
    with caplog.at_level(logging.WARNING, logger="nscfate.training"):
        splits = load_splits(cfg)
    assert "carry no acquisition batch" in caplog.text
    assert classes_without_batches(splits.train) == ["astro", "nt3", "oligo", "rashh"]
    assert classes_without_batches(load_splits(_cfg(tmp_path, synth_dir)).train) == []
    from nscfate.synth import SynthConfig, write_dataset

    write_dataset(SynthConfig(per_class=12, seed=1, replicates=3), tmp_path / "three")
    three = load_config(overrides={**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "path": str(tmp_path / "three"),
                                                             "split": "grouped"}})
    with pytest.raises(DatasetError, match="while splitting off val.*3 to 3 groups per class.*4 with --grouped-holdout"):
        load_splits(three)  # 3 batches per class: one held out, one for test, too few left for val


def test_a_class_without_batches_next_to_batched_ones_gets_its_share_and_is_named(tmp_path, synth_dir, caplog):
    """One class's names carry no batch, the others' do: that class's images are held out at the
    fractions asked for (a grouped split gave it what whole batches left over: 1 val and 1 test image
    of 30), and the run names it as held out image by image."""
    import logging
    import shutil
    from collections import Counter

    from nscfate.training import load_splits

    data = tmp_path / "mixed"
    shutil.copytree(synth_dir, data)
    for k, path in enumerate(sorted((data / "nt3").iterdir())):
        path.rename(path.with_name(f"{k}_Ch1.ome.tif"))  # IDEAS's default names: no batch
    cfg = _cfg(tmp_path, data)  # 4 batches, one held out; test 0.2 and val 0.1 of the rest
    with caplog.at_level(logging.WARNING, logger="nscfate.training"):
        splits = load_splits(cfg)
    assert "class(es) nt3 in" in caplog.text and "one by one" in caplog.text
    nt3 = {name: Counter(s.label for s in part)["nt3"] for name, part in splits.parts().items()}
    assert nt3 == {"grouped_test": 8, "test": 4, "val": 2, "train": 16}  # 30 x 0.25, 22 x 0.2, 18 x 0.125


def test_early_stopping_counts_the_epochs_of_earlier_sessions(tmp_path):
    """A resumed run stops where an uninterrupted one would: the patience is not granted afresh."""
    import keras

    from nscfate.training import HISTORY_FILE, _early_stopping

    (tmp_path / HISTORY_FILE).write_text("epoch,accuracy,val_accuracy\n0,0.4,0.5\n1,0.6,0.7\n2,0.6,0.69\n3,0.7,0.7005\n")
    stopper = _early_stopping(tmp_path, patience=3)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stopper.set_model(model)
    stopper.on_train_begin()
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (0.7, 1, 2)  # 0.7005 is within min_delta
    stopper.on_epoch_end(4, {"val_accuracy": 0.65})
    assert model.stop_training  # 3 epochs without improvement, counting the 2 of the earlier session
    fresh = _early_stopping(tmp_path / "new", patience=3)
    fresh.set_model(model)
    fresh.on_train_begin()
    assert fresh.wait == 0 and fresh.best is None
