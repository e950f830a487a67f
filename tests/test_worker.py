"""The inference worker (``python -m uplink``) end to end: a subprocess on the real anvil-uplink client,
connected to the hub served on loopback, serving a tiny model (nscfate.testing.make_tiny_model_dir).

The tests run in file order and share the worker processes: first one worker (A) alone, then a second
(B) that micro-batches 4 calls at a time and is stopped with SIGTERM, then a host restart.
"""

import asyncio
import json
import math
import signal
import struct
import sys
import zlib
from pathlib import Path

import anvil
import numpy as np
import pytest
import skimage

from tests.hostproc import children_of
from tests.uplinkhelpers.harness import HubServer, UplinkProcess, wait_until
from uplink.errors import CellImageError, UnknownModelError

REAL_CELL_PNG = Path(skimage.__file__).parent / "data" / "cell.png"  # a real suspended cell (CC0)
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def model_classes(tiny_model):
    labels = json.loads((tiny_model / "labels.json").read_text())
    return [c["key"] for c in labels["classes"]]


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="module")
def server():
    s = HubServer()
    with s:
        yield s


def start_worker(server, tiny_model, logs, name, *extra):
    return UplinkProcess(
        [sys.executable, "-m", "uplink", "--url", server.url, "--model", str(tiny_model), *extra],
        logs / f"{name}.log",
        env=WORKER_ENV,
    )


@pytest.fixture(scope="module")
def worker_a(server, tiny_model, logs):
    proc = start_worker(server, tiny_model, logs, "worker-a")
    try:
        server.wait_registered("worker_stats", timeout=180)
        wait_until(lambda: "worker ready" in proc.output(), what="the ready line")
        yield proc
    finally:
        proc.close()


def media(data, name="cell.png", mime="image/png"):
    return anvil.BlobMedia(mime, data, name=name)


def cell_png(seed=0, size=(47, 60)):
    from nscfate.testing import cell_image, to_png_bytes

    return to_png_bytes(cell_image(np.random.default_rng(seed), size))


