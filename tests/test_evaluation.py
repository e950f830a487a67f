import json

import numpy as np

from nscfate.evaluation import PLOTS, evaluate_predictions, per_group_accuracy


def test_evaluate_predictions_writes_metrics_plots_and_report(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 25)
    logits = rng.normal(0, 1, (100, 4))
    logits[np.arange(100), labels] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    groups = [f"D{1 + i % 3}A" for i in range(100)]
    model_metrics = {"test": {"n": 100, "accuracy": 0.93, "accuracy_ci95": [0.9, 0.95], "macro_auc": 0.99},
                     "grouped_test": {"n": 80, "accuracy": 0.88, "macro_auc": 0.97}}
    m = evaluate_predictions(labels, probs, ["astro", "oligo", "rashh", "nt3"], tmp_path, groups=groups,
                             display_names={"astro": "Astrocyte medium"}, model_metrics=model_metrics, n_boot=50)
    for name in (*PLOTS, "metrics.json", "report.md", "report.html"):
        assert (tmp_path / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["accuracy"] == m["accuracy"] and np.asarray(on_disk["confusion_matrix"]).sum() == 100
    assert set(on_disk["per_group"]) == {"D1A", "D2A", "D3A"} and on_disk["per_group_summary"]["groups"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "grouped_test" in report and "0.880" in report and "Astrocyte medium" in report
    assert (tmp_path / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    assert "<table>" in (tmp_path / "report.html").read_text()


def test_per_group_accuracy():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.6, 0.4]])
    out = per_group_accuracy(labels, probs, ["a", "a", "b", "b", "c"])
    assert out == {"a": {"n": 2, "accuracy": 0.5}, "b": {"n": 2, "accuracy": 1.0}, "c": {"n": 1, "accuracy": 0.0}}


def test_a_group_per_image_is_summarised_not_listed(tmp_path):
    """File names without a batch make one group per image: metrics.json does not list them all, the plot
    is a histogram (a bar each made a PNG too wide to save), and the report says why no batch is shown."""
    from PIL import Image

    from nscfate.evaluation import MAX_GROUPS_LISTED

    n = MAX_GROUPS_LISTED + 200
    labels = np.arange(n) % 2
    probs = np.where(np.arange(n)[:, None] % 3 == 0, [[0.3, 0.7]], [[0.7, 0.3]])
    m = evaluate_predictions(labels, probs, ["astro", "oligo"], tmp_path, groups=[f"cell{i}" for i in range(n)],
                             n_boot=10)
    assert "per_group" not in m and m["per_group_summary"]["groups"] == n
    assert m["per_group_summary"]["median_images"] == 1
    assert "carry no acquisition batch" in (tmp_path / "report.md").read_text()
    with Image.open(tmp_path / "per_group_accuracy.png") as plot:
        assert plot.width < 1500


