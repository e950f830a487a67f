"""Serve the local host on a loopback port in a background thread, and run uplink subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from apphost.app import HostSettings, create_app
from apphost.protocol import MAX_FRAME_BYTES

ROOT = Path(__file__).resolve().parents[2]
SCRIPT_UPLINK = Path(__file__).with_name("script_uplink.py")
SERVER_KEY = "test-server-key-" + "x" * 8
CLIENT_KEY = "test-client-key-" + "y" * 8


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class HubServer:
    """The host app served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, settings: HostSettings | None = None, port: int = 0) -> None:
        self.settings = settings or HostSettings(uplink_key=SERVER_KEY, client_uplink_key=CLIENT_KEY)
        self.app = create_app(self.settings)
        self.hub = self.app.state.hub
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/_/uplink"
        config = uvicorn.Config(self.app, log_level="warning", ws_max_size=MAX_FRAME_BYTES, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        wait_until(lambda: self.server.started, 20, "uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=20)

    def run(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the hub's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.hub._loop).result(timeout)

    def wait_registered(self, name: str, count: int = 1, timeout: float = 30) -> None:
        self.run(self.hub.wait_for_registration(name, count, timeout), timeout + 5)


class UplinkProcess:
    """A subprocess uplink; its output goes to a file (read with ``output()``)."""

    def __init__(self, args: list[str], log_path: Path, key: str | None = SERVER_KEY, env: dict | None = None):
        full_env = {k: v for k, v in os.environ.items() if k != "ANVIL_UPLINK_KEY"}
        if key is not None:
            full_env["ANVIL_UPLINK_KEY"] = key
        full_env.update(env or {})
        full_env["PYTHONPATH"] = str(ROOT)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)

    @classmethod
    def script(cls, url: str, tag: str, tmp_path: Path, *extra: str, key: str | None = SERVER_KEY) -> UplinkProcess:
        return cls(
            [sys.executable, str(SCRIPT_UPLINK), "--url", url, "--tag", tag, *extra],
            tmp_path / f"uplink-{tag}.log",
            key=key,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self.kill()
        self._log.close()
