"""Faults while the tool is in use, against the assembled host over real sockets:

- a worker killed in the middle of a batch (SIGKILL while it holds the call): with a second worker the
  chunk is retried there and every image is stored once; alone, the request waits for it to be
  restarted and then it gets the chunk;
- the real host process (``python -m apphost``) restarted during use, with Ctrl-C and with SIGKILL: no
  acknowledged prediction is lost, browser sessions and their CSRF tokens survive;
- the database unavailable: 503 ``database_unavailable`` (not 401), nothing written;
- the disk of the media store full (real ENOSPC from /dev/full): 507 ``storage_full``, nothing written.

Workers here are ``apphost.testing.FakeWorker`` / ``tests.fault_uplink`` on the real anvil-uplink
client (fast to start); the slow variant kills the real ``python -m uplink`` worker.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from apphost.testing import browser_session, png_bytes
from server_code.predictions import CHUNK_SIZE
from tests.hostproc import Host
from tests.livehost import ROOT_DIR, LiveHost, free_port, wait_until

KEY = "faults-test-key-" + "f" * 16
ANN = "ann@lab.org"
USERS = {ANN: ("correct horse battery", "researcher")}


@pytest.fixture
def live(tmp_path):
    host = LiveHost(tmp_path / "host", key=KEY, users=USERS).start()
    yield host
    host.close()


def upload(client: httpx.Client, seeds, **fields) -> httpx.Response:
    files = [("file", (f"cell{s}.png", png_bytes(s), "image/png")) for s in seeds]
    return client.post("/_/api/predictions", files=files, data=fields)


def in_background(fn):
    """Run ``fn`` in a thread; returns a function that joins it and returns its result."""
    box = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()

    def join(timeout=120):
        thread.join(timeout)
        assert not thread.is_alive(), "the request did not finish"
        return box["value"]

    return join


def stored_shas(live: LiveHost) -> list[str]:
    db = live.runtime.db
    with db.engine.connect() as conn:
        return list(conn.execute(sa.select(db.sql_table("predictions").c.image_sha256)).scalars())


# --------------------------------------------------------------------------------------------------
# a worker killed in the middle of a batch


def test_killed_worker_mid_batch_is_retried_on_another_worker(live):
    holder, marker = live.start_fault_worker("holder", hold_after=0)
    live.wait_workers(1)
    with live.client(ANN) as client:
        done = in_background(lambda: upload(client, range(20)))
        wait_until(marker.exists, 60, "the first chunk to reach the worker")
        live.start_fake_worker("spare")
        live.wait_workers(2)
        holder.kill()  # SIGKILL with 16 images in its hands
        r = done()
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True] * 20
    assert {x["model"]["name"] for x in results} == {"tiny-medium4"}  # all answered by the spare
    assert sorted(stored_shas(live)) == sorted({x["image_sha256"] for x in results})  # once each
    assert live.n_rows() == 20


def test_a_killed_lone_worker_is_waited_for_and_its_restart_gets_the_chunk(live):
    """The only worker dies during a call; it comes back (the host restarts a dead worker within
    seconds): the request waits for it and every image is stored exactly once. (One that never comes
    back, and none at all: tests/test_server_code.py, with a fake clock.)"""
    holder, marker = live.start_fault_worker("holder", hold_after=1)
    live.wait_workers(1)
    with live.client(ANN) as client:
        done = in_background(lambda: upload(client, range(40)))
        wait_until(marker.exists, 60, "the second chunk to reach the worker")
        holder.kill()
        wait_until(lambda: live.n_workers() == 0, 30, "the hub to drop the killed worker")
        live.start_fake_worker("restarted")
        r = done()
        assert r.status_code == 200 and r.json()["n_ok"] == 40, r.text
        assert live.n_rows() == 40
    shas = stored_shas(live)
    assert len(shas) == len(set(shas)) == 40  # every image exactly once


@pytest.mark.slow
def test_killing_the_real_worker_mid_batch_keeps_history_exact(live, tiny_model):
    model = tiny_model
    worker = live.start_worker(model, "real-1")
    live.wait_workers(1)
    with live.client(ANN) as client:
        done = in_background(lambda: upload(client, range(64)))
        wait_until(lambda: any(w["in_flight"] for w in live.hub.workers()), 60, "a call in flight")
        worker.kill()
        r = done()
        results = r.json()["results"]
        ok = [x for x in results if x["ok"]]
        assert {x["error"]["code"] for x in results if not x["ok"]} <= {"worker_unavailable"}
        assert live.n_rows() == len(ok) and r.status_code == (200 if ok else 503)
        live.start_worker(model, "real-2")
        live.wait_workers(1)
        r = upload(client, [x["index"] for x in results if not x["ok"]])
        assert all(x["ok"] for x in r.json()["results"])
    assert live.n_rows() == len(set(stored_shas(live))) == 64


# --------------------------------------------------------------------------------------------------
# the host restarted during use: the real ``python -m apphost`` process, a worker that reconnects by itself


class RealHost:
    """``python -m apphost --workers 0`` on a fixed port and data directory, plus one fake worker that
    connects with the same key (it reconnects by itself when the host comes back)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path, self.port = tmp_path, free_port()
        self.env = {"ANVIL_UPLINK_KEY": KEY, "NSCFATE_ADMIN_EMAIL": ANN, "NSCFATE_ADMIN_PASSWORD": USERS[ANN][0]}
        self.runs = 0
        self.host = self.start()
        self.worker = subprocess.Popen(
            [sys.executable, "-m", "apphost.testing", "--url", f"ws://127.0.0.1:{self.port}/_/uplink"],
            env={**os.environ, "ANVIL_UPLINK_KEY": KEY, "PYTHONPATH": str(ROOT_DIR)}, cwd=ROOT_DIR,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_worker()

    def start(self) -> Host:
        self.runs += 1
        host = Host(self.tmp_path, "--port", str(self.port), "--workers", "0", env=self.env, name=f"host{self.runs}")
        self.url = host.wait_ready()
        return host

    def wait_worker(self) -> None:
        def connected():
            try:
                return httpx.get(self.url + "/_/api/health", timeout=5).json().get("workers") == 1
            except (httpx.HTTPError, ValueError):
                return False

        wait_until(connected, 90, "the worker to (re)connect")

    def close(self) -> None:
        self.worker.kill()
        self.worker.wait(10)
        self.host.stop()


@pytest.fixture
def real_host(tmp_path):
    h = RealHost(tmp_path)
    yield h
    h.close()


def signed_in(url: str) -> httpx.Client:
    return browser_session(url, ANN, USERS[ANN][0], timeout=30)


def test_host_restarted_during_use_loses_nothing_and_keeps_sessions(real_host):
    browser = signed_in(real_host.url)
    uploader = signed_in(real_host.url)
    answered, failed, stop = [], [], threading.Event()

    def keep_uploading():
        seed = 1000
        while not stop.is_set():
            seed += 1
            try:
                r = upload(uploader, [seed])
            except httpx.TransportError:
                failed.append("no answer")  # the host was down: the request never reached it
                time.sleep(0.05)
                continue
            (answered if r.status_code == 200 else failed).append(r if r.status_code == 200 else r.status_code)

    thread = threading.Thread(target=keep_uploading, daemon=True)
    thread.start()
    wait_until(lambda: len(answered) >= 5, 60, "some uploads")
    assert real_host.host.interrupt() == 0  # Ctrl-C: requests in progress are finished first
    real_host.host = real_host.start()
    real_host.wait_worker()
    n_before = len(answered)
    wait_until(lambda: len(answered) >= n_before + 5, 60, "uploads after the restart")
    stop.set()
    thread.join(30)

    ids = {r.json()["results"][0]["id"] for r in answered}
    listing = browser.get("/_/api/predictions", params={"page_size": 200})
    assert listing.status_code == 200  # the session survived the restart (sessions live in the database)
    assert {row["id"] for row in listing.json()["rows"]} == ids
    assert listing.json()["total"] == len(answered)  # every acknowledged upload, once; nothing else
    r = browser.post("/_/api/predictions", files=[("file", ("after.png", png_bytes(5), "image/png"))])
    assert r.status_code == 200, r.text  # and so did its CSRF token
    assert set(failed) <= {"no answer", 503}
    browser.close()
    uploader.close()


def test_host_killed_with_sigkill_keeps_every_acknowledged_prediction(real_host):
    client = signed_in(real_host.url)  # a session: the host's real argon2 runs once, not per request
    try:
        acknowledged = []
        for seed in range(12):
            r = upload(client, [seed])
            assert r.status_code == 200
            acknowledged.append(r.json()["results"][0]["id"])
        real_host.host.proc.send_signal(signal.SIGKILL)
        real_host.host.proc.wait(10)
        real_host.host = real_host.start()  # reading the history needs no worker
        listing = client.get("/_/api/predictions", params={"page_size": 100}).json()
        assert {row["id"] for row in listing["rows"]} == set(acknowledged) and listing["total"] == 12
        for row in listing["rows"]:
            assert client.get(row["image_url"]).status_code == 200  # the media files survived too
    finally:
        client.close()


# --------------------------------------------------------------------------------------------------
# the database unavailable


def _fail_new_connections(engine):
    """Every new database connection fails the way an unreachable database does."""

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    sa.event.listen(engine, "do_connect", refuse)
    engine.dispose()  # drop the pooled connections, so every request has to connect
    return lambda: (sa.event.remove(engine, "do_connect", refuse), engine.dispose())


def test_database_unavailable_is_a_clear_error_and_nothing_is_written(live):
    live.start_fake_worker("w")
    live.wait_workers(1)
    browser = live.browser(ANN)
    basic = live.client(ANN)
    assert upload(basic, [1]).status_code == 200
    media_before = sorted(p.name for p in (live.data_dir / "media").rglob("*") if p.is_file())
    restore = _fail_new_connections(live.runtime.db.engine)
    try:
        for r in (basic.get("/_/api/predictions"), upload(basic, [2]),  # HTTP Basic: not a misleading 401
                  browser.get("/_/api/predictions"), browser.post("/_/api/predictions", files=[
                      ("file", ("x.png", png_bytes(3), "image/png"))]),
                  live.client().post("/_/auth/login", json={"email": ANN, "password": USERS[ANN][0]})):
            assert r.status_code == 503, (r.request.url, r.status_code, r.text)
            assert r.json()["error"]["code"] == "database_unavailable" and r.headers["retry-after"] == "10"
    finally:
        restore()
    assert sorted(p.name for p in (live.data_dir / "media").rglob("*") if p.is_file()) == media_before
    assert live.n_rows() == 1
    assert browser.get("/_/auth/me").json()["user"]["email"] == ANN  # back to normal, session intact
    assert upload(basic, [2]).status_code == 200
    basic.close()
    browser.close()


def test_database_failing_at_the_insert_stores_nothing_of_that_chunk(live):
    """The worker answered, then a chunk's INSERT (one for its rows) fails: the files of that chunk and
    the rest are reported as not stored (retryable), the chunks before stay, and the image files written
    for the rows that were not stored are removed."""
    live.start_fake_worker("w")
    live.wait_workers(1)
    engine = live.runtime.db.engine
    inserts = []

    def fail_second_insert(conn, cursor, statement, params, context, executemany):
        if statement.startswith("INSERT INTO app_predictions"):
            inserts.append(statement)
            if len(inserts) >= 2:
                raise sqlite3.OperationalError("disk I/O error")

    n_files = CHUNK_SIZE + 5  # a full chunk, then the second chunk's INSERT fails
    sa.event.listen(engine, "before_cursor_execute", fail_second_insert)
    try:
        with live.client(ANN) as client:
            r = upload(client, range(n_files))
    finally:
        sa.event.remove(engine, "before_cursor_execute", fail_second_insert)
    assert len(inserts) == 2
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True] * CHUNK_SIZE + [False] * 5
    assert {x["error"]["code"] for x in results[CHUNK_SIZE:]} == {"storage_unavailable"}
    assert live.n_rows() == CHUNK_SIZE
    # the files of the rows that were not stored are gone already
    assert live.runtime.db.collect_orphan_media(min_age_s=0) == 0
    stored = {p.name for p in live.runtime.db.media.root.glob("??/*")}
    assert len(stored) == CHUNK_SIZE
    with live.client(ANN) as client:
        assert upload(client, [x["index"] for x in results[CHUNK_SIZE:]]).json()["n_ok"] == 5
    assert live.n_rows() == n_files


