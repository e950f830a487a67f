"""Classification metrics in NumPy: confusion matrix, accuracy, balanced accuracy, per-class
precision/recall/F1, one-vs-rest ROC and AUC, expected calibration error and reliability bins, and
bootstrap confidence intervals.

Inputs are integer labels ``y_true`` (n,) and class probabilities ``probs`` (n, k). Everything is
deterministic (the bootstrap takes a seed).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _check(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (n, k) with n = len(y_true) = {y.shape[0]}, got {p.shape}")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]})")
    return y, p


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class i predicted as j (with ``weights``: their total
    weight, as floats)."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    yp = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(y * num_classes + yp, weights=weights,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true, probs, weights: np.ndarray | None = None) -> float:
    y, p = _check(y_true, probs)
    return _accuracy(confusion_matrix(y, p.argmax(axis=1), p.shape[1], weights))


def _accuracy(cm: np.ndarray) -> float:
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 from a confusion matrix (0 where undefined, as is customary)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    actual = cm.sum(axis=1).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def balanced_accuracy(y_true, probs, weights: np.ndarray | None = None) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y, p = _check(y_true, probs)
    return _balanced_accuracy(confusion_matrix(y, p.argmax(axis=1), p.shape[1], weights))


def _balanced_accuracy(cm: np.ndarray) -> float:
    present = cm.sum(axis=1) > 0
    _, recall, _ = per_class_precision_recall_f1(cm)
    return float(recall[present].mean()) if present.any() else float("nan")


def macro_f1(y_true, probs, weights: np.ndarray | None = None) -> float:
    """Mean F1 over the classes present in ``y_true``."""
    y, p = _check(y_true, probs)
    return _macro_f1(confusion_matrix(y, p.argmax(axis=1), p.shape[1], weights))


def _macro_f1(cm: np.ndarray) -> float:
    present = cm.sum(axis=1) > 0
    return float(per_class_precision_recall_f1(cm)[2][present].mean()) if present.any() else float("nan")


def roc_curve(is_positive: Sequence[bool], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a binary problem: ``(fpr, tpr, thresholds)``, starting at (0, 0). Tied scores are one
    threshold (so a constant scorer gives the chance diagonal)."""
    pos = np.asarray(is_positive, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(pos)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    n_pos, n_neg = pos.sum(), (~pos).sum()
    tpr = np.r_[0.0, tps / n_pos] if n_pos else np.full(tps.size + 1, np.nan)
    fpr = np.r_[0.0, fps / n_neg] if n_neg else np.full(fps.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last_of_tie]]


