"""HTTP routes of the local host: the app's ``@anvil.server.http_endpoint`` functions under ``/_/api/``
and the platform's sign-in routes under ``/_/auth/``.

Requests reach an endpoint exactly as Anvil delivers them: anvil-uplink's registered wrapper is called
with ``(method, path, query_params, form_params, origin, headers, remote_address, body, username,
password)`` and returns ``{status, body, headers}``. Authentication: HTTP Basic (email + password) for
scripts, the session cookie for the browser. State-changing requests are refused when they come from
another origin, and cookie-authenticated ones must also carry the session's CSRF token in
``X-CSRF-Token`` (from ``GET /_/auth/me`` or the sign-in response).

``api_routes(runtime)`` returns the routes to add to the host's Starlette app.
"""

from __future__ import annotations

import base64
import binascii
import errno
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anvil
import anvil.tables
import anvil.users
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from apphost.runtime import AppRuntime
from apphost.users import Session

log = logging.getLogger(__name__)

COOKIE_NAME = "nscfate_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_MAX_BODY = 160 * 1024 * 1024
AUTH_MAX_BODY = 64 * 1024  # sign-in, sign-up, password change: an email and passwords
#: Bodies up to this size with HTTP Basic credentials are read before the credentials are checked (by the
#: endpoint, once); larger ones only once the credentials are right.
CHECK_CREDENTIALS_FIRST_ABOVE = 1024 * 1024
BASIC_CHALLENGE = 'Basic realm="NSC Fate API"'
_HIDDEN_HEADERS = frozenset({"cookie", "authorization"})  # the platform handles these; endpoints never see them


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def too_many_attempts(exc: Exception) -> JSONResponse:
    """The answer while sign-ins are blocked (``TooManyPasswordFailures``), with when to try again."""
    return error(429, "too_many_attempts", str(exc), {"Retry-After": str(getattr(exc, "retry_after_s", 60))})


class _BodyTooLarge(Exception):
    """A request body over the route's limit (the limit in bytes is its argument); _guarded answers 413."""


