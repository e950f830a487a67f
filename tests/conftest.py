"""Shared test options and fixtures.

- ``--runslow`` / ``--rungpu``: slow and GPU tests are opt-in.
- ``engine_url``: every table and server-module test runs on a SQLite file and on a real PostgreSQL
  server (``postgres_url``: a throw-away cluster started here with Debian's ``initdb``/``pg_ctl``, or
  ``NSCFATE_TEST_POSTGRES_URL``). Without PostgreSQL installed the PostgreSQL variants are skipped and
  say so; ``scripts/test-setup.sh`` (run by ``make test``) installs it.
- ``tiny_model``: one tiny trained model directory for the whole session.
"""

from __future__ import annotations

import os
from contextlib import ExitStack

import pytest

from apphost.testing import PostgresUnavailable, postgres_cluster

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


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL server for this test session (``apphost.testing.postgres_cluster``), or the one
    ``NSCFATE_TEST_POSTGRES_URL`` names."""
    url = os.environ.get("NSCFATE_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    with ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_cluster())
        except PostgresUnavailable as exc:
            pytest.skip(str(exc))
        yield url


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
