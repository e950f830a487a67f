"""The server side of Anvil's uplink protocol (v8), as an asyncio websocket endpoint at ``/_/uplink``.

The real ``anvil-uplink`` client (the inference worker, or any uplink script) connects here exactly as it
connects to hosted Anvil or the Anvil App Server. The host's own Python code calls the functions those
uplinks register with ``await hub.call(name, *args, **kwargs)`` (or ``hub.call_sync`` from a worker
thread), and uplinks can call functions the host registers with ``hub.register_local``.

Behaviour follows the App Server (see /work/shared/ANVIL.md section 2):

- keys: the server key gives a SERVER uplink (may register functions), the client key a CLIENT uplink
  (may only call); keys are compared as SHA-256 digests in constant time and never logged;
- REGISTER frames that arrive before the key is checked are queued; names are regexes matched in full;
- a name registered by several uplinks is sent to the least busy one (ties broken at random; Anvil
  picks at random); an uplink function shadows a local one of the same name;
- calls in flight on an uplink that drops fail with ``anvil.server.UplinkDisconnectedError``, as do later
  calls to a name that only a dropped uplink had registered;
- Media travel as CHUNK_HEADER + binary frame pairs sent under a per-connection lock, 64,000-byte chunks;
- frames of 16 MiB or more close the connection (code 1009);
- the client's keep-alive ``anvil.private.echo`` is answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import inspect
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anvil.server
from starlette.websockets import WebSocket, WebSocketState

from apphost import protocol
from apphost.protocol import Message

logger = logging.getLogger(__name__)


class _NoFrameTraces(logging.Filter):
    """Drops the websockets library's frame-by-frame debug trace (``< %s`` / ``> %s``). An uplink's first
    frame carries its key, and later frames carry users' images and results: none of it may reach a
    log, even with ``--log-level debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg in ("< %s", "> %s") and isinstance(record.args, tuple) and record.args
                    and type(record.args[0]).__name__ == "Frame")


_FRAME_TRACE_FILTER = _NoFrameTraces()


def _hide_frame_traces() -> None:
    # uvicorn hands its "uvicorn.error" logger to the websockets protocol; the others are websockets' own.
    for name in ("uvicorn.error", "websockets.server", "websockets.client"):
        log = logging.getLogger(name)
        if _FRAME_TRACE_FILTER not in log.filters:
            log.addFilter(_FRAME_TRACE_FILTER)

#: Anvil's texts for the handshake errors (the client shows them to the user).
INCORRECT_KEY = "Incorrect uplink key"
#: What an unauthenticated connection may send before its key frame (held until the key is checked).
MAX_QUEUED_FRAMES = 100
MAX_QUEUED_CHARS = 256 * 1024
OUTDATED_CLIENT = "You are using an outdated version of the Anvil Uplink. Please upgrade to a newer version."
DEPRECATED_CLIENT = "You are using a deprecated version of the Anvil Uplink. Please upgrade to a newer version."
CLIENT_CANNOT_REGISTER = (
    "Cannot register @anvil.server.callable functions from an unprivileged (client) uplink."
)
NO_LIVE_OBJECT_BACKENDS = "Cannot register live-object backends the uplink."
INVALID_NAME = "Invalid function name specification"

#: Websocket close codes.
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_GOING_AWAY = 1001


