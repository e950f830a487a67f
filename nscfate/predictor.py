"""``Predictor``: the single inference object. The worker, the CLI and evaluation all go through it.

::

    p = Predictor.from_directory("models/resnet50-medium4")    # loads, verifies, warms up once
    prepared = p.prepare(source, filename="cell.tif")          # decode + prepare_image (ImageError)
    results = p.predict_prepared([prepared, ...])              # one batched model call
    p.predict(source).to_dict()

Loading verifies the directory's checksums, compiles a fixed-signature ``tf.function`` (input
``(None, h, w, 1)`` float32, so serving never retraces) and warms it up on the golden input, which
must reproduce the golden output: a model that loads but computes something else is refused
(``ModelError``).

Warnings attached to a prediction (none of them stops it):

- from decoding: e.g. colour converted to grey, page chosen (``ImageInfo.warnings``);
- the image is much larger than an imaging-flow-cytometry crop (> :data:`LARGE_SIDE` px a side);
- it does not look like a single cell (:func:`single_cell_warnings`, a cheap heuristic);
- low confidence: the top probability is below the model's threshold (``metadata.json``
  ``low_confidence``, default :data:`DEFAULT_LOW_CONFIDENCE`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from nscfate.errors import ImageError, MarkerChannelError, UnknownModelError
from nscfate.modeldir import (GOLDEN_INPUT_FILE, GOLDEN_OUTPUT_FILE, DEFAULT_GOLDEN_ATOL, ModelInfo,
                              check_golden, load_keras_model, read_model_dir)
from nscfate.preprocessing import border_pixels, median, percentile, prepare_image

log = logging.getLogger(__name__)

#: A side longer than this (px) is "much larger than an IFC crop" (crops are ~60 px wide).
LARGE_SIDE = 256
DEFAULT_LOW_CONFIDENCE = 0.6
#: Images per model call in :meth:`Predictor.predict_many`.
DEFAULT_BATCH = 64


@dataclass(frozen=True)
class PreparedImage:
    """A decoded, prepared image ready for the model."""

    array: np.ndarray  # float32 (h, w, 1): prepare_image output
    image: dict[str, Any]  # ImageInfo.to_dict() of the decoded image
    filename: str | None = None
    warnings: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Prediction:
    """One image's result. ``to_dict()`` is the JSON form used by the worker, the web app and the CLI;
    ``gradcam_png`` (overlay PNG bytes, when asked for) is kept out of it."""

    model_name: str
    model_version: str
    classes: tuple[str, ...]
    display_names: dict[str, str]
    probabilities: tuple[float, ...]
    warnings: tuple[str, ...]
    timings_ms: dict[str, float]
    image: dict[str, Any]
    filename: str | None = None
    gradcam_png: bytes | None = field(default=None, repr=False)

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        return self.classes[self.predicted_index]

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.predicted_index])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model_name, "version": self.model_version},
            "predicted_class": self.predicted_class,
            "predicted_display_name": self.display_names[self.predicted_class],
            "confidence": self.confidence,
            "classes": [{"key": k, "display_name": self.display_names[k]} for k in self.classes],
            "probabilities": {k: float(p) for k, p in zip(self.classes, self.probabilities)},
            "warnings": list(self.warnings),
            "timings_ms": dict(self.timings_ms),
            "image": dict(self.image),
        }


class Predictor:
    """Inference with one model directory. Build with :meth:`from_directory` or :meth:`load`."""

    def __init__(self, info: ModelInfo, model, *, batch_size: int = DEFAULT_BATCH):
        import tensorflow as tf

        from nscfate.memory import serial_opencv

        # Servers call prepare() from a new thread per request (anvil-uplink does): OpenCV's thread pool
        # would keep ~0.9 KB for each of them (nscfate.memory).
        serial_opencv()
        self.info = info
        self.model = model
        self.batch_size = int(batch_size)
        self.low_confidence = float(info.metadata.get("low_confidence", DEFAULT_LOW_CONFIDENCE))
        h, w = info.input_size
        # One compiled graph for every batch size: serving never retraces.
        self._infer = tf.function(lambda x: model(x, training=False),
                                  input_signature=[tf.TensorSpec([None, h, w, 1], tf.float32)])
        self._gradcam = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_directory(cls, path: str | os.PathLike, *, batch_size: int = DEFAULT_BATCH) -> "Predictor":
        """Load a model directory once: checksums, model, compiled function, warm-up on the golden pair.

        Raises:
            ModelError: broken directory or the golden pair does not reproduce.
        """
        t0 = time.perf_counter()
        info = read_model_dir(path, check=True)
        predictor = cls(info, load_keras_model(path), batch_size=batch_size)
        golden_in = np.load(Path(path) / GOLDEN_INPUT_FILE).astype(np.float32)
        golden_out = np.load(Path(path) / GOLDEN_OUTPUT_FILE)
        got = predictor._run(golden_in)  # warm-up: traces the graph once
        check_golden(got, golden_out, float(info.metadata.get("golden_atol", DEFAULT_GOLDEN_ATOL)), where=str(path))
        log.info("loaded model %s@%s from %s in %.1f s", info.name, info.version, path, time.perf_counter() - t0)
        return predictor

    @classmethod
    def load(cls, model: str | os.PathLike | None = None, **kwargs) -> "Predictor":
        """:meth:`from_directory` for a model directory path, a registry ``name[@version]`` or ``None``
        (the registry's default model). Unknown names raise ``UnknownModelError``."""
        from nscfate.registry import resolve

        return cls.from_directory(resolve(model), **kwargs)

    @classmethod
    def load_shipped(cls, **kwargs) -> list["Predictor"]:
        """Every model of the registry (newest version of each name), the default model first.

        Raises:
            UnknownModelError: the registry lists no model.
        """
        from nscfate.registry import Registry

        registry = Registry()
        refs = [registry.get(name).ref for name in dict.fromkeys(e.name for e in registry.entries)]
        if not refs:
            raise UnknownModelError(f"no shipped model: {registry.file} lists none")
        default = registry.get(None).ref if registry.default_name else refs[0]
        ordered = [default] + [r for r in refs if r != default]
        return [cls.load(ref, **kwargs) for ref in ordered]

    # ------------------------------------------------------------------ description
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def version(self) -> str:
        return self.info.version

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def classes(self) -> tuple[str, ...]:
        return self.info.classes

    @property
    def display_names(self) -> dict[str, str]:
        return dict(self.info.display_names)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.info.input_size

    def card(self) -> dict[str, Any]:
        """Short JSON-able description of the model (name, version, task, classes, training data...)."""
        return {**self.info.card(), "low_confidence_threshold": self.low_confidence}

    def plots(self) -> list[tuple[str, str, bytes]]:
        """The model card's plots as (file name, title, PNG bytes), e.g. the held-out confusion matrix."""
        return [(path.name, title, path.read_bytes()) for title, path in self.info.plots]

    # ------------------------------------------------------------------ inference
    def prepare(self, source, filename: str | None = None) -> PreparedImage:
        """Decode ``source`` (bytes, path or binary file object) and prepare it for the model.

        Raises:
            ImageError: (a subclass saying what was wrong) for anything that is not a usable image.
        """
        from nscfate.data import BRIGHTFIELD_CHANNEL, file_channel
        from nscfate.io import decode_image

        if filename is None and isinstance(source, (str, os.PathLike)):
            filename = os.fspath(source)
        channel = file_channel(filename) if filename else None
        if channel not in (None, BRIGHTFIELD_CHANNEL):  # as datasets refuse them: the markers define the label
            raise MarkerChannelError(f"{os.path.basename(filename)}: the file name says channel Ch{channel}, a "
                                     "fluorescence marker channel; the model reads brightfield "
                                     f"(Ch{BRIGHTFIELD_CHANNEL}) images only")
        t0 = time.perf_counter()
        decoded = decode_image(source, name=filename)
        t1 = time.perf_counter()
        array = prepare_image(decoded.pixels, self.input_size)
        t2 = time.perf_counter()
        warnings = list(decoded.info.warnings)
        h, w = decoded.pixels.shape
        if max(h, w) > LARGE_SIDE:
            warnings.append(f"image is {w}x{h} px (width x height), much larger than an imaging-flow-cytometry "
                            f"crop (~60 px); it was shrunk to {self.input_size[1]}x{self.input_size[0]} - crop "
                            "single cells first")
        warnings += single_cell_warnings(decoded.pixels)
        return PreparedImage(array=array, image=decoded.info.to_dict(), filename=filename, warnings=tuple(warnings),
                             timings_ms={"decode": 1e3 * (t1 - t0), "prepare": 1e3 * (t2 - t1)})

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._infer(batch), dtype=np.float32)

    def predict_prepared(self, prepared: list[PreparedImage]) -> list[Prediction]:
        """Predict a batch of prepared images with one model call."""
        if not prepared:
            return []
        t0 = time.perf_counter()
        probs = self._run(np.stack([p.array for p in prepared]).astype(np.float32, copy=False))
        model_ms = 1e3 * (time.perf_counter() - t0)
        results = []
        for p, row in zip(prepared, probs):
            warnings = list(p.warnings)
            top = float(row.max())
            if top < self.low_confidence:
                warnings.append(f"low confidence: the top class has probability {top:.2f} "
                                f"(below {self.low_confidence:.2f}); treat this prediction as uncertain")
            results.append(Prediction(
                model_name=self.name, model_version=self.version, classes=self.classes,
                display_names=self.display_names, probabilities=tuple(float(v) for v in row),
                warnings=tuple(warnings), image=p.image, filename=p.filename,
                timings_ms={**p.timings_ms, "model": model_ms, "batch_size": len(prepared)},
            ))
        return results

    def predict(self, source, explain: bool = False, filename: str | None = None) -> Prediction:
        """Prepare and predict one image; with ``explain`` the result carries a Grad-CAM overlay PNG."""
        prepared = self.prepare(source, filename=filename)
        result = self.predict_prepared([prepared])[0]
        if explain:
            t0 = time.perf_counter()
            png = self.gradcam_png(prepared, class_index=result.predicted_index)
            timings = {**result.timings_ms, "gradcam": 1e3 * (time.perf_counter() - t0)}
            result = Prediction(**{**result.__dict__, "gradcam_png": png, "timings_ms": timings})
        return result

    def predict_many(self, sources: Iterable, batch_size: int | None = None) -> list[Prediction | ImageError]:
        """Predict many images in batches; a bad image yields its ``ImageError`` in its place."""
        size = int(batch_size or self.batch_size)
        out: list[Prediction | ImageError] = []
        pending: list[tuple[int, PreparedImage]] = []

        def flush():
            for (i, _), result in zip(pending, self.predict_prepared([p for _, p in pending])):
                out[i] = result
            pending.clear()

        for source in sources:
            out.append(None)  # type: ignore[arg-type]
            try:
                pending.append((len(out) - 1, self.prepare(source)))
            except ImageError as exc:
                out[-1] = exc
            if len(pending) >= size:
                flush()
        flush()
        return out

    def gradcam_png(self, prepared: PreparedImage, class_index: int | None = None) -> bytes:
        """Grad-CAM overlay PNG of a prepared image (default: for the predicted class)."""
        from nscfate.explain import GradCam, overlay_png

        if self._gradcam is None:
            self._gradcam = GradCam(self.model)
        return overlay_png(prepared.array, self._gradcam(prepared.array, class_index))


