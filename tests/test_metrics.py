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

    def interval():
        return M.bootstrap_intervals(lambda w: {"accuracy": M.accuracy(y, probs, w)}, y.size, n_boot=300,
                                     seed=3)["accuracy"]

    lo, hi = interval()
    acc = M.accuracy(y, probs)
    assert lo < acc < hi and hi - lo < 0.15
    assert (lo, hi) == interval()


def _tied_predictions(n=400, k=4, seed=0):
    """Labels and probabilities rounded to 0.05, so that many scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, np.round(p / 0.05) * 0.05


def test_aucs_equal_the_trapezoidal_area_under_the_roc_curve_with_ties():
    y, p = _tied_predictions()
    expected = [M.auc(*M.roc_curve(y == c, p[:, c])[:2]) for c in range(p.shape[1])]
    np.testing.assert_allclose(M.roc_auc_ovr(y, p), expected, rtol=1e-12)
    assert np.isnan(M.roc_auc_ovr(np.zeros(5, int), _onehot([0, 1, 0, 1, 0], 2))).all()


def test_weighted_metrics_equal_the_metrics_of_the_repeated_samples():
    y, p = _tied_predictions(seed=1)
    w = np.random.default_rng(2).integers(0, 4, y.size)  # zeros too: samples left out of a resample
    yr, pr = np.repeat(y, w), np.repeat(p, w, axis=0)
    for metric in (M.accuracy, M.balanced_accuracy, M.macro_f1, M.macro_auc):
        assert metric(y, p, w.astype(float)) == pytest.approx(metric(yr, pr), rel=1e-12), metric.__name__
    np.testing.assert_allclose(M.roc_auc_ovr(y, p, w), M.roc_auc_ovr(yr, pr), rtol=1e-12)


def test_summary_intervals_are_those_of_resampling_by_index():
    # the weights are exactly the index resamples the intervals are defined by (same draws)
    y, p = _tied_predictions(n=120, seed=3)
    s = M.summarize(y, p, ["astro", "oligo", "rashh", "nt3"], n_boot=40, seed=7)
    rng = np.random.default_rng(7)
    draws = [rng.integers(0, y.size, y.size) for _ in range(40)]
    for name, metric in (("balanced_accuracy", M.balanced_accuracy),  # accuracy's is Wilson's: below
                         ("macro_f1", M.macro_f1), ("macro_auc", M.macro_auc)):
        values = [metric(y[i], p[i]) for i in draws]
        np.testing.assert_allclose(s[f"{name}_ci95"], np.quantile(values, [0.025, 0.975]), rtol=1e-12)


def test_summary_of_no_samples_has_undefined_intervals():
    s = M.summarize(np.zeros(0, int), np.zeros((0, 2)), ["astro", "oligo"], n_boot=10)
    assert s["n"] == 0 and s["accuracy"] is None and s["macro_auc_ci95"] == [None, None]


def test_summarize_is_json_ready():
    import json

    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    probs = _onehot(np.array([0, 1, 2, 3, 1, 1, 2, 3]), 4)
    s = M.summarize(y, probs, ["astro", "oligo", "rashh", "nt3"], n_boot=50)
    json.dumps(s)
    assert s["n"] == 8 and s["accuracy"] == pytest.approx(7 / 8)
    assert np.asarray(s["confusion_matrix"]).sum() == 8
    assert s["per_class"]["astro"]["recall"] == pytest.approx(0.5)
    assert s["accuracy_ci95"] == pytest.approx(list(M.wilson_interval(7, 8)))


def test_wilson_interval_of_a_proportion():
    low, high = M.wilson_interval(5, 10)
    assert round(low, 4) == 0.2366 and round(high, 4) == 0.7634  # the textbook values
    low, high = M.wilson_interval(20, 20)  # all right: not the degenerate [1, 1] of a bootstrap
    assert high == 1.0 and 0.83 < low < 0.84
    assert M.wilson_interval(0, 20)[0] == pytest.approx(0.0, abs=1e-12) and np.isnan(M.wilson_interval(0, 0)[0])
    y = np.arange(20) % 4
    s = M.summarize(y, _onehot(y, 4), ["astro", "oligo", "rashh", "nt3"], n_boot=50)
    assert s["accuracy"] == 1.0 and s["accuracy_ci95"][0] < 0.85


def test_roc_corners_draw_the_same_curve_with_fewer_points():
    y, p = _tied_predictions(n=3000, seed=4)
    y = np.repeat(y, 2)  # long straight runs of positives and negatives too
    p = np.repeat(p, 2, axis=0) + np.random.default_rng(5).uniform(0, 1e-6, (y.size, p.shape[1]))
    fpr, tpr, _ = M.roc_curve(y == 0, p[:, 0])
    kept = M.roc_corners(fpr, tpr)
    assert kept[0] == 0 and kept[-1] == fpr.size - 1 and kept.size < fpr.size / 2
    assert M.auc(fpr[kept], tpr[kept]) == pytest.approx(M.auc(fpr, tpr), abs=1e-12)
    # every point left out lies on the segment between the kept points around it
    for i in np.setdiff1d(np.arange(fpr.size), kept):
        j = np.searchsorted(kept, i)
        a, b = kept[j - 1], kept[j]
        t = (i - a) / (b - a)  # evenly stepped runs: the point is that far along the segment
        assert fpr[i] == pytest.approx(fpr[a] + t * (fpr[b] - fpr[a]), abs=1e-9)
        assert tpr[i] == pytest.approx(tpr[a] + t * (tpr[b] - tpr[a]), abs=1e-9)
    assert M.roc_corners(np.array([0.0, 1.0]), np.array([0.0, 1.0])).tolist() == [0, 1]
