"""``python -m apphost``, the one-command local host: data directory, uplink key, first admin, workers
kept alive, readiness, bind refusal, clean stop, and data that survives a restart."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anvil.users
import httpx
import pytest
import sqlalchemy as sa

from apphost.__main__ import (
    HostError,
    data_paths,
    database_url,
    describe_database,
    is_loopback,
    load_or_create_key,
    main,
    sweep_orphan_media,
)
from apphost.testing import FakeWorker, free_port, make_runtime, png_bytes
from tests.hostproc import ROOT, Host, children_of, kill_pid


# ---- settings (in-process)


def test_data_directory_from_the_environment(tmp_path):
    paths = data_paths(None, {"NSCFATE_DATA_DIR": str(tmp_path / "lab-data")})
    assert paths.root == tmp_path / "lab-data" and paths.media.is_dir()
    assert paths.root.stat().st_mode & 0o777 == 0o700
    assert data_paths(tmp_path / "cli", {"NSCFATE_DATA_DIR": str(tmp_path / "env")}).root == tmp_path / "cli"
    assert database_url(paths, {}) == f"sqlite:///{tmp_path / 'lab-data' / 'app.db'}"


def test_database_url_switches_to_postgresql_with_the_installed_driver(tmp_path):
    paths = data_paths(tmp_path, {})
    url = database_url(paths, {"DATABASE_URL": "postgres://lab:s3cret@example.org:5432/nscfate"})
    assert url == "postgresql+psycopg://lab:s3cret@example.org:5432/nscfate"
    assert database_url(paths, {"DATABASE_URL": "postgresql://h/db"}) == "postgresql+psycopg://h/db"
    described = describe_database(url)
    assert "s3cret" not in described and "example.org" in described


def test_uplink_key_is_made_once_with_owner_only_permissions(tmp_path, caplog):
    path = tmp_path / "uplink.key"
    with caplog.at_level(logging.INFO):
        key = load_or_create_key(path)
    assert len(key) >= 32 and path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path) == key
    assert key not in caplog.text
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_or_create_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600 and "readable by other users" in caplog.text
    path.write_text("short\n")
    with pytest.raises(Exception, match="does not hold a usable uplink key"):
        load_or_create_key(path)


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "lab-server.local"))


# ---- --reset-password (in-process; test_one_command_runs_everything... does it beside a running host)


@pytest.fixture
def host_env(monkeypatch):
    for name in ("DATABASE_URL", "NSCFATE_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)


# ---- the hourly sweep of orphan media files (in-process, on a clock of the test's own)

HOUR = 3600.0


@pytest.fixture
def media_db(tmp_path):
    from apphost.tables import Database, parse_db_schema

    db = Database(f"sqlite:///{tmp_path / 'app.db'}",
                  parse_db_schema({"scans": {"columns": [{"name": "image", "type": "media"}]}}), tmp_path / "media")
    db.create_tables()
    yield db
    db.dispose()


def _stored(db, content: bytes, modified: float, *, row: bool = True):
    """A stored file modified at ``modified``, with a row referring to it (or an orphan: its row deleted)."""
    scan = db.app_tables.scans.add_row(image=anvil.BlobMedia("image/png", content))
    path = db.media.path(scan["image"].sha256)
    if not row:
        db.media.pin(path.name)  # a delete whose own removal of the file did not happen (a crash)
        scan.delete()
        db.media.unpin(path.name)
    os.utime(path, (modified, modified))
    return scan, path


def _looked_at(db, monkeypatch) -> list[str]:
    """The files a sweep judges (it asks the database whether a row refers to each)."""
    names: list[str] = []
    referenced = db._media_referenced
    monkeypatch.setattr(db, "_media_referenced", lambda sha: names.append(sha) or referenced(sha))
    return names


def test_a_sweep_looks_only_at_files_no_earlier_sweep_judged(media_db, monkeypatch):
    now = time.time()
    _, kept = _stored(media_db, b"kept", now - 2 * HOUR)
    _, young = _stored(media_db, b"young orphan", now - HOUR / 2, row=False)
    looked_at = _looked_at(media_db, monkeypatch)

    judged = sweep_orphan_media(media_db, None, now)  # at start: every file old enough
    assert looked_at == [kept.name] and kept.exists() and young.exists()  # the young one may be a write's
    looked_at.clear()
    judged = sweep_orphan_media(media_db, judged, now + HOUR)
    assert looked_at == [young.name] and not young.exists()  # the kept file was judged already
    looked_at.clear()
    assert sweep_orphan_media(media_db, judged, now + 2 * HOUR) == now + 2 * HOUR - HOUR - 60
    assert looked_at == [] and kept.exists()


def test_a_removal_left_undone_is_done_by_the_next_sweep(media_db, monkeypatch):
    now = time.time()
    scan, path = _stored(media_db, b"deleted while the database was down", now - 2 * HOUR)
    judged = sweep_orphan_media(media_db, None, now)
    assert path.exists()  # its row was there

    def database_down(sha):
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    with monkeypatch.context() as m:
        m.setattr(media_db, "_media_referenced", database_down)
        scan.delete()  # the row went; whether another row holds the file could not be checked
    assert path.exists() and media_db.sweep_everything
    # The file is older than what the last sweep judged, yet the next sweep removes it.
    sweep_orphan_media(media_db, judged, now + HOUR)
    assert not path.exists() and not media_db.sweep_everything


def test_a_failed_sweep_leaves_its_files_to_the_next(media_db, monkeypatch, caplog):
    now = time.time()
    judged = sweep_orphan_media(media_db, None, now)
    _, orphan = _stored(media_db, b"orphan", now - HOUR / 2, row=False)  # after that sweep's line
    with monkeypatch.context() as m:
        m.setattr(media_db, "_media_referenced", lambda sha: 1 / 0)
        with caplog.at_level(logging.WARNING):
            assert sweep_orphan_media(media_db, judged, now + HOUR) == judged
    assert orphan.exists() and "could not sweep the media store" in caplog.text
    sweep_orphan_media(media_db, judged, now + 2 * HOUR)
    assert not orphan.exists()


def test_a_sweep_never_removes_a_file_a_row_refers_to(media_db):
    now = time.time()
    paths = [_stored(media_db, f"scan {i}".encode(), now - age)[1] for i, age in enumerate((3 * HOUR, HOUR + 90))]
    judged = None
    for sweep in range(3):
        media_db.sweep_everything = sweep == 1  # a full sweep too
        judged = sweep_orphan_media(media_db, judged, now + sweep * HOUR)
        assert all(p.exists() for p in paths)


def test_reset_password_opens_only_the_accounts(tmp_path, monkeypatch, capsys, caplog, host_env):
    rt = make_runtime(tmp_path, FakeWorker())  # the data directory as the host leaves it
    ann = rt.accounts.create_user("ann@lab.org", "correct horse battery")
    rt.accounts.create_session(ann)
    rt.close()
    rt.db.dispose()

    def forbidden(*args, **kwargs):
        raise AssertionError("a password reset loaded the app's server code or changed the tables")

    # The app's code is not needed, and the tables belong to the host (running now, maybe another version).
    monkeypatch.setattr("apphost.runtime.import_server_modules", forbidden)
    monkeypatch.setattr("apphost.tables.Database.create_tables", forbidden)
    monkeypatch.setattr("apphost.users.Accounts.create_tables", forbidden)
    with caplog.at_level(logging.INFO):
        assert main(["--data-dir", str(tmp_path), "--reset-password", " Ann@Lab.ORG "]) == 0
    out = capsys.readouterr()
    password = re.search(r"New one-time password for ann@lab.org \(shown only now\): (\S+)\n", out.out).group(1)
    assert password not in out.err and password not in caplog.text  # the console only, never the log
    monkeypatch.undo()

    rt = make_runtime(tmp_path, FakeWorker())
    try:
        with pytest.raises(anvil.users.AuthenticationFailed):
            rt.accounts.authenticate("ann@lab.org", "correct horse battery")
        assert rt.accounts.authenticate("ann@lab.org", password).get_id() == ann.get_id()
        with rt.db.engine.connect() as conn:  # its sessions were ended
            assert conn.execute(sa.text("SELECT COUNT(*) FROM anvil_host_sessions")).scalar() == 0
    finally:
        rt.close()
        rt.db.dispose()


def test_reset_password_says_in_one_line_what_is_wrong(tmp_path, capsys, host_env):
    nowhere = tmp_path / "nowhere"
    assert main(["--data-dir", str(nowhere), "--reset-password", "ann@lab.org"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err == f"nscfate host: no database at {nowhere / 'app.db'} (is --data-dir or " \
                                        "NSCFATE_DATA_DIR the host's?)\n"
    assert not nowhere.exists()  # a mistyped data directory is not made

    rt = make_runtime(tmp_path, FakeWorker())
    rt.accounts.create_user("ann@lab.org", "correct horse battery")
    rt.close()
    rt.db.dispose()
    for email, message in (("Nobody@lab.org", "no account nobody@lab.org"),
                           ("ann.lab.org", "Enter a valid email address, like name@lab.org")):
        assert main(["--data-dir", str(tmp_path), "--reset-password", email]) == 2
        out = capsys.readouterr()
        assert out.out == "" and out.err == f"nscfate host: {message}\n"


# ---- the host process


@pytest.fixture
def hosts():
    started: list[Host] = []
    yield started
    for host in started:
        host.stop()


def _health(url: str) -> dict:
    try:
        return httpx.get(url + "/_/api/health", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return {}


def _wait(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def test_one_command_runs_everything_and_keeps_workers_alive(tmp_path, tiny_model, hosts):
    port = free_port()
    host = Host(tmp_path, "--workers", "2", "--model", str(tiny_model), env={"PORT": str(port)})
    hosts.append(host)
    url = host.wait_ready()
    assert url == f"http://127.0.0.1:{port}"

    # The first lab admin with a one-time password, printed once on stdout, never in the logs.
    out = host.stdout()
    email = re.search(r"created lab admin account (\S+)", out).group(1)
    password = re.search(r"One-time password \(shown only now\): (\S+)", out).group(1)
    assert password not in host.stderr()
    assert "tiny-medium4 0.0.1 (trained on SYNTHETIC data)" in out

    # This machine's uplink key: made once, owner-only, in no output and on no command line.
    key_file = tmp_path / "data" / "uplink.key"
    key = key_file.read_text().strip()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key not in out and key not in host.stderr()
    _wait(lambda: _health(url).get("workers") == 2, "two workers")
    workers = children_of(host.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

    # The whole path works: a prediction through the REST API, stored in the data directory.
    r = httpx.post(url + "/_/api/predictions", auth=(email, password), data={"experiment": "restart-check"},
                   files=[("file", ("cell.png", png_bytes(3, size=40), "image/png"))], timeout=60)
    assert r.status_code == 200 and r.json()["n_ok"] == 1
    assert (tmp_path / "data" / "app.db").exists() and any((tmp_path / "data" / "media").rglob("*"))
    assert (tmp_path / "data" / "app.db").stat().st_mode & 0o077 == 0  # accounts and history: this user's alone

    # A worker that dies is replaced.
    kill_pid(workers[0])
    _wait(lambda: workers[0] not in children_of(host.proc.pid) and len(children_of(host.proc.pid)) == 2,
          "the dead worker to be replaced")
    _wait(lambda: _health(url).get("workers") == 2, "the new worker to connect")

    # Ctrl-C (to the whole process group, as in a terminal) stops the host and its workers cleanly,
    # without restarting the workers it reaches at the same time.
    workers = children_of(host.proc.pid)
    restarts = host.stderr().count("restarting it")
    assert host.interrupt(group=True) == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert host.stderr().count("worker stopped") == 2
    assert host.stderr().count("restarting it") == restarts == 1
    assert "Traceback" not in host.stderr()

    assert "GET /_/api/health" in host.stderr() and "GET /" not in host.stdout()  # stdout: messages only

    # Everything survives a restart: the same key, the same accounts, the history. A file a crash left
    # in the media store (no row refers to it) is removed at start.
    orphan = tmp_path / "data" / "media" / "ab" / ("ab" + "0" * 62)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"left by a crash")
    os.utime(orphan, (time.time() - 7200,) * 2)
    again = Host(tmp_path, "--workers", "0", "--port", str(port), name="host2")
    hosts.append(again)
    assert again.wait_ready(60) == url
    deadline = time.monotonic() + 30
    while orphan.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not orphan.exists() and "removed 1 stored image file(s) that no row refers to" in again.stderr()
    assert "One-time password" not in again.stdout() and f"Sign in as {email}" in again.stdout()
    assert key_file.read_text().strip() == key
    history = httpx.get(url + "/_/api/predictions", auth=(email, password), params={"experiment": "restart-check"},
                        timeout=30).json()
    assert history["total"] == 1 and history["rows"][0]["filename"] == "cell.png"
    assert "--key-file" in again.stdout()  # how to connect workers of one's own
    # A lost password: reset from the command line, while the host runs.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NSCFATE_", "DATABASE_URL"))}
    reset = subprocess.run([sys.executable, "-m", "apphost", "--reset-password", email.upper()], cwd=ROOT,
                           env={**env, "NSCFATE_DATA_DIR": str(tmp_path / "data")}, capture_output=True, text=True,
                           timeout=120)
    assert reset.returncode == 0, reset.stderr
    new_password = re.search(r"\(shown only now\): (\S+)", reset.stdout).group(1)
    assert new_password not in reset.stderr  # the console only, never the log
    assert httpx.get(url + "/_/api/predictions", auth=(email, password), timeout=30).status_code == 401
    assert httpx.get(url + "/_/api/predictions", auth=(email, new_password), timeout=30).status_code == 200
    nobody = subprocess.run([sys.executable, "-m", "apphost", "--reset-password", "nobody@lab.org"], cwd=ROOT,
                            env={**env, "NSCFATE_DATA_DIR": str(tmp_path / "data")}, capture_output=True, text=True,
                            timeout=120)
    assert nobody.returncode == 2 and "no account nobody@lab.org" in nobody.stderr
    assert again.interrupt() == 0


def test_binding_beyond_loopback_needs_an_admin_account(tmp_path, hosts):
    host = Host(tmp_path, "--host", "0.0.0.0", "--port", "0", "--workers", "0")
    hosts.append(host)
    assert host.proc.wait(60) == 2
    assert "refusing to listen on 0.0.0.0" in host.stderr() and "NSCFATE_ADMIN_PASSWORD" in host.stderr()
    assert "password" not in host.stdout().lower()  # no one-time password made for a network-facing host
    assert "Traceback" not in host.stderr()

    admin = {"NSCFATE_ADMIN_EMAIL": "ada@lab.org", "NSCFATE_ADMIN_PASSWORD": "correct horse battery"}
    host = Host(tmp_path, "--host", "0.0.0.0", "--port", "0", "--workers", "0", env=admin, name="host2")
    hosts.append(host)
    url = host.wait_ready(60)
    assert "Sign in as ada@lab.org" in host.stdout()
    me = httpx.post(url + "/_/auth/login", json={"email": "ada@lab.org", "password": "correct horse battery"},
                    timeout=30)
    assert me.status_code == 200 and me.json()["user"]["role"] == "lab_admin"
    # Behind a TLS proxy on this machine (README): the browser's origin is the proxy's, and it works.
    proxied = {"Host": "nscfate.lab.example", "X-Forwarded-Proto": "https"}
    me = httpx.post(url + "/_/auth/login", json={"email": "ada@lab.org", "password": "correct horse battery"},
                    headers={**proxied, "Origin": "https://nscfate.lab.example"}, timeout=30)
    assert me.status_code == 200 and "secure" in me.headers["set-cookie"].lower()
    other = httpx.post(url + "/_/auth/login", json={"email": "ada@lab.org", "password": "correct horse battery"},
                       headers={**proxied, "Origin": "https://evil.example"}, timeout=30)
    assert other.status_code == 403
    assert host.interrupt() == 0


def test_forwarded_headers_are_trusted_from_the_allowed_proxy_only(tmp_path, hosts):
    """``--forwarded-allow-ips``: X-Forwarded-Proto/-For from that address decide the scheme (secure
    cookie, same-origin check) and the client address (the sign-in rate limiter's key); from any other
    address, this machine's own 127.0.0.1 included, they are ignored. The flag wins over
    $FORWARDED_ALLOW_IPS (and uvicorn's default, 127.0.0.1)."""
    from concurrent.futures import ThreadPoolExecutor

    from apphost.users import LoginRateLimiter

    proxy_addr = "127.0.0.2"  # the "TLS proxy": a client bound to another loopback address
    admin = {"NSCFATE_ADMIN_EMAIL": "ada@lab.org", "NSCFATE_ADMIN_PASSWORD": "correct horse battery",
             "FORWARDED_ALLOW_IPS": "127.0.0.1"}
    host = Host(tmp_path, "--port", "0", "--workers", "0", "--forwarded-allow-ips", proxy_addr, env=admin)
    hosts.append(host)
    url = host.wait_ready(60)
    proxy = httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address=proxy_addr), timeout=60)
    direct = httpx.Client(base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.1"), timeout=60)
    credentials = {"email": "ada@lab.org", "password": "correct horse battery"}
    https = {"Host": "nscfate.lab.example", "X-Forwarded-Proto": "https"}

    # X-Forwarded-Proto: https from the proxy: the browser's https origin is this site's, the cookie secure.
    r = proxy.post("/_/auth/login", json=credentials, headers={**https, "Origin": "https://nscfate.lab.example"})
    assert r.status_code == 200 and "; secure" in r.headers["set-cookie"].lower()
    # The same headers from elsewhere are not believed: the request is plain http.
    r = direct.post("/_/auth/login", json=credentials, headers={**https, "Origin": "https://nscfate.lab.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "cross_site"
    r = direct.post("/_/auth/login", json=credentials, headers=https)
    assert r.status_code == 200 and "secure" not in r.headers["set-cookie"].lower()

    # X-Forwarded-For from the proxy: failed sign-ins count against the browser's address, so enough
    # of them (spread over accounts) block that address, and only that one.
    guesser, limit = "203.0.113.7", LoginRateLimiter().max_address_failures
    with ThreadPoolExecutor(4) as pool:
        failed = list(pool.map(
            lambda i: proxy.post("/_/auth/login", json={"email": f"user{i % 10}@lab.org", "password": "wrong guess"},
                                 headers={"X-Forwarded-For": guesser}).status_code, range(limit)))
    assert failed == [401] * limit

    def sign_in(client, forwarded_for):
        return client.post("/_/auth/login", json=credentials, headers={"X-Forwarded-For": forwarded_for}).status_code

    assert sign_in(proxy, guesser) == 429  # the guesser's address is blocked...
    assert sign_in(proxy, "203.0.113.8") == 200  # ...not the proxy, nor anyone else behind it
    assert sign_in(direct, guesser) == 200  # not from the proxy: the header names no one
    proxy.close()
    direct.close()
    assert host.interrupt() == 0


def test_a_host_without_a_usable_model_says_how_to_get_one(tmp_path, hosts):
    host = Host(tmp_path, "--port", "0", "--model", str(tmp_path / "no-such-model"))
    hosts.append(host)
    assert host.proc.wait(120) == 2
    err = host.stderr()
    assert "cannot load the models" in err and "could not load a model" in err and "--model" in err
    assert "NSC Fate is running" not in host.stdout()
    # The one-time password of the admin made at this first start is not lost with the failed start.
    assert "One-time password (shown only now)" in host.stdout()

    # A lab's own models folder that holds none: the help names that folder, not models/.
    lab_models = tmp_path / "lab-models"
    lab_models.mkdir()
    host = Host(tmp_path, "--port", "0", env={"NSCFATE_MODELS_DIR": str(lab_models)}, name="host2")
    hosts.append(host)
    assert host.proc.wait(120) == 2
    assert f"Models are looked up in {lab_models} (NSCFATE_MODELS_DIR" in host.stderr()
    assert "The shipped models live in models/" not in host.stderr()


@pytest.mark.postgres
def test_database_url_puts_the_data_in_postgresql(tmp_path, postgres_url, hosts):
    import sqlalchemy as sa

    from apphost.testing import reset_postgres

    url = reset_postgres(postgres_url).replace("postgresql+psycopg://", "postgresql://")  # as people write it
    admin = {"NSCFATE_ADMIN_EMAIL": "ada@lab.org", "NSCFATE_ADMIN_PASSWORD": "correct horse battery",
             "DATABASE_URL": url}
    host = Host(tmp_path, "--port", "0", "--workers", "0", env=admin)
    hosts.append(host)
    base = host.wait_ready(60)
    assert "(postgresql at postgresql+psycopg://postgres@127.0.0.1:" in host.stdout()
    r = httpx.post(base + "/_/auth/login", json={"email": "ada@lab.org", "password": "correct horse battery"},
                   timeout=30)
    assert r.status_code == 200
    assert not (tmp_path / "data" / "app.db").exists()  # no SQLite file: the rows are in PostgreSQL
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            emails = conn.execute(sa.text("SELECT email FROM app_users")).scalars().all()
    finally:
        engine.dispose()
    assert emails == ["ada@lab.org"]
    assert host.interrupt() == 0


def test_worker_command_line():
    from apphost.__main__ import build_parser, worker_command

    plain = worker_command(build_parser().parse_args([]), 3030)
    assert plain[1:3] == ["-m", "uplink"] and "ws://127.0.0.1:3030/_/uplink" in plain
    assert "--intra-op-threads" not in plain  # TensorFlow's default: every core
    assert plain[plain.index("--parent-pid") + 1] == str(os.getpid())  # a killed host leaves no worker behind
    args = build_parser().parse_args(["--workers", "2", "--worker-threads", "1", "--model", "models/m"])
    command = worker_command(args, 3030)
    assert command[command.index("--intra-op-threads") + 1] == "1"
    assert command[command.index("--model") + 1] == "models/m"


def test_negative_worker_counts_are_refused_before_anything_starts(capsys):
    from apphost.__main__ import main

    for option in ("--workers", "--worker-threads"):
        assert main([option, "-1", "--data-dir", "/nonexistent/never-created"]) == 2
        assert "must be 0 or more" in capsys.readouterr().err


def test_only_a_missing_database_driver_is_blamed_on_database_url(monkeypatch):
    """An ImportError at start-up is the URL's fault only when it names a database driver; any other
    (a broken install, a bug) is raised as it is, not hidden behind a DATABASE_URL message."""
    from types import SimpleNamespace

    import apphost.runtime
    from apphost.__main__ import HostError, LocalHost

    host = SimpleNamespace(db_url="sqlite:///app.db", paths=SimpleNamespace(media="media"), _host_status=dict)
    for module, expected in (("psycopg", HostError), ("numpy", ImportError), ("apphost.tables", ImportError)):
        def failing(*args, module=module, **kwargs):
            raise ImportError(f"No module named {module!r}", name=module)

        monkeypatch.setattr(apphost.runtime, "create_runtime", failing)
        with pytest.raises(expected) as info:
            LocalHost._create_runtime(host)
        assert ("not installed" in str(info.value)) == (expected is HostError)


def test_start_up_problems_are_messages_not_tracebacks(tmp_path, hosts):
    cases = [({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "cannot open the database"),
             ({"DATABASE_URL": "mysql://x@127.0.0.1/db"}, "not installed"),
             ({"NSCFATE_ADMIN_EMAIL": "ada@lab.org", "NSCFATE_ADMIN_PASSWORD": "short"}, "at least 10 characters"),
             ({"PORT": "web"}, "PORT must be a port number"),
             ({"DATABASE_URL": "postgresql//lab:s3cret@db/x"}, "DATABASE_URL cannot be read as a database URL")]
    for n, (env, message) in enumerate(cases):
        host = Host(tmp_path / str(n), "--workers", "0", env=env)
        hosts.append(host)
        assert host.proc.wait(60) == 2, env
        assert message in host.stderr() and "Traceback" not in host.stderr(), host.stderr()
        assert "s3cret" not in host.stderr()


def test_a_data_directory_it_cannot_write_is_refused_at_start_and_an_open_one_is_warned_about(
        tmp_path, monkeypatch, caplog):
    """Started on a read-only directory, the host answered every request "try again" for ever."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as on a read-only mount (root passes chmod)
    with pytest.raises(HostError, match="is not writable by this user"):
        data_paths(tmp_path / "ro", {})
    monkeypatch.undo()
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="apphost"):
        data_paths(tmp_path / "open", {})
    assert "can be read by other users" in caplog.text and "chmod 700" in caplog.text


def test_a_port_in_use_is_said_in_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "apphost", "--port", str(port), "--workers", "0",
                               "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "NSCFATE_ADMIN_EMAIL": "ada@lab.org",
                                                "NSCFATE_ADMIN_PASSWORD": "a long passphrase 1"})
    assert done.returncode == 1, done.stderr
    assert f"the server could not start on 127.0.0.1 port {port}" in done.stderr
    assert "address already in use" in done.stderr and "Traceback" not in done.stderr