def huge_png_header(width, height):
    """A tiny, valid PNG that declares width x height pixels (a decompression bomb)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" + b"\0" * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * 16))
        + chunk(b"IEND", b"")
    )


def assert_prediction(result, classes):
    assert [c["key"] for c in result["classes"]] == classes
    assert list(result["probabilities"]) == classes
    assert math.isclose(sum(result["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert result["predicted_class"] == max(result["probabilities"], key=result["probabilities"].get)
    assert result["confidence"] == result["probabilities"][result["predicted_class"]]
    assert result["model"] == {"name": "tiny-medium4", "version": "0.0.1"}


def test_worker_logs_models_and_ready(worker_a):
    out = worker_a.output()
    assert "serving model tiny-medium4@0.0.1" in out
    assert "worker ready: predict_cell_fate, predict_cell_fate_batch, list_models" in out


def test_predict_a_real_image(server, worker_a, model_classes):
    result = server.hub.call_sync("predict_cell_fate", media(REAL_CELL_PNG.read_bytes(), "cell.png"))
    assert_prediction(result, model_classes)
    assert result["image"]["original_shape"] == [660, 550]
    assert any("much larger" in w for w in result["warnings"])  # a 660 px image is no IFC crop
    assert "gradcam" not in result


def test_predict_with_explanation_returns_a_png_overlay(server, worker_a, model_classes):
    result = server.hub.call_sync("predict_cell_fate", media(cell_png(1), "c1.png"), explain=True)
    assert_prediction(result, model_classes)
    overlay = result["gradcam"]
    assert overlay.content_type == "image/png" and overlay.name == "c1-gradcam.png"
    assert overlay.get_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_5mb_image_crosses_as_chunked_media(server, worker_a, model_classes):
    import tifffile
    import io

    rng = np.random.default_rng(5)
    big = (rng.normal(20000, 300, (1600, 1600))).astype(np.uint16)  # 5.12 MB uncompressed
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, big)
    data = buffer.getvalue()
    assert len(data) > 5_000_000
    result = server.hub.call_sync("predict_cell_fate", media(data, "field.tif", "image/tiff"))
    assert_prediction(result, model_classes)
    assert result["image"]["n_bytes"] == len(data)
    assert result["image"]["dtype"] == "uint16"


@pytest.mark.parametrize(
    "payload, code",
    [
        (b"hello, not an image", "not_an_image"),
        (b"", "empty"),
        (huge_png_header(6000, 6000), "too_many_pixels"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "corrupt"),
    ],
)
def test_bad_images_get_the_registered_error_with_its_code(server, worker_a, payload, code):
    with pytest.raises(CellImageError) as info:
        server.hub.call_sync("predict_cell_fate", media(payload, "upload.png"))
    assert info.value.code == code
    assert info.value.error_obj["type"] == "nscfate.CellImageError"
    assert info.value.message  # says what was wrong


def test_not_media_and_unknown_model_are_refused(server, worker_a):
    with pytest.raises(CellImageError) as info:
        server.hub.call_sync("predict_cell_fate", "cell.png")
    assert info.value.code == "not_an_image" and "Anvil Media" in info.value.message
    with pytest.raises(UnknownModelError, match="this worker serves: tiny-medium4@0.0.1") as info:
        server.hub.call_sync("predict_cell_fate", media(cell_png()), model="resnet50-medium4")
    assert info.value.code == "unknown_model"
    # name@version must match the served version
    with pytest.raises(UnknownModelError):
        server.hub.call_sync("predict_cell_fate", media(cell_png()), model="tiny-medium4@9.9.9")
    assert server.hub.call_sync("predict_cell_fate", media(cell_png()), model="tiny-medium4@0.0.1")["model"]


def test_batch_with_a_bad_image_in_the_middle(server, worker_a, model_classes):
    images = [media(cell_png(2), "a.png"), media(b"GIF89a nope", "b.gif", "image/gif"), media(cell_png(3), "c.png"),
              media(cell_png(4), "astro_D3B_000001_Ch3.png")]  # a fluorescence channel: the label itself
    results = server.hub.call_sync("predict_cell_fate_batch", images)
    assert len(results) == 4
    assert_prediction(results[0], model_classes)
    assert_prediction(results[2], model_classes)
    assert results[1]["error"]["code"] in {"not_an_image", "unsupported_format"}
    assert results[1]["index"] == 1 and results[1]["filename"] == "b.gif"
    assert results[3]["error"]["code"] == "marker_channel" and "Ch3" in results[3]["error"]["message"]
    # The same image alone gives the same answer as in a batch.
    alone = server.hub.call_sync("predict_cell_fate", media(cell_png(2), "a.png"))
    assert alone["probabilities"] == pytest.approx(results[0]["probabilities"], abs=1e-5)


def test_batch_argument_errors(server, worker_a):
    with pytest.raises(CellImageError) as info:
        server.hub.call_sync("predict_cell_fate_batch", media(cell_png()))
    assert info.value.code == "bad_input"
    with pytest.raises(CellImageError) as info:
        server.hub.call_sync("predict_cell_fate_batch", ["x"] * 257)
    assert info.value.code == "too_many_images"
    assert server.hub.call_sync("predict_cell_fate_batch", []) == []


def test_list_models(server, worker_a, model_classes):
    (card,) = server.hub.call_sync("list_models")
    assert (card["name"], card["version"], card["default"]) == ("tiny-medium4", "0.0.1", True)
    assert [c["key"] for c in card["classes"]] == model_classes
    assert card["synthetic_training_data"] is True

CALLER = """
import sys, anvil, anvil.server
anvil.server.connect(sys.argv[2], url=sys.argv[1], quiet=True)
for name, args in [("list_models", ()), ("worker_stats", ()), ("predict_cell_fate", (anvil.BlobMedia("image/png", b"x"),))]:
    try:
        anvil.server.call(name, *args)
        print(name, "ANSWERED")
    except anvil.server.PermissionDenied as e:
        print(name, "DENIED", e)
    except Exception as e:  # the worker's own answer to bad input
        print(name, "ANSWERED with an error:", e)
