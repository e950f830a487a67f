"""``python -m apphost`` as a process: serves the hub, stops cleanly on SIGTERM, and an uplink reconnects
by itself to a restarted host."""

import signal
import socket
import sys

import httpx
import pytest

from tests.uplinkhelpers.harness import CLIENT_KEY, SERVER_KEY, UplinkProcess, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health(port: int) -> dict | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/_/health", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _start_host(port: int, tmp_path, name: str) -> UplinkProcess:
    host = UplinkProcess(
        [sys.executable, "-m", "apphost", "--no-worker", "--port", str(port)],
        tmp_path / f"{name}.log",
        key=SERVER_KEY,
        env={"ANVIL_CLIENT_UPLINK_KEY": CLIENT_KEY, "NSCFATE_DATA_DIR": str(tmp_path / "data")},
    )
    wait_until(lambda: _health(port), 30, "the host to answer")
    return host


@pytest.fixture
def port():
    return _free_port()


def test_host_process_serves_uplinks_and_they_reconnect_after_a_restart(port, tmp_path):
    url = f"ws://127.0.0.1:{port}/_/uplink"
    host = _start_host(port, tmp_path, "host1")
    uplink = UplinkProcess.script(url, "r", tmp_path, "--extra", "only_r")
    try:
        wait_until(lambda: "only_r" in _health(port)["registrations"], what="registration")
        host.terminate()
        assert host.wait(30) == 0
        assert SERVER_KEY not in host.output() and CLIENT_KEY not in host.output()
        host.close()

        host = _start_host(port, tmp_path, "host2")
        wait_until(lambda: "only_r" in (_health(port) or {}).get("registrations", {}), 40, "re-registration")
        caller = UplinkProcess.script(
            url, "caller", tmp_path, "--check", "--no-functions", "--check-call", "only_r", key=CLIENT_KEY
        )
        assert caller.wait(60) == 0
        assert "CHECK OK r" in caller.output()
        caller.close()
        assert "Reconnecting Anvil Uplink" in uplink.output()
    finally:
        uplink.close()
        host.terminate()
        host.wait(30)
        host.close()


def test_host_without_a_key_makes_its_own_and_refuses_other_keys(port, tmp_path):
    host = UplinkProcess(
        [sys.executable, "-m", "apphost", "--no-worker", "--port", str(port)], tmp_path / "nokey.log", key=None,
        env={"NSCFATE_DATA_DIR": str(tmp_path / "data")},
    )
    try:
        wait_until(lambda: _health(port), 30, "the host to answer")
        probe = UplinkProcess.script(f"ws://127.0.0.1:{port}/_/uplink", "p", tmp_path, "--check", key="anything")
        assert probe.wait(60) == 0
        assert "Incorrect uplink key" in probe.output()
        probe.close()
        key_file = tmp_path / "data" / "uplink.key"  # made once for this machine, owner-only
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.read_text().strip() not in host.output()
    finally:
        host.proc.send_signal(signal.SIGTERM)
        host.wait(30)
        host.close()
