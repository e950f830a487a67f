"""Property-based fuzzing (hypothesis) of the two places untrusted bytes enter: the image decoder and
the REST routes.

- ``decode_image`` on arbitrary bytes and on mutated valid images (every format it reads): it returns
  a finite 2-D float32 image within the limits or raises an ``ImageError`` - never anything else - and
  the memory it allocates stays bounded by the limits (traced with tracemalloc).
- The REST routes (real runtime, SQL tables, fake worker) with random filters, paging, ids, multipart
  bodies, raw bodies and sign-in forms: never a 5xx, every refusal a JSON answer (but for the plain
  405 of Anvil's own endpoint dispatch), and exactly one history row per image reported as classified.

Examples per test: ``NSCFATE_FUZZ_EXAMPLES`` (default 60, derandomised, so CI is deterministic).
``scripts/reliability_report.py`` runs a bigger, randomised budget; with ``NSCFATE_FUZZ_REPORT=path``
the number of cases each test ran is written there as JSON.
"""

from __future__ import annotations

import json
import os
import tracemalloc
import urllib.parse
import warnings
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from apphost.http_api import api_routes
from apphost.testing import FakeWorker, make_runtime, png_bytes
from nscfate.errors import ImageError
from nscfate.io import DecodeLimits, decode_image
from tests.imagegen import cv2_png, pil_bytes, tiff_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CI_EXAMPLES = 60
EXAMPLES = int(os.environ.get("NSCFATE_FUZZ_EXAMPLES", str(CI_EXAMPLES)))
RANDOMISED = os.environ.get("NSCFATE_FUZZ_RANDOM") == "1"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOMISED, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

RUNS: Counter[str] = Counter()
PEAK: dict[str, int] = {"decode_traced_bytes": 0}

# Small limits so that the memory bound is tight: a decode may allocate a few copies of the largest
# image the limits let through, never what a header claims.
LIMITS = DecodeLimits(max_bytes=2 * 1024 * 1024, max_pixels=250_000)
MEMORY_BOUND = 64 * 1024 * 1024  # 250k px x 4 channels x 8 bytes x 8 copies

ANN = ("ann@lab.org", "correct horse battery")
BOB = ("bob@lab.org", "another horse battery")


@pytest.fixture(scope="module", autouse=True)
def fuzz_report():
    yield
    path = os.environ.get("NSCFATE_FUZZ_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"examples_setting": EXAMPLES, "ci_examples": CI_EXAMPLES, "randomised": RANDOMISED,
                       "limits": {"max_bytes": LIMITS.max_bytes, "max_pixels": LIMITS.max_pixels},
                       "memory_bound": MEMORY_BOUND, "cases": dict(RUNS), "total": sum(RUNS.values()), **PEAK},
                      f, indent=1)


# --------------------------------------------------------------------------------------------------
# the decoder


def _seeds() -> dict[str, bytes]:
    """One small valid file per format and flavour the decoder reads."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = (rng.random((24, 30)) * 200 + 20).astype(np.uint8)
    pil, tif = pil_bytes, tiff_bytes
    return {
        "png8": pil(grey, "PNG"),
        "png16": cv2_png(grey.astype(np.uint16) * 257),
        "png-rgba": pil(Image.fromarray(grey).convert("RGBA"), "PNG"),
        "png-palette": pil(Image.fromarray(grey).convert("P"), "PNG"),
        "jpeg": pil(grey, "JPEG", quality=90),
        "jpeg-cmyk": pil(Image.fromarray(grey).convert("CMYK"), "JPEG"),
        "bmp": pil(grey, "BMP"),
        "tiff8": tif(grey),
        "tiff16-zlib": tif(grey.astype(np.uint16) * 257, compression="zlib"),
        "tiff-float": tif(grey.astype(np.float32) / 255),
        "tiff-rgb": tif(np.dstack([grey] * 3), photometric="rgb"),
        "tiff-pages": tif(np.stack([grey, grey]), photometric="minisblack"),
    }


SEEDS = _seeds()


def _decode_checked(data: bytes, label: str) -> None:
    RUNS[label] += 1
    tracemalloc.start()
    try:
        try:
            out = decode_image(data, limits=LIMITS)
        except ImageError as e:
            assert e.code and str(e)
            out = None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    PEAK["decode_traced_bytes"] = max(PEAK["decode_traced_bytes"], peak)
    assert peak < MEMORY_BOUND, f"decoding {len(data)} bytes allocated {peak} bytes"
    if out is not None:
        assert out.pixels.dtype == np.float32 and out.pixels.ndim == 2
        assert out.pixels.size <= LIMITS.max_pixels and min(out.pixels.shape) >= LIMITS.min_side
        assert np.isfinite(out.pixels).all()


@FUZZ
@given(st.binary(max_size=4096))
def test_decoder_on_arbitrary_bytes(data):
    _decode_checked(data, "decoder: arbitrary bytes")


@FUZZ
@given(st.sampled_from(sorted(SEEDS)), st.sampled_from(sorted(SEEDS)), st.binary(max_size=64))
def test_decoder_on_a_valid_signature_with_foreign_content(fmt, other, tail):
    """The leading bytes of one format followed by (part of) another format's content."""
    head = SEEDS[fmt][:8]
    _decode_checked(head + SEEDS[other][8:] + tail, "decoder: signature + foreign content")


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(SEEDS)))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "header-int"]))
        # Mutations cluster in the header, where sizes and offsets live.
        pos = draw(st.one_of(st.integers(0, min(len(data) - 1, 128)), st.integers(0, len(data) - 1)))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
        else:  # a 16- or 32-bit field set to an extreme value (sizes, offsets, counts)
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65500, 100_000]))
            width = draw(st.sampled_from([2, 4]))
            order = draw(st.sampled_from(["big", "little"]))
            data[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, order)
    return name, bytes(data)