"""


@pytest.mark.parametrize("key_name", ["client", "server"])
def test_only_trusted_callers_reach_the_worker(server, worker_a, logs, key_name):
    """Browser code and client uplinks may call what an uplink registers (on Anvil too): the worker
    refuses them, so nobody skips sign-in, the history and the upload limits of the server modules."""
    from tests.uplinkhelpers.harness import CLIENT_KEY, SERVER_KEY

    key = CLIENT_KEY if key_name == "client" else SERVER_KEY
    caller = UplinkProcess([sys.executable, "-c", CALLER, server.url, key], logs / f"caller-{key_name}.log", key=None)
    try:
        assert caller.wait(60) == 0, caller.output()
    finally:
        caller.close()
    out = caller.output()
    if key_name == "client":
        assert out.count("DENIED") == 3 and "ANSWERED" not in out, out
        assert "call the app's server functions or REST API" in out
        assert "refused a call of predict_cell_fate from untrusted code" in worker_a.output()
    else:  # a server uplink is trusted, as server modules are (predict_cell_fate then rejects the bytes)
        assert out.count("ANSWERED") == 3 and "DENIED" not in out, out
        assert "predict_cell_fate ANSWERED with an error: image: not an image" in out


def test_list_models_sends_the_card_plots_as_png_media(server, worker_a, tiny_model):
    from nscfate.modeldir import read_model_dir

    (listed,) = server.hub.call_sync("list_models")  # a listing: titles only, no images
    (card,) = server.hub.call_sync("list_models", plots=True)
    stored = read_model_dir(tiny_model).plots
    assert len(stored) == 3
    assert listed["plots"] == [{"title": title} for title, _ in stored]
    assert [p["title"] for p in card["plots"]] == [title for title, _ in stored]
    assert card["plots"][0]["title"].startswith("Confusion matrix, test split (n=")
    for plot, (_, path) in zip(card["plots"], stored):
        assert plot["image"].content_type == "image/png" and plot["image"].name == path.name
        assert plot["image"].get_bytes() == path.read_bytes()


@pytest.fixture(scope="module")
def shared():
    """State handed from one test to the next (the tests of this module run in order)."""
    return {}


def test_two_workers_share_the_load_and_merge_concurrent_calls(server, worker_a, tiny_model, logs, model_classes, shared):
    before = {w["id"]: w["calls_completed"] for w in server.hub.workers()}
    # Worker B: batches of at most 4. How the 4 calls it gets are grouped depends on when each arrives
    # (a batch waits only for calls already decoding); test_worker_batcher.py tests the grouping itself.
    b = start_worker(server, tiny_model, logs, "worker-b", "--max-batch", "4", "--max-wait-ms", "60000")
    shared["worker_b"] = b
    server.wait_registered("worker_stats", count=2, timeout=180)
    (b_id,) = [w["id"] for w in server.hub.workers() if w["id"] not in before]
    a_id = next(iter(before))

    async def eight_at_once():
        return await asyncio.gather(
            *(server.hub.call("predict_cell_fate", media(cell_png(10 + i), f"c{i}.png")) for i in range(8))
        )

    results = server.run(eight_at_once())
    for result in results:
        assert_prediction(result, model_classes)
    done = {w["id"]: w["calls_completed"] for w in server.hub.workers()}
    assert done[a_id] - before[a_id] == 4 and done[b_id] == 4  # least busy first: 4 and 4

    async def stats_of_each_worker():
        # Two calls at once reach two different workers (least busy first).
        return await asyncio.gather(*(server.hub.call("worker_stats") for _ in range(2)))

    stats = server.run(stats_of_each_worker())
    (b_stats,) = [s for s in stats if s["batches"]["tiny-medium4"]["max_batch"] == 4]
    b_batches = b_stats["batches"]["tiny-medium4"]
    assert b_batches["items"] == 4 and b_batches["largest"] <= 4  # its 4 images, in batches of at most 4
    assert sum(int(size) * n for size, n in b_batches["sizes"].items()) == 4
    # Each result says how large a batch it was part of.
    assert all(1 <= r["timings_ms"]["batch_size"] <= 4 for r in results)


def test_sigterm_finishes_the_call_in_flight_and_exits_cleanly(server, worker_a, shared):
    b = shared["worker_b"]
    try:
        b_id = max(server.hub.workers(), key=lambda w: w["connected_at"])["id"]

        async def two_at_once():
            return await asyncio.gather(*(server.hub.call("predict_cell_fate", media(cell_png(20 + i))) for i in range(2)))

        # B is frozen while the calls are sent, so the one routed to it is certainly still on its way
        # (a lone call no longer waits in the batcher) when SIGTERM arrives.
        b.proc.send_signal(signal.SIGSTOP)
        try:
            pending = asyncio.run_coroutine_threadsafe(two_at_once(), server.hub._loop)
            wait_until(
                lambda: any(w["id"] == b_id and w["in_flight"] == 1 for w in server.hub.workers()), what="a call on B"
            )
            b.proc.send_signal(signal.SIGTERM)  # handled once B runs again, with the call already sent
        finally:
            b.proc.send_signal(signal.SIGCONT)
        first, second = pending.result(60)
        assert first["probabilities"] and second["probabilities"]  # both answered, none failed
        assert b.wait(60) == 0
        out = b.output()
        assert "got SIGTERM: shutting down" in out and "worker stopped" in out
    finally:
        b.close()
    wait_until(lambda: len(server.hub.workers()) == 1, what="B to leave")


def test_worker_reconnects_when_the_host_comes_back(server, worker_a, model_classes):
    port = server.port
    server.stop()
    with HubServer(port=port) as again:
        again.wait_registered("predict_cell_fate", timeout=60)
        result = again.hub.call_sync("predict_cell_fate", media(cell_png(30)))
        assert_prediction(result, model_classes)
    assert "Reconnecting Anvil Uplink" in worker_a.output()


def test_worker_without_models_or_key_fails_clearly(tmp_path):
    no_key = UplinkProcess([sys.executable, "-m", "uplink"], tmp_path / "nokey.log", key=None)
    assert no_key.wait(60) == 1
    assert "no uplink key: set ANVIL_UPLINK_KEY or pass --key-file" in no_key.output()
    no_key.close()
    missing = UplinkProcess(
        [sys.executable, "-m", "uplink", "--model", str(tmp_path / "nothing-here"), "--url", "ws://127.0.0.1:9/_/uplink"],
        tmp_path / "nomodel.log",
        env=WORKER_ENV,
    )
    assert missing.wait(120) == 2
    assert "cannot load the models" in missing.output()
    missing.close()


def test_host_runs_its_own_worker_with_the_key_in_its_environment_only(tiny_model, tmp_path):
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "host-test-key-0123456789"
    host = UplinkProcess(
        [sys.executable, "-m", "apphost", "--port", str(port), "--model", str(tiny_model)],
        tmp_path / "host.log",
        key=key,
        env={**WORKER_ENV, "NSCFATE_DATA_DIR": str(tmp_path / "data"), "NSCFATE_ADMIN_EMAIL": "ada@lab.org",
             "NSCFATE_ADMIN_PASSWORD": "host-only-admin-password", "ANVIL_CLIENT_UPLINK_KEY": "host-only-client-key"},
    )

    def registrations():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/_/health", timeout=2).json()["registrations"]
        except httpx.HTTPError:
            return {}

    try:
        wait_until(lambda: "predict_cell_fate" in registrations(), 180, "the built-in worker")
        # It registers on connecting and logs "worker ready" after a round trip: wait for that too.
        wait_until(lambda: "worker ready" in host.output(), 60, "the worker's ready line")
        (worker_pid,) = children_of(host.proc.pid)
        cmdline = Path(f"/proc/{worker_pid}/cmdline").read_bytes().split(b"\0")
        assert b"uplink" in cmdline and all(key.encode() not in arg for arg in cmdline)
        environ = Path(f"/proc/{worker_pid}/environ").read_bytes()
        assert f"ANVIL_UPLINK_KEY={key}".encode() in environ.split(b"\0")
        assert b"host-only" not in environ  # the host's other secrets stay with the host
        host.terminate()
        assert host.wait(60) == 0
        out = host.output()
        assert "worker ready" in out and "worker stopped" in out
        assert key not in out
    finally:
        host.close()


# ---- the service in-process (same tiny model)


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from nscfate.predictor import Predictor

    return Predictor.from_directory(tiny_model)


def test_service_refuses_new_calls_once_shutting_down(predictor):
    from uplink.errors import WorkerUnavailableError
    from uplink.service import InferenceService

    service = InferenceService([predictor], max_batch=4, max_wait=0.001)
    try:
        assert service.predict(media(cell_png(40)))["probabilities"]
        service.begin_shutdown()
        with pytest.raises(WorkerUnavailableError) as info:
            service.predict(media(cell_png(40)))
        assert info.value.code == "worker_unavailable"
        assert service.wait_idle(5) and service.stats()["accepting"] is False
    finally:
        service.close()


def test_service_configuration_errors(predictor):
    from uplink.service import InferenceService

    with pytest.raises(ValueError, match="two models are named"):
        InferenceService([predictor, predictor])
    with pytest.raises(ValueError, match="is not loaded"):
        InferenceService([predictor], default_model="resnet50-medium4")


@pytest.mark.slow
def test_worker_serves_the_shipped_default_model(tmp_path):
    from tests.uplinkhelpers.harness import ROOT

    registry_file = ROOT / "models" / "registry.json"
    if not registry_file.is_file():
        pytest.skip("no shipped models yet (models/registry.json)")
    registry = json.loads(registry_file.read_text())
    with HubServer() as hub_server:
        worker = UplinkProcess(
            [sys.executable, "-m", "uplink", "--url", hub_server.url], tmp_path / "shipped.log", env=WORKER_ENV
        )
        try:
            hub_server.wait_registered("predict_cell_fate", timeout=300)
            (card,) = [c for c in hub_server.hub.call_sync("list_models") if c["default"]]
            assert card["name"] == registry["default"]
            result = hub_server.hub.call_sync("predict_cell_fate", media(REAL_CELL_PNG.read_bytes(), "cell.png"))
            assert_prediction_for(result, card)
        finally:
            worker.close()


def assert_prediction_for(result, card):
    classes = [c["key"] for c in card["classes"]]
    assert [c["key"] for c in result["classes"]] == classes
    assert math.isclose(sum(result["probabilities"].values()), 1.0, abs_tol=1e-4)
    assert result["model"] == {"name": card["name"], "version": card["version"]}
