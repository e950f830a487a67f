"""The uplink hub against the real anvil-uplink client: script uplinks in subprocesses, uvicorn on a
loopback port in this process."""

import asyncio
import collections
import datetime
import hashlib
import json

import anvil
import anvil.server
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from apphost.protocol import MAX_FRAME_BYTES
from tests.uplinkhelpers.harness import CLIENT_KEY, SERVER_KEY, HubServer, UplinkProcess, wait_until
from tests.uplinkhelpers.script_uplink import pattern_bytes


class ScriptError(anvil.server.AnvilWrappedError):
    """The caller's side of the script's registered error type."""


anvil.server._register_exception_type("tests.ScriptError", ScriptError)


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory):
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def server():
    with HubServer() as s:
        yield s


@pytest.fixture(scope="module")
def uplink_a(server, tmp_module):
    proc = UplinkProcess.script(server.url, "a", tmp_module, "--extra", "only_a")
    try:
        server.wait_registered("only_a")
        yield proc
    finally:
        proc.close()


def test_handshake_registers_functions_as_a_server_uplink(server, uplink_a):
    (worker,) = [w for w in server.hub.workers() if "only_a" in w["registrations"]]
    assert worker["priv"] == "server"
    assert worker["remote"].startswith("127.0.0.1:")
    assert {"echo", "whoami", "media_info", "regex_[a-z]+"} <= set(worker["registrations"])
    assert server.hub.registrations()["only_a"] == 1
    wait_until(lambda: 'Connected to "Local host" as SERVER' in uplink_a.output(), what="the client's log line")


def test_plain_values_dates_and_kwargs_round_trip(server, uplink_a):
    day = datetime.date(2024, 2, 29)
    result = server.hub.call_sync("echo", 1, [2.5, "x", None], {"d": day}, flag=True)
    assert result == {"args": [1, [2.5, "x", None], {"d": day}], "kwargs": {"flag": True}}


def test_names_are_regexes_matched_in_full(server, uplink_a):
    assert server.hub.call_sync("regex_abc") == "a"
    with pytest.raises(anvil.server.NoServerFunctionError, match='"regex_abc1"'):
        server.hub.call_sync("regex_abc1")


def test_unknown_function_raises_no_server_function_error(server, uplink_a):
    with pytest.raises(anvil.server.NoServerFunctionError, match='No server function matching "missing"'):
        server.hub.call_sync("missing")


def test_errors_keep_their_registered_type(server, uplink_a):
    with pytest.raises(ScriptError, match="a registered error") as info:
        server.hub.call_sync("fail", "registered")
    assert info.value.error_obj["type"] == "tests.ScriptError"
    with pytest.raises(anvil.server.AnvilWrappedError, match="plain failure") as info:
        server.hub.call_sync("fail", "plain")
    assert info.value.error_obj["type"] == "ValueError"


def test_5mb_media_crosses_as_chunks_both_ways(server, uplink_a):
    payload = pattern_bytes(5_000_000, seed=7)
    info = server.hub.call_sync("media_info", anvil.BlobMedia("image/tiff", payload, name="big.tif"))
    assert info == {
        "length": 5_000_000,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "name": "big.tif",
        "content_type": "image/tiff",
    }
    result = server.hub.call_sync("make_media", 5_000_000, 7)
    blob = result["blob"]
    assert isinstance(blob, anvil.Media)
    assert blob.get_bytes() == payload and blob.name == "blob.bin"
    back = server.hub.call_sync("reverse_media", anvil.BlobMedia("text/plain", b"abc", name="t.txt"))
    assert (back.get_bytes(), back.content_type, back.name) == (b"cba", "text/plain", "reversed-t.txt")


def test_empty_media_both_ways(server, uplink_a):
    info = server.hub.call_sync("media_info", anvil.BlobMedia("image/png", b"", name="empty.png"))
    assert info["length"] == 0
    assert server.hub.call_sync("make_media", 0)["blob"].get_bytes() == b""


class BrokenMedia(anvil.Media):
    """Media whose content cannot be read (a vanished file, say)."""

    def get_content_type(self):
        return "image/png"

    def get_name(self):
        return "broken.png"

    def get_bytes(self):
        raise anvil.server.InternalError("the file is gone")


def test_unreadable_media_reaches_the_function_as_media_error(server, uplink_a):
    info = server.hub.call_sync("media_info", BrokenMedia())
    assert info == {"error": "InternalError: the file is gone"}


def test_keep_alive_echo_is_answered(server, uplink_a):
    before = server.hub.stats["keep_alives"]
    assert server.hub.call_sync("call_other", "anvil.private.echo", "keep-alive") == "keep-alive"
    assert server.hub.stats["keep_alives"] == before + 1


