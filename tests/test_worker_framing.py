"""The worker's websocket frame masking (uplink.framing) against RFC 6455's definition and ws4py."""

from __future__ import annotations

import os
import threading

import pytest
from ws4py.framing import Frame
from ws4py.streaming import Stream

from uplink.framing import install_fast_masking, mask


def rfc_mask(key: bytes, data: bytes) -> bytes:
    """RFC 6455 5.3, byte by byte: octet i XOR key octet i mod 4."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 125, 126, 127, 4096, 65535, 65539])
def test_mask_is_the_rfc_masking(n):
    key, data = os.urandom(4), os.urandom(n)
    masked = mask(key, data)
    assert isinstance(masked, bytearray) and len(masked) == n
    assert bytes(masked) == rfc_mask(key, data)
    assert bytes(mask(key, masked)) == data  # its own inverse
    assert mask(key, memoryview(data)) == masked


def test_leading_and_trailing_zero_bytes_survive():
    # An integer XOR loses nothing at either end: zeros in the data or the key must come back as zeros.
    key, data = b"\x00\x00\x00\x00", b"\x00\x00abc\x00\x00"
    assert bytes(mask(key, data)) == data
    assert bytes(mask(b"\x00\x01\x00\x00", b"\x00" * 9)) == b"\x00\x01\x00\x00" * 2 + b"\x00"


@pytest.fixture
def ws4py_restored(monkeypatch):
    """ws4py's own masking back after the test (installing is for the whole process)."""
    monkeypatch.setattr(Frame, "mask", Frame.mask)
    monkeypatch.setattr(Frame, "unmask", Frame.unmask)


def test_ws4py_frames_built_with_it_parse_back(ws4py_restored):
    install_fast_masking()
    install_fast_masking()  # idempotent
    assert Frame.mask.__module__ == Frame.unmask.__module__ == "uplink.framing"
    for n in (10, 300, 70000):
        body, key = os.urandom(n), os.urandom(4)
        wire = Frame(opcode=0x2, body=body, masking_key=key, fin=1).build()
        assert wire.endswith(key + rfc_mask(key, body))  # header, key, masked payload
        stream = Stream()  # ws4py's own parser, as the hub's side of a connection sees the frame
        stream.parser.send(wire)
        message = stream.has_message and stream.message
        assert message and bytes(message.data) == body


def test_the_worker_installs_it_before_it_connects(tiny_model, ws4py_restored, monkeypatch):
    import uplink.__main__ as worker

    assert Frame.mask.__module__ == "ws4py.framing"
    monkeypatch.setattr("uplink.callables.register_callables", lambda service: None)  # not in this process's anvil
    monkeypatch.setattr("nscfate.predictor.set_cpu_threads", lambda *a: None)  # TensorFlow is running already
    stop, at_connect = threading.Event(), []

    class Server:  # connects, answers the echo, and asks the worker to stop at once
        def connect(self, key, url):
            at_connect.append(Frame.mask.__module__)
            stop.set()

        def call(self, name, *args):
            return args[0]

        def disconnect(self):
            pass

    args = worker.build_parser().parse_args(["--model", str(tiny_model), "--settle-seconds", "0"])
    assert worker._serve(args, "key", stop, Server()) == 0
    assert at_connect == ["uplink.framing"]