@FUZZ
@given(mutated())
def test_decoder_on_mutated_valid_images(case):
    name, data = case
    _decode_checked(data, "decoder: mutated valid images")


def test_regression_tiff_tag_of_the_wrong_type_is_corrupt_not_a_crash():
    """Found by the fuzzer: a Photometric tag stored as ASCII made the decoder raise ValueError."""
    seed = SEEDS["tiff-float"]
    entry = b"\x06\x01\x03\x00\x01\x00\x00\x00"  # tag 262 (Photometric), type SHORT, count 1
    assert entry in seed
    with pytest.raises(ImageError) as info:
        decode_image(seed.replace(entry, b"\x06\x01\x02\x00\x01\x00\x00\x00"))  # type ASCII
    assert info.value.code == "corrupt"


def test_seeds_decode_and_limits_hold():
    """The seeds themselves are valid (so mutations start from real files)."""
    for name, data in SEEDS.items():
        assert decode_image(data, limits=LIMITS).pixels.shape == (24, 30), name


# --------------------------------------------------------------------------------------------------
# the REST routes


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    worker = FakeWorker()
    rt = make_runtime(tmp_path_factory.mktemp("fuzz-host"), worker,
                      host_functions={"nscfate_host_status": lambda: {"workers": 1}})
    rt.accounts.create_user(*ANN)
    rt.accounts.create_user(*BOB)
    client = TestClient(Starlette(routes=api_routes(rt)), base_url="http://testserver", raise_server_exceptions=False)
    # Some rows to search, page and delete.
    files = [("file", (f"seed{i}.png", png_bytes(i), "image/png")) for i in range(6)]
    assert client.post("/_/api/predictions", auth=ANN, files=files, data={"experiment": "E1"}).status_code == 200
    yield rt, client
    client.close()
    rt.close()
    rt.db.dispose()


def n_rows(rt) -> int:
    return rt.run(lambda: len(rt.db.app_tables.predictions.search()))


def check_answer(r) -> dict | None:
    """Never a 5xx; every refusal is JSON (successes may be CSV or images), except the 405 that Anvil's
    own http_endpoint dispatch answers in plain text for a method a route does not take; the JSON, if any."""
    assert r.status_code < 500, (r.status_code, r.text[:300])
    is_json = r.headers.get("content-type", "").startswith("application/json")
    if r.request.method == "HEAD":
        return None
    if r.status_code >= 400 and r.status_code != 405:
        assert is_json, (r.status_code, r.headers.get("content-type"), r.text[:300])
    return r.json() if is_json else None


SQLISH = st.sampled_from(["' OR '1'='1", "'; DROP TABLE app_predictions; --", "\" OR 1=1 --", "%", "_", "*",
                          "1; SELECT * FROM app_users", "astro' --", "\\", "NULL", "0x00", "' UNION SELECT 1 --"])
TEXT = st.one_of(st.text(max_size=40), SQLISH, st.integers(-10**20, 10**20).map(str),
                 st.sampled_from(["", "astro", "2024-01-01", "2024-13-45", "ann@lab.org", "-1", "1e9", "٣"]))
PARAM_KEYS = st.one_of(st.sampled_from(["condition", "date_from", "date_to", "experiment", "user", "model", "page",
                                        "page_size", "filename", "file", "prediction_id"]), st.text(max_size=12))


@FUZZ
@given(st.lists(st.tuples(PARAM_KEYS, TEXT), max_size=6), st.sampled_from(["/predictions", "/predictions.csv",
                                                                         "/summary", "/models"]))
