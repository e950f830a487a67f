"""apphost.tables on SQLite: writers of one process take turns on the Database's writer lock (instead of
SQLite's sleep-polling busy handler), which every write path takes and gives back - also when a
transaction is rolled back or fails to start."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout

import pytest
from anvil.tables import TransactionConflict

from apphost import tables
from apphost.tables import Database, parse_db_schema

SCHEMA = {"notes": {"columns": [{"name": "text", "type": "string"}]}}


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'app.db'}", parse_db_schema(SCHEMA), tmp_path / "media")
    database.create_tables()
    yield database
    database.dispose()


def texts(db):
    return [r["text"] for r in db.app_tables.notes.search()]


def test_a_write_waits_for_an_open_transaction_then_runs(db):
    opened, committed = threading.Event(), threading.Event()

    def transaction():
        db.open_transaction()
        db.app_tables.notes.add_row(text="in transaction")
        opened.set()
        committed.wait(30)
        db.close_transaction(abort=False)

    holder = threading.Thread(target=transaction)
    holder.start()
    assert opened.wait(30)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(db.app_tables.notes.add_row, text="after it")
        with pytest.raises(FuturesTimeout):  # waits its turn while the transaction holds the write lock
            waiting.result(0.3)
        assert texts(db) == []  # nothing visible before the commit
        committed.set()
        waiting.result(30)
    holder.join(30)
    assert texts(db) == ["in transaction", "after it"]


def test_the_writer_lock_is_given_back_after_rollback_and_failed_starts(db, monkeypatch):
    db.open_transaction()
    db.app_tables.notes.add_row(text="rolled back")
    db.close_transaction(abort=True)
    monkeypatch.setattr(db.engine, "connect", lambda: (_ for _ in ()).throw(OSError("no connection")))
    with pytest.raises(OSError):
        db.open_transaction()
    monkeypatch.undo()
    with ThreadPoolExecutor(4) as pool:  # another thread can write at once: nothing kept the lock
        list(pool.map(lambda i: db.app_tables.notes.add_row(text=f"n{i}"), range(8)))
    assert sorted(texts(db)) == [f"n{i}" for i in range(8)]


def test_a_writer_that_never_gets_its_turn_gets_a_transaction_conflict(db, monkeypatch):
    monkeypatch.setattr(tables, "SQLITE_WRITE_TIMEOUT_S", 0.05)
    db.open_transaction()  # this thread holds the write turn
    try:
        with ThreadPoolExecutor(1) as pool:
            with pytest.raises(TransactionConflict, match="busy"):
                pool.submit(db.app_tables.notes.add_row, text="x").result(30)
    finally:
        db.close_transaction(abort=True)
    assert texts(db) == []
