"""Unit tests of the uplink wire format: encoding values, chunking Media, reassembling chunks."""

import datetime
import time

import anvil
import anvil.server
import pytest

from apphost import protocol
from apphost.protocol import MediaAssembler, MediaFailure, Message


def test_chunks_are_64000_bytes_and_the_last_is_marked():
    data = bytes(range(256)) * 1000  # 256,000 bytes -> 4 chunks of 64,000
    pairs = protocol.chunk_headers("req1", "m1", data)
    assert [len(piece) for _, piece in pairs] == [64_000] * 4
    assert [h["chunkIndex"] for h, _ in pairs] == [0, 1, 2, 3]
    assert [h["lastChunk"] for h, _ in pairs] == [False, False, False, True]
    assert all(h["type"] == "CHUNK_HEADER" and h["requestId"] == "req1" and h["mediaId"] == "m1" for h, _ in pairs)
    assert b"".join(piece for _, piece in pairs) == data


def test_uneven_and_empty_media_chunks():
    pairs = protocol.chunk_headers("r", "m", b"x" * 64_001)
    assert [len(p) for _, p in pairs] == [64_000, 1]
    empty = protocol.chunk_headers("r", "m", b"")
    assert len(empty) == 1 and empty[0][0]["lastChunk"] is True and empty[0][1] == b""


def test_encode_decode_round_trip_with_media_dates_and_big_numbers():
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
    media = anvil.BlobMedia("image/png", b"\x89PNG data", name="cell.png")
    values = {"args": [media, {"day": datetime.date(2024, 1, 2), "when": when, "big": 2**40}], "kwargs": {"x": 1.5}}
    message = protocol.encode(values)
    assert message.json["args"][0] is None  # Media travel outside the JSON
    described = [o for o in message.json["objects"] if o["type"] == ["DataMedia"]]
    assert described == [
        {"type": ["DataMedia"], "path": ["args", 0], "mime-type": "image/png", "name": "cell.png", "id": described[0]["id"]}
    ]
    # What crosses the wire is bytes; decode as the far side would.
    wire = Message(message.json, {k: protocol.media_bytes(v) for k, v in message.media.items()})
    decoded = protocol.decode(wire, ("args", "kwargs"))
    got_media, rest = decoded["args"]
    assert isinstance(got_media, anvil.BlobMedia)
    assert (got_media.get_bytes(), got_media.content_type, got_media.name) == (b"\x89PNG data", "image/png", "cell.png")
    assert rest["day"] == datetime.date(2024, 1, 2)
    assert rest["when"] == when
    assert rest["big"] == 2**40
    assert decoded["kwargs"] == {"x": 1.5}


def test_decode_of_plain_json_gives_its_values_and_leaves_the_message_as_received():
    """A batch of predictions is plain JSON: nothing to rebuild. With objects (a date), the message
    itself is not rebuilt in place."""
    plain = protocol.encode({"response": [{"probabilities": {"astro": 0.9, "oligo": 0.1}, "warnings": []}] * 2})
    assert not plain.json.get("objects")
    assert protocol.decode(plain, ("response",))["response"] == [
        {"probabilities": {"astro": 0.9, "oligo": 0.1}, "warnings": []}] * 2
    dated = protocol.encode({"response": {"day": datetime.date(2024, 1, 2)}})
    before = repr(dated.json)
    assert protocol.decode(dated, ("response",))["response"] == {"day": datetime.date(2024, 1, 2)}
    assert repr(dated.json) == before


def test_encode_refuses_values_json_cannot_carry():
    with pytest.raises(anvil.server.SerializationError):
        protocol.encode({"response": object()})


def test_decode_refuses_live_objects_and_bad_paths():
    live = Message({"args": [None], "kwargs": {}, "objects": [{"type": ["LiveObject"], "path": ["args", 0]}]})
    with pytest.raises(anvil.server.SerializationError, match="cannot accept"):
        protocol.decode(live, ("args", "kwargs"))
    portable = Message({"args": [{}], "kwargs": {}, "objects": [{"type": ["ValueType"], "path": ["args", 0], "typeName": "os.x"}]})
    with pytest.raises(anvil.server.SerializationError, match="cannot accept"):
        protocol.decode(portable, ("args", "kwargs"))
    bad_path = Message({"args": [], "kwargs": {}, "objects": [{"type": ["Date"], "path": ["args", 3], "value": "2024-01-01"}]})
    with pytest.raises(anvil.server.SerializationError, match="Malformed"):
        protocol.decode(bad_path, ("args", "kwargs"))


