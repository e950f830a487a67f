"""Every case of the bad-input corpus (scripts/make_bad_inputs.py) through every entry point:

- the REST API of the assembled host (real sockets, real worker subprocess on a tiny model), as a
  script does it (HTTP Basic) and as the web UI does it (session cookie + CSRF header);
- the worker directly, through the host's uplink hub (``predict_cell_fate`` and one batch call);
- the ``nscfate predict`` CLI (which runs ``Predictor.predict_many``).

Invalid files get a 4xx with their specific code and message and leave no history row; odd but valid
files are classified and stored under a clean name; nothing answers 5xx; host and worker keep running.
One host and one worker serve the whole module; the model is the session's ``tiny_model`` (conftest).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import anvil
import pytest

from scripts import make_bad_inputs as corpus_script
from tests.livehost import LiveHost

ROOT = Path(__file__).resolve().parent.parent

CASE_IDS = corpus_script.case_ids()
KEY = "bad-inputs-test-key-" + "q" * 12
ANN = "ann@lab.org"
USERS = {ANN: ("correct horse battery", "researcher")}
BOUNDARY = "nscfate-test-boundary-7d3a"
# The issue's list: each of these kinds must be in the corpus.
REQUIRED_KINDS = ["empty", "text-named-png", "html", "svg", "pdf", "png-truncated", "jpeg-truncated",
                  "tiff-truncated", "wrong-magic", "png-1x1", "png-bomb", "over-byte-limit", "gif-animated",
                  "tiff-5-channel", "tiff-nan", "tiff-inf", "tiff-16bit", "tiff-float32", "jpeg-cmyk",
                  "jpeg-exif-rotated", "tiff-multipage", "png-rgba-transparent-bg", "unicode-name",
                  "traversal-name", "wrong-content-type"]


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_model):
    host = LiveHost(tmp_path_factory.mktemp("host"), key=KEY, users=USERS).start()
    try:
        host.start_worker(tiny_model, "worker")
        host.wait_workers(1)
        yield host
    finally:
        host.close()


@pytest.fixture(scope="module")
def basic(live):
    c = live.client(ANN)
    yield c
    c.close()


@pytest.fixture(scope="module")
def browser(live):
    c = live.browser(ANN)
    yield c
    c.close()


def multipart(files: list[tuple[str, bytes, str]], fields: dict[str, str] | None = None) -> bytes:
    """A multipart/form-data body written byte for byte, so file names reach the server exactly as
    sent (quotes and line breaks escaped as browsers do; everything else raw UTF-8)."""
    out = b""
    for name, value in (fields or {}).items():
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n').encode()
    for filename, data, content_type in files:
        quoted = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        out += (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
                f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post_files(client, files, **fields):
    return client.post("/_/api/predictions", content=multipart(files, fields),
                       headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})


def check_rejection(result: dict, case: dict) -> None:
    assert result["ok"] is False
    assert result["error"]["code"] == case["code"], (case["id"], result["error"])
    message = result["error"]["message"]
    assert len(message) > 15 and "Traceback" not in message, message


def check_prediction(result: dict, case: dict) -> None:
    probs = result["probabilities"]
    assert set(probs) == {"astro", "oligo", "rashh", "nt3"}
    assert abs(sum(probs.values()) - 1.0) < 1e-3
    assert result["predicted_class"] == max(probs, key=probs.get)
    if case["warning"]:
        assert any(case["warning"] in w for w in result["warnings"]), (case["id"], result["warnings"])


# --------------------------------------------------------------------------------------------------
# the corpus itself


def test_corpus_has_every_kind_the_issue_lists(corpus):
    cases = corpus["cases"]
    assert len(cases) >= 30 and set(REQUIRED_KINDS) <= set(cases)
    assert sum(c["expect"] == "rejected" for c in cases.values()) >= 20
    assert sum(c["expect"] == "classified" for c in cases.values()) >= 15
    assert {"too-many-files", "full-batch"} <= set(corpus["requests"])


def test_the_script_writes_the_corpus_from_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_bad_inputs.py"), str(tmp_path), "--no-big"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    manifest = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))
    assert [c["id"] for c in manifest["cases"]] == corpus_script.case_ids(include_big=False)
    assert all((tmp_path / c["file"]).is_file() for c in manifest["cases"])


# --------------------------------------------------------------------------------------------------
# REST API: as a script (HTTP Basic) and as the web UI (session cookie + CSRF)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_rest_upload(case_id, corpus, live, basic):
    """One file per request, as a script sends it (HTTP Basic)."""
    case = corpus["cases"][case_id]
    client = basic
    before = live.n_rows()
    r = post_files(client, [(case["upload_name"], case["data"], case["content_type"])], experiment="corpus")
    body = r.json()
    [result] = body["results"]
    if case["expect"] == "rejected":
        assert r.status_code == 422, r.text
        check_rejection(result, case)
        assert live.n_rows() == before  # no history row for a rejected file
        return
    assert r.status_code == 200, r.text
    check_prediction(result, case)
    assert result["filename"] == case["stored_name"]
    assert result["user"] == ANN and result["experiment"] == "corpus"
    assert live.n_rows() == before + 1
    stored = client.get(result["image_url"])
    assert stored.status_code == 200 and stored.content == case["data"]  # the bytes as uploaded


def test_request_too_many_files(corpus, basic, live):
    req = corpus["requests"]["too-many-files"]
    good = corpus["cases"]["png-8bit"]
    before = live.n_rows()
    r = post_files(basic, [(f"c{i}.png", good["data"], "image/png") for i in range(req["count"])])
    assert r.status_code == req["status"] and r.json()["error"]["code"] == req["code"]
    assert "at most 64" in r.json()["error"]["message"]
    assert live.n_rows() == before


def test_request_full_batch_gets_one_row_per_file(corpus, basic, live):
    req = corpus["requests"]["full-batch"]
    good = corpus["cases"]["png-8bit"]
    before = live.n_rows()
    r = post_files(basic, [(f"c{i}.png", good["data"], "image/png") for i in range(req["count"])])
    assert r.status_code == req["status"], r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == list(range(req["count"])) and all(x["ok"] for x in results)
    assert len({x["id"] for x in results}) == req["count"]
    assert live.n_rows() == before + req["count"]


def test_request_every_case_at_once(corpus, browser, live):
    """Every case in one upload, the way the web UI sends it (session cookie + CSRF header)."""
    cases = list(corpus["cases"].values())
    before = live.n_rows()
    r = post_files(browser, [(c["upload_name"], c["data"], c["content_type"]) for c in cases])
    assert r.status_code == corpus["requests"]["every-case-at-once"]["status"], r.text
    results = r.json()["results"]
    assert len(results) == len(cases)
    for i, (case, result) in enumerate(zip(cases, results)):
        if case["expect"] == "rejected":
            check_rejection(result, case)
        else:
            assert result["ok"], (case["id"], result)
            check_prediction(result, case)
            # a file sent without a name is called by its place in the upload
            assert result["filename"] == (case["stored_name"] if case["upload_name"] else f"image-{i + 1}")
    assert live.n_rows() == before + sum(c["expect"] == "classified" for c in cases)


def test_request_shapes_without_a_usable_file(corpus, basic, live):
    reqs = corpus["requests"]
    before = live.n_rows()
    r = basic.post("/_/api/predictions", data={"experiment": "E"})
    assert r.status_code == reqs["no-file"]["status"] and r.json()["error"]["code"] == reqs["no-file"]["code"]
    r = basic.post("/_/api/predictions", data={"file": ["not a file", "nor this"]})
    assert r.status_code == reqs["text-field-as-file"]["status"]
    assert {x["error"]["code"] for x in r.json()["results"]} == {reqs["text-field-as-file"]["code"]}
    r = basic.post("/_/api/predictions", content=b"--XYZ\r\nbroken",
                   headers={"content-type": "multipart/form-data; boundary=QQQ"})
    assert r.status_code == reqs["broken-multipart"]["status"], r.text
    assert r.json()["error"]["code"] == reqs["broken-multipart"]["code"]
    assert live.n_rows() == before


def test_request_raw_body(corpus, basic, live):
    good = corpus["cases"]["tiff-16bit"]
    before = live.n_rows()
    r = basic.post("/_/api/predictions", params={"filename": "raw.tif", "experiment": "raw"}, content=good["data"],
                   headers={"content-type": "image/tiff"})
    assert r.status_code == corpus["requests"]["raw-body"]["status"], r.text
    assert r.json()["results"][0]["filename"] == "raw.tif" and live.n_rows() == before + 1


def test_request_declaring_a_huge_body_is_refused_before_reading_it(corpus, live):
    req = corpus["requests"]["declared-too-large"]
    import base64

    auth = base64.b64encode(f"{ANN}:{USERS[ANN][0]}".encode()).decode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as s:
        s.sendall((f"POST /_/api/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n"
                   f"Content-Type: image/png\r\nContent-Length: {1 << 30}\r\n\r\n").encode() + b"\x89PNG")
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            assert chunk, f"the host closed the connection without a full reply: {reply[:200]!r}"
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        while len(body) < length:
            chunk = s.recv(65536)
            assert chunk, "the host closed the connection before the whole body"
            body += chunk
    assert int(head.split(b" ", 2)[1]) == req["status"]
    assert json.loads(body)["error"]["code"] == req["code"]


# --------------------------------------------------------------------------------------------------
# the worker directly, through the hub


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_worker_directly(case_id, corpus, live):
    from uplink.errors import CellImageError  # registers the worker's error types in this process

    case = corpus["cases"][case_id]
    image = anvil.BlobMedia(case["content_type"], case["data"], name=case["upload_name"])
    if case["expect"] == "rejected":
        with pytest.raises(CellImageError) as info:
            live.call("predict_cell_fate", image)
        assert info.value.code == case["code"], (case_id, info.value.code, str(info.value))
        assert len(str(info.value)) > 15
    else:
        check_prediction(live.call("predict_cell_fate", image), case)


def test_worker_batch_with_every_case(corpus, live):
    cases = list(corpus["cases"].values())
    images = [anvil.BlobMedia(c["content_type"], c["data"], name=c["upload_name"]) for c in cases]
    results = live.call("predict_cell_fate_batch", images)
    assert len(results) == len(cases)
    for i, (case, result) in enumerate(zip(cases, results)):
        if case["expect"] == "rejected":
            assert result["error"]["code"] == case["code"] and result["index"] == i, (case["id"], result)
        else:
            check_prediction(result, case)


# --------------------------------------------------------------------------------------------------
# the CLI (nscfate predict -> Predictor.predict_many)


@pytest.fixture(scope="module")
def cli_lines(corpus, tiny_model):
    import contextlib
    import io

    from nscfate.cli import main

    paths = [str(c["path"]) for c in corpus["cases"].values()]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--quiet", "predict", "--json", "--model", str(tiny_model), *paths])
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 1 and [line["file"] for line in lines] == paths  # 1: some files were refused
    return {Path(line["file"]).name: line for line in lines}


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_cli_predict(case_id, corpus, cli_lines):
    case = corpus["cases"][case_id]
    line = cli_lines[case["file"]]
    if case["expect"] == "rejected":
        assert line["error"]["code"] == case["code"] and case["file"] in line["error"]["message"]
    else:
        check_prediction(line, case)


# --------------------------------------------------------------------------------------------------
# after all of it


def test_host_and_worker_kept_running_and_stored_only_hashes(live, basic):
    assert all(w.proc.poll() is None for w in live.workers)
    worker_log = live.workers[0].output()
    assert "worker ready" in worker_log and "Traceback" not in worker_log
    health = basic.get("/_/api/health")
    assert health.status_code == 200 and health.json()["workers"] == 1
    media_root = live.data_dir / "media"
    stored = [p.relative_to(media_root).as_posix() for p in media_root.rglob("*") if p.is_file()]
    assert stored and all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{64}", s) for s in stored), stored
    assert not list(live.data_dir.parent.rglob("passwd.png"))  # the traversal names stayed names
