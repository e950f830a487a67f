"""Grad-CAM (Selvaraju et al. 2017) for every architecture of :mod:`nscfate.architectures`.

Which feature map: the last layer of the backbone whose output is a 4-D feature map with both spatial
sides >= :data:`MIN_CAM_SIDE`. Small inputs shrink to 1x1 or 2x2 at the end of deep backbones
(InceptionV3 at 75x75 ends at 1x1, ResNet50 at 45x60 at 2x2), where a class activation map has no
spatial content, so the search walks back to the last map that still has some. Only maps every path to
the output goes through are candidates (a block's output, not a branch inside an Inception block or a
residual block); preprocessing layers (normalisation, grey-to-RGB, scaling, upsampling) and padding
layers are never chosen.

:func:`gradcam` returns the map at input resolution in [0, 1]; :func:`overlay_png` renders it over the
image as PNG bytes (what the worker sends back); :class:`GradCam` caches the gradient model so a
server builds it once.
"""

from __future__ import annotations

import numpy as np

from nscfate.architectures import HEAD_LAYER  # the classifier layer every model ends with
from nscfate.errors import ConfigError

#: Smallest spatial side of the feature map Grad-CAM uses (see module docstring).
MIN_CAM_SIDE = 3
#: Layers that belong to the preprocessing at the front of every nscfate model.
PREPROCESSING_LAYERS = frozenset({"image", "normalize", "grey_to_rgb", "backbone_scaling", "upsample"})
#: Upscaling factor of the overlay PNG (75x75 inputs are too small to look at).
OVERLAY_SCALE = 4


def _bottlenecks(model) -> set[str]:
    """The layers every path from the input to the output goes through (in a residual or Inception
    network: the block outputs, not the branches inside a block, whose maps hold only part of what the
    next block sees). Read from the model's config: a layer is one when no tensor made before it is used
    after it."""
    layers = model.get_config()["layers"]
    position = {layer["name"]: k for k, layer in enumerate(layers)}
    last_use = list(range(len(layers)))

    def sources(node):
        if isinstance(node, dict):
            if "keras_history" in node:
                yield node["keras_history"][0]
            for value in node.values():
                yield from sources(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                yield from sources(value)

    for k, layer in enumerate(layers):
        for name in sources(layer.get("inbound_nodes", [])):
            if name in position:
                last_use[position[name]] = max(last_use[position[name]], k)
    out, reach = set(), -1
    for k, layer in enumerate(layers):
        if reach <= k:
            out.add(layer["name"])
        reach = max(reach, last_use[k])
    return out


def find_cam_layer(model) -> str:
    """Name of the layer whose feature map Grad-CAM uses (see module docstring)."""
    candidates = []
    bottlenecks = _bottlenecks(model)
    for layer in model.layers:
        # A padding layer's map has rows and columns of zeros that are not in the image (MobileNet's last
        # pad before a strided conv): resized to the input, the heat would sit off the cell.
        if layer.name in PREPROCESSING_LAYERS or layer.__class__.__name__ in ("InputLayer", "ZeroPadding2D"):
            continue
        if layer.name not in bottlenecks:
            continue
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and shape[1] and shape[2]:
            candidates.append((layer.name, int(shape[1]), int(shape[2])))
    if not candidates:
        raise ConfigError(f"model {model.name} has no 2-D feature map for Grad-CAM")
    for name, h, w in reversed(candidates):
        if min(h, w) >= MIN_CAM_SIDE:
            return name
    return candidates[-1][0]


class GradCam:
    """Grad-CAM for one model; builds the gradient model once.

    The class score is the head's pre-softmax logit, as in the paper: the gradient of a probability
    vanishes once the softmax saturates (a confident prediction, p = 1.000), which left those maps blank.
    """

    def __init__(self, model, layer_name: str | None = None):
        import keras

        self.model = model
        self.layer_name = layer_name or find_cam_layer(model)
        head = next((layer for layer in model.layers if layer.name == HEAD_LAYER), None)
        if not isinstance(head, keras.layers.Dense):
            raise ConfigError(f"model {model.name} has no Dense {HEAD_LAYER!r} head for Grad-CAM")
        self._head = head
        self._grad_model = keras.Model(model.inputs, [model.get_layer(self.layer_name).output, head.input])

    def __call__(self, image: np.ndarray, class_index: int | None = None) -> np.ndarray:
        """Class activation map of one prepared image ``(h, w, 1)`` for ``class_index`` (default: the
        predicted class), resized to ``(h, w)`` with values in [0, 1] (all zeros when no evidence)."""
        import cv2
        import tensorflow as tf

        x = tf.convert_to_tensor(np.asarray(image, dtype=np.float32)[np.newaxis])
        with tf.GradientTape() as tape:
            feats, pooled = self._grad_model(x, training=False)
            logits = tf.matmul(tf.cast(pooled, tf.float32), tf.cast(self._head.kernel, tf.float32))
            logits += tf.cast(self._head.bias, tf.float32)
            idx = int(tf.argmax(logits[0])) if class_index is None else int(class_index)
            score = logits[:, idx]
        grads = tape.gradient(score, feats)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(tf.cast(weights * feats, tf.float32), axis=-1))[0].numpy()
        h, w = image.shape[:2]
        cam = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        cam = np.clip(cam, 0.0, None)
        top = float(cam.max())
        return cam / top if top > 0 else np.zeros_like(cam)


def gradcam(model, image: np.ndarray, class_index: int | None = None, layer_name: str | None = None) -> np.ndarray:
    """One-off Grad-CAM map (see :class:`GradCam`)."""
    return GradCam(model, layer_name)(image, class_index)


def overlay_png(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, scale: int = OVERLAY_SCALE) -> bytes:
    """PNG bytes: the prepared grey image (contrast-stretched 1-99 percentile) with the map in the jet
    colour map blended over it, enlarged ``scale`` times."""
    import cv2

    grey = np.asarray(image, dtype=np.float32)[..., 0]
    lo, hi = np.percentile(grey, [1, 99])
    grey8 = (np.clip((grey - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    base = cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR)
    blended = cv2.addWeighted(heat, alpha, base, 1 - alpha, 0)
    h, w = grey.shape
    blended = cv2.resize(blended, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", blended)
    if not ok:  # pragma: no cover - cv2 encodes any uint8 BGR array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
