"""Keras layers that put the intensity half of the preprocessing inside the model (see
``nscfate.preprocessing``), so a saved model carries them."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="nscfate")
class PercentileNormalization(keras.layers.Layer):
    """Per-image robust normalisation: ``(x - p_low) / max(p_high - p_low, eps)``.

    Percentiles are taken over each image's pixels, so the result does not depend on bit depth,
    exposure or absolute background level (one of the real dataset's shortcuts). Typical outputs lie
    in [0, 1] with the dark cell rim near 0 and bright halo near 1.
    """

    def __init__(self, low: float = 1.0, high: float = 99.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
        self.low, self.high, self.eps = float(low), float(high), float(eps)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        n = math.prod(x.shape[1:]) if None not in x.shape[1:] else None
        if n is None:
            q = ops.quantile(x, [self.low / 100.0, self.high / 100.0], axis=(1, 2, 3), keepdims=True)
            lo, hi = q[0], q[1]
        else:
            # The pixel count is known when the graph is built, so the two quantiles' positions are
            # constants: one sort and two gathers, which TensorFlow Lite also runs (ops.quantile's
            # float64 index arithmetic is not among its operations). Same values as ops.quantile.
            ranked = ops.sort(ops.reshape(x, (-1, n)), axis=-1)
            lo, hi = (ops.reshape(_linear_quantile(ranked, n, p / 100.0), (-1, 1, 1, 1))
                      for p in (self.low, self.high))
        return (x - lo) / ops.maximum(hi - lo, self.eps)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "low": self.low, "high": self.high, "eps": self.eps}


def _linear_quantile(ranked, n: int, q: float):
    """Quantile ``q`` of each row of ``ranked`` (sorted rows of ``n`` values), interpolated linearly with
    the arithmetic of Keras's ``ops.quantile`` (TensorFlow backend), so that both give the same floats."""
    exact = (n - 1) * float(np.float32(q))  # ops.quantile takes q as a float32 tensor, then float64
    upper = min(max(math.ceil(exact), 0), n - 1)
    lower = max(upper - 1, 0)
    upper = min(lower + 1, n - 1)
    fraction = upper - exact  # float64 in Keras too, then cast to the values' dtype
    f = ops.cast(fraction, ranked.dtype)
    return ranked[:, upper] * (1 - f) + ranked[:, lower] * f


@keras.saving.register_keras_serializable(package="nscfate")
class GreyToRGB(keras.layers.Layer):
    """Replicate a single grey channel to three, for backbones built for colour (ImageNet)."""

    def call(self, x):
        return ops.concatenate([x, x, x], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)
