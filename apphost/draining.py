"""A stop that lets the uploads in progress finish.

uvicorn's shutdown closes every connection at once, websockets included: the workers' uplinks went
with it, and every upload still being classified lost its worker (half of four 64-image uploads came
back "not classified" on a Ctrl-C). Here the stop goes in the order the app needs:

1. no new connections;
2. the HTTP requests in progress finish (at most ``grace`` seconds; a second Ctrl-C ends the wait),
   the workers still connected;
3. ``before_close`` (the host stops its workers, which finish their own calls);
4. uvicorn's own shutdown (websockets, lifespan).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

logger = logging.getLogger("apphost")


class InFlightRequests:
    """ASGI wrapper counting the HTTP requests being answered (websockets and lifespan pass through)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's Server with the stop described above. ``config.app`` must be an :class:`InFlightRequests`."""

    def __init__(self, config: uvicorn.Config, *, grace: float,
                 before_close: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self.grace = grace
        self.before_close = before_close

    async def shutdown(self, sockets: list | None = None) -> None:
        for server in self.servers:  # no new connections; those open keep being served meanwhile
            server.close()
        requests: InFlightRequests = self.config.app
        deadline = time.monotonic() + self.grace
        if requests.count:
            logger.info("stopping: %d request(s) in progress finish first (at most %.0f s; Ctrl-C again to stop "
                        "at once)", requests.count, self.grace)
        while requests.count and not self.force_exit and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if requests.count:
            logger.warning("stopping with %d request(s) still in progress", requests.count)
        if self.before_close is not None:
            await self.before_close()
        await super().shutdown(sockets)
