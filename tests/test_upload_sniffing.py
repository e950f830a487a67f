"""The server modules' upload check and the worker's decoder recognise formats alike.

server_code/uploads.py cannot import nscfate (on Anvil the ML library lives with the worker only), so it
keeps its own copy of the signatures; this keeps the two copies from drifting apart.
"""

import pytest

from nscfate import io as nio
from server_code import uploads

PROBES = [magic + b"\x00" * 64 for magic, _ in nio._MAGIC] + [
    b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x00\x00\x00\x18ftypavif", b"\x00\x00\x00\x18ftypheic",
    b"\x00\x00\x00\x18ftypisom", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"<!DOCTYPE html><html>",
    b"<?xml version='1.0'?><a/>", b"plain text", b""]


def _server_view(data):
    fmt, _ = uploads.sniff_format(data)
    return fmt or uploads.name_other_format(data)


@pytest.mark.parametrize("data", PROBES, ids=lambda d: repr(d[:12]))
def test_every_signature_is_named_alike(data):
    assert _server_view(data) == nio.sniff_format(data)


def test_the_bad_input_corpus_is_sorted_alike(corpus):
    for case_id, case in corpus["cases"].items():
        assert _server_view(case["data"]) == nio.sniff_format(case["data"]), case_id
