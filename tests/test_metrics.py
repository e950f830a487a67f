import numpy as np
import pytest

from nscfate import metrics as M


def _onehot(labels, k, p=0.9):
    out = np.full((len(labels), k), (1 - p) / (k - 1))
    out[np.arange(len(labels)), labels] = p
    return out


def test_confusion_matrix_by_hand():
    y = [0, 0, 1, 1, 2, 2]
    yp = [0, 1, 1, 1, 0, 2]
    cm = M.confusion_matrix(y, yp, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert cm.sum() == 6 and cm.sum(axis=1).tolist() == [2, 2, 2]
    precision, recall, f1 = M.per_class_precision_recall_f1(cm)
    np.testing.assert_allclose(precision, [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(recall, [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(f1, [1 / 2, 0.8, 2 / 3])


def test_accuracy_balanced_accuracy_and_macro_f1():
    y = np.array([0] * 8 + [1] * 2)
    probs = _onehot(np.zeros(10, int), 2)  # always predicts class 0
    assert M.accuracy(y, probs) == pytest.approx(0.8)
    assert M.balanced_accuracy(y, probs) == pytest.approx(0.5)
    # F1 class 0: precision 0.8 recall 1 -> 8/9; class 1: 0
    assert M.macro_f1(y, probs) == pytest.approx((8 / 9 + 0) / 2)


def test_auc_perfect_constant_and_inverted():
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert M.auc(*M.roc_curve(y == 1, perfect)[:2]) == pytest.approx(1.0)
    assert M.auc(*M.roc_curve(y == 1, np.full(6, 0.5))[:2]) == pytest.approx(0.5)
    assert M.auc(*M.roc_curve(y == 1, -perfect)[:2]) == pytest.approx(0.0)
    # a hand-counted case: P(score_pos > score_neg) with one swapped pair out of 9
    mixed = np.array([0.1, 0.2, 0.75, 0.7, 0.8, 0.9])
    assert M.auc(*M.roc_curve(y == 1, mixed)[:2]) == pytest.approx(8 / 9)


def test_random_scorer_auc_is_near_half():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 4000)
    probs = rng.dirichlet(np.ones(3), 4000)
    aucs = M.roc_auc_ovr(y, probs)
    assert np.all(np.abs(aucs - 0.5) < 0.03)


def test_roc_ovr_per_class_and_macro():
    y = np.array([0, 1, 2, 0, 1, 2])
    probs = _onehot(y, 3)
    np.testing.assert_allclose(M.roc_auc_ovr(y, probs), 1.0)
    assert M.macro_auc(y, probs) == pytest.approx(1.0)
    assert np.isnan(M.roc_auc_ovr(np.array([0, 0]), _onehot([0, 0], 3))).all()


def test_ece_perfectly_calibrated_and_overconfident():
    # 10 predictions at confidence 0.8, 8 right: calibrated -> ECE 0
    y = np.array([0] * 8 + [1] * 2)
    probs = np.tile([0.8, 0.2], (10, 1))
    assert M.expected_calibration_error(y, probs) == pytest.approx(0.0)
    # same confidence, only half right: ECE = |0.5 - 0.8| = 0.3
    y2 = np.array([0] * 5 + [1] * 5)
    assert M.expected_calibration_error(y2, probs) == pytest.approx(0.3)
    bins = M.reliability_bins(y2, probs, n_bins=10)
    assert bins["count"].sum() == 10 and bins["count"][7] == 10  # 0.8 falls in (0.7, 0.8]


def test_bootstrap_interval_contains_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    probs = np.where(rng.random(300) < 0.8, y, 1 - y)
    probs = _onehot(probs, 2)
    lo, hi = M.bootstrap_ci(M.accuracy, y, probs, n_boot=300, seed=3)
    acc = M.accuracy(y, probs)
    assert lo < acc < hi and hi - lo < 0.15
    assert (lo, hi) == M.bootstrap_ci(M.accuracy, y, probs, n_boot=300, seed=3)


def test_summarize_is_json_ready():
    import json

    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probs = _onehot(np.array([0, 1, 2, 3, 1, 1, 2, 3]), 4)
    s = M.summarize(y, probs, ["astro", "oligo", "rashh", "nt3"], n_boot=50)
    json.dumps(s)
    assert s["n"] == 8 and s["accuracy"] == pytest.approx(7 / 8)
    assert np.asarray(s["confusion_matrix"]).sum() == 8
    assert s["per_class"]["astro"]["recall"] == pytest.approx(0.5)
    assert len(s["accuracy_ci95"]) == 2
