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


def test_multipart_fields_reads_what_clients_send():
    import httpx

    files = [("file", ("a.tif", b"II*\x00" + bytes(range(256)) * 40, "image/tiff")),
             ("file", ("b.png", b"\x89PNG\r\n\x1a\n--\r\n\r\n", "image/png"))]  # CRLFs and dashes inside a file
    request = httpx.Request("POST", "http://x/", files=files, data={"experiment": "E1 é", "notes": ""})
    fields = uploads.multipart_fields(request.headers["content-type"], request.read())
    assert [(m.name, m.content_type, m.get_bytes()) for m in fields["file"]] == [
        (name, kind, data) for _, (name, data, kind) in files]
    assert fields["experiment"] == "E1 é" and fields["notes"] == ""
    body = request.read()
    for content_type, data in (("multipart/form-data", body), (request.headers["content-type"], body[:-40])):
        with pytest.raises(Exception) as e:
            uploads.multipart_fields(content_type, data)
        assert e.value.code == "bad_form"