def test_failed_media_decodes_to_media_that_raises_the_cause():
    message = Message(
        {"response": None, "objects": [{"type": ["DataMedia"], "path": ["response"], "id": "m", "mime-type": "image/png"}]},
        {"m": MediaFailure(protocol.error_object("anvil.server.InternalError", "disk gone"))},
    )
    media = protocol.decode(message, ("response",))["response"]
    with pytest.raises(anvil.server.InternalError, match="disk gone"):
        media.get_bytes()


def _call_with_media(*media_ids):
    return {
        "type": "CALL",
        "id": "c1",
        "command": "f",
        "args": [None] * len(media_ids),
        "kwargs": {},
        "objects": [
            {"type": ["DataMedia"], "path": ["args", i], "id": m, "mime-type": "application/octet-stream"}
            for i, m in enumerate(media_ids)
        ],
    }


def _header(media_id, index, last):
    return {"type": "CHUNK_HEADER", "requestId": "c1", "mediaId": media_id, "chunkIndex": index, "lastChunk": last}


def test_assembler_passes_messages_without_media_at_once():
    assembler = MediaAssembler(1000)
    message = assembler.start({"id": "r", "response": 1, "objects": []})
    assert message is not None and message.json["response"] == 1 and len(assembler) == 0


def test_assembler_joins_chunks_of_several_media():
    assembler = MediaAssembler(1000)
    assert assembler.start(_call_with_media("a", "b")) is None
    assembler.header(_header("a", 0, False))
    assert assembler.binary(b"12") is None
    assembler.header(_header("b", 0, True))
    assert assembler.binary(b"") is None
    assembler.header(_header("a", 1, True))
    message = assembler.binary(b"34")
    assert message is not None and message.media == {"a": b"1234", "b": b""}
    assert len(assembler) == 0


def test_assembler_fails_media_out_of_order_or_too_large():
    assembler = MediaAssembler(4)
    assembler.start(_call_with_media("a", "b"))
    assembler.header(_header("a", 1, True))  # chunk 0 never came
    assert assembler.binary(b"x") is None
    assembler.header(_header("b", 0, True))
    message = assembler.binary(b"12345")  # over the 4-byte limit
    assert message is not None
    assert isinstance(message.media["a"], MediaFailure) and "order" in message.media["a"].cause["message"]
    assert isinstance(message.media["b"], MediaFailure) and "too large" in message.media["b"].cause["message"]


def test_assembler_media_error_and_stray_frames():
    assembler = MediaAssembler(1000)
    with pytest.raises(ValueError):
        assembler.binary(b"no header")
    assembler.start(_call_with_media("a"))
    cause = protocol.error_object("anvil.server.InternalError", "upload failed")
    message = assembler.media_error({"type": "MEDIA_ERROR", "requestId": "c1", "mediaIds": ["a"], "cause": cause})
    assert message is not None and message.media["a"] == MediaFailure(cause)
    # A late chunk of that finished message is dropped.
    assembler.header(_header("a", 0, True))
    assert assembler.binary(b"late") is None


def test_assembler_expires_stalled_transfers():
    assembler = MediaAssembler(1000)
    assembler.start(_call_with_media("a"))
    assert assembler.expire(older_than=time.monotonic() - 60) == []
    expired = assembler.expire(older_than=time.monotonic() + 1)
    assert len(expired) == 1 and expired[0].media["a"].cause["type"] == "anvil.server.TimeoutError"
    assert len(assembler) == 0


def test_exception_to_error_keeps_anvil_types():
    assert protocol.exception_to_error(anvil.server.NoServerFunctionError("nope"))["type"] == (
        "anvil.server.NoServerFunctionError"
    )
    assert protocol.exception_to_error(anvil.server.UplinkDisconnectedError("gone"))["type"] == (
        "anvil.server.UplinkDisconnectedError"
    )
    assert protocol.exception_to_error(KeyError("k")) == {"type": "KeyError", "message": "'k'", "trace": []}
