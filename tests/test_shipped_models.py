"""The models committed under models/: registered, intact, within size, honest, and reproducing."""

from pathlib import Path

import pytest

from nscfate.modeldir import MAX_MODEL_DIR_BYTES, dir_size, verify_model_dir
from nscfate.registry import Registry, check_entry, default_root

REGISTRY = Registry(default_root())
ENTRIES = list(REGISTRY.entries)


def test_registry_has_the_two_shipped_tasks_and_a_default():
    assert REGISTRY.get().name == "resnet50-medium4"
    assert {e.name for e in ENTRIES} >= {"resnet50-medium4"}
    tasks = {REGISTRY.info(e.ref, check=False).task for e in ENTRIES}
    assert tasks >= {"medium4", "astro_vs_oligo"}


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.ref for e in ENTRIES])
def test_shipped_model_is_intact_small_honest_and_reproduces(entry):
    check_entry(entry)  # the registry's pinned hash
    info = verify_model_dir(entry.path)  # checksums + golden pair within tolerance
    assert (info.name, info.version) == (entry.name, entry.version)
    assert dir_size(entry.path) <= MAX_MODEL_DIR_BYTES
    card = (entry.path / "README.md").read_text()
    if info.synthetic:
        assert "SYNTHETIC" in card
    assert "## Reproduce" in card and "nscfate train" in card
    assert info.metrics["test"]["accuracy"] is not None and "grouped_test" in info.metrics
    # the card's plots: held-out confusion matrix, ROC, calibration, and the unseen batches' confusion matrix
    assert [p.name for _, p in info.plots] == ["confusion_matrix_test.png", "roc_test.png", "reliability_test.png",
                                               "confusion_matrix_grouped_test.png"]
    assert f"(n={info.metrics['test']['n']})" in info.plots[0][0]


def test_default_model_meets_the_accuracy_target():
    info = REGISTRY.info(check=False)
    assert info.arch == "resnet50" and info.input_size == (75, 75)
    assert info.metrics["test"]["accuracy"] >= 0.90


def test_models_doc_lists_the_shipped_models_as_their_metrics_say():
    """docs/MODELS.md's shipped-models section is what bench/compare_architectures.py would write now: a
    model's metrics rewritten without the doc regenerated would leave stale figures there."""
    from bench.compare_architectures import shipped_models_section

    doc = (Path(__file__).resolve().parent.parent / "docs" / "MODELS.md").read_text()
    assert "\n".join(shipped_models_section()) in doc