def test_uplink_calls_local_functions_of_the_host(server, uplink_a):
    server.hub.register_local("host_add", lambda a, b: a + b)

    async def host_media(n):
        return anvil.BlobMedia("application/octet-stream", pattern_bytes(n, 3), name="host.bin")

    server.hub.register_local("host_media", host_media)

    def host_fails():
        raise anvil.server.PermissionDenied("not for you")

    server.hub.register_local("host_fails", host_fails)
    assert server.hub.call_sync("call_other", "host_add", 2, 3) == 5
    media = server.hub.call_sync("call_other", "host_media", 200_000)
    assert media.get_bytes() == pattern_bytes(200_000, 3)
    with pytest.raises(anvil.server.PermissionDenied, match="not for you"):
        server.hub.call_sync("call_other", "host_fails")
    # The host's own callers reach local functions through the same API.
    assert server.hub.call_sync("host_add", "x", "y") == "xy"


def test_call_times_out(server, uplink_a):
    with pytest.raises(anvil.server.TimeoutError, match="did not answer within 0.5 seconds"):
        server.run(server.hub.call_with_timeout(0.5, "hold", 3))


def test_call_sync_refuses_to_block_the_hub_loop(server):
    async def on_loop():
        server.hub.call_sync("whoami")

    with pytest.raises(RuntimeError, match="await hub.call"):
        server.run(on_loop())


def test_two_uplinks_share_the_load_and_call_each_other(server, uplink_a, tmp_module):
    b = UplinkProcess.script(server.url, "b", tmp_module, "--extra", "only_b")
    try:
        server.wait_registered("only_b")
        server.wait_registered("hold", count=2)

        async def four_at_once():
            return await asyncio.gather(*(server.hub.call("hold", 0.5) for _ in range(4)))

        # Least busy first: the 4 concurrent calls go 2 and 2.
        assert collections.Counter(server.run(four_at_once())) == {"a": 2, "b": 2}
        # An uplink calls a function only the other one registered.
        assert server.hub.call_sync("call_other", "only_b") == "b"
        assert server.hub.call_sync("call_other", "only_a") == "a"
    finally:
        b.close()
    wait_until(lambda: "only_b" not in server.hub.registrations(), what="uplink b to leave")
    assert server.hub.call_sync("hold", 0) == "a"


def test_killed_uplink_fails_its_calls_and_a_restarted_one_is_used(server, tmp_module):
    first = UplinkProcess.script(server.url, "k1", tmp_module, "--extra", "only_k")
    try:
        server.wait_registered("only_k")
        pending = asyncio.run_coroutine_threadsafe(server.hub.call("only_k", 60), server.hub._loop)
        wait_until(
            lambda: any(w["in_flight"] == 1 and "only_k" in w["registrations"] for w in server.hub.workers()),
            what="the call to reach the uplink",
        )
        first.kill()
        with pytest.raises(anvil.server.UplinkDisconnectedError, match='"only_k" has been disconnected'):
            pending.result(30)
        with pytest.raises(anvil.server.UplinkDisconnectedError):
            server.hub.call_sync("only_k", 0)
    finally:
        first.close()
    second = UplinkProcess.script(server.url, "k2", tmp_module, "--extra", "only_k")
    try:
        server.wait_registered("only_k")
        assert server.hub.call_sync("only_k", 0) == "k2"
    finally:
        second.close()


def test_wrong_key_is_refused(server, tmp_module):
    refused_before = server.hub.stats["refused"]
    proc = UplinkProcess.script(server.url, "wrong", tmp_module, "--check", key="not-the-key")
    try:
        assert proc.wait(60) == 0
        assert "CHECK FAILED" in proc.output()
        assert "Incorrect uplink key" in proc.output()
    finally:
        proc.close()
    assert server.hub.stats["refused"] == refused_before + 1
    assert not any("wrong" in str(w) for w in server.hub.workers())


def test_client_key_may_call_but_not_register(server, uplink_a, tmp_module):
    caller = UplinkProcess.script(server.url, "client", tmp_module, "--check", "--no-functions", key=CLIENT_KEY)
    try:
        assert caller.wait(60) == 0
        assert "CHECK OK ping" in caller.output()
        assert 'as CLIENT' in caller.output()
    finally:
        caller.close()
    registrar = UplinkProcess.script(server.url, "client2", tmp_module, "--check", "--extra", "client_fn", key=CLIENT_KEY)
    try:
        assert registrar.wait(60) == 0
        assert "CHECK FAILED" in registrar.output()
        assert "Cannot register @anvil.server.callable functions from an unprivileged (client) uplink" in registrar.output()
    finally:
        registrar.close()
    assert "client_fn" not in server.hub.registrations()


