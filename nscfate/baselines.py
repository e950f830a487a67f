"""Hand-feature baselines: what a classifier gets from size and intensity alone, or from the background
alone. A CNN should beat the first clearly; the second should be at chance unless the data carries a
background shortcut (as the real oligodendrocyte-medium crops do). NumPy (and OpenCV for contours)
only: no scikit-learn.

Example::

    train_x = feature_matrix(train_images, "size_intensity")
    model = LogisticRegression().fit(train_x, train_labels)
    accuracy = model.score(feature_matrix(test_images, "size_intensity"), test_labels)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nscfate.preprocessing import estimate_background

#: Width of the frame used to estimate background level and noise, px.
_BORDER = 3


def _frame(image: np.ndarray) -> np.ndarray:
    b = _BORDER
    return np.concatenate([image[:b].ravel(), image[-b:].ravel(), image[b:-b, :b].ravel(), image[b:-b, -b:].ravel()])


def background_features(image: np.ndarray) -> np.ndarray:
    """Background grey, background noise (robust SD), and the frame's mean and SD: nothing about the cell."""
    img = np.asarray(image, np.float32)
    frame = _frame(img)
    median = float(np.median(frame))
    noise = 1.4826 * float(np.median(np.abs(frame - median)))
    return np.array([median, noise, float(frame.mean()), float(frame.std())], np.float64)


BACKGROUND_FEATURES = ("background", "background_noise", "frame_mean", "frame_sd")
SIZE_INTENSITY_FEATURES = (
    "height", "width", "area", "equivalent_diameter", "foreground_pixels",
    "inside_mean", "inside_sd", "inside_contrast", "dark_p1", "bright_p99", "crop_mean", "crop_sd",
    *BACKGROUND_FEATURES,
)


def size_intensity_features(image: np.ndarray) -> np.ndarray:
    """Crop size, cell area and diameter (largest object after thresholding against the background),
    and intensity statistics inside the cell and over the crop."""
    import cv2

    img = np.asarray(image, np.float32)
    bg_feats = background_features(img)
    bg = estimate_background(img)
    scale = max(abs(bg), 1e-6)
    rel = cv2.blur((img - bg) / scale, (3, 3))
    mask = (np.abs(rel) > 0.08).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    if contours:
        cv2.drawContours(filled, [max(contours, key=cv2.contourArea)], -1, 1, thickness=-1)
    inside = img[filled > 0] if filled.any() else img.ravel()
    area = float(filled.sum())
    h, w = img.shape
    return np.concatenate([
        [h, w, area, np.sqrt(4 * area / np.pi), float(mask.sum()),
         float(inside.mean()), float(inside.std()), float(inside.mean() - bg) / scale,
         float(np.percentile(rel, 1)), float(np.percentile(rel, 99)), float(img.mean()), float(img.std())],
        bg_feats,
    ])


FEATURE_SETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "size_intensity": size_intensity_features,
    "background": background_features,
}


def feature_matrix(images: Sequence[np.ndarray], kind: str = "size_intensity") -> np.ndarray:
    """Features of each 2-D image, as an (N, F) float64 matrix."""
    try:
        fn = FEATURE_SETS[kind]
    except KeyError:
        raise ValueError(f"unknown feature set {kind!r}; known: {', '.join(FEATURE_SETS)}") from None
    return np.stack([fn(img) for img in images])


@dataclass
class LogisticRegression:
    """Multinomial logistic regression on standardised features, L2-regularised, fitted by full-batch
    gradient descent with Adam (deterministic; a few thousand samples x tens of features take well
    under a second)."""

    l2: float = 1e-3
    steps: int = 1500
    learning_rate: float = 0.05

    def fit(self, x: np.ndarray, y: Sequence) -> LogisticRegression:
        x = np.asarray(x, np.float64)
        self.classes_, yi = np.unique(np.asarray(y), return_inverse=True)
        self.mean_, self.scale_ = x.mean(axis=0), x.std(axis=0)
        self.scale_[self.scale_ == 0] = 1.0
        xs = np.hstack([(x - self.mean_) / self.scale_, np.ones((len(x), 1))])
        onehot = np.eye(len(self.classes_))[yi]
        w = np.zeros((xs.shape[1], len(self.classes_)))
        m, v = np.zeros_like(w), np.zeros_like(w)
        b1, b2 = 0.9, 0.999
        for t in range(1, self.steps + 1):
            penalty = np.vstack([w[:-1], np.zeros((1, w.shape[1]))])  # the bias is not regularised
            grad = xs.T @ (_softmax(xs @ w) - onehot) / len(xs) + self.l2 * penalty
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad * grad
            w -= self.learning_rate * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
        self.weights_ = w
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        xs = np.hstack([(np.asarray(x, np.float64) - self.mean_) / self.scale_, np.ones((len(x), 1))])
        return _softmax(xs @ self.weights_)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]

    def score(self, x: np.ndarray, y: Sequence) -> float:
        return float(np.mean(self.predict(x) == np.asarray(y)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def baseline_accuracy(train_images: Sequence[np.ndarray], train_labels: Sequence, test_images: Sequence[np.ndarray],
                      test_labels: Sequence, kind: str = "size_intensity") -> float:
    """Test accuracy of logistic regression on the ``kind`` features ("size_intensity" or "background")."""
    model = LogisticRegression().fit(feature_matrix(train_images, kind), train_labels)
    return model.score(feature_matrix(test_images, kind), test_labels)
