"""The wire format of Anvil's uplink protocol (v8), server side.

A protocol message is one JSON text frame. Values that JSON cannot carry (Media, dates, big ints, NaN)
are replaced by ``null`` and described in the frame's ``objects`` list by their path from the message
root. The content of each Media object follows the JSON frame as pairs of frames: a ``CHUNK_HEADER``
text frame immediately followed by one binary frame. See /work/shared/ANVIL.md section 2 and the
client in ``anvil/_serialise.py``.

Values are converted with anvil-uplink's own serialiser (``anvil._server.fill_out_media`` and
``_reconstruct_objects``), so the hub and the real client agree on the format by construction. Those
are private helpers of the pinned anvil-uplink 0.7.0; this module is the only place that uses them.
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Union

import anvil
import anvil._serialise
import anvil._server
import anvil.server

PROTOCOL_VERSION = 8
#: Clients older than this are refused, as Anvil does.
MIN_PROTOCOL_VERSION = 5
#: Clients older than this are accepted with a deprecation notice.
DEPRECATED_BELOW_VERSION = 7
#: Any single websocket frame of this size or more is refused (Anvil's ``max-websocket-payload``).
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: Media chunk size sent by the server (the clients send 65,536-byte chunks).
SERVER_CHUNK_BYTES = 64_000

#: ``objects`` entry types the host decodes into Python values. Live objects, capabilities and
#: portable classes are relayed untouched between uplinks but never decoded here: decoding a portable
#: class makes anvil-uplink import a module named by the remote side.
DECODABLE_OBJECT_TYPES = frozenset({"DataMedia", "Date", "DateTime", "Long", "Float", "Primitive"})


@dataclass(frozen=True)
class MediaFailure:
    """A Media object whose content could not be delivered; ``cause`` is an Anvil error object."""

    cause: dict[str, Any]


#: What the hub holds for one Media object of a message.
MediaContent = Union[bytes, anvil.Media, MediaFailure]


@dataclass
class Message:
    """One protocol message: its JSON frame (with ``objects``) and the content of its Media objects,
    keyed by media id."""

    json: dict[str, Any]
    media: dict[str, MediaContent] = field(default_factory=dict)


def gen_id() -> str:
    """A random id like the ones the client generates."""
    return secrets.token_hex(8)


def error_object(type_name: str, message: str) -> dict[str, Any]:
    """An Anvil error object as carried in ``{"id", "error": ...}`` responses."""
    return {"type": type_name, "message": message, "trace": []}


def exception_to_error(exc: BaseException) -> dict[str, Any]:
    """The Anvil error object for an exception, typed the way anvil-uplink reports it
    (``_server._report_exception``), without a trace of the host's files."""
    if isinstance(exc, anvil.server.AnvilWrappedError):
        error = dict(exc.error_obj)
        error.setdefault("type", type(exc).registered_type_name or "anvil.server.InternalError")
        error["trace"] = []
        return error
    registered = getattr(type(exc), "registered_type_name", None)
    if registered:
        return error_object(registered, str(exc))
    return error_object(type(exc).__name__, str(exc))


def encode(values: dict[str, Any]) -> Message:
    """Serialise top-level ``values`` (e.g. ``{"args": [...], "kwargs": {...}}`` or
    ``{"response": v}``) into a message body with ``objects``.

    Raises:
        anvil.server.SerializationError: a value cannot be sent (the message says which and where).
    """
    media: dict[str, MediaContent] = {}

    def collect_media(m: anvil.Media) -> dict[str, str]:
        media_id = gen_id()
        media[media_id] = m
        return {"id": media_id}

    try:
        body = anvil._server.fill_out_media(values, collect_media, remote_is_trusted=True)
    except TypeError as exc:  # e.g. a set or an arbitrary object
        raise anvil.server.SerializationError(f"Cannot serialise value: {exc}") from None
    return Message(body, media)


def decode(message: Message, keys: tuple[str, ...]) -> dict[str, Any]:
    """Rebuild the Python values at ``keys`` of a message: Media become ``anvil.BlobMedia`` (or a Media
    whose ``get_bytes`` raises the transfer's error), dates and big numbers their Python types.

    Raises:
        anvil.server.SerializationError: the message holds values the host does not accept, or is
            malformed.
    """
    objects = message.json.get("objects") or []
    if not isinstance(objects, list):
        raise anvil.server.SerializationError("Malformed message: 'objects' must be a list")
    for obj in objects:
        kind = obj.get("type") if isinstance(obj, dict) else None
        if not isinstance(kind, list) or not kind or kind[0] not in DECODABLE_OBJECT_TYPES:
            raise anvil.server.SerializationError(
                f"The local host cannot accept a value of type {kind!r}; it accepts JSON values, "
                f"Media, dates and numbers"
            )
        path = obj.get("path")
        if not isinstance(path, list) or not path or path[0] not in keys:
            raise anvil.server.SerializationError(f"Malformed message: bad object path {path!r}")

    def rebuild_media(d: dict[str, Any]) -> anvil.Media:
        content_type = d.get("mime-type") or "application/octet-stream"
        content = message.media.get(d.get("id"))
        if isinstance(content, MediaFailure) or content is None:
            failed = anvil._serialise.StreamingMedia(content_type, d.get("name"))
            failed.set_error(
                content.cause
                if isinstance(content, MediaFailure)
                else error_object("anvil.server.SerializationError", "Media content missing")
            )
            return failed
        if isinstance(content, anvil.Media):
            return content
        return anvil.BlobMedia(content_type, content, name=d.get("name"))

    if not objects:  # plain JSON (a batch of predictions): nothing to rebuild, and the message is read once
        return {k: message.json.get(k) for k in keys}
    # _reconstruct_objects rebuilds in place: work on a copy, so the message itself stays as received
    body = {k: copy.deepcopy(message.json.get(k)) for k in keys}
    body["objects"] = copy.deepcopy(objects)
    try:
        rebuilt = anvil._server._reconstruct_objects(body, rebuild_media, remote_is_trusted=True)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise anvil.server.SerializationError(f"Malformed message: {exc}") from None
    return {k: rebuilt[k] for k in keys}