def test_frame_of_16_mib_from_the_uplink_drops_it_and_it_comes_back(server, tmp_module):
    proc = UplinkProcess.script(server.url, "big", tmp_module, "--extra", "only_big")
    try:
        server.wait_registered("only_big")
        with pytest.raises(anvil.server.UplinkDisconnectedError):
            server.hub.call_sync("big_string", MAX_FRAME_BYTES)
        # The client reconnects by itself and registers again.
        server.wait_registered("only_big")
        assert server.hub.call_sync("only_big", 0) == "big"
    finally:
        proc.close()


# ---- raw protocol frames (a plain websocket client speaking the protocol by hand)


def _recv_json(ws):
    return json.loads(ws.recv(timeout=10))


def test_register_frames_before_the_key_are_queued(server):
    with ws_connect(server.url) as ws:
        ws.send(json.dumps({"type": "REGISTER", "name": "raw_queued"}))
        ws.send(json.dumps({"key": SERVER_KEY, "v": 8}))
        reply = _recv_json(ws)
        assert reply["auth"] == "OK" and reply["priv"] == "uplink"
        assert reply["app-info"]["environment"]["description"] == "Local host"
        server.wait_registered("raw_queued")
        # Answer a call by hand, with Media in the response sent as one chunk.
        pending = asyncio.run_coroutine_threadsafe(server.hub.call("raw_queued", 41), server.hub._loop)
        call = _recv_json(ws)
        assert call["type"] == "CALL" and call["command"] == "raw_queued" and call["args"] == [41]
        assert call["call-stack"][0]["type"] == "server_module"
        ws.send(
            json.dumps(
                {
                    "id": call["id"],
                    "response": {"n": 42, "m": None},
                    "objects": [{"type": ["DataMedia"], "path": ["response", "m"], "id": "x1", "mime-type": "text/plain"}],
                }
            )
        )
        ws.send(json.dumps({"type": "CHUNK_HEADER", "requestId": call["id"], "mediaId": "x1", "chunkIndex": 0, "lastChunk": True}))
        ws.send(b"hello")
        result = pending.result(10)
        assert result["n"] == 42 and result["m"].get_bytes() == b"hello"


def test_an_unauthenticated_connection_may_not_pile_up_frames(server):
    from apphost.hub import MAX_QUEUED_CHARS

    refused = server.hub.stats["refused"]
    with ws_connect(server.url) as ws:
        filler = json.dumps({"type": "REGISTER", "name": "x" * 60_000})
        try:
            for _ in range(MAX_QUEUED_CHARS // len(filler) + 2):
                ws.send(filler)
            reply = _recv_json(ws)
        except ConnectionClosed:
            reply = None
        assert reply is None or reply == {"error": "Expected the uplink key first"}
    wait_until(lambda: server.hub.stats["refused"] == refused + 1, what="the refusal")


@pytest.mark.parametrize(
    "frames, error",
    [
        ([{"key": SERVER_KEY, "v": 4}], "outdated"),
        ([{"key": "nope", "v": 8}], "Incorrect uplink key"),
        ([{"key": SERVER_KEY, "v": 8}, {"type": "REGISTER", "name": "bad(regex"}], "Invalid function name specification"),
        ([{"key": SERVER_KEY, "v": 8}, {"type": "REGISTER_LIVE_OBJECT_BACKEND", "backend": "x"}], "live-object backends"),
    ],
)
def test_handshake_and_registration_errors_close_the_connection(server, frames, error):
    with ws_connect(server.url) as ws:
        for frame in frames:
            ws.send(json.dumps(frame))
        replies = []
        with pytest.raises(ConnectionClosed):
            while True:
                replies.append(_recv_json(ws))
        assert error in replies[-1]["error"]


def test_frames_of_16_mib_or_more_are_refused(server):
    with ws_connect(server.url, max_size=None) as ws:
        ws.send(json.dumps({"key": SERVER_KEY, "v": 8}))
        assert _recv_json(ws)["auth"] == "OK"
        ws.send(b"\0" * (MAX_FRAME_BYTES - 1))  # just under: accepted (a stray binary frame is ignored)
        ws.send(json.dumps({"type": "CALL", "id": "c1", "command": "anvil.private.echo", "args": ["still here"], "kwargs": {}}))
        assert _recv_json(ws)["response"] == "still here"
        before = server.hub.stats["frames_too_big"]
        ws.send(b"\0" * MAX_FRAME_BYTES)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd.code == 1009
    assert server.hub.stats["frames_too_big"] == before + 1


@pytest.mark.slow
def test_the_clients_own_heartbeat_is_answered(server, uplink_a):
    before = server.hub.stats["keep_alives"]
    wait_until(lambda: server.hub.stats["keep_alives"] > before, timeout=25, what="a keep-alive")
    assert server.hub.call_sync("whoami") == "a"