class ConnectionClosed(Exception):
    """The uplink's websocket is closed; nothing more can be sent on it."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass
class _PendingCall:
    name: str
    future: asyncio.Future


@dataclass(eq=False)
class UplinkConnection:
    """One connected uplink (a SERVER or CLIENT uplink)."""

    websocket: WebSocket
    remote: str
    max_media_bytes: int
    id: str = field(default_factory=protocol.gen_id)
    priv: str | None = None  # "uplink" (server) or "client" once authenticated
    connected_at: float = field(default_factory=time.time)
    patterns: dict[str, re.Pattern] = field(default_factory=dict)
    pending: dict[str, _PendingCall] = field(default_factory=dict)
    tasks: set[asyncio.Task] = field(default_factory=set)
    in_flight: int = 0
    calls_completed: int = 0
    closed: bool = False

    def __post_init__(self) -> None:
        self.assembler = protocol.MediaAssembler(self.max_media_bytes)
        self.send_lock = asyncio.Lock()

    def serves(self, name: str) -> bool:
        return self.priv == "uplink" and any(p.fullmatch(name) for p in self.patterns.values())

    async def send_json(self, obj: dict[str, Any]) -> None:
        text = json.dumps(obj)
        if len(text) * 4 >= protocol.MAX_FRAME_BYTES and len(text.encode("utf-8")) >= protocol.MAX_FRAME_BYTES:
            raise anvil.server.SerializationError(
                "Message too large: websocket frames are limited to 16 MiB; send large data as Media"
            )
        async with self.send_lock:
            await self._send(text=text)

    async def send_message(self, message: Message) -> None:
        """Send a message frame and then the chunks of its Media. A Media object whose content cannot
        be read is reported to the peer with MEDIA_ERROR."""
        await self.send_json(message.json)
        request_id = message.json.get("id")
        for media_id, content in message.media.items():
            try:
                data = protocol.media_bytes(content)
            except Exception as exc:  # noqa: BLE001 - any failure to read Media is reported to the peer
                logger.info("Media %s of message %s failed: %s", media_id, request_id, exc)
                await self.send_json(
                    {
                        "type": "MEDIA_ERROR",
                        "requestId": request_id,
                        "mediaIds": [media_id],
                        "cause": protocol.exception_to_error(exc),
                    }
                )
                continue
            for header, piece in protocol.chunk_headers(request_id, media_id, data):
                # The client assigns a binary frame to the last header it saw: send the pair atomically.
                async with self.send_lock:
                    await self._send(text=json.dumps(header))
                    await self._send(data=piece)

    async def _send(self, *, text: str | None = None, data: bytes | None = None) -> None:
        if self.closed or self.websocket.application_state != WebSocketState.CONNECTED:
            raise ConnectionClosed()
        try:
            if text is not None:
                await self.websocket.send_text(text)
            else:
                await self.websocket.send_bytes(data or b"")
        except Exception as exc:  # the ASGI server raises various errors for a closed socket
            self.closed = True
            raise ConnectionClosed() from exc


@dataclass(frozen=True)
class _LocalFunction:
    fn: Callable[..., Any]
    is_async: bool


class UplinkHub:
    """The uplink endpoint and the Python API to call the functions registered through it.

    Args:
        server_key: the server uplink key (``ANVIL_UPLINK_KEY``); ``None`` refuses server uplinks.
        client_key: the client uplink key, or ``None`` to refuse client uplinks.
        call_timeout: default seconds ``call``/``call_sync`` wait for an answer (``None``: no limit).
        max_media_bytes: most bytes of Media one incoming message may carry.
        media_timeout: seconds without a chunk after which a Media transfer fails (Anvil: 60).
        auth_timeout: seconds a new connection has to send its key.
        app_id: the app id reported to uplinks.
        environment: the environment name reported to uplinks (``anvil.app.environment.name``).
        local_workers: threads that run synchronous local functions.
    """

    def __init__(
        self,
        server_key: str | None,
        client_key: str | None = None,
        *,
        call_timeout: float | None = 30.0,
        max_media_bytes: int = 64 * 1024 * 1024,
        media_timeout: float = 60.0,
        auth_timeout: float = 10.0,
        app_id: str = "nscfate-local",
        environment: str = "Local host",
        local_workers: int = 32,
    ) -> None:
        self._server_digest = _digest(server_key) if server_key else None
        self._client_digest = _digest(client_key) if client_key else None
        self.call_timeout = call_timeout
        self.max_media_bytes = max_media_bytes
        self.media_timeout = media_timeout
        self.auth_timeout = auth_timeout
        self.app_info = {
            "id": app_id,
            "branch": "master",
            "environment": {"description": environment, "tags": []},
        }
        self._connections: dict[str, UplinkConnection] = {}
        self._stale: set[str] = set()
        self._local: dict[str, _LocalFunction] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(local_workers, thread_name_prefix="hub-local")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task | None = None
        self._changed: asyncio.Condition | None = None
        self.stats = {"connections": 0, "refused": 0, "keep_alives": 0, "frames_too_big": 0}
        self.register_local("anvil.private.echo", _echo)
        _hide_frame_traces()

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the hub to the running event loop (call from the ASGI lifespan)."""
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_media(), name="uplink-media-sweeper")

    async def close(self) -> None:
        """Close every uplink connection and stop background work."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._connections.values()):
            await self._close(conn, CLOSE_GOING_AWAY, "server shutting down")
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------- the Python API

    def register_local(self, name: str, fn: Callable[..., Any]) -> None:
        """Make ``fn`` callable by uplinks (and by ``call``) under the exact name ``name``.

        Synchronous functions run in a worker thread (they may use ``call_sync``); coroutine functions
        run on the hub's loop. An uplink registering the same name takes precedence, as on Anvil.
        """
        self._local[name] = _LocalFunction(fn, inspect.iscoroutinefunction(fn))

    async def call(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the function registered as ``name`` and return its result, waiting at most
        ``call_timeout`` seconds.

        Arguments and results are plain values and ``anvil.Media`` (results come back as
        ``anvil.BlobMedia``).

        Raises:
            anvil.server.NoServerFunctionError: nothing is registered under ``name``.
            anvil.server.UplinkDisconnectedError: the uplink serving ``name`` went away.
            anvil.server.TimeoutError: no answer within ``call_timeout``.
            Exception: the error the function raised, as ``anvil.server.call`` would raise it.
        """
        return await self.call_with_timeout(self.call_timeout, name, *args, **kwargs)

    async def call_with_timeout(self, timeout: float | None, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``call`` with an explicit timeout in seconds (``None``: wait as long as it takes)."""
        # Not asyncio.wait_for: a TimeoutError raised by the function itself must not read as ours.
        task = asyncio.ensure_future(self._call(name, list(args), kwargs))
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            raise anvil.server.TimeoutError(f'Server function "{name}" did not answer within {timeout:g} seconds')
        return task.result()

    def call_sync(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """``call`` for code running in another thread than the hub's loop (e.g. a server module run
        by the host in a worker thread). Blocks until the answer arrives."""
        if self._loop is None:
            raise RuntimeError("The uplink hub is not running (UplinkHub.start was not called)")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("call_sync would block the hub's own event loop; use 'await hub.call(...)'")
        future = asyncio.run_coroutine_threadsafe(self.call(name, *args, **kwargs), self._loop)
        return future.result()

    def workers(self) -> list[dict[str, Any]]:
        """The connected uplinks, for health pages."""
        return [
            {
                "id": c.id,
                "priv": "server" if c.priv == "uplink" else "client",
                "remote": c.remote,
                "connected_at": c.connected_at,
                "registrations": sorted(c.patterns),
                "in_flight": c.in_flight,
                "calls_completed": c.calls_completed,
            }
            for c in list(self._connections.values())
            if c.priv is not None
        ]

    def registrations(self) -> dict[str, int]:
        """Each registered name (pattern) and how many connected uplinks serve it."""
        counts: dict[str, int] = {}
        for conn in list(self._connections.values()):
            if conn.priv == "uplink":
                for pattern in conn.patterns:
                    counts[pattern] = counts.get(pattern, 0) + 1
        return counts

    async def wait_for_registration(self, name: str, count: int = 1, timeout: float | None = None) -> None:
        """Wait until at least ``count`` connected uplinks serve ``name``.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        if self._changed is None:
            raise RuntimeError("The uplink hub is not running (UplinkHub.start was not called)")

        def enough() -> bool:
            return sum(1 for c in self._connections.values() if c.serves(name)) >= count

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(enough), timeout)

    # ----------------------------------------------------------------- routing

    def _pick_uplink(self, name: str) -> UplinkConnection | None:
        candidates = [c for c in self._connections.values() if not c.closed and c.serves(name)]
        if not candidates:
            return None
        least = min(c.in_flight for c in candidates)
        return random.choice([c for c in candidates if c.in_flight == least])

    def _no_target_error(self, name: str) -> Exception:
        if any(re.fullmatch(pattern, name) for pattern in self._stale):
            return anvil.server.UplinkDisconnectedError(f'The uplink server for "{name}" has been disconnected')
        return anvil.server.NoServerFunctionError(f'No server function matching "{name}" has been registered')

    def _resolve(self, name: str) -> UplinkConnection | _LocalFunction:
        if not name.startswith("anvil.private."):
            target = self._pick_uplink(name)
            if target is not None:
                return target
        local = self._local.get(name)
        if local is not None:
            return local
        raise self._no_target_error(name)

    async def _call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        target = self._resolve(name)
        if isinstance(target, _LocalFunction):
            return await self._run_local(target, args, kwargs)
        request = protocol.encode({"args": args, "kwargs": kwargs})
        reply = await self._call_uplink(target, name, request, caller_type="server_module")
        if "error" in reply.json:
            raise anvil._server._deserialise_exception(reply.json["error"])
        return protocol.decode(reply, ("response",))["response"]

    async def _run_local(self, local: _LocalFunction, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if local.is_async:
            return await local.fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: local.fn(*args, **kwargs))

    async def _call_uplink(
        self, target: UplinkConnection, name: str, request: Message, *, caller_type: str
    ) -> Message:
        """Send a CALL to ``target`` and wait for its response message (which may hold an error)."""
        call_id = "server-" + protocol.gen_id()
        future = asyncio.get_running_loop().create_future()
        target.pending[call_id] = _PendingCall(name, future)
        target.in_flight += 1
        body = request.json
        frame = {
            "type": "CALL",
            "id": call_id,
            "call-stack-id": call_id,
            "command": name,
            "args": body.get("args", []),
            "kwargs": body.get("kwargs", {}),
            "objects": body.get("objects", []),
            "call-stack": [{"type": caller_type, "protocol-version": protocol.PROTOCOL_VERSION}],
            "client": {"type": caller_type},
            "sessionData": {"session": {}, "objects": []},
            "session-id": None,
            "app-id": self.app_info["id"],
            "app-info": self.app_info,
            "stale-uplink?": False,
            "enable-profiling": False,
        }
        try:
            await target.send_message(Message(frame, request.media))
            return await future
        except ConnectionClosed:
            raise anvil.server.UplinkDisconnectedError(
                f'The uplink server for "{name}" has been disconnected'
            ) from None
        finally:
            target.pending.pop(call_id, None)
            target.in_flight -= 1
            target.calls_completed += 1

    # ----------------------------------------------------------------- the websocket endpoint

    async def endpoint(self, websocket: WebSocket) -> None:
        """The ASGI websocket handler for ``/_/uplink``."""
        if self._loop is None:
            await self.start()
        await websocket.accept()
        client = websocket.client
        remote = f"{client.host}:{client.port}" if client else "unknown"
        conn = UplinkConnection(websocket, remote, self.max_media_bytes)
        try:
            queued = await self._authenticate(conn)
            if queued is None:
                return
            self._connections[conn.id] = conn
            self.stats["connections"] += 1
            logger.info(
                "Uplink %s connected from %s as %s",
                conn.id,
                remote,
                "SERVER" if conn.priv == "uplink" else "CLIENT",
            )
            for text in queued:
                if not await self._handle_text(conn, text):
                    return
            while True:
                frame = await self._receive(conn)
                if frame is None:
                    return
                if isinstance(frame, str):
                    if not await self._handle_text(conn, frame):
                        return
                else:
                    self._handle_binary(conn, frame)
        finally:
            await self._drop(conn)

    async def _receive(self, conn: UplinkConnection) -> str | bytes | None:
        """The next frame, or ``None`` when the connection is gone or was closed for a too-big frame."""
        try:
            event = await conn.websocket.receive()
        except Exception:  # noqa: BLE001 - a broken socket ends the connection
            return None
        if event["type"] == "websocket.disconnect":
            return None
        text, data = event.get("text"), event.get("bytes")
        size = len(data) if data is not None else (len(text) if text is not None else 0)
        if text is not None and size * 4 >= protocol.MAX_FRAME_BYTES:
            size = len(text.encode("utf-8"))
        if size >= protocol.MAX_FRAME_BYTES:
            self.stats["frames_too_big"] += 1
            logger.warning("Uplink %s sent a frame of %d bytes (limit 16 MiB); closing", conn.id, size)
            await self._close(conn, CLOSE_TOO_BIG, "Frame too large")
            return None
        return text if text is not None else data

    async def _authenticate(self, conn: UplinkConnection) -> list[str] | None:
        """Read frames until the key frame; queue those before it. Returns the queued frames, or
        ``None`` after refusing the connection."""
        queued: list[str] = []
        queued_bytes = 0
        deadline = time.monotonic() + self.auth_timeout
        while True:
            try:
                frame = await asyncio.wait_for(self._receive(conn), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                logger.warning("Connection from %s sent no key within %g s; closing", conn.remote, self.auth_timeout)
                await self._close(conn, CLOSE_POLICY, "No key")
                return None
            if frame is None:
                return None
            hello = _parse_json(frame) if isinstance(frame, str) else None
            if hello is None or "key" not in hello:
                # A client may send a few small frames (registrations) before its key; anyone can
                # connect, so what is held for an unauthenticated connection stays small.
                queued_bytes += len(frame)
                if isinstance(frame, str) and len(queued) < MAX_QUEUED_FRAMES and queued_bytes <= MAX_QUEUED_CHARS:
                    queued.append(frame)
                    continue
                await self._refuse(conn, "Expected the uplink key first")
                return None
            version = hello.get("v")
            if not isinstance(version, int) or version < protocol.MIN_PROTOCOL_VERSION:
                await self._refuse(conn, OUTDATED_CLIENT)
                return None
            priv = self._check_key(hello.get("key"))
            if priv is None:
                await self._refuse(conn, INCORRECT_KEY)
                return None
            conn.priv = priv
            await conn.send_json({"auth": "OK", "priv": priv, "app-info": self.app_info})
            if version < protocol.DEPRECATED_BELOW_VERSION:
                await conn.send_json({"output": DEPRECATED_CLIENT})
            return queued

    def _check_key(self, key: Any) -> str | None:
        if not isinstance(key, str):
            return None
        given = _digest(key)
        # Compare with both digests every time, so timing says nothing about which key matched.
        is_server = self._server_digest is not None and hmac.compare_digest(given, self._server_digest)
        is_client = self._client_digest is not None and hmac.compare_digest(given, self._client_digest)
        if is_server:
            return "uplink"
        if is_client:
            return "client"
        return None

    async def _refuse(self, conn: UplinkConnection, error: str) -> None:
        self.stats["refused"] += 1
        logger.warning("Refused uplink connection from %s: %s", conn.remote, error)
        await self._fatal(conn, error)

    async def _fatal(self, conn: UplinkConnection, error: str) -> None:
        try:
            await conn.send_json({"error": error})
        except ConnectionClosed:
            pass
        await self._close(conn, CLOSE_POLICY, error[:120])

    async def _close(self, conn: UplinkConnection, code: int, reason: str) -> None:
        conn.closed = True
        if conn.websocket.application_state == WebSocketState.CONNECTED:
            try:
                await conn.websocket.close(code, reason)
            except Exception:  # noqa: BLE001 - already closing
                pass

    async def _handle_text(self, conn: UplinkConnection, text: str) -> bool:
        """Handle one text frame; ``False`` when the connection was closed."""
        msg = _parse_json(text)
        if msg is None:
            await self._fatal(conn, "Invalid message: expected a JSON object")
            return False
        kind = msg.get("type")
        if kind == "REGISTER":
            return await self._register(conn, msg.get("name"))
        if kind == "REGISTER_LIVE_OBJECT_BACKEND":
            await self._fatal(conn, NO_LIVE_OBJECT_BACKENDS)
            return False
        if kind == "CHUNK_HEADER":
            conn.assembler.header(msg)
        elif kind == "MEDIA_ERROR":
            self._dispatch(conn, conn.assembler.media_error(msg))
        elif kind == "CALL" or (kind is None and "id" in msg and ("response" in msg or "error" in msg)):
            self._dispatch(conn, conn.assembler.start(msg))
        elif kind is None and "output" in msg:
            logger.info("Uplink %s output: %s", conn.id, str(msg["output"]).rstrip("\n"))
        else:
            logger.warning("Uplink %s sent an unrecognised message of type %r", conn.id, kind)
        return True

    def _handle_binary(self, conn: UplinkConnection, data: bytes) -> None:
        try:
            self._dispatch(conn, conn.assembler.binary(data))
        except ValueError as exc:
            logger.warning("Uplink %s: %s; ignored", conn.id, exc)

    async def _register(self, conn: UplinkConnection, name: Any) -> bool:
        if conn.priv != "uplink":
            await self._fatal(conn, CLIENT_CANNOT_REGISTER)
            return False
        try:
            pattern = re.compile(name)
        except (re.error, TypeError):
            await self._fatal(conn, INVALID_NAME)
            return False
        conn.patterns[name] = pattern
        self._stale.discard(name)
        logger.info("Uplink %s registered %r", conn.id, name)
        await self._notify()
        return True

    def _dispatch(self, conn: UplinkConnection, message: Message | None) -> None:
        """Act on a complete message: a CALL from the uplink, or the answer to one of ours."""
        if message is None:
            return
        if message.json.get("type") == "CALL":
            task = asyncio.create_task(self._serve(conn, message))
            conn.tasks.add(task)
            task.add_done_callback(conn.tasks.discard)
            return
        pending = conn.pending.get(message.json.get("id"))
        if pending is None:
            logger.debug("Uplink %s answered unknown or abandoned call %r", conn.id, message.json.get("id"))
        elif not pending.future.done():
            pending.future.set_result(message)

    async def _serve(self, conn: UplinkConnection, message: Message) -> None:
        """Answer a CALL made by an uplink."""
        call_id = message.json.get("id")
        name = message.json.get("command")
        try:
            reply = await self._answer(conn, name, message)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as an error object
            if not isinstance(exc, (anvil.server.AnvilWrappedError, anvil._server.MaybeWrappedError)):
                logger.exception("Local function %r failed", name)
            reply = Message({"error": protocol.exception_to_error(exc)})
        if "error" not in reply.json:
            reply.json.setdefault("sessionData", {"session": {}, "objects": []})
        reply.json["id"] = call_id
        try:
            await conn.send_message(reply)
        except ConnectionClosed:
            logger.debug("Uplink %s left before the answer to %r", conn.id, name)
        except anvil.server.SerializationError as exc:
            await conn.send_json({"id": call_id, "error": protocol.exception_to_error(exc)})

    async def _answer(self, conn: UplinkConnection, name: Any, message: Message) -> Message:
        if "liveObjectCall" in message.json:
            raise anvil.server.InternalError("Live objects are not supported by the local host")
        if not isinstance(name, str):
            raise anvil.server.InternalError("CALL without a function name")
        if name == "anvil.private.echo":
            self.stats["keep_alives"] += 1
        if conn.priv == "client" and ":" in name:
            raise anvil.server.PermissionDenied(f'Cannot call "{name}" from a client uplink')
        target = self._resolve(name)
        if isinstance(target, UplinkConnection):
            caller_type = "uplink" if conn.priv == "uplink" else "client"
            return await self._call_uplink(target, name, message, caller_type=caller_type)
        values = protocol.decode(message, ("args", "kwargs"))
        result = await self._run_local(target, values["args"] or [], values["kwargs"] or {})
        return protocol.encode({"response": result})

    async def _drop(self, conn: UplinkConnection) -> None:
        """Forget a connection: its calls in flight fail, its names become stale."""
        conn.closed = True
        if self._connections.pop(conn.id, None) is None:
            return
        for call_id, pending in list(conn.pending.items()):
            if not pending.future.done():
                pending.future.set_exception(
                    anvil.server.UplinkDisconnectedError(
                        f'The uplink server for "{pending.name}" has been disconnected'
                    )
                )
        for task in list(conn.tasks):
            task.cancel()  # nobody is left to receive their answers
        live = {p for c in self._connections.values() for p in c.patterns}
        self._stale.update(p for p in conn.patterns if p not in live)
        logger.info("Uplink %s disconnected (%d calls failed)", conn.id, len(conn.pending))
        await self._notify()

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    async def _sweep_media(self) -> None:
        """Fail Media transfers that stalled for ``media_timeout`` seconds."""
        while True:
            await asyncio.sleep(max(0.5, self.media_timeout / 4))
            older_than = time.monotonic() - self.media_timeout
            for conn in list(self._connections.values()):
                for message in conn.assembler.expire(older_than):
                    logger.warning("Uplink %s: Media of message %r timed out", conn.id, message.json.get("id"))
                    self._dispatch(conn, message)


async def _echo(*args: Any) -> Any:
    """The keep-alive the client sends every 10 s: answer with the argument."""
    return args[0] if args else None


def _parse_json(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
