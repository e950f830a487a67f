"""A ``python -m apphost`` subprocess for tests (tests/test_host.py, tests/test_browser.py)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READY_LINE = re.compile(r"NSC Fate is running at (http://\S+)")


class Host:
    """``python -m apphost`` as a subprocess; stdout (the product's messages) and stderr (logs) apart."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None, name: str = "host"):
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("ANVIL_UPLINK_KEY", "NSCFATE_ADMIN_EMAIL", "NSCFATE_ADMIN_PASSWORD", "DATABASE_URL")}
        full_env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
                         "NSCFATE_DATA_DIR": str(tmp_path / "data"), **(env or {})})
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # Its own process group, like a program started in a terminal (Ctrl-C reaches the group).
            self.proc = subprocess.Popen([sys.executable, "-m", "apphost", *args], stdout=out, stderr=err,
                                         env=full_env, cwd=ROOT, start_new_session=True)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> str:
        """The URL from the ready message (printed once a worker serves predictions)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = READY_LINE.search(self.stdout())
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                pytest.fail(f"the host exited with {self.proc.returncode}:\n{self.stdout()}\n{self.stderr()[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"the host was not ready within {timeout} s:\n{self.stderr()[-3000:]}")

    def interrupt(self, timeout: float = 90, group: bool = False) -> int:
        """SIGINT to the host (``group``: to the host and its workers, as Ctrl-C in a terminal does);
        wait for it to exit and return its status."""
        if group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """Kill the host and any worker it left behind (test clean-up)."""
        for pid in children_of(self.proc.pid):
            kill_pid(pid)
        self.kill()


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
