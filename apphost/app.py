"""The local host as one Starlette ASGI app: the uplink endpoint, a health route, the Anvil app's HTTP
routes and the web UI, all on one port."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from apphost.hub import UplinkHub

UPLINK_PATH = "/_/uplink"
WEB_DIR = Path(__file__).resolve().parent / "web"

#: Headers of the web UI's pages: no inline script or style, no framing, nothing from other origins.
WEB_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate (ETag), so an updated UI is picked up at once
}


@dataclass(frozen=True)
class HostSettings:
    """Settings of the local host.

    Attributes:
        uplink_key: the server uplink key (never logged); ``None`` refuses server uplinks.
        client_uplink_key: the client uplink key, or ``None`` to refuse client uplinks.
        call_timeout: seconds a server-side call to an uplink function may take.
        max_media_bytes: most bytes of Media one uplink message may carry.
    """

    uplink_key: str | None
    client_uplink_key: str | None = None
    call_timeout: float = 30.0
    max_media_bytes: int = 64 * 1024 * 1024

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return (
            f"HostSettings(uplink_key={'set' if self.uplink_key else None}, "
            f"client_uplink_key={'set' if self.client_uplink_key else None}, "
            f"call_timeout={self.call_timeout}, max_media_bytes={self.max_media_bytes})"
        )


def create_app(
    settings: HostSettings, *, app_routes: Callable[[UplinkHub], Sequence[BaseRoute]] | None = None
) -> Starlette:
    """Build the host app. The hub is ``app.state.hub``.

    Args:
        settings: the host settings.
        app_routes: ``app_routes(hub)`` returns the Anvil app's routes (``/_/api/...``, web UI), mounted
            after the uplink endpoint and the health route; they reach the worker's callables through
            ``hub.call_sync`` (e.g. ``api_routes(AppRuntime(..., call=hub.call_sync))``).
    """
    hub = UplinkHub(
        settings.uplink_key,
        settings.client_uplink_key,
        call_timeout=settings.call_timeout,
        max_media_bytes=settings.max_media_bytes,
    )

    async def health(request: Request) -> JSONResponse:
        # Public: counts only. Addresses and ids of the connected uplinks are not for anonymous callers.
        workers = hub.workers()
        return JSONResponse({
            "status": "ok",
            "uplinks": {
                "server": sum(w["priv"] == "server" for w in workers),
                "client": sum(w["priv"] == "client" for w in workers),
            },
            "registrations": hub.registrations(),
        })

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.close()

    routes: list[BaseRoute] = [
        WebSocketRoute(UPLINK_PATH, hub.endpoint),
        Route("/_/health", health),
        *(app_routes(hub) if app_routes is not None else ()),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    app.state.settings = settings
    return app


class _WithHeaders:
    """An ASGI app that adds fixed headers to every HTTP response of ``app``."""

    def __init__(self, app: Any, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in self.headers}
                message = {**message, "headers": [*(h for h in message.get("headers", []) if h[0] not in names),
                                                  *self.headers]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def web_ui_routes(directory: Path = WEB_DIR) -> list[BaseRoute]:
    """The web UI (static HTML/CSS/JS built on ``/_/api/`` and ``/_/auth/``), mounted at ``/``; add it
    after the other routes."""
    return [Mount("/", app=_WithHeaders(StaticFiles(directory=directory, html=True), WEB_HEADERS), name="web")]
