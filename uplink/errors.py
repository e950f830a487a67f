"""Errors the worker sends to its callers, registered with anvil-uplink so that a caller that registers
the same type names gets these classes back from ``anvil.server.call`` (anything else arrives as
``anvil.server.AnvilWrappedError`` with ``error_obj["type"]`` set to the name).

Each error object also carries ``code``: the stable ``nscfate.errors`` code (``not_an_image``,
``too_many_pixels``, ``unknown_model``, ...), read with ``exc.code`` or ``exc.error_obj["code"]``.
"""

from __future__ import annotations

from typing import Any

import anvil.server


class WorkerError(anvil.server.AnvilWrappedError):
    """Base class of the worker's typed errors."""

    default_code = "error"

    def __init__(self, message: str | dict[str, Any] = "", code: str | None = None) -> None:
        # anvil-uplink rebuilds a received error by passing its error object (a dict) to the class.
        super().__init__(message)
        if not isinstance(message, dict):
            self.error_obj["code"] = code or self.default_code

    @property
    def code(self) -> str:
        """The stable error code."""
        return self.error_obj.get("code") or self.default_code


class CellImageError(WorkerError):
    """The caller's image (or list of images) cannot be used: not an image, too large, corrupt, ...
    The message says what was wrong and what is accepted."""

    default_code = "bad_image"


class UnknownModelError(WorkerError):
    """The caller asked for a model this worker does not serve."""

    default_code = "unknown_model"


class WorkerUnavailableError(WorkerError):
    """The worker is shutting down and takes no new calls (not the caller's fault; retry)."""

    default_code = "worker_unavailable"


#: The type names callers register to get these classes back.
CELL_IMAGE_ERROR = "nscfate.CellImageError"
UNKNOWN_MODEL_ERROR = "nscfate.UnknownModelError"
WORKER_UNAVAILABLE_ERROR = "nscfate.WorkerUnavailableError"

anvil.server._register_exception_type(CELL_IMAGE_ERROR, CellImageError)
anvil.server._register_exception_type(UNKNOWN_MODEL_ERROR, UnknownModelError)
anvil.server._register_exception_type(WORKER_UNAVAILABLE_ERROR, WorkerUnavailableError)
