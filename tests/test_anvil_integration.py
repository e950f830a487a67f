"""The whole local path over real sockets: REST route -> server_code -> uplink hub -> a worker on the
real anvil-uplink client -> history row. Needs the hub (apphost.app); skipped until it is present."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from apphost.http_api import api_routes
from apphost.testing import make_runtime, png_bytes

app_module = pytest.importorskip("apphost.app", reason="the uplink hub (apphost.app) is not merged yet")
uvicorn = pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parent.parent
KEY = "integration-test-key-" + "z" * 12
ANN = ("ann@lab.org", "correct horse battery")


def _wait(condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def host(tmp_path):
    made = {}

    def routes(hub):
        made["runtime"] = make_runtime(
            tmp_path, hub.call_sync, host_functions={"nscfate_host_status": lambda: {"workers": len(hub.workers())}})
        return api_routes(made["runtime"])

    app = app_module.create_app(app_module.HostSettings(uplink_key=KEY), app_routes=routes)
    runtime = made["runtime"]
    runtime.accounts.create_user(*ANN)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait(lambda: server.started, "the host to start")
    yield runtime, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)
    runtime.close()
    runtime.db.dispose()


def _start_worker(base_url, tmp_path):
    env = {**os.environ, "ANVIL_UPLINK_KEY": KEY, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "apphost.testing", "--url",
                             base_url.replace("http://", "ws://") + "/_/uplink"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, log


def test_rest_to_worker_and_back(host, tmp_path):
    runtime, base = host
    client = httpx.Client(base_url=base, auth=ANN, timeout=30)
    assert client.get("/_/api/health").json()["workers"] == 0
    proc, log = _start_worker(base, tmp_path)
    try:
        _wait(lambda: client.get("/_/api/health").json()["models"], "the worker to register")
        files = [("file", (f"c{i}.png", png_bytes(i), "image/png")) for i in range(3)]
        r = client.post("/_/api/predictions", files=files, data={"experiment": "E1"})
        assert r.status_code == 200, r.text
        assert r.json()["n_ok"] == 3
        image = client.get(r.json()["results"][1]["image_url"])
        assert image.content == png_bytes(1)  # stored bytes are the bytes that crossed the hub
        assert client.get("/_/api/predictions.csv").text.count("\n") == 4
    finally:
        proc.kill()
        proc.wait(10)
        log.close()
    _wait(lambda: client.get("/_/api/health").json()["workers"] == 0, "the worker to be gone")
    r = client.post("/_/api/predictions", files=[("file", ("d.png", png_bytes(9), "image/png"))])
    assert r.status_code == 503 and r.json()["results"][0]["error"]["code"] == "worker_unavailable"
    assert client.get("/_/api/predictions").json()["total"] == 3  # nothing stored for the failure
