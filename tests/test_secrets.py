"""No secret in the repository or in the logs.

- Every git-tracked file is scanned for secret-shaped strings (Anvil uplink keys, private keys, cloud
  and code-hosting tokens, a key passed to ``anvil.server.connect`` as a literal) and for files that
  hold secrets by their name (``*.key``, ``.env``, ``id_rsa``, ...).
- The real host (``python -m apphost --log-level debug``) and its worker run a session that handles
  every kind of secret - the machine's uplink key, a wrong key, a password (right, wrong and changed),
  session cookies and CSRF tokens - with every logger at DEBUG (uvicorn's access log and websocket
  frame trace, anvil-uplink in the worker); none of those values may appear in the logs, in the host's
  output, or in the health pages.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys

import httpx
import pytest

from apphost.http_api import COOKIE_NAME
from apphost.testing import png_bytes
from tests.hostproc import Host
from tests.livehost import ROOT_DIR, wait_until
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
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT_DIR, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (or no git): the scan covers the files git tracks")
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_secret_in_tracked_files():
    files = tracked_files()
    assert len(files) > 50  # really the repository
    found = []
    for name in files:
        # Tests plant fake credentials in URLs to check that they are redacted; keys are checked everywhere.
        patterns = {w: p for w, p in SECRET_PATTERNS.items() if not (w == "password in a URL" and
                                                                     name.startswith("tests/"))}
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
        for what, pattern in patterns.items():
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


def test_no_secret_in_the_logs_of_a_session(tmp_path, tiny_model):
    """The real host (``python -m apphost --log-level debug``: its logs, uvicorn's access log and frame
    trace, and its worker's logs all at DEBUG) through a session that uses every kind of secret."""
    email = "ada@lab.org"
    password, new_password = "pw-" + secrets.token_urlsafe(16), "pw-" + secrets.token_urlsafe(16)
    wrong_key = secrets.token_urlsafe(32)
    host = Host(tmp_path, "--port", "0", "--workers", "1", "--model", str(tiny_model), "--log-level", "debug",
                env={"NSCFATE_ADMIN_EMAIL": email, "NSCFATE_ADMIN_PASSWORD": password})
    seen: list[str] = []  # every session token and CSRF token the session produced
    try:
        url = host.wait_ready()
        key = (tmp_path / "data" / "uplink.key").read_text().strip()  # made by the host for this machine
        intruder = UplinkProcess([sys.executable, str(ROOT_DIR / "tests" / "uplinkhelpers" / "script_uplink.py"),
                                  "--url", url.replace("http://", "ws://") + "/_/uplink", "--tag", "intruder",
                                  "--check"], tmp_path / "intruder.log", key=wrong_key)
        intruder.wait(60)
        with httpx.Client(base_url=url, auth=(email, password), timeout=60) as basic:  # HTTP Basic
            assert basic.post("/_/api/predictions", files=[("file", ("a.png", png_bytes(1), "image/png"))]
                              ).status_code == 200
            assert basic.get("/_/api/predictions", auth=(email, password + "x")).status_code == 401  # near miss
            for route in ("/_/health", "/_/api/health", "/"):
                assert key not in basic.get(route).text
        with httpx.Client(base_url=url, timeout=60, headers={"X-Requested-With": "fetch"}) as browser:
            r = browser.post("/_/auth/login", json={"email": email, "password": password})
            seen += [browser.cookies.get(COOKIE_NAME), r.json()["csrf_token"]]
            r = browser.post("/_/auth/password", json={"old_password": password, "new_password": new_password},
                             headers={"X-CSRF-Token": r.json()["csrf_token"]})
            assert r.status_code == 200, r.text
            seen += [browser.cookies.get(COOKIE_NAME), r.json()["csrf_token"]]
            assert all(seen) and len(seen) == 4  # the session tokens really are among the secrets looked for
            assert browser.post("/_/api/predictions", files=[("file", ("b.png", png_bytes(2), "image/png"))],
                                headers={"X-CSRF-Token": r.json()["csrf_token"]}).status_code == 200
            assert browser.post("/_/auth/login", json={"email": email, "password": "wrong " + new_password}
                                ).status_code == 401
        wait_until(lambda: "Incorrect uplink key" in host.stderr(), 30, "the host to log the refusal")
        assert host.interrupt() == 0
    finally:
        host.stop()
    logs, out = host.stderr(), host.stdout()
    # everything was logged: the worker's and the host's DEBUG lines, uvicorn's access log (on stdout)
    assert "worker ready" in logs and " DEBUG " in logs and "POST /_/api/predictions" in logs + out
    secrets_used = {"uplink key": key, "wrong uplink key": wrong_key, "password": password,
                    "new password": new_password, **{f"session value {i}": v for i, v in enumerate(seen)}}
    leaks = [f"{what} in the {where}" for where, text in (("host and worker log", logs), ("host's output", out),
                                                           ("wrong-key uplink's output", intruder.output()))
             for what, value in secrets_used.items() if value in text]
    assert leaks == []


@pytest.mark.parametrize("attr", ["uplink_key", "client_uplink_key"])
def test_host_settings_never_print_keys(attr):
    from apphost.app import HostSettings

    value = secrets.token_urlsafe(24)
    settings = HostSettings(**{"uplink_key": "k", attr: value})
    assert value not in repr(settings) and value not in str(settings)
