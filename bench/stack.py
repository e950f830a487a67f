"""The serving stack for the serving benchmarks, each part in its own process as in production: the
local host (uplink hub + the Anvil app's server code + REST routes, wired as docs/ANVIL_APP.md shows)
and real ``python -m uplink`` workers, optionally pinned to CPU cores.

``python bench/stack.py --data DIR --port P`` runs the host alone (the key comes from
``ANVIL_UPLINK_KEY``, the first lab admin from ``NSCFATE_ADMIN_EMAIL``/``NSCFATE_ADMIN_PASSWORD``);
:class:`ServingStack` starts it and the workers and waits until they are connected.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apphost.testing import browser_session, free_port  # noqa: E402
from bench.common import ROOT, CpuQuota  # noqa: E402

log = logging.getLogger("bench.stack")

ADMIN_EMAIL = "bench@lab.org"


class ServingStack:
    """Host process + ``workers`` worker processes serving ``model_dir``.

    Args:
        model_dir: the model every worker serves.
        data_dir: the host's database and media store (created).
        workers: how many workers.
        cores: ``cores[i]`` is the CPU set worker ``i`` is pinned to (``None``: not pinned).
        host_cores: the CPU set of the host process (``None``: not pinned).
        worker_args: extra ``python -m uplink`` options (e.g. ``--max-batch 32 --max-wait-ms 5``).
        cpu_quota: cap each worker at this many CPUs (its own cgroup, :class:`bench.common.CpuQuota`;
            needs root), so that a worker has a fixed budget of its own and the host the rest.
    """

    def __init__(self, model_dir: Path, data_dir: Path, *, workers: int = 1,
                 cores: Sequence[set[int] | None] | None = None, host_cores: set[int] | None = None,
                 worker_args: Sequence[str] = (), cpu_quota: float | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.data_dir = Path(data_dir)
        self.n_workers = workers
        self.cores = list(cores) if cores is not None else [None] * workers
        self.host_cores = host_cores
        self.worker_args = list(worker_args)
        self.cpu_quota = cpu_quota
        self._quotas: list[CpuQuota] = []
        self.key = secrets.token_urlsafe(24)
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.host: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self._logs: list = []

    # ---- lifecycle

    def __enter__(self) -> "ServingStack":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, timeout: float = 300.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "ANVIL_UPLINK_KEY": self.key, "NSCFATE_ADMIN_EMAIL": ADMIN_EMAIL,
               "NSCFATE_ADMIN_PASSWORD": self.password, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.host = self._spawn([sys.executable, str(Path(__file__).resolve()), "--data", str(self.data_dir),
                                 "--port", str(self.port)], env, "host", self.host_cores)
        self._wait(lambda: self._health() is not None, timeout, "the host to answer")
        for i in range(self.n_workers):
            wenv = dict(env)
            del wenv["NSCFATE_ADMIN_PASSWORD"]
            cmd = [sys.executable, "-m", "uplink", "--url", f"ws://127.0.0.1:{self.port}/_/uplink",
                   "--model", str(self.model_dir), "--log-level", "WARNING", *self.worker_args]
            self.workers.append(self._spawn(cmd, wenv, f"worker{i}", self.cores[i]))
            if self.cpu_quota:
                name = f"nscfate-bench-{os.getpid()}-worker{i}"
                self._quotas.append(CpuQuota(name, self.cpu_quota).add(self.workers[-1].pid))
        self._wait(lambda: self.connected_workers() >= self.n_workers, timeout,
                   f"{self.n_workers} worker(s) to connect")
        log.info("serving stack up: host pid %d, workers %s", self.host.pid, [w.pid for w in self.workers])

    def close(self) -> None:
        for proc in [*self.workers, self.host]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.host]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in self._logs:
            f.close()
        self._logs.clear()
        for quota in self._quotas:
            quota.close()
        self._quotas.clear()

    # ---- helpers

    def client(self, timeout: float = 120.0) -> httpx.Client:
        """An HTTP client authenticated as the benchmark's lab admin (HTTP Basic, as scripts use)."""
        return httpx.Client(base_url=self.base, auth=(ADMIN_EMAIL, self.password), timeout=timeout)

    def session_client(self, timeout: float = 120.0) -> httpx.Client:
        """A client signed in as the web UI is (session cookie + CSRF header)."""
        return browser_session(self.base, ADMIN_EMAIL, self.password, timeout=timeout)

    def connected_workers(self) -> int:
        health = self._health()
        return int((health or {}).get("registrations", {}).get("predict_cell_fate_batch", 0))

    @property
    def uplink_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/_/uplink"

    def pids(self) -> dict[str, list[int]]:
        return {"host": [self.host.pid] if self.host else [], "workers": [w.pid for w in self.workers]}

    def _health(self) -> dict | None:
        if self.host is not None and self.host.poll() is not None:
            raise RuntimeError(f"the host exited with status {self.host.returncode}; see {self.data_dir}/host.log")
        try:
            r = httpx.get(f"{self.base}/_/health", timeout=2)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def _spawn(self, cmd: list[str], env: dict[str, str], name: str, cores: set[int] | None) -> subprocess.Popen:
        logf = open(self.data_dir / f"{name}.log", "wb")
        self._logs.append(logf)
        preexec = (lambda: os.sched_setaffinity(0, cores)) if cores else None
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT, preexec_fn=preexec)

    def _wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for i, w in enumerate(self.workers):
                if w.poll() is not None:
                    raise RuntimeError(f"worker {i} exited with status {w.returncode}; see "
                                       f"{self.data_dir}/worker{i}.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------- the host

def serve(data_dir: Path, port: int) -> None:
    """Run the local host: hub + server code + REST routes on 127.0.0.1:``port`` until SIGTERM.

    The wiring is the one docs/ANVIL_APP.md documents for ``apphost``."""
    import uvicorn

    from apphost.app import HostSettings, create_app
    from apphost.http_api import api_routes
    from apphost.protocol import MAX_FRAME_BYTES
    from apphost.runtime import create_runtime

    made = {}

    def routes(hub):
        made["runtime"] = create_runtime(
            ROOT, db_url=f"sqlite:///{data_dir / 'app.db'}", media_dir=data_dir / "media", env=os.environ,
            call=lambda name, *a, **k: hub.call_sync(name, *a, **k),
            host_functions={"nscfate_host_status": lambda: {
                "workers": hub.registrations().get("predict_cell_fate_batch", 0)}})
        return api_routes(made["runtime"])

    app = create_app(HostSettings(uplink_key=os.environ["ANVIL_UPLINK_KEY"]), app_routes=routes)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, ws_max_size=MAX_FRAME_BYTES, log_level="warning",
                            lifespan="on")
    try:
        uvicorn.Server(config).run()
    finally:
        made["runtime"].close()
        made["runtime"].db.dispose()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Run the local host for the serving benchmarks.")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    serve(a.data, a.port)
