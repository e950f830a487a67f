"""Shared test options and fixtures.

- ``--runslow`` / ``--rungpu``: slow and GPU tests are opt-in.
- ``engine_url``: every table and server-module test runs on a SQLite file and on a real PostgreSQL
  server (``postgres_url``: a throw-away cluster started here with Debian's ``initdb``/``pg_ctl``, or
  ``NSCFATE_TEST_POSTGRES_URL``). Without PostgreSQL installed the PostgreSQL variants are skipped and
  say so; ``scripts/test-setup.sh`` (run by ``make test``) installs it.
- ``tiny_model``: one tiny trained model directory for the whole session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from apphost.testing import free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")
    parser.addoption("--rungpu", action="store_true", default=False, help="run tests that need a GPU")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a GPU: run with --rungpu")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not config.getoption("--rungpu"):
            item.add_marker(skip_gpu)


# ------------------------------------------------------------------------------------ databases


def _postgres_bin() -> Path | None:
    """The directory of Debian's PostgreSQL server programs (newest version), or of initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server for this test session, on a loopback port in a temporary directory.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the ``postgres`` system user
    (created by Debian's package). fsync is off: the data is thrown away.
    """
    url = os.environ.get("NSCFATE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/test-setup.sh installs Debian's postgresql)")
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="nscfate-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user is not None else {}
    data, log = root / "data", root / "server.log"
    port = free_port()
    try:
        subprocess.run([bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, cwd=root, **run_as)
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off")
        subprocess.run([bindir / "pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"],
                       check=True, capture_output=True, cwd=root, **run_as)
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode(errors="replace").strip()
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {detail}\n{log.read_text() if log.exists() else ''}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True, cwd=root,
                       **run_as)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine_url(request, tmp_path):
    """The database under test: a SQLite file, then an empty PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    from apphost.testing import reset_postgres

    return reset_postgres(request.getfixturevalue("postgres_url"))


# ---------------------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """The bad-input corpus of scripts/make_bad_inputs.py, built once: cases by id (with their bytes and
    path) and the whole-request cases."""
    from scripts.make_bad_inputs import build_corpus

    out = tmp_path_factory.mktemp("corpus")
    manifest = build_corpus(out)
    cases = {c["id"]: dict(c, data=(out / c["file"]).read_bytes(), path=out / c["file"]) for c in manifest["cases"]}
    return {"dir": out, "cases": cases, "requests": {r["id"]: r for r in manifest["requests"]}}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny trained 4-class model directory with card plots (a few seconds to make, shared by the session)."""
    from nscfate.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-medium4", task="medium4", input_size=(32, 32),
                               plots=True)
