"""apphost.runtime: server_code loaded unchanged behind anvil-uplink's public names."""

from __future__ import annotations

import asyncio
import threading

import anvil.server
import anvil.tables
import pytest
from anvil.tables import app_tables

from apphost.testing import FakeWorker, make_runtime


@pytest.fixture
def worker():
    return FakeWorker()


@pytest.fixture
def rt(tmp_path, worker):
    runtime = make_runtime(tmp_path, worker, host_functions={"host_fn": lambda x: ("host", x)})
    yield runtime
    runtime.close()
    runtime.db.dispose()


def test_registrations_are_collected(rt):
    assert {"classify_cell_images", "search_predictions", "get_prediction", "delete_prediction",
            "export_predictions_csv", "experiment_summary", "get_model_cards", "explain_prediction",
            "get_session_info", "list_users", "set_user_role", "set_user_enabled"} <= set(rt.callables)
    assert sorted(e.pattern for e in rt.endpoints) == sorted([
        "/predictions", "/predictions.csv", "/predictions/([^/]*)", "/predictions/([^/]*)/image",
        "/predictions/([^/]*)/preview", "/predictions/([^/]*)/gradcam", "/summary", "/models",
        "/models/([^/]*)/plots/([^/]*)", "/users", "/users/([^/]*)", "/health"])
    assert rt.find_endpoint("/predictions/[1,2]").pattern == "/predictions/([^/]*)"
    assert rt.find_endpoint("/predictions/1/2") is None


def test_call_routing(rt, worker):
    assert rt.run(anvil.server.call, "host_fn", 1) == ("host", 1)  # host-provided first
    assert rt.run(anvil.server.call, "get_session_info") is None  # then the app's own functions
    assert rt.run(anvil.server.call, "list_models")[0]["name"] == "tiny-medium4"  # then the worker
    assert worker.calls[-1][0] == "list_models"
    with pytest.raises(anvil.server.NoServerFunctionError):
        rt.run(anvil.server.call, "nobody_has_this")
    with pytest.raises(anvil.server.NoServerFunctionError):
        rt.run(anvil.server.call, "anvil.private.something.else")


def test_outside_a_server_call_nothing_is_intercepted():
    with pytest.raises(Exception, match="anvil.server.connect"):
        anvil.server.call("list_models")  # anvil-uplink's own behaviour for an unconnected client
    with pytest.raises(RuntimeError, match="only available inside a server call"):
        app_tables.predictions  # noqa: B018


def test_transactions_through_anvil_tables(rt):
    def add(title, fail=False, abort=False):
        with anvil.tables.Transaction() as txn:
            app_tables.predictions.add_row(filename=title)
            if abort:
                txn.abort()
            if fail:
                raise ValueError("boom")

    rt.run(add, "kept")
    rt.run(add, "aborted", abort=True)
    with pytest.raises(ValueError):
        rt.run(add, "failed", fail=True)

    @anvil.tables.in_transaction
    def decorated():
        app_tables.predictions.add_row(filename="decorated")

    rt.run(decorated)
    names = rt.run(lambda: sorted(r["filename"] for r in app_tables.predictions.search()))
    assert names == ["decorated", "kept"]


def test_a_transaction_left_open_is_rolled_back(rt):
    def leave_open():
        anvil.tables.Transaction().__enter__()
        app_tables.predictions.add_row(filename="dangling")

    rt.run(leave_open)
    assert rt.run(lambda: len(app_tables.predictions.search())) == 0
    rt.run(lambda: app_tables.predictions.add_row(filename="next call works"))


def test_concurrent_calls_keep_their_own_user(rt):
    sessions = {}
    for name in ("ann", "bob", "cy", "di"):
        sessions[name] = rt.accounts.create_session(rt.accounts.create_user(f"{name}@lab.org", "correct horse battery"))
    barrier = threading.Barrier(4)
    original = rt.callables["get_session_info"]

    def slow_session_info():
        barrier.wait(timeout=10)  # all four calls are in flight at once
        return original()

    rt.callables["get_session_info"] = slow_session_info

    async def all_at_once():
        return await asyncio.gather(*(rt.call_async("get_session_info", session=s) for s in sessions.values()))

    results = asyncio.run(all_at_once())
    assert [r["email"] for r in results] == [f"{n}@lab.org" for n in sessions]