def test_rest_reads_with_random_parameters(api, params, route):
    RUNS["REST: GET with random filters/paging"] += 1
    rt, client = api
    before = n_rows(rt)
    r = client.get("/_/api" + route, params=params, auth=ANN)
    body = check_answer(r)
    if route == "/predictions" and r.status_code == 200:
        assert 0 <= len(body["rows"]) <= body["page_size"] <= 200 and body["total"] <= before
    assert n_rows(rt) == before  # reads change nothing (and no injected statement ran)
    assert rt.run(lambda: len(rt.db.app_tables.users.search())) == 2


@FUZZ
@given(st.one_of(st.text(max_size=60), SQLISH, st.just("[1,1]"), st.just("[99999,1]")),
       st.sampled_from(["GET", "DELETE", "HEAD", "PUT", "PATCH", "OPTIONS", "POST"]), st.sampled_from([ANN, BOB]))
def test_rest_item_routes_with_random_ids_and_methods(api, pid, method, who):
    RUNS["REST: item routes with random ids/methods"] += 1
    rt, client = api
    before = n_rows(rt)
    r = client.request(method, "/_/api/predictions/" + urllib.parse.quote(pid, safe=""),
                       auth=who)
    check_answer(r)
    assert n_rows(rt) in (before, before - 1)


PART_NAMES = st.one_of(st.sampled_from(["file", "experiment", "notes", "model"]), st.text(max_size=10))
CONTENT = st.one_of(st.binary(max_size=300), st.sampled_from([png_bytes(1), png_bytes(2, 16)]),
                    st.binary(max_size=200).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                    st.binary(max_size=200).map(lambda b: b"II*\x00" + b))
PART = st.tuples(PART_NAMES, st.one_of(st.none(), st.text(max_size=30)), CONTENT,
                 st.sampled_from(["image/png", "image/tiff", "text/plain", "", "application/octet-stream", "x/y"]))


def _multipart(parts, boundary: str) -> bytes:
    out = b""
    for name, filename, data, ctype in parts:
        disp = 'form-data; name="%s"' % name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        if filename is not None:
            disp += '; filename="%s"' % filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        head = f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
        if ctype:
            head += f"Content-Type: {ctype}\r\n"
        out += head.encode("utf-8", "surrogatepass") + b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


@FUZZ
@given(st.lists(PART, max_size=6), st.lists(st.tuples(PARAM_KEYS, TEXT), max_size=3),
       st.sampled_from(["cookie-less", "truncated", "garbage-boundary"]))
def test_rest_upload_with_random_multipart_bodies(api, parts, query, shape):
    RUNS["REST: POST random multipart bodies"] += 1
    rt, client = api
    boundary = "fuzzB0undary"
    try:
        body = _multipart(parts, boundary)
    except UnicodeEncodeError:
        assume(False)
    if shape == "truncated":
        body = body[: len(body) // 2]
    ctype = f"multipart/form-data; boundary={boundary if shape != 'garbage-boundary' else 'other'}"
    before = n_rows(rt)
    r = client.post("/_/api/predictions", params=query, content=body, headers={"content-type": ctype}, auth=ANN)
    answer = check_answer(r)
    assert answer is not None, r.text[:200]
    added = n_rows(rt) - before
    if r.status_code == 200:
        assert added == answer["n_ok"] >= 1 and len(answer["results"]) == answer["n_ok"] + answer["n_rejected"]
    else:
        assert added == 0


@FUZZ
@given(CONTENT, st.sampled_from(["image/png", "text/plain", "application/json", "application/x-www-form-urlencoded",
                                 "multipart/form-data", "", "image/tiff; charset=x"]),
       st.lists(st.tuples(PARAM_KEYS, TEXT), max_size=3))
def test_rest_upload_with_random_raw_bodies(api, data, ctype, query):
    RUNS["REST: POST random raw bodies"] += 1
    rt, client = api
    before = n_rows(rt)
    r = client.post("/_/api/predictions", params=query, content=data, headers={"content-type": ctype}, auth=ANN)
    answer = check_answer(r)
    added = n_rows(rt) - before
    assert added == (answer["n_ok"] if r.status_code == 200 else 0)


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                       lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                       max_leaves=8)


@FUZZ
@given(st.dictionaries(st.sampled_from(["email", "password", "old_password", "new_password", "x"]), JSONISH,
                       max_size=4), st.sampled_from(["/_/auth/login", "/_/auth/signup", "/_/auth/password",
                                                     "/_/auth/logout"]))
def test_auth_routes_with_random_json(api, fields, route):
    RUNS["auth: random sign-in/sign-up JSON"] += 1
    rt, client = api
    client.cookies.clear()
    r = client.post(route, content=json.dumps(fields), headers={"content-type": "application/json"})
    check_answer(r)
    assert r.status_code != 200 or route in ("/_/auth/logout",)  # nothing random signs anyone in
    rt.accounts.limiter._failures.clear()  # keep the rate limiter from answering every later case
