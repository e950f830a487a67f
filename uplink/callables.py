"""The functions the worker registers with Anvil Uplink (the interface in docs/DEVELOPING.md)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import anvil.server

from uplink.errors import WorkerError
from uplink.service import InferenceService

logger = logging.getLogger(__name__)

#: Registered names, for logs and docs.
CALLABLES = ("predict_cell_fate", "predict_cell_fate_batch", "list_models", "worker_stats")


def _trusted_callers_only(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Refuse calls from browser code and client uplinks. On Anvil, client code may call any function
    an uplink registers; called directly, these would skip sign-in, account approval, the history and
    the upload limits that the server modules apply. Server modules, background tasks and server
    uplinks are trusted (``anvil.server.context.remote_caller.is_trusted``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        caller = anvil.server.context.remote_caller
        if caller is None or not caller.is_trusted:
            kind = getattr(caller, "type", None) or "unknown"
            logger.warning("refused a call of %s from untrusted code (%s)", fn.__name__, kind)
            raise anvil.server.PermissionDenied(
                f"{fn.__name__} is for the app's server code; call the app's server functions or REST API instead")
        return fn(*args, **kwargs)

    return wrapper


def _logged(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Log unexpected failures here with their traceback; the caller gets the error as usual."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except WorkerError:
            raise
        except Exception:
            logger.exception("%s failed", fn.__name__)
            raise

    return wrapper


def register_callables(service: InferenceService) -> None:
    """Register the worker's callables with anvil-uplink (before connecting)."""

    @anvil.server.callable("predict_cell_fate")
    @_trusted_callers_only
    @_logged
    def predict_cell_fate(image, model=None, explain=False):
        """One cell image (Media) -> prediction dict; ``explain`` adds a Grad-CAM overlay PNG."""
        return service.predict(image, model=model, explain=bool(explain))

    @anvil.server.callable("predict_cell_fate_batch")
    @_trusted_callers_only
    @_logged
    def predict_cell_fate_batch(images, model=None):
        """A list of cell images -> prediction dicts in order (error entries for bad images)."""
        return service.predict_batch(images, model=model)

    @anvil.server.callable("list_models")
    @_trusted_callers_only
    @_logged
    def list_models(plots=False):
        """Short model cards of the models this worker serves, default first (``plots``: with the PNGs)."""
        return service.list_models(plots=bool(plots))

    @anvil.server.callable("worker_stats")
    @_trusted_callers_only
    @_logged
    def worker_stats():
        """Calls served and in flight, and each model's micro-batch sizes."""
        return service.stats()
