"""The worker's websocket frame masking (uplink.framing) against RFC 6455's definition and ws4py."""

from __future__ import annotations

import os

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


def test_ws4py_frames_built_with_it_parse_back():
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