def roc_corners(fpr: np.ndarray, tpr: np.ndarray) -> np.ndarray:
    """Indices of the points of a curve where it turns, with both ends: drawing only these draws the same
    curve (a point in the middle of a straight, evenly stepped run adds nothing), and a ROC curve over
    600,000 predictions has a point per distinct score."""
    if fpr.size < 3:
        return np.arange(fpr.size)
    # rates are counts / n: equal steps differ by rounding only (1e-16), real turns by >= 1/n
    turns = (np.abs(np.diff(fpr, 2)) > 1e-12) | (np.abs(np.diff(tpr, 2)) > 1e-12)
    return np.flatnonzero(np.r_[True, turns, True])


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule."""
    return float(np.trapezoid(tpr, fpr))


def roc_auc_ovr(y_true, probs, weights: np.ndarray | None = None) -> np.ndarray:
    """One-vs-rest ROC AUC per class (NaN for a class absent from, or the only class in, ``y_true``)."""
    return RankedScores(y_true, probs).aucs(weights)


class RankedScores:
    """Each class's scores sorted once, so that the one-vs-rest AUCs of any weighting of the samples
    (a bootstrap resample) take one pass instead of a sort: the area under the ROC curve is the chance
    that a positive outscores a negative, ties counting half, which is the trapezoidal area of
    :func:`roc_curve` with tied scores as one threshold."""

    def __init__(self, y_true, probs):
        y, p = _check(y_true, probs)
        self.n = y.size
        self.classes = []  # per class: sort order, first index of each run of tied scores, positives in order
        for k in range(p.shape[1]):
            order = np.argsort(p[:, k], kind="mergesort")
            scores = p[order, k]
            starts = np.r_[0, np.flatnonzero(np.diff(scores)) + 1]
            self.classes.append((order, starts, y[order] == k))

    def aucs(self, weights: np.ndarray | None = None) -> np.ndarray:
        out = np.full(len(self.classes), np.nan)
        if not self.n:
            return out
        for k, (order, starts, positive) in enumerate(self.classes):
            w = np.ones(self.n) if weights is None else np.asarray(weights, np.float64)[order]
            pos = np.add.reduceat(np.where(positive, w, 0.0), starts)  # weight of each tied run's positives
            neg = np.add.reduceat(w, starts) - pos  # exact: the weights are counts
            n_pos, n_neg = pos.sum(), neg.sum()
            if n_pos > 0 and n_neg > 0:
                negatives_below = np.cumsum(neg) - neg
                out[k] = float(np.dot(pos, negatives_below + neg / 2) / (n_pos * n_neg))
        return out


def reliability_bins(y_true, probs, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Confidence (top probability) binned in ``n_bins`` equal-width bins over [0, 1]: per bin the count,
    mean confidence and accuracy (NaN for empty bins)."""
    y, p = _check(y_true, probs)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(y_true, probs, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin share) x |accuracy - mean confidence| (Guo et al. 2017)."""
    bins = reliability_bins(y_true, probs, n_bins)
    n = bins["count"].sum()
    if n == 0:
        return float("nan")
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] / n * gap))


def bootstrap_intervals(metrics_of: Callable[[np.ndarray], dict[str, float]], n: int, *, n_boot: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of several metrics over the same resamples of ``n`` samples.

    ``metrics_of(weights)`` gives the metrics of the samples weighted by ``weights``: a resample of ``n``
    samples drawn with replacement is the original samples, each weighted by how often it was drawn (the
    same resample as indexing, without copying the data or sorting it again)."""
    if not n:
        return {name: (float("nan"), float("nan")) for name in metrics_of(np.zeros(0))}
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(n_boot):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        for name, v in metrics_of(weights).items():
            values.setdefault(name, [])
            if np.isfinite(v):
                values[name].append(v)
    alpha = (1 - level) / 2
    return {name: tuple(float(q) for q in np.quantile(v, [alpha, 1 - alpha])) if v else (float("nan"), float("nan"))
            for name, v in values.items()}


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (e.g. accuracy). Unlike the percentile
    bootstrap it does not collapse to a point when every (or no) sample succeeds: 20 of 20 right gives
    [0.84, 1.00], not [1.00, 1.00]. (The app's server code has its own copy, server_code/stats.py:
    Anvil's server modules cannot import nscfate.)"""
    if n <= 0:
        return float("nan"), float("nan")
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def macro_auc(y_true, probs, weights: np.ndarray | None = None) -> float:
    """Mean one-vs-rest AUC over the classes where it is defined."""
    return _mean_defined(roc_auc_ovr(y_true, probs, weights))


def _mean_defined(aucs: np.ndarray) -> float:
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def summarize(y_true, probs, classes: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
              n_bins: int = 15) -> dict:
    """All headline metrics as a JSON-able dict (NaN -> None), with 95% intervals: Wilson for accuracy
    (a proportion), percentile bootstrap for balanced accuracy, macro-F1 and macro AUC."""
    y, p = _check(y_true, probs)
    k = p.shape[1]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} probability columns")
    predicted = p.argmax(axis=1)
    cm = confusion_matrix(y, predicted, k)
    precision, recall, f1 = per_class_precision_recall_f1(cm)
    ranked = RankedScores(y, p)
    aucs = ranked.aucs()
    out = {
        "n": int(y.size),
        "accuracy": _accuracy(cm),
        "balanced_accuracy": _balanced_accuracy(cm),
        "macro_f1": _macro_f1(cm),
        "macro_auc": _mean_defined(aucs),
        "ece": expected_calibration_error(y, p, n_bins),
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            c: {"support": int(cm[i].sum()), "precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "auc": float(aucs[i])}
            for i, c in enumerate(classes)
        },
        "accuracy_ci95": list(wilson_interval(int(np.trace(cm)), int(y.size))),  # needs no resampling
    }
    if n_boot:
        def metrics_of(weights: np.ndarray) -> dict[str, float]:
            resampled = confusion_matrix(y, predicted, k, weights)
            return {"balanced_accuracy": _balanced_accuracy(resampled), "macro_f1": _macro_f1(resampled),
                    "macro_auc": _mean_defined(ranked.aucs(weights))}

        for name, interval in bootstrap_intervals(metrics_of, y.size, n_boot=n_boot, seed=seed).items():
            out[f"{name}_ci95"] = list(interval)
    return _nan_to_none(out)


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if not np.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