# ---------------------------------------------------------------------- single-cell heuristic

#: Blob size limits of the single-cell check, as fractions of the image's short side (equivalent
#: diameter). IFC crops are ~60 px with 13-25 px cells (0.2-0.6 of the short side).
CELL_MIN_FRACTION = 0.08
CELL_MAX_FRACTION = 0.95


def set_cpu_threads(intra_op: int = 0, inter_op: int = 1) -> None:
    """Size TensorFlow's CPU thread pools; call before any model is loaded (TensorFlow fixes them then).

    ``intra_op``: threads inside one operation (0: TensorFlow's default, the cores this process may
    use). ``inter_op``: operations run side by side (0: default, also the core count). A server runs
    one batch through one network at a time, whose layers run one after another, so one inter-op
    thread gives the intra-op pool every core; measured by ``bench/model_speed.py --thread-sweep``.
    """
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def single_cell_warnings(pixels: np.ndarray) -> list[str]:
    """Cheap check that a decoded image looks like one cell on a plain background.

    Foreground = pixels that differ from the background grey (median of the border) by more than
    ``max(5 x noise, 20% of the largest difference)``, where noise is the MAD of the border; the mask
    is closed and hole-filled, so a dark rim with a bright interior makes one blob. Then:

    - nothing stands out, or no blob's equivalent diameter reaches 8% of the short side -> "no cell
      found" (flat, empty or out-of-focus image, or only specks);
    - a second blob at least 30% of the largest's area -> "several objects" (doublet, debris, a field);
    - the largest blob's equivalent diameter above 95% of the short side -> "fills the whole image".

    It is a warning, not a gate: odd but real cells still get a prediction.
    """
    import cv2

    img = np.asarray(pixels, dtype=np.float32)
    h, w = img.shape
    # Large images are judged on a reduced copy: the check is about layout, not detail.
    scale = min(1.0, 256.0 / max(h, w))
    if scale < 1.0:
        img = cv2.resize(img, (max(8, int(w * scale)), max(8, int(h * scale))), interpolation=cv2.INTER_AREA)
        h, w = img.shape
    border = border_pixels(img)
    bg = median(border)  # the background grey, as estimate_background gives it
    noise = 1.4826 * median(np.abs(border - bg))
    diff = np.abs(img - bg)
    peak = percentile(diff.ravel(), 99.5)
    if peak <= max(5 * noise, 1e-6):
        return ["no cell found: the image is nearly uniform (empty, flat or badly out of focus)"]
    mask = (diff > max(5 * noise, 0.2 * peak)).astype(np.uint8)
    k = max(3, int(round(min(h, w) * 0.06)) | 1)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    mask = _fill_holes(mask)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = sorted((int(a) for a in stats[1:, cv2.CC_STAT_AREA]), reverse=True)
    min_area = np.pi / 4 * (CELL_MIN_FRACTION * min(h, w)) ** 2
    areas = [a for a in areas if a >= min_area / 4]
    if not areas or areas[0] < min_area:
        return ["no cell found: no object of plausible cell size stands out from the background"]
    warnings = []
    if len(areas) > 1 and areas[1] >= 0.3 * areas[0]:
        warnings.append(f"does not look like a single cell: {sum(a >= 0.3 * areas[0] for a in areas)} "
                        "similar objects (doublet, debris or a field of view?); the model expects one cell per image")
    diameter = 2 * np.sqrt(areas[0] / np.pi)
    if diameter > CELL_MAX_FRACTION * min(h, w):
        warnings.append("does not look like a single-cell crop: the object fills the whole image")
    return warnings


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes of a binary uint8 mask (flood fill of the background from the border)."""
    import cv2

    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)
