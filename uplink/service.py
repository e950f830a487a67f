"""The worker's inference service: the loaded models, one micro-batcher per model, and the three
operations the uplink callables expose. Nothing here knows about the network.

Every prediction goes through ``nscfate.Predictor``: ``prepare`` in the caller's thread (decode and
preprocess run in parallel across calls; the call is announced to the batcher meanwhile, so a batch
being collected waits for it but a lone call does not wait), ``predict_prepared`` once per micro-batch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import anvil

from nscfate.errors import ImageError
from nscfate.predictor import Predictor
from uplink.batcher import BatcherClosed, MicroBatcher
from uplink.errors import CellImageError, UnknownModelError, WorkerUnavailableError

logger = logging.getLogger(__name__)

#: Most images one ``predict_cell_fate_batch`` call may carry.
MAX_IMAGES_PER_CALL = 256


def load_predictors(specs: Sequence[str]) -> list[Predictor]:
    """Load each model once (``Predictor.load``: a model directory, a registry ``name[@version]``);
    no specs loads every shipped model, the registry's default model first.

    Raises:
        nscfate.errors.UnknownModelError, nscfate.errors.ModelError: a model cannot be loaded.
    """
    return [Predictor.load(spec) for spec in specs] if specs else Predictor.load_shipped()


class InferenceService:
    """Predictions for the uplink callables.

    Args:
        predictors: the loaded models (names must be distinct).
        default_model: the name used when a call names no model (default: the first).
        max_batch: most images per model call.
        max_wait: most seconds a batch waits for calls that are still decoding their images.
        max_images_per_call: most images in one batch call.
    """

    def __init__(
        self,
        predictors: Sequence[Predictor],
        *,
        default_model: str | None = None,
        max_batch: int = 32,
        max_wait: float = 0.005,
        max_images_per_call: int = MAX_IMAGES_PER_CALL,
    ) -> None:
        if not predictors:
            raise ValueError("the worker needs at least one model")
        self.predictors: dict[str, Predictor] = {}
        for p in predictors:
            if p.name in self.predictors:
                raise ValueError(f"two models are named {p.name!r}; load one version of each model")
            self.predictors[p.name] = p
        self.default_model = default_model or predictors[0].name
        if self.default_model not in self.predictors:
            raise ValueError(f"default model {self.default_model!r} is not loaded ({', '.join(self.predictors)})")
        self.max_images_per_call = max_images_per_call
        self.batchers = {
            name: MicroBatcher(p.predict_prepared, max_batch=max_batch, max_wait=max_wait, name=f"batcher-{name}")
            for name, p in self.predictors.items()
        }
        self.started_at = time.time()
        self._accepting = True
        self._in_flight = 0
        self._idle = threading.Condition()
        self._calls = 0

    # ------------------------------------------------------------------ operations

    def predict(self, image: Any, model: str | None = None, explain: bool = False) -> dict[str, Any]:
        """One image (Media) -> the prediction dict, with a ``gradcam`` PNG Media when ``explain``.

        Raises:
            CellImageError: not Media, or not a usable image (``code`` from nscfate.errors).
            UnknownModelError: ``model`` is not served here.
        """
        with self._call():
            predictor = self._predictor(model)
            batcher = self.batchers[predictor.name]
            with batcher.expecting():  # a batch being collected waits for this image, not for strangers
                data, filename = _media_content(image, "image")
                prepared = _prepare(predictor, data, filename)
                future = batcher.submit(prepared)
            t0 = time.perf_counter()
            batched = future.result()
            result = batched.value.to_dict()
            result["timings_ms"]["queue"] = batched.queued_ms
            result["timings_ms"]["wait_total"] = (time.perf_counter() - t0) * 1000
            if explain:
                t1 = time.perf_counter()
                png = predictor.gradcam_png(prepared, class_index=batched.value.predicted_index)
                result["timings_ms"]["gradcam"] = (time.perf_counter() - t1) * 1000
                stem = (filename or "image").rsplit(".", 1)[0]
                result["gradcam"] = anvil.BlobMedia("image/png", png, name=f"{stem}-gradcam.png")
            return result

    def predict_batch(self, images: Any, model: str | None = None) -> list[dict[str, Any]]:
        """Many images -> results in order; a bad image gets ``{"error": {"code", "message"}, "index",
        "filename"}`` in its place and does not spoil the others.

        Raises:
            CellImageError: ``images`` is not a list of at most ``max_images_per_call`` items.
            UnknownModelError: ``model`` is not served here.
        """
        with self._call():
            predictor = self._predictor(model)
            if not isinstance(images, (list, tuple)):
                raise CellImageError(
                    f"images must be a list of image files, got {type(images).__name__}", code="bad_input"
                )
            if len(images) > self.max_images_per_call:
                raise CellImageError(
                    f"{len(images)} images in one call; at most {self.max_images_per_call} are accepted",
                    code="too_many_images",
                )
            results: list[dict[str, Any] | None] = [None] * len(images)
            prepared, positions = [], []
            batcher = self.batchers[predictor.name]
            with batcher.expecting():
                for index, image in enumerate(images):
                    filename = getattr(image, "name", None) if isinstance(image, anvil.Media) else None
                    try:
                        data, filename = _media_content(image, f"images[{index}]")
                        prepared.append(_prepare(predictor, data, filename))
                        positions.append(index)
                    except CellImageError as exc:
                        results[index] = {
                            "error": {"code": exc.code, "message": exc.message},
                            "index": index,
                            "filename": filename,
                        }
                futures = batcher.submit_many(prepared)
            for index, future in zip(positions, futures):
                batched = future.result()
                result = batched.value.to_dict()
                result["timings_ms"]["queue"] = batched.queued_ms
                results[index] = result
            return results  # type: ignore[return-value]

    def list_models(self, plots: bool = False) -> list[dict[str, Any]]:
        """The model cards in short, the default model first; each card's ``plots`` are their titles, with
        the PNGs as Media (``image``) only when ``plots`` is true (a few hundred KB: not for listings)."""
        cards = []
        for name, p in sorted(self.predictors.items(), key=lambda kv: kv[0] != self.default_model):
            if plots:
                plots_out = [{"title": title, "image": anvil.BlobMedia("image/png", png, name=file)}
                             for file, title, png in p.plots()]
            else:
                plots_out = [{"title": title} for title, _ in p.info.plots]
            cards.append({**p.card(), "default": name == self.default_model, "plots": plots_out})
        return cards

    def stats(self) -> dict[str, Any]:
        """Counters for health pages and tests: calls, in flight, and each model's batch sizes."""
        with self._idle:
            in_flight, calls = self._in_flight, self._calls
        return {
            "accepting": self._accepting,
            "in_flight": in_flight,
            "calls": calls,
            "uptime_s": time.time() - self.started_at,
            "batches": {name: b.stats() for name, b in self.batchers.items()},
        }

    def warm_up(self) -> None:
        """Run each model once through the whole serving path (decode, prepare, a full batch), so the
        first real call pays no import or allocation cost."""
        for name, p in self.predictors.items():
            t0 = time.perf_counter()
            prepared = p.prepare(_warm_up_png(*p.input_size), filename="warm-up.png")
            p.predict_prepared([prepared] * self.batchers[name].max_batch)
            logger.info("warmed up %s@%s in %.0f ms", p.name, p.version, (time.perf_counter() - t0) * 1000)

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self) -> None:
        """Take no new calls; let queued images run without waiting for fuller batches."""
        self._accepting = False
        for batcher in self.batchers.values():
            batcher.stop_waiting()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight; ``False`` if some still are after ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def close(self) -> None:
        """Stop the batcher threads (after running what they hold)."""
        for batcher in self.batchers.values():
            batcher.close(timeout=30)

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        with self._idle:
            if not self._accepting:
                raise WorkerUnavailableError("This worker is shutting down; please try again")
            self._in_flight += 1
            self._calls += 1
        try:
            yield
        except BatcherClosed:
            raise WorkerUnavailableError("This worker is shutting down; please try again") from None
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _predictor(self, model: Any) -> Predictor:
        if model is None or model == "":
            return self.predictors[self.default_model]
        if not isinstance(model, str):
            raise UnknownModelError(f"model must be a model name, got {type(model).__name__}")
        name, _, version = model.partition("@")
        p = self.predictors.get(name)
        if p is None or (version and version != p.version):
            served = ", ".join(f"{q.name}@{q.version}" for q in self.predictors.values())
            raise UnknownModelError(f"unknown model {model!r}; this worker serves: {served}")
        return p


def _media_content(image: Any, what: str) -> tuple[bytes, str | None]:
    """The bytes and file name of an uploaded Media object."""
    if not isinstance(image, anvil.Media):
        raise CellImageError(
            f"{what} must be an image file (Anvil Media: PNG, JPEG, BMP or TIFF), got {type(image).__name__}",
            code="not_an_image",
        )
    try:
        data = image.get_bytes()
    except Exception as exc:  # noqa: BLE001 - an upload that failed in transit is the caller's to resend
        raise CellImageError(f"{what} could not be received: {exc}", code="upload_failed") from None
    return (data.encode("utf-8") if isinstance(data, str) else bytes(data)), image.name


def _prepare(predictor: Predictor, data: bytes, filename: str | None):
    """``Predictor.prepare``, with its ImageError turned into the registered CellImageError."""
    try:
        return predictor.prepare(data, filename=filename)
    except ImageError as exc:
        raise CellImageError(str(exc), code=exc.code) from None


def _warm_up_png(height: int, width: int) -> bytes:
    """A grey ramp PNG of the model's input size."""
    import io

    import numpy as np
    from PIL import Image

    ramp = np.linspace(40, 200, height * width).reshape(height, width).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    return buffer.getvalue()