def media_bytes(content: MediaContent) -> bytes:
    """The bytes of one Media object to send; raises whatever the Media raises."""
    if isinstance(content, MediaFailure):
        raise anvil._server._deserialise_exception(content.cause)
    if isinstance(content, anvil.Media):
        data = content.get_bytes()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return content


def chunk_headers(request_id: str, media_id: str, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The ``(CHUNK_HEADER, binary)`` pairs that carry one Media object. Empty media is one empty
    last chunk."""
    pairs = []
    n_chunks = max(1, -(-len(data) // SERVER_CHUNK_BYTES))
    for index in range(n_chunks):
        piece = data[index * SERVER_CHUNK_BYTES : (index + 1) * SERVER_CHUNK_BYTES]
        header = {
            "type": "CHUNK_HEADER",
            "requestId": request_id,
            "mediaId": media_id,
            "chunkIndex": index,
            "lastChunk": index == n_chunks - 1,
        }
        pairs.append((header, piece))
    return pairs


@dataclass
class _Pending:
    json: dict[str, Any]
    expected: set[str]
    chunks: dict[str, list[bytes]]
    done: dict[str, MediaContent]
    size: int = 0
    last_activity: float = field(default_factory=time.monotonic)


class MediaAssembler:
    """Collects one connection's messages and their Media chunks into complete ``Message`` objects.

    A binary frame belongs to the last ``CHUNK_HEADER`` seen on the connection. A message is complete
    when every Media object it declares has its last chunk, has failed (``MEDIA_ERROR``, too large, out
    of order) or has timed out.
    """

    def __init__(self, max_media_bytes: int) -> None:
        self.max_media_bytes = max_media_bytes
        self._pending: dict[str, _Pending] = {}
        self._header: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def start(self, json_msg: dict[str, Any]) -> Message | None:
        """A new message frame. Returns it at once when it carries no Media."""
        expected = {
            obj["id"]
            for obj in json_msg.get("objects") or []
            if isinstance(obj, dict) and "DataMedia" in (obj.get("type") or []) and "id" in obj
        }
        if not expected:
            return Message(json_msg)
        request_id = json_msg.get("id")
        self._pending[request_id] = _Pending(json_msg, expected, {m: [] for m in expected}, {})
        return None

    def header(self, header: dict[str, Any]) -> None:
        """A ``CHUNK_HEADER``: the next binary frame belongs to it."""
        self._header = header

    def binary(self, data: bytes) -> Message | None:
        """A binary frame. Returns the message it completes, if any."""
        header, self._header = self._header, None
        if header is None:
            raise ValueError("binary frame without a CHUNK_HEADER")
        pending = self._pending.get(header.get("requestId"))
        media_id = header.get("mediaId")
        if pending is None or media_id not in pending.expected or media_id in pending.done:
            return None  # a late chunk of a message that failed or was abandoned
        pending.last_activity = time.monotonic()
        chunks = pending.chunks[media_id]
        if header.get("chunkIndex") != len(chunks):
            self._fail(pending, [media_id], "anvil.server.SerializationError", "Media chunks out of order")
        elif pending.size + len(data) > self.max_media_bytes:
            self._fail(
                pending,
                [media_id],
                "anvil.server.SerializationError",
                f"Media too large: a message may carry at most {self.max_media_bytes} bytes of Media",
            )
        else:
            chunks.append(data)
            pending.size += len(data)
            if header.get("lastChunk"):
                pending.done[media_id] = b"".join(chunks)
                pending.chunks[media_id] = []
        return self._pop_if_complete(header.get("requestId"))

    def media_error(self, msg: dict[str, Any]) -> Message | None:
        """A ``MEDIA_ERROR`` from the peer: those Media objects failed."""
        pending = self._pending.get(msg.get("requestId"))
        if pending is None:
            return None
        cause = msg.get("cause")
        if not isinstance(cause, dict):
            cause = error_object("anvil.server.SerializationError", str(cause))
        for media_id in msg.get("mediaIds") or []:
            if media_id in pending.expected and media_id not in pending.done:
                pending.done[media_id] = MediaFailure(cause)
        return self._pop_if_complete(msg.get("requestId"))

    def expire(self, older_than: float) -> list[Message]:
        """Fail the Media of messages with no chunk since ``older_than`` (a ``time.monotonic()``
        value) and return those messages."""
        expired = []
        for request_id, pending in list(self._pending.items()):
            if pending.last_activity < older_than:
                missing = [m for m in pending.expected if m not in pending.done]
                self._fail(pending, missing, "anvil.server.TimeoutError", "Media transfer timed out")
                message = self._pop_if_complete(request_id)
                if message is not None:
                    expired.append(message)
        return expired

    def _fail(self, pending: _Pending, media_ids: list[str], type_name: str, text: str) -> None:
        for media_id in media_ids:
            pending.size -= sum(len(c) for c in pending.chunks.get(media_id, []))
            pending.chunks[media_id] = []
            pending.done[media_id] = MediaFailure(error_object(type_name, text))

    def _pop_if_complete(self, request_id: Any) -> Message | None:
        pending = self._pending.get(request_id)
        if pending is None or len(pending.done) < len(pending.expected):
            return None
        del self._pending[request_id]
        return Message(pending.json, pending.done)