def _is_database_failure(exc: BaseException) -> bool:
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError,
                            anvil.tables.TransactionConflict))


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of the platform rather than the request (database down or locked,
    disk full). Nothing was changed when these are raised: every write is one transaction, and a media
    file without its row is removed (at once, or by the host's hourly sweep)."""
    return _is_database_failure(exc) or _is_disk_full(exc)


def infrastructure_error(exc: BaseException) -> JSONResponse:
    """The answer for a platform failure (:func:`is_infrastructure_error`)."""
    if _is_disk_full(exc):
        return error(507, "storage_full", "The server's disk is full; nothing was changed. Ask the lab admin "
                                          "to free space.")
    return error(503, "database_unavailable",
                 "The database is not available right now; nothing was changed. Try again in a moment.",
                 {"Retry-After": "10"})


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Answer platform failures of a route with a clear JSON error instead of a bare 500."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except _BodyTooLarge as e:
            limit = e.args[0] if e.args else 0
            size = f"{limit // 1048576} MB" if limit >= 1048576 else f"{limit // 1024} KB"
            return error(413, "request_too_large", f"The request body is larger than {size}")
        except Exception as e:
            if not is_infrastructure_error(e):
                raise
            response = infrastructure_error(e)
            log.warning("%s %s: %s (%s)", request.method, request.url.path, type(e).__name__,
                        str(e).splitlines()[0][:200] if str(e) else "")
            return response

    return wrapper


class HttpApi:
    """The request handling behind ``api_routes``."""

    def __init__(self, runtime: AppRuntime, *, secure_cookies: bool | None = None, max_body_bytes: int = DEFAULT_MAX_BODY):
        self.runtime = runtime
        self.accounts = runtime.accounts
        self.secure_cookies = secure_cookies
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[BaseRoute]:
        return [
            Route(API_ROUTE, _guarded(self.api),
                  methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            Route("/_/auth/login", _guarded(self.login), methods=["POST"]),
            Route("/_/auth/logout", _guarded(self.logout), methods=["POST"]),
            Route("/_/auth/me", _guarded(self.me), methods=["GET"]),
            Route("/_/auth/password", _guarded(self.change_password), methods=["POST"]),
            Route("/_/auth/signup", _guarded(self.signup), methods=["POST"]),
        ]

    # ---- shared checks

    async def _session(self, request: Request) -> Session | None:
        token = request.cookies.get(COOKIE_NAME)
        if not token:
            return None
        return await run_in_threadpool(self.accounts.session_from_token, token)

    @staticmethod
    def _origin(request: Request) -> str:
        return f"{request.url.scheme}://{request.url.netloc}"

    def _cross_site(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is not None and origin != self._origin(request):
            return True
        return request.headers.get("sec-fetch-site") == "cross-site"

    @staticmethod
    def _csrf_ok(request: Request, session: Session) -> bool:
        sent = request.headers.get(CSRF_HEADER, "")
        return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf_token.encode())

    def _set_cookie(self, request: Request, response: Response, session: Session) -> None:
        secure = self.secure_cookies if self.secure_cookies is not None else request.url.scheme == "https"
        response.set_cookie(COOKIE_NAME, session.token or "", max_age=int(self.accounts.session_lifetime.total_seconds()),
                            httponly=True, samesite="lax", secure=secure, path="/")

    @staticmethod
    def _clear_cookie(response: Response) -> None:
        response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")

    async def _read_body(self, request: Request, limit: int | None = None) -> bytes:
        limit = self.max_body_bytes if limit is None else limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _BodyTooLarge(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _BodyTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _json_or_form(self, request: Request) -> dict[str, Any]:
        """The fields of a small JSON or URL-encoded body (sign-in and the like; at most AUTH_MAX_BODY
        bytes, else _BodyTooLarge). Unreadable data gives {}: the route then says what it needs."""
        data = await self._read_body(request, AUTH_MAX_BODY)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                fields = json.loads(data or b"{}")
            except (ValueError, UnicodeDecodeError):
                return {}
            return fields if isinstance(fields, dict) else {}
        try:
            form = await Request(request.scope, receive=_replay(data)).form(max_files=0, max_fields=20)
        except (MultiPartException, HTTPException):
            return {}
        return {k: v for k, v in form.items() if isinstance(v, str)}

    # ---- /_/api/...

    async def api(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        endpoint = self.runtime.find_endpoint(path)
        if endpoint is None:
            return error(404, "not_found", f"No API endpoint {path}")
        session = await self._session(request)
        username, password = _basic_credentials(request)
        if username is not None:
            remote = _remote(request)
            try:  # a script locked out for a while should be told so, not "wrong password"
                self.accounts.check_rate_limit(username, remote)
            except anvil.users.TooManyPasswordFailures as e:
                return too_many_attempts(e)
        if request.method not in SAFE_METHODS:
            if self._cross_site(request):
                return error(403, "cross_site", "Requests from other sites are not accepted")
            if session is not None and not self._csrf_ok(request, session):
                return error(403, "csrf", f"Missing or wrong {CSRF_HEADER} header for a signed-in browser session")
            if endpoint.needs_credentials and not await self._may_send_a_body(request, session, username, password):
                # Answered before the body is read: an anonymous caller cannot make the host buffer
                # uploads (up to DEFAULT_MAX_BODY each) that the endpoint would refuse anyway.
                return self._finish(request, self._unauthorized(username))
        try:
            form_params, body = await self._request_data(request)
        except (MultiPartException, HTTPException) as e:
            # Starlette reports unreadable form data as HTTPException(400); the API answers in JSON.
            detail = e.message if isinstance(e, MultiPartException) else e.detail
            return error(400, "bad_form", f"The form data could not be read: {detail}")
        query: dict[str, Any] = {}
        for key, value in request.query_params.multi_items():
            query[key] = [*query[key], value] if isinstance(query.get(key), list) else (
                [query[key], value] if key in query else value)
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in _HIDDEN_HEADERS}
        try:
            result = await self.runtime.handle_http_async(
                endpoint, method=request.method, path=path, query_params=query, form_params=form_params,
                origin=self._origin(request), headers=headers,
                remote_address=_remote(request), body=body,
                username=username, password=password, session=session)
        except Exception as e:
            if is_infrastructure_error(e):
                raise  # answered by _guarded
            log.exception("HTTP endpoint %s %s failed", request.method, path)
            return error(500, "internal_error", "The server failed to handle this request")
        response = _to_response(result, request.method)
        if response.status_code == 401 and response.body == b"Unauthorized":
            response = self._unauthorized(username)  # the endpoint wrapper's plain text, in JSON like the rest
        return self._finish(request, response)

    @staticmethod
    def _unauthorized(username: str | None) -> JSONResponse:
        message = ("Incorrect email address or password, or the account is not enabled yet" if username
                   else "Sign in first, or send your email and password with HTTP Basic")
        return error(401, "not_signed_in", message, {"WWW-Authenticate": BASIC_CHALLENGE})

    @staticmethod
    def _finish(request: Request, response: Response) -> Response:
        if COOKIE_NAME in request.cookies or "x-requested-with" in request.headers:
            # A browser page: no Basic challenge, or the browser would pop up its own password dialog.
            if "www-authenticate" in response.headers:
                del response.headers["www-authenticate"]
        return response

    async def _may_send_a_body(self, request: Request, session: Session | None, username: str | None,
                               password: str | None) -> bool:
        """Whether the caller of an endpoint that needs credentials is signed in or sends credentials
        that are right (checked here, before the body; the endpoint's own check then finds them in
        the verified-credentials cache, so a wrong password still counts once)."""
        declared = request.headers.get("content-length")
        small = declared is not None and declared.isdigit() and int(declared) <= CHECK_CREDENTIALS_FIRST_ABOVE
        if session is not None and session.user_pk is not None:
            # a browser session: large bodies only for an account that is still there and enabled
            return small or await run_in_threadpool(self.accounts.session_user, session) is not None
        if username is None or password is None:
            return False
        if small:
            return True  # read it, and let the endpoint check the credentials once (no extra lookup)
        remote = _remote(request)
        try:
            await run_in_threadpool(self.accounts.authenticate, username, password, remote)
        except anvil.users.AuthenticationFailed:  # wrong, rate-limited or not enabled: the wrapper's 401
            return False
        return True

    async def _request_data(self, request: Request) -> tuple[dict[str, Any], anvil.Media | None]:
        if request.method in ("GET", "HEAD"):
            return {}, None
        data = await self._read_body(request)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            replay = _replay(data)
            form_request = Request(request.scope, receive=replay)
            form = await form_request.form(max_files=1000, max_fields=100)
            params: dict[str, Any] = {}
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    value = anvil.BlobMedia(value.content_type or "application/octet-stream", await value.read(),
                                            name=value.filename)
                params[key] = [*params[key], value] if isinstance(params.get(key), list) else (
                    [params[key], value] if key in params else value)
            return params, None
        if not data:
            return {}, None
        return {}, anvil.BlobMedia(content_type or "application/octet-stream", data)

    # ---- /_/auth/...

    def _user_json(self, user: Any) -> dict[str, Any] | None:
        """The signed-in account for the web UI (called in the threadpool: it reads the database)."""
        if user is None:
            return None
        return {"email": user["email"], "role": user["role"] or "researcher",
                "password_is_temporary": self.accounts.password_is_temporary(user)}

    async def login(self, request: Request) -> Response:
        if self._cross_site(request):
            return error(403, "cross_site", "Sign-in from other sites is not accepted")
        fields = await self._json_or_form(request)
        remote = _remote(request)
        try:
            user = await run_in_threadpool(self.accounts.authenticate, fields.get("email"), fields.get("password"), remote)
        except anvil.users.TooManyPasswordFailures as e:
            return too_many_attempts(e)
        except anvil.users.AccountIsNotEnabled as e:
            return error(403, "not_enabled", str(e))
        except anvil.users.AuthenticationFailed as e:
            return error(401, "bad_credentials", str(e))
        old = await self._session(request)
        if old is not None:
            await run_in_threadpool(self.accounts.end_session, old)  # a fresh session at each sign-in
        session = await run_in_threadpool(self.accounts.create_session, user)
        user_json = await run_in_threadpool(self._user_json, user)
        response = JSONResponse({"user": user_json, "csrf_token": session.csrf_token})
        self._set_cookie(request, response, session)
        return response

    async def logout(self, request: Request) -> Response:
        session = await self._session(request)
        if session is not None:
            if self._cross_site(request) or not self._csrf_ok(request, session):
                return error(403, "csrf", f"Missing or wrong {CSRF_HEADER} header")
            await run_in_threadpool(self.accounts.end_session, session)
        response = JSONResponse({"user": None})
        self._clear_cookie(response)
        return response

    async def me(self, request: Request) -> Response:
        session = await self._session(request)
        user_json = await run_in_threadpool(lambda: self._user_json(self.accounts.session_user(session)))
        return JSONResponse({"user": user_json, "csrf_token": session.csrf_token if session else None},
                            headers={"Cache-Control": "no-store"})

    async def change_password(self, request: Request) -> Response:
        session = await self._session(request)
        if session is None or self._cross_site(request) or not self._csrf_ok(request, session):
            return error(403, "csrf", f"Sign in first and send the {CSRF_HEADER} header")
        user = await run_in_threadpool(self.accounts.session_user, session)
        if user is None:
            return error(401, "not_signed_in", "Sign in first")
        fields = await self._json_or_form(request)
        try:
            await run_in_threadpool(self.accounts.change_password, user, fields.get("old_password"),
                                    fields.get("new_password"))
        except anvil.users.PasswordNotAcceptable as e:
            return error(400, "password_not_acceptable", str(e))
        except anvil.users.AuthenticationFailed as e:
            return error(401, "bad_credentials", str(e))
        fresh = await run_in_threadpool(self.accounts.create_session, user)  # all old sessions ended
        user_json = await run_in_threadpool(self._user_json, user)
        response = JSONResponse({"user": user_json, "csrf_token": fresh.csrf_token})
        self._set_cookie(request, response, fresh)
        return response

    async def signup(self, request: Request) -> Response:
        if self._cross_site(request):
            return error(403, "cross_site", "Sign-up from other sites is not accepted")
        if not self.accounts.allow_signup:
            return error(403, "signup_closed", "Sign-up is closed; ask a lab admin for an account")
        fields = await self._json_or_form(request)
        try:
            await run_in_threadpool(self.accounts.signup, fields.get("email"), fields.get("password"))
        except anvil.users.UserExists:
            pass  # same answer as for a new address: no account discovery through sign-up
        except anvil.users.PasswordNotAcceptable as e:
            return error(400, "password_not_acceptable", str(e))
        except anvil.users.AuthenticationFailed as e:
            return error(400, "bad_email", str(e))
        return JSONResponse({"message": "Account requested. A lab admin has to enable it before you can sign in."},
                            202)


class _AnyPath(Convertor):
    """Starlette's ``path`` convertor stops at a newline, so ``/_/api/x%0Ay`` matched no route and got
    Starlette's plain-text 404; every path under /_/api/ is the API's to answer (in JSON)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPath())
API_ROUTE = "/_/api/{path:anypath}"


def api_routes(runtime: AppRuntime, **options: Any) -> list[BaseRoute]:
    """The routes for ``create_app``: ``/_/api/...`` (the app's http_endpoints) and ``/_/auth/...``."""
    return HttpApi(runtime, **options).routes()


def _remote(request: Request) -> str | None:
    """The client's address (after --forwarded-allow-ips' proxy headers), if known."""
    return request.client.host if request.client else None


def _basic_credentials(request: Request) -> tuple[str | None, str | None]:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    username, sep, password = decoded.partition(":")
    return (username, password) if sep else (None, None)


def _replay(data: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": data, "more_body": False}

    return receive


def _to_response(result: dict[str, Any], method: str) -> Response:
    """Anvil's ``{status, body, headers}`` as a Starlette response."""
    status = int(result.get("status") or 200)
    raw_headers = result.get("headers") or {}
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = {str(k): str(v) for k, v in items}
    has_type = any(k.lower() == "content-type" for k in headers)
    body = result.get("body")
    if isinstance(body, anvil.Media):
        content, media_type = body.get_bytes(), body.content_type or "application/octet-stream"
    elif isinstance(body, bytes):
        content, media_type = body, "application/octet-stream"
    elif isinstance(body, str):
        content, media_type = body.encode("utf-8"), "text/plain; charset=utf-8"
    elif body is None:
        content, media_type = b"", None
    else:
        content, media_type = json.dumps(body).encode("utf-8"), "application/json"
    if has_type:
        media_type = None
    present = {k.lower() for k in headers}  # endpoints' header names may come in any case
    for name, value in (("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store")):
        if name.lower() not in present:
            headers[name] = value
    if method == "HEAD":
        content = b""
    return Response(content, status, headers=headers, media_type=media_type)
