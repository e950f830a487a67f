"""The assembled local host in the test process, over real sockets: uplink hub + the Anvil app's
server code + REST routes (``create_app(settings, app_routes=...)`` as docs/ANVIL_APP.md wires it),
served by uvicorn on a loopback port, with real uplink worker subprocesses.

Used by the reliability tests (bad input, faults, access, secrets). ``stop()`` / ``start()`` restart the
host on the same port, database and media store, the way a restarted process would find them.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from apphost.app import HostSettings, create_app
from apphost.http_api import api_routes
from apphost.protocol import MAX_FRAME_BYTES
from apphost.runtime import AppRuntime
from apphost.testing import browser_session, free_port, make_runtime
from tests.uplinkhelpers.harness import UplinkProcess, wait_until

ROOT_DIR = Path(__file__).resolve().parents[1]
WORKER_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
BATCH = "predict_cell_fate_batch"


class LiveHost:
    """One host (hub + runtime + HTTP routes) on ``127.0.0.1:port``, data under ``data_dir``."""

    def __init__(self, data_dir: Path, *, key: str, users: dict[str, tuple[str, str]] | None = None,
                 call_timeout: float = 30.0, port: int = 0, log_level: str = "warning") -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.users = users or {}
        self.call_timeout = call_timeout
        self.log_level = log_level
        self.runtime: AppRuntime | None = None
        self.hub: Any = None
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.uplink_url = f"ws://127.0.0.1:{self.port}/_/uplink"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.workers: list[UplinkProcess] = []

    # ---- host lifecycle

    def start(self) -> LiveHost:
        made: dict[str, AppRuntime] = {}

        def routes(hub):
            made["runtime"] = make_runtime(
                self.data_dir, hub.call_sync,
                host_functions={"nscfate_host_status": lambda: {"workers": len(hub.workers())}})
            return api_routes(made["runtime"])

        app = create_app(HostSettings(uplink_key=self.key, call_timeout=self.call_timeout), app_routes=routes)
        self.hub, self.runtime = app.state.hub, made["runtime"]
        for email, (password, role) in self.users.items():
            if self.runtime.accounts.find(email) is None:
                self.runtime.accounts.create_user(email, password, role=role)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        # log_config=None: uvicorn's records (access log included) go to the root logger like ours.
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=self.log_level, log_config=None,
                                                     ws_max_size=MAX_FRAME_BYTES, lifespan="on",
                                                     timeout_graceful_shutdown=30))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        wait_until(lambda: self._server.started, 30, "the host to start")
        return self

    def stop(self) -> None:
        """Graceful shutdown (requests in progress finish), then close the database."""
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=60)
            self._server = None
        if self.runtime is not None:
            self.runtime.close()
            self.runtime.db.dispose()
            self.runtime = None

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.stop()

    # ---- workers

    def start_worker(self, model_dir: Path, name: str, *extra: str) -> UplinkProcess:
        """A real ``python -m uplink`` worker serving ``model_dir``; its log is ``data_dir/name.log``."""
        proc = UplinkProcess([sys.executable, "-m", "uplink", "--url", self.uplink_url, "--model", str(model_dir),
                              *extra], self.data_dir / f"{name}.log", key=self.key, env=WORKER_ENV)
        self.workers.append(proc)
        return proc

    def start_fake_worker(self, name: str, *extra: str) -> UplinkProcess:
        """``apphost.testing.FakeWorker`` on the real anvil-uplink client (no model, starts in a second)."""
        proc = UplinkProcess([sys.executable, "-m", "apphost.testing", "--url", self.uplink_url, *extra],
                             self.data_dir / f"{name}.log", key=self.key)
        self.workers.append(proc)
        return proc

    def start_fault_worker(self, name: str, hold_after: int) -> tuple[UplinkProcess, Path]:
        """``tests.fault_uplink``: answers ``hold_after`` batch calls, then stalls on the next one and
        writes the returned marker file when that call has arrived."""
        marker = self.data_dir / f"{name}.holding"
        marker.unlink(missing_ok=True)
        proc = UplinkProcess([sys.executable, "-m", "tests.fault_uplink", "--url", self.uplink_url,
                              "--hold-after", str(hold_after), "--marker", str(marker)],
                             self.data_dir / f"{name}.log", key=self.key)
        self.workers.append(proc)
        return proc, marker

    def wait_workers(self, count: int, timeout: float = 180.0) -> None:
        """Wait until ``count`` uplinks serve the batch prediction function."""
        future = asyncio.run_coroutine_threadsafe(self.hub.wait_for_registration(BATCH, count, timeout), self.hub._loop)
        future.result(timeout + 5)

    def n_workers(self) -> int:
        return self.hub.registrations().get(BATCH, 0)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a worker function through the hub, as server code does."""
        return self.hub.call_sync(name, *args, **kwargs)

    # ---- clients

    def client(self, email: str | None = None, *, timeout: float = 60.0) -> httpx.Client:
        """An HTTP client; with ``email``, authenticated with HTTP Basic as that user."""
        auth = (email, self.users[email][0]) if email else None
        return httpx.Client(base_url=self.base, auth=auth, timeout=timeout)

    def browser(self, email: str, *, timeout: float = 60.0) -> httpx.Client:
        """A client signed in the way the web UI is: session cookie, and the CSRF token and
        ``X-Requested-With`` sent with every request."""
        return browser_session(self.base, email, self.users[email][0], timeout=timeout)

    def n_rows(self) -> int:
        """Rows of the predictions table, counted in the database itself."""
        import sqlalchemy as sa

        db = self.runtime.db
        with db.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(db.sql_table("predictions"))).scalar_one()


__all__ = ["ROOT_DIR", "LiveHost", "free_port", "wait_until"]
