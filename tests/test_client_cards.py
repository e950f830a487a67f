"""client_code/cards.py (run here under CPython): what the Anvil forms say about a model, from the cards
the real worker sends - and the test worker's cards have the same fields."""

from __future__ import annotations

import importlib.util

import pytest

from apphost.testing import FakeWorker
from tests.livehost import ROOT_DIR


@pytest.fixture(scope="module")
def cards():
    spec = importlib.util.spec_from_file_location("client_cards", ROOT_DIR / "client_code" / "cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def worker_cards(tiny_model, tmp_path_factory):
    """The cards of a real worker serving the tiny model (synthetic) and a copy of it that says it was
    trained on real cells, the second one the default."""
    import json
    import shutil

    from nscfate.modeldir import write_checksums
    from nscfate.predictor import Predictor
    from uplink.service import InferenceService

    real = tmp_path_factory.mktemp("models") / "real"
    shutil.copytree(tiny_model, real)
    meta = json.loads((real / "metadata.json").read_text())
    meta["name"] = "lab-medium4"
    meta["training_data"] = {**meta["training_data"], "synthetic": False, "description": "Lab A, 2024 runs 1-9."}
    (real / "metadata.json").write_text(json.dumps(meta))
    write_checksums(real)
    service = InferenceService([Predictor.from_directory(tiny_model), Predictor.from_directory(real)],
                               default_model="lab-medium4")
    try:
        return service.list_models()
    finally:
        service.close()


def test_the_test_worker_sends_the_fields_the_real_one_does(worker_cards):
    assert set(FakeWorker().list_models()[0]) == set(worker_cards[0])


def test_a_synthetic_model_says_so(cards, worker_cards):
    synthetic = next(c for c in worker_cards if c["synthetic_training_data"])
    text = cards.trained_on_text(synthetic)
    assert text.startswith("Trained on SYNTHETIC data: ") and text.endswith(cards.SYNTHETIC_NOTE)
    assert synthetic["trained_on"].rstrip(". ") in text and ". It has never seen" in text  # one sentence each
    real = next(c for c in worker_cards if not c["synthetic_training_data"])
    assert cards.trained_on_text(real) == "Trained on: Lab A, 2024 runs 1-9."
    assert "SYNTHETIC" not in cards.banner_text(real)


def test_held_out_accuracy_comes_from_the_card(cards, worker_cards):
    card = worker_cards[0]
    assert isinstance(card["test_accuracy"], float)  # the tiny model's card has its evaluation
    text = cards.held_out_text(card)
    assert text.startswith("Held-out accuracy: ") and "%.1f%% (" % (100 * card["test_accuracy"]) in text
    for split, says in (("random", "(random test split)"), ("grouped", "(test split by acquisition batch)"),
                        (None, "(test split)")):
        assert says in cards.held_out_text(dict(card, test_split=split))
    assert cards.held_out_text({"name": "x"}) == "No held-out accuracy reported"


def test_the_note_follows_the_model_picked(cards, worker_cards):
    assert cards.card_for(worker_cards, None)["name"] == "lab-medium4"  # nothing picked: the default
    assert cards.card_for(worker_cards, "tiny-medium4")["name"] == "tiny-medium4"
    assert cards.card_for(worker_cards, "gone")["name"] == "lab-medium4"
    picked = cards.banner_text(cards.card_for(worker_cards, "tiny-medium4"))
    assert picked.startswith("Predictions by tiny-medium4 0.0.1 (") and "4 classes" in picked and "SYNTHETIC" in picked
    assert cards.card_for([], None) is None and cards.banner_text(None).startswith("No prediction worker")
