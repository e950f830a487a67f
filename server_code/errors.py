"""Typed errors the server functions raise for the caller's mistakes.

They are registered with Anvil so client code (and the REST layer) can tell them apart from failures;
each has a stable ``code`` and the HTTP status the REST API answers with.
"""

import anvil.server


class AppError(anvil.server.AnvilWrappedError):
    """Base of the app's user-facing errors."""

    code = "bad_request"
    status = 400

    def __init__(self, message="", code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidRequest(AppError):
    """The request is not acceptable; the message says what was wrong and what is accepted."""

    code = "bad_request"
    status = 400


class NotSignedIn(AppError):
    code = "not_signed_in"
    status = 401


class Forbidden(AppError):
    code = "forbidden"
    status = 403


class NotFound(AppError):
    code = "not_found"
    status = 404


class WorkerUnavailable(AppError):
    """No prediction worker answered (none connected, it failed, or it timed out)."""

    code = "worker_unavailable"
    status = 503


for _cls in (AppError, InvalidRequest, NotSignedIn, Forbidden, NotFound, WorkerUnavailable):
    anvil.server._register_exception_type("nscfate_app." + _cls.__name__, _cls)
