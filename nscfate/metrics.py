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


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class i predicted as j."""
    y = np.asarray(y_true, dtype=np.int64).ravel()
    yp = np.asarray(y_pred, dtype=np.int64).ravel()
    return np.bincount(y * num_classes + yp, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(y_true, probs) -> float:
    y, p = _check(y_true, probs)
    return float(np.mean(p.argmax(axis=1) == y)) if y.size else float("nan")


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


def balanced_accuracy(y_true, probs) -> float:
    """Mean recall over the classes present in ``y_true``."""
    y, p = _check(y_true, probs)
    cm = confusion_matrix(y, p.argmax(axis=1), p.shape[1])
    present = cm.sum(axis=1) > 0
    _, recall, _ = per_class_precision_recall_f1(cm)
    return float(recall[present].mean()) if present.any() else float("nan")


def macro_f1(y_true, probs) -> float:
    """Mean F1 over the classes present in ``y_true``."""
    y, p = _check(y_true, probs)
    cm = confusion_matrix(y, p.argmax(axis=1), p.shape[1])
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


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a curve by the trapezoidal rule."""
    return float(np.trapezoid(tpr, fpr))


def roc_auc_ovr(y_true, probs) -> np.ndarray:
    """One-vs-rest ROC AUC per class (NaN for a class absent from, or the only class in, ``y_true``)."""
    y, p = _check(y_true, probs)
    out = np.full(p.shape[1], np.nan)
    for k in range(p.shape[1]):
        positive = y == k
        if 0 < positive.sum() < y.size:
            out[k] = auc(*roc_curve(positive, p[:, k])[:2])
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


def bootstrap_ci(metric: Callable[[np.ndarray, np.ndarray], float], y_true, probs, *, n_boot: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, probs)`` over resampled samples."""
    y, p = _check(y_true, probs)
    if y.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        v = metric(y[i], p[i])
        if np.isfinite(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def macro_auc(y_true, probs) -> float:
    """Mean one-vs-rest AUC over the classes where it is defined."""
    aucs = roc_auc_ovr(y_true, probs)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def summarize(y_true, probs, classes: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
              n_bins: int = 15) -> dict:
    """All headline metrics as a JSON-able dict (NaN -> None), with bootstrap 95% intervals for
    accuracy, balanced accuracy, macro-F1 and macro AUC."""
    y, p = _check(y_true, probs)
    k = p.shape[1]
    if len(classes) != k:
        raise ValueError(f"{len(classes)} class names for {k} probability columns")
    cm = confusion_matrix(y, p.argmax(axis=1), k)
    precision, recall, f1 = per_class_precision_recall_f1(cm)
    aucs = roc_auc_ovr(y, p)
    out = {
        "n": int(y.size),
        "accuracy": accuracy(y, p),
        "balanced_accuracy": balanced_accuracy(y, p),
        "macro_f1": macro_f1(y, p),
        "macro_auc": macro_auc(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "per_class": {
            c: {"support": int(cm[i].sum()), "precision": float(precision[i]), "recall": float(recall[i]),
                "f1": float(f1[i]), "auc": float(aucs[i])}
            for i, c in enumerate(classes)
        },
    }
    if n_boot:
        for name, fn in (("accuracy", accuracy), ("balanced_accuracy", balanced_accuracy),
                         ("macro_f1", macro_f1), ("macro_auc", macro_auc)):
            out[f"{name}_ci95"] = list(bootstrap_ci(fn, y, p, n_boot=n_boot, seed=seed))
    return _nan_to_none(out)


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if not np.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
