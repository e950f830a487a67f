"""No secret in the repository or in the logs.

- Every git-tracked file is scanned for secret-shaped strings (Anvil uplink keys, private keys, cloud
  and code-hosting tokens, a key passed to ``anvil.server.connect`` as a literal) and for files that
  hold secrets by their name (``*.key``, ``.env``, ``id_rsa``, ...).
- A host and a worker run a session that handles every kind of secret - a random uplink key, a wrong
  key, a password (right, wrong and changed), session cookies and CSRF tokens - with every logger at
  DEBUG (uvicorn's access log included); none of those values may appear in any log line, in the
  worker's output, or in the health pages.
"""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from apphost.testing import png_bytes
from tests.livehost import ROOT_DIR, LiveHost, wait_until
from tests.uplinkhelpers.harness import UplinkProcess

# Built from parts so this file does not match its own patterns.
_BEGIN = "-----" + "BEGIN"
SECRET_PATTERNS = {
    "Anvil uplink key": re.compile(r"\b(?:server|client)_[A-Z0-9]{16,}(?:-[A-Z0-9]{8,})?\b"),
    "private key block": re.compile(_BEGIN + r" (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "key given to connect() as a literal": re.compile(r"anvil\.server\.connect\(\s*[\"'][^\"']{8,}[\"']"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s:@]{6,}@(?!example)[a-z0-9.-]+", re.I),
}
SECRET_FILE_NAMES = re.compile(r"(^|/)(\.env(\..*)?|.*\.key|.*\.pem|.*\.p12|.*\.pfx|id_rsa.*|id_ed25519.*|"
                               r"\.netrc|credentials(\.json)?)$")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT_DIR, capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_secret_in_tracked_files():
    files = tracked_files()
    assert len(files) > 50  # really the repository
    found = []
    for name in files:
        if SECRET_FILE_NAMES.search(name):
            found.append(f"{name}: a file that holds secrets by its name")
            continue
        path = ROOT_DIR / name
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (images, model weights)
        for what, pattern in SECRET_PATTERNS.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{name}:{line}: {what}: {m.group(0)[:40]}")
    assert found == []


def test_the_scan_finds_planted_secrets(tmp_path):
    """The patterns are not vacuous: each catches a realistic example."""
    examples = {
        "Anvil uplink key": "ANVIL_UPLINK_KEY=server_" + "ABCDEFGHJKLMNPQRSTUV2345" + "-" + "WXYZ2345ABCD",
        "private key block": _BEGIN + " OPENSSH PRIVATE KEY-----",
        "AWS access key": "AKIA" + "ABCDEFGHIJKLMNOP",
        "GitHub token": "ghp_" + "a1" * 18,
        "Slack token": "xoxb-" + "1234567890-abcdef",
        "key given to connect() as a literal": 'anvil.server.connect("' + "client_" + 'ABC123DEF456")',
        "password in a URL": "postgresql://nscfate:" + "s3cretpass" + "@db.lab.org/nscfate",
    }
    for what, text in examples.items():
        assert SECRET_PATTERNS[what].search(text), what
    assert SECRET_FILE_NAMES.search("deploy/uplink.key") and SECRET_FILE_NAMES.search(".env")
    assert not SECRET_PATTERNS["Anvil uplink key"].search("ANVIL_UPLINK_KEY=server_XXXX python -m uplink")


# --------------------------------------------------------------------------------------------------
# logs


def test_no_secret_in_the_logs_of_a_session(tmp_path, caplog):
    key, wrong_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    password, new_password = "pw-" + secrets.token_urlsafe(16), "pw-" + secrets.token_urlsafe(16)
    email = "ann@lab.org"
    caplog.set_level(logging.DEBUG)
    host = LiveHost(tmp_path / "host", key=key, users={email: (password, "researcher")}, log_level="debug").start()
    seen: list[str] = []  # every secret value the session produced
    try:
        worker = host.start_fake_worker("worker")
        host.wait_workers(1)
        intruder = UplinkProcess([sys.executable, str(ROOT_DIR / "tests" / "uplinkhelpers" / "script_uplink.py"),
                                  "--url", host.uplink_url, "--tag", "intruder", "--check"],
                                 tmp_path / "intruder.log", key=wrong_key)
        assert intruder.wait(60) != 0 or "refused" in intruder.output().lower() or "incorrect" in intruder.output().lower()

        with host.client(email) as basic:  # HTTP Basic with the password
            assert basic.post("/_/api/predictions", files=[("file", ("a.png", png_bytes(1), "image/png"))]
                              ).status_code == 200
            assert basic.get("/_/api/predictions", auth=(email, password + "x")).status_code == 401  # near miss
            for route in ("/_/health", "/_/api/health"):
                assert key not in basic.get(route).text
        browser = host.browser(email)
        seen += [browser.cookies.get("nscfate_session"), browser.headers["X-CSRF-Token"]]
        r = browser.post("/_/auth/password", json={"old_password": password, "new_password": new_password})
        assert r.status_code == 200, r.text
        seen += [browser.cookies.get("nscfate_session"), r.json()["csrf_token"]]
        assert browser.post("/_/api/predictions", files=[("file", ("b.png", png_bytes(2), "image/png"))],
                            headers={"X-CSRF-Token": r.json()["csrf_token"]}).status_code == 200
        assert browser.post("/_/auth/login", json={"email": email, "password": "wrong " + new_password}
                            ).status_code == 401
        browser.close()
        wait_until(lambda: "Refused uplink connection" in caplog.text, 30, "the hub to log the refusal")
    finally:
        host.close()
    # The host's records; httpx/httpcore are this test's own clients (they log the cookies they receive).
    host_log = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records
                          if not r.name.startswith(("httpx", "httpcore")))
    logs = {"host (all loggers at DEBUG)": host_log, "worker": worker.output(), "wrong-key uplink": intruder.output()}
    assert "POST /_/api/predictions" in host_log and "uvicorn.error" in host_log  # DEBUG logs were on
    secrets_used = {"uplink key": key, "wrong uplink key": wrong_key, "password": password,
                    "new password": new_password, **{f"session value {i}": v for i, v in enumerate(seen) if v}}
    leaks = [f"{what} in the {where} log" for where, text in logs.items() for what, value in secrets_used.items()
             if value in text]
    assert leaks == []


@pytest.mark.parametrize("attr", ["uplink_key", "client_uplink_key"])
def test_host_settings_never_print_keys(attr):
    from apphost.app import HostSettings

    value = secrets.token_urlsafe(24)
    settings = HostSettings(**{"uplink_key": "k", attr: value})
    assert value not in repr(settings) and value not in str(settings)