# --------------------------------------------------------------------------------------------------
# the media store's disk full


def test_full_disk_for_the_media_store(live, monkeypatch):
    live.start_fake_worker("w")
    live.wait_workers(1)
    media_dir = str(live.data_dir / "media")
    real_open = os.open

    def open_on_a_full_disk(path, flags, *args, **kwargs):
        # The media store's temporary files go to /dev/full, whose writes fail with ENOSPC from the
        # kernel, exactly like a full filesystem; every other open is left alone.
        if str(path).startswith(media_dir) and Path(path).name.startswith(".tmp-"):
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(path, flags, *args, **kwargs)

    with live.client(ANN) as client:
        assert upload(client, [1]).status_code == 200
        monkeypatch.setattr(os, "open", open_on_a_full_disk)
        r = upload(client, [2, 3])
        assert r.status_code == 507, r.text
        assert {x["error"]["code"] for x in r.json()["results"]} == {"storage_full"}
        assert "disk is full" in r.json()["results"][0]["error"]["message"]
        assert live.n_rows() == 1
        assert not [p for p in (live.data_dir / "media").rglob("*") if p.name.startswith(".tmp")]
        monkeypatch.setattr(os, "open", real_open)
        assert upload(client, [2, 3]).json()["n_ok"] == 2  # space again: the same files go through
    assert live.n_rows() == 3