def test_evaluate_command_on_a_dataset_through_the_predictor(tmp_path, capsys):
    from nscfate.cli import main
    from nscfate.synth import SynthConfig, write_dataset
    from nscfate.testing import make_tiny_model_dir

    write_dataset(SynthConfig(per_class=12, seed=2, replicates=3), tmp_path / "data")
    model = make_tiny_model_dir(tmp_path / "tiny", task="astro_vs_oligo")
    out = tmp_path / "eval"
    assert main(["evaluate", str(model), "--data", str(tmp_path / "data"), "--out", str(out),
                 "--bootstrap", "20"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 24 and m["classes"] == ["astro", "oligo"]  # only the task's classes are read
    assert m["model"] == {"name": "tiny-astro_vs_oligo", "version": "0.0.1"}
    assert set(m["per_group"]) == {"D3A", "D3B", "D3C"}
    assert "accuracy" in capsys.readouterr().out
    assert (out / "roc.png").is_file() and (out / "report.html").is_file()
    # no resampling: accuracy keeps its (Wilson) interval, the others have none, and nothing breaks
    assert main(["evaluate", str(model), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "e0"),
                 "--bootstrap", "0"]) == 0
    m0 = json.loads((tmp_path / "e0" / "metrics.json").read_text())
    assert m0["accuracy_ci95"] == m["accuracy_ci95"] and "macro_f1_ci95" not in m0
    assert "accuracy %.4f [" % m0["accuracy"] in capsys.readouterr().out


def test_evaluating_a_split_without_the_models_classes_says_so(tmp_path, tiny_model):
    import pytest

    from nscfate.data import Sample, write_manifest_file
    from nscfate.errors import DatasetError
    from nscfate.evaluation import evaluate
    from nscfate.testing import cell_image, to_png_bytes

    image = tmp_path / "cell.png"
    image.write_bytes(to_png_bytes(cell_image(np.random.default_rng(0))))
    manifest = tmp_path / "split.json"
    write_manifest_file(manifest, {"test": [Sample(str(image), "bdnf", "D3A")]}, {"kind": "random", "seed": 0})
    with pytest.raises(DatasetError, match=r"has no images of tiny-medium4's classes \(astro, .*\); its labels: bdnf"):
        evaluate(tiny_model, manifest, tmp_path / "out", progress=False)


def test_options_that_do_not_apply_to_the_data_are_refused(tmp_path, tiny_model, caplog):
    """--subset needs a split.json and --channel a dataset folder: said at once, not silently ignored."""
    from nscfate.cli import main
    from nscfate.data import Sample, write_manifest_file
    from nscfate.synth import SynthConfig, write_dataset
    from nscfate.testing import cell_image, to_png_bytes

    image = tmp_path / "cell.png"
    image.write_bytes(to_png_bytes(cell_image(np.random.default_rng(0))))
    manifest = tmp_path / "split.json"
    write_manifest_file(manifest, {"test": [Sample(str(image), "astro", "D3A")]}, {"kind": "random", "seed": 0})
    write_dataset(SynthConfig(per_class=3, seed=2, replicates=2), tmp_path / "data")
    out = str(tmp_path / "out")
    assert main(["evaluate", str(tiny_model), "--data", str(tmp_path / "data"), "--out", out,
                 "--subset", "val"]) == 2
    assert "applies to a split manifest only" in caplog.text
    assert main(["evaluate", str(tiny_model), "--data", str(manifest), "--out", out, "--channel", "1"]) == 2
    assert "a channel applies to a dataset folder only" in caplog.text
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_predict_samples_skips_unusable_images_and_keeps_the_rest_aligned(tmp_path, tiny_model):
    from nscfate.data import Sample
    from nscfate.errors import ImageError
    from nscfate.evaluation import predict_samples
    from nscfate.predictor import Predictor
    from nscfate.testing import cell_image, to_png_bytes

    predictor = Predictor.from_directory(tiny_model)
    samples = []
    for i, label in enumerate(["astro", "nt3", "oligo", "rashh", "astro"]):
        path = tmp_path / f"cell{i}.png"
        path.write_bytes(b"not an image" if i == 2 else to_png_bytes(cell_image(np.random.default_rng(i))))
        samples.append(Sample(str(path), label, f"D3{'AB'[i % 2]}"))
    labels, probs, groups, refused = predict_samples(predictor, samples, batch_size=2)
    kept = [s for i, s in enumerate(samples) if i != 2]
    assert [path for path, _ in refused] == [samples[2].path] and isinstance(refused[0][1], ImageError)
    assert labels.tolist() == [predictor.classes.index(s.label) for s in kept]
    assert groups == [s.group for s in kept]
    expected = np.stack([predictor.predict(s.path).probabilities for s in kept])
    assert probs.dtype == np.float32 and probs.shape == (4, 4)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_evaluate_says_what_it_left_out_and_when_the_data_trained_the_model(tmp_path, caplog):
    import logging

    from nscfate.evaluation import evaluate
    from nscfate.modeldir import write_checksums
    from nscfate.synth import SynthConfig, write_dataset
    from nscfate.testing import make_tiny_model_dir

    write_dataset(SynthConfig(per_class=6, seed=3, replicates=2), tmp_path / "data")  # 4 media
    model = make_tiny_model_dir(tmp_path / "tiny", task="astro_vs_oligo")
    meta = json.loads((model / "metadata.json").read_text())
    meta["training_data"] = {**meta["training_data"], "path": str(tmp_path / "data")}
    (model / "metadata.json").write_text(json.dumps(meta))
    write_checksums(model)
    broken = sorted((tmp_path / "data" / "astro").glob("*_Ch1.ome.tif"))[0]
    broken.write_bytes(b"II*\x00 truncated")  # a file that cannot be read: left out, and said so
    with caplog.at_level(logging.INFO, logger="nscfate"):
        m = evaluate(model, tmp_path / "data", tmp_path / "out", n_boot=0, progress=False)
    assert (m["n"], m["refused"]) == (11, 1)
    assert "| images | 11 (1 more could not be read, left out) |" in (tmp_path / "out" / "report.md").read_text()
    assert "12 images of classes outside task 'astro_vs_oligo' left out (nt3 6, rashh 6)" in caplog.text
    assert "is the dataset tiny-astro_vs_oligo was trained on" in caplog.text
