"""apphost.tables: Anvil's Data Tables API on real SQL (SQLite here; PostgreSQL with a URL)."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import re
import shutil
import threading
from pathlib import Path

import anvil
import anvil.tables
import anvil.tables.query as q
import pytest
import sqlalchemy as sa
from anvil.tables import NoSuchColumnError, RowDeleted, TableError

from apphost.tables import Database, SchemaError, parse_db_schema

SCHEMA = {
    "people": {
        "columns": [
            {"name": "name", "type": "string"},
            {"name": "age", "type": "number"},
            {"name": "active", "type": "bool"},
            {"name": "born", "type": "date"},
            {"name": "seen", "type": "datetime"},
            {"name": "extra", "type": "simpleObject"},
            {"name": "photo", "type": "media"},
            {"name": "friend", "type": "link_single", "target": "people"},
            {"name": "groups", "type": "link_multiple", "target": "groups"},
        ]
    },
    "groups": {"columns": [{"name": "title", "type": "string"}]},
}


@pytest.fixture
def db(engine_url, tmp_path):
    database = Database(engine_url, parse_db_schema(SCHEMA), tmp_path / "media")
    database.create_tables()
    yield database
    database.dispose()


def test_round_trip_of_every_column_type(db):
    t = db.app_tables
    g1, g2 = t.groups.add_row(title="a"), t.groups.add_row(title="b")
    friend = t.people.add_row(name="Fay")
    seen = dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    row = t.people.add_row(
        name="Ann", age=41, active=True, born=dt.date(1983, 2, 3), seen=seen,
        extra={"k": [1, 2.5, "x"]}, photo=anvil.BlobMedia("image/png", b"\x89PNGdata", name="a.png"),
        friend=friend, groups=[g1, g2],
    )
    again = t.people.get_by_id(row.get_id())
    assert again == row and again is not row
    assert again["name"] == "Ann" and again["age"] == 41 and isinstance(again["age"], int)
    assert again["active"] is True and again["born"] == dt.date(1983, 2, 3)
    assert again["seen"] == seen and again["seen"].tzinfo is not None
    assert again["extra"] == {"k": [1, 2.5, "x"]}
    assert again["photo"].get_bytes() == b"\x89PNGdata"
    assert again["photo"].content_type == "image/png" and again["photo"].name == "a.png"
    assert again["friend"] == friend and again["friend"]["name"] == "Fay"
    assert again["groups"] == [g1, g2]
    assert isinstance(again, anvil.tables.Row)
    assert dict(again)["name"] == "Ann"
    # the row add_row returns holds what a read gives, without reading (no SELECT per added row)
    fresh = dict(again)
    statements = []
    sa.event.listen(db.engine, "before_cursor_execute", lambda *a, **k: statements.append(a[2]))
    returned = dict(row)
    assert returned["friend"]["name"] == "Fay" and returned["groups"][1]["title"] == "b"  # linked rows as passed
    assert statements == []
    assert returned.keys() == fresh.keys()
    for key in fresh:
        if key == "photo":
            assert (returned[key].get_bytes(), returned[key].content_type, returned[key].name) == (
                fresh[key].get_bytes(), fresh[key].content_type, fresh[key].name)
        else:
            assert returned[key] == fresh[key] and type(returned[key]) is type(fresh[key]), key



def test_add_rows_writes_many_rows_with_one_insert(db):
    t = db.app_tables
    g = t.groups.add_row(title="g")
    friend = t.people.add_row(name="Fay")
    many = [{"name": f"p{i}", "age": i, "photo": anvil.BlobMedia("image/png", b"img%d" % (i % 3), name=f"{i}.png"),
             "extra": {"i": i}, "friend": friend, "groups": [g]} for i in range(40)]
    many[7] = {"name": "sparse"}  # columns it leaves out are None, as add_row's
    inserts = []
    sa.event.listen(db.engine, "before_cursor_execute",
                    lambda c, cur, statement, *a: inserts.append(statement) if statement.startswith("INSERT") else None)
    rows = t.people.add_rows(iter(many))  # any iterable of dicts, as Anvil's
    assert len(inserts) == 1 and "RETURNING" in inserts[0]
    assert [r["name"] for r in rows] == [v["name"] for v in many]  # ids in the order given
    assert len({r.get_id() for r in rows}) == 40
    for values, row in zip(many, rows):
        again = t.people.get_by_id(row.get_id())
        assert again["name"] == values["name"] and again["age"] == values.get("age")
        assert again["extra"] == values.get("extra") and row["extra"] == values.get("extra")
        assert (again["photo"].get_bytes() if again["photo"] else None) == (
            values["photo"].get_bytes() if "photo" in values else None)
        assert again["friend"] == values.get("friend") and again["groups"] == values.get("groups", [])
    assert rows[7]["photo"] is None and rows[7]["groups"] == [] and rows[7]["age"] is None
    assert len(list(db.media.root.glob("??/*"))) == 3  # one file per distinct content
    assert t.people.add_rows([]) == []
    # more rows than one statement takes (SQLAlchemy sends 1,000 per INSERT): still in the order given
    titles = [f"{i:04d}" for i in range(2100)]
    added = t.groups.add_rows({"title": x} for x in reversed(titles))
    stored = {r.get_id(): r["title"] for r in t.groups.search(q.fetch_only("title"))}
    assert [r["title"] for r in added] == [stored[r.get_id()] for r in added] == titles[::-1]  # each id its row's


def test_add_rows_without_returning_inserts_row_by_row(db, monkeypatch):
    """SQLite before 3.35 (e.g. Ubuntu 20.04's 3.31) has no INSERT ... RETURNING."""
    monkeypatch.setattr(db.engine.dialect, "insert_executemany_returning", False)
    inserts = []
    sa.event.listen(db.engine, "before_cursor_execute",
                    lambda c, cur, statement, *a: inserts.append(statement) if statement.startswith("INSERT") else None)
    rows = db.app_tables.groups.add_rows([{"title": "a"}, {"title": "b"}, {}])
    assert len(inserts) == 3
    assert [db.app_tables.groups.get_by_id(r.get_id())["title"] for r in rows] == ["a", "b", None]


def test_add_rows_is_all_or_none(db):
    with pytest.raises(TableError):
        db.app_tables.people.add_rows([{"name": "ok", "photo": anvil.BlobMedia("image/png", b"ok")},
                                       {"name": "bad", "age": "12"}])
    with pytest.raises(NoSuchColumnError):
        db.app_tables.people.add_rows([{"name": "ok"}, {"nmae": "typo"}])
    assert len(db.app_tables.people.search()) == 0
    assert list(db.media.root.glob("??/*")) == [] and not db.media._pins  # the first row's file went too

def test_unset_columns_and_naive_datetimes(db):
    row = db.app_tables.people.add_row(name="Bo", seen=dt.datetime(2024, 1, 1, 8, 0))
    for r in (row, db.app_tables.people.get_by_id(row.get_id())):  # as returned and as read
        assert r["age"] is None and r["photo"] is None and r["groups"] == []
        assert r["seen"] == dt.datetime(2024, 1, 1, 8, 0, tzinfo=dt.timezone.utc)


def test_simple_object_and_link_multiple_reads_are_copies(db):
    g = db.app_tables.groups.add_row(title="g")
    row = db.app_tables.people.add_row(name="C", extra={"a": [1, {"b": [2]}]}, groups=[g])
    row["extra"]["a"].append(2)
    row["extra"]["a"][1]["b"].append(3)
    row["groups"].append(db.app_tables.groups.add_row(title="h"))  # not written: a later read is as stored
    assert row["extra"] == {"a": [1, {"b": [2]}]} and row["groups"] == [g]
    again = db.app_tables.people.get(name="C")
    assert again["extra"] == {"a": [1, {"b": [2]}]} and again["groups"] == [g] and again["groups"][0]["title"] == "g"


def test_simple_object_dicts_keep_the_key_order_anvils_jsonb_keeps(db):
    """Anvil stores simpleObject columns as PostgreSQL jsonb: shorter keys first, then by bytes, at
    every depth; lists keep their order. Code that relies on a dict's order fails here as it would there."""
    row = db.app_tables.people.add_row(name="D", extra={"astro": 1, "oligo": {"rashh": 0, "nt3": 0}, "nt3": [3, 1]})
    assert list(row["extra"]) == ["nt3", "astro", "oligo"] and list(row["extra"]["oligo"]) == ["nt3", "rashh"]
    assert row["extra"]["nt3"] == [3, 1]


@pytest.mark.parametrize(
    "column,value",
    [("age", "12"), ("age", True), ("active", 1), ("born", dt.datetime(2020, 1, 1)), ("seen", "2020"),
     ("extra", {"x": object()}), ("photo", b"bytes"), ("name", 3), ("groups", "x")],
)
def test_wrong_types_are_refused_and_nothing_is_written(db, column, value):
    with pytest.raises(TableError):
        db.app_tables.people.add_row(**{"name": "bad", column: value})
    assert len(db.app_tables.people.search()) == 0


def test_link_to_wrong_table_is_refused(db):
    g = db.app_tables.groups.add_row(title="g")
    with pytest.raises(TableError, match="people"):
        db.app_tables.people.add_row(friend=g)


def test_unknown_column_and_table(db):
    with pytest.raises(NoSuchColumnError):
        db.app_tables.people.add_row(nmae="typo")
    row = db.app_tables.people.add_row(name="x")
    with pytest.raises(NoSuchColumnError):
        row["nmae"]
    with pytest.raises(NoSuchColumnError):
        db.app_tables.people.search(nmae="x")
    with pytest.raises(AttributeError, match="No such app table"):
        db.app_tables.peoples  # noqa: B018


def _people(db, n=6):
    base = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    for i in range(n):
        db.app_tables.people.add_row(name=f"P{i}" if i % 2 else f"p{i}", age=i * 10, active=i % 2 == 0,
                                     seen=base + dt.timedelta(days=i))
    return base


def test_search_operators(db):
    base = _people(db)
    t = db.app_tables.people

    def names(*a, **k):
        return sorted(r["name"] for r in t.search(*a, **k))

    assert names(age=20) == ["p2"]
    assert names(active=False) == ["P1", "P3", "P5"]
    assert names(name=q.like("p%")) == ["p0", "p2", "p4"]  # case-sensitive
    assert names(name=q.ilike("p%")) == ["P1", "P3", "P5", "p0", "p2", "p4"]
    assert names(name=q.ilike("\\_1")) == []  # a backslash escapes the wildcard, as on Anvil ("P1" otherwise)
    assert names(age=q.greater_than(30)) == ["p4", "P5"] or names(age=q.greater_than(30)) == ["P5", "p4"]
    assert names(age=q.less_than_or_equal_to(10)) == ["P1", "p0"]
    assert names(seen=q.between(base + dt.timedelta(days=1), base + dt.timedelta(days=3))) == ["P1", "p2"]
    assert names(age=q.any_of(0, 50)) == ["P5", "p0"]
    assert names(age=q.none_of(0, 10, 20, 30)) == ["P5", "p4"]
    assert names(q.any_of(age=0, name="P3")) == ["P3", "p0"]
    assert names(q.all_of(active=True, age=q.greater_than(0))) == ["p2", "p4"]
    assert names(q.none_of(active=True)) == ["P1", "P3", "P5"]
    assert names(extra=None, age=40) == ["p4"]


def test_order_len_slices_and_indexing(db):
    _people(db)
    t = db.app_tables.people
    newest_first = t.search(anvil.tables.order_by("seen", ascending=False))
    assert len(newest_first) == 6
    assert [r["age"] for r in newest_first[1:4]] == [40, 30, 20]
    assert len(newest_first[4:100]) == 2
    assert newest_first[0]["age"] == 50
    assert [r["age"] for r in newest_first[2:][1:3]] == [20, 10]
    with pytest.raises(IndexError):
        newest_first[6]
    with pytest.raises(ValueError):
        newest_first[-1]


@contextlib.contextmanager
def selects(db):
    """The SELECT statements (text, parameters) the database runs inside the block."""
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)


def test_len_counts_without_ordering_the_rows(db):
    _people(db)
    newest_first = db.app_tables.people.search(anvil.tables.order_by("seen", ascending=False), active=True)
    with selects(db) as sql:
        assert [len(newest_first), len(newest_first[1:]), len(newest_first[1:2]), len(newest_first[5:])] == [3, 2, 1, 0]
    # a plain COUNT of the matching rows: ordering (or skipping) them first walked every row in order
    assert len(sql) == 4 and not any("ORDER BY" in s.upper() or "OFFSET" in s.upper() for s, _ in sql)


def test_a_page_deep_in_a_newest_first_search_is_read_from_the_index(db):
    if not db.is_sqlite:
        pytest.skip("SQLite's query plan; PostgreSQL's index on one column leaves ties to an incremental sort")
    base = _people(db)
    for i in range(4):  # ties: the pages must still split them without overlap
        db.app_tables.people.add_row(name=f"tie{i}", seen=base)
    newest_first = db.app_tables.people.search(anvil.tables.order_by("seen", ascending=False))
    with selects(db) as sql:
        pages = [[r["name"] for r in newest_first[i:i + 3]] for i in range(0, 10, 3)]
    assert sorted(sum(pages, [])) == sorted(["p0", "P1", "p2", "P3", "p4", "P5", "tie0", "tie1", "tie2", "tie3"])
    assert pages[0] == ["P5", "p4", "P3"]
    # Ties by row id in the same direction as the order: the index on 'seen' gives the whole order, with
    # no sort of the rows (nor of the ones OFFSET skips)
    with db.engine.connect() as conn:
        plan = " | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql[-1][0], sql[-1][1]))
    assert "USING INDEX ix_app_people_seen" in plan and "TEMP B-TREE" not in plan, plan


def test_declared_indexes_give_a_filtered_page_by_time_and_are_added_to_an_existing_database(engine_url, tmp_path):
    plain = Database(engine_url, parse_db_schema(SCHEMA), tmp_path / "media")
    plain.create_tables()
    _people(plain)
    plain.dispose()
    db = Database(engine_url, parse_db_schema(SCHEMA), tmp_path / "media", indexes={"people": [("name", "seen")]})
    db.create_tables()  # the database exists already: the index is added to it
    try:
        assert "ix_app_people_name_seen" in {i["name"] for i in sa.inspect(db.engine).get_indexes("app_people")}
        newest_first = db.app_tables.people.search(anvil.tables.order_by("seen", ascending=False), name="p2")
        with selects(db) as sql:
            assert [r["age"] for r in newest_first[0:3]] == [20] and len(newest_first) == 1
        if db.is_sqlite:  # the page and the count read only the matching index entries, and sort nothing
            with db.engine.connect() as conn:
                plans = [" | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + s, p)) for s, p in sql]
            assert all("INDEX ix_app_people_name_seen (name=?)" in plan and "TEMP B-TREE" not in plan
                       for plan in plans), plans
    finally:
        db.dispose()
    with pytest.raises(SchemaError, match="simpleObject"):
        Database(engine_url, parse_db_schema(SCHEMA), tmp_path / "media", indexes={"people": [("extra",)]})
    with pytest.raises(SchemaError, match="unknown table"):
        Database(engine_url, parse_db_schema(SCHEMA), tmp_path / "media", indexes={"nobody": [("name",)]})


def test_iteration_pages_through_many_rows(db, monkeypatch):
    monkeypatch.setattr("apphost.tables._PAGE", 3)
    for i in range(10):
        db.app_tables.groups.add_row(title=f"{i:02d}")
    titles = [r["title"] for r in db.app_tables.groups.search(anvil.tables.order_by("title"))]
    assert titles == [f"{i:02d}" for i in range(10)]


def test_iteration_past_the_first_page_meets_each_row_once(db, monkeypatch):
    monkeypatch.setattr("apphost.tables._PAGE", 3)
    groups = db.app_tables.groups
    for i in range(10):
        groups.add_row(title=f"{i:02d}")
    met = []
    with selects(db) as sql:
        for row in groups.search(anvil.tables.order_by("title", ascending=False)):
            met.append(row["title"])
            if len(met) == 4:  # past the first page: a new first row, and a row not reached yet goes
                groups.add_row(title="99")
                groups.get(title="00").delete()
    assert met == ["09", "08", "07", "06", "05", "04", "03", "02", "01"]  # no row twice, none skipped
    # two ordered queries (the first page, the ids of the rest), not one per page reading the rows before it
    assert len([s for s, _ in sql if "ORDER BY app_groups.title" in s]) == 2, [s for s, _ in sql]
    newest_first = groups.search(anvil.tables.order_by("title", ascending=False))
    assert [r["title"] for r in newest_first[2:9]] == ["08", "07", "06", "05", "04", "03", "02"]
    assert [r["title"] for r in newest_first[1:][1:3]] == ["08", "07"]


def _linked_people(db):
    """Six people, each the friend of the next, in groups a and b (all in a, every other one also in b)."""
    t = db.app_tables
    a, b = t.groups.add_row(title="a"), t.groups.add_row(title="b")
    friend = None
    for i in range(6):
        friend = t.people.add_row(name=f"n{i}", age=i, friend=friend, groups=[a, b] if i % 2 else [a])
    return t.people.search(anvil.tables.order_by("age"))


def test_a_search_reads_the_rows_its_links_point_to_with_each_page(db, monkeypatch):
    monkeypatch.setattr("apphost.tables._PAGE", 4)  # two pages
    rows = _linked_people(db)
    with selects(db) as sql:
        got = [(r["name"], r["friend"]["name"] if r["friend"] else None, [g["title"] for g in r["groups"]])
               for r in rows]
    assert got == [("n0", None, ["a"]), ("n1", "n0", ["a", "b"]), ("n2", "n1", ["a"]), ("n3", "n2", ["a", "b"]),
                   ("n4", "n3", ["a"]), ("n5", "n4", ["a", "b"])]
    # per page: its rows, the friends, the groups; plus the ids past the first page. One query per linked
    # row read (Accelerated Tables fetch linked rows with the search) made a History page of 200 predictions
    # 200 queries for its users.
    assert len(sql) == 7, [s for s, _ in sql]
    with selects(db) as sql:
        n5 = rows[5]  # one query for the row, one for each link column's rows (no COUNT first)
        assert len(sql) == 3
        assert n5["friend"]["friend"]["name"] == "n3"  # a link of a linked row is read when used
    assert len(sql) == 4


def test_fetch_only_reads_the_columns_it_names_and_the_rest_when_used(db):
    rows = _linked_people(db)
    some = db.app_tables.people.search(
        q.fetch_only("name", friend=q.fetch_only("age")), anvil.tables.order_by("age"))
    with selects(db) as sql:
        got = [(r["name"], r["friend"]["age"] if r["friend"] else None) for r in some]
    assert got == [("n0", None), ("n1", 0), ("n2", 1), ("n3", 2), ("n4", 3), ("n5", 4)]
    assert len(sql) == 2
    selected = [re.split(r"\sFROM\s", statement.upper())[0].strip() for statement, _ in sql]
    # only the named columns (and the row ids) are read: the people's names, then their friends' ages
    assert selected == ["SELECT APP_PEOPLE._ID, APP_PEOPLE.NAME, APP_PEOPLE.FRIEND",
                        "SELECT APP_PEOPLE._ID, APP_PEOPLE.AGE"], selected
    row = some[3]
    with selects(db) as sql:  # a column the search did not fetch: the whole row is read once, then cached
        assert (row["age"], row["groups"][1]["title"], row["seen"], row["name"]) == (3, "b", None, "n3")
        assert row["friend"]["name"] == "n2"
    assert len(sql) == 3  # the row, its groups, its friend (the friend's fetch named only 'age')
    assert [r["name"] for r in db.app_tables.people.search(q.fetch_only(), age=2)] == ["n2"]
    assert len(db.app_tables.people.search(q.fetch_only("name"), anvil.tables.order_by("age"))[2:]) == 4
    with pytest.raises(NoSuchColumnError):
        db.app_tables.people.search(q.fetch_only("nmae"))
    with pytest.raises(NoSuchColumnError):
        db.app_tables.people.search(q.fetch_only(friend=q.fetch_only("nmae")))
    with pytest.raises(TableError, match="not a link column"):
        db.app_tables.people.search(q.fetch_only(age=q.fetch_only("name")))
    with pytest.raises(NoSuchColumnError):
        next(iter(db.app_tables.people.search(q.fetch_only("name"))))["nmae"]


def test_a_linked_row_deleted_before_the_search_reads_as_deleted(db):
    rows = _linked_people(db)
    rows[2].delete()  # n2: n3's friend
    n3 = db.app_tables.people.get(name="n3")
    with pytest.raises(RowDeleted):
        n3["friend"]["name"]
    assert [r["name"] for r in rows] == ["n0", "n1", "n3", "n4", "n5"]


def test_get_requires_a_unique_match(db):
    _people(db)
    assert db.app_tables.people.get(age=30)["name"] == "P3"
    assert db.app_tables.people.get(age=31) is None
    with pytest.raises(TableError, match="More than one row"):
        db.app_tables.people.get(active=True)


def test_search_by_link(db):
    a = db.app_tables.people.add_row(name="a")
    db.app_tables.people.add_row(name="b", friend=a)
    db.app_tables.people.add_row(name="c")
    assert [r["name"] for r in db.app_tables.people.search(friend=a)] == ["b"]


def test_update_delete_and_row_deleted(db):
    row = db.app_tables.people.add_row(name="u", age=1)
    row.update(age=2, active=True)
    row["name"] = "v"
    fresh = db.app_tables.people.get_by_id(row.get_id())
    assert (fresh["name"], fresh["age"], fresh["active"]) == ("v", 2, True)
    row.delete()
    assert db.app_tables.people.get_by_id(row.get_id()) is None
    with pytest.raises(RowDeleted):
        fresh.update(age=3)
    with pytest.raises(RowDeleted):
        fresh.delete()


def test_get_by_id_rejects_foreign_and_malformed_ids(db):
    g = db.app_tables.groups.add_row(title="g")
    assert db.app_tables.people.get_by_id(g.get_id()) is None
    assert db.app_tables.groups.get_by_id("[1,2") is None
    assert db.app_tables.groups.get_by_id("1 OR 1=1") is None


def test_values_are_parameterised(db):
    evil = "x'); DROP TABLE app_people; --"
    db.app_tables.people.add_row(name=evil)
    assert db.app_tables.people.get(name=evil)["name"] == evil
    assert len(db.app_tables.people.search(name=q.like("%DROP%"))) == 1


def test_media_lives_outside_the_rows_by_content_hash(db):
    data = b"\x00" * 1000 + b"cell"
    a = db.app_tables.people.add_row(name="a", photo=anvil.BlobMedia("image/png", data))
    b = db.app_tables.people.add_row(name="b", photo=anvil.BlobMedia("image/png", data))
    sha = a["photo"].sha256
    path = db.media.path(sha)
    assert path.name == sha and path.read_bytes() == data
    with db.engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT photo, photo__media FROM app_people WHERE name='a'")).one()
    assert stored[0] == sha and "cell" not in stored[1]
    a.delete()
    assert path.exists()  # still referenced by b
    b.update(photo=None)
    assert not path.exists()  # nothing references it any more


def test_media_path_refuses_non_hash_names(db):
    with pytest.raises(ValueError):
        db.media.path("../../etc/passwd")


def test_transaction_commit_and_abort(db):
    t = db.app_tables.groups
    db.open_transaction()
    t.add_row(title="kept")
    db.close_transaction(abort=False)
    db.open_transaction()
    t.add_row(title="dropped")
    with pytest.raises(TableError, match="nest"):
        db.open_transaction()
    db.close_transaction(abort=True)
    assert [r["title"] for r in t.search()] == ["kept"]


def test_aborted_transaction_keeps_no_media(db):
    kept = db.app_tables.people.add_row(name="k", photo=anvil.BlobMedia("image/png", b"shared"))
    db.open_transaction()
    row = db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"abc"))
    db.app_tables.people.add_row(name="m2", photo=anvil.BlobMedia("image/png", b"shared"))
    sha = db.media.path(row["photo"].sha256)
    db.close_transaction(abort=True)
    assert [r["name"] for r in db.app_tables.people.search()] == ["k"]
    assert not sha.exists()  # stored for the rolled-back row only: removed with it
    assert kept["photo"].get_bytes() == b"shared"  # the same content, referenced by a committed row: kept
    assert len(list(db.media.root.glob("??/*"))) == 1


def test_a_removal_the_database_cannot_check_is_left_for_a_full_sweep(db, monkeypatch):
    row = db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"gone soon"))
    path = db.media.path(row["photo"].sha256)

    def database_down(sha):
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(db, "_media_referenced", database_down)
    assert not db.sweep_everything
    row.delete()  # the delete itself succeeded: no error for it
    assert path.exists() and db.sweep_everything  # the host's next sweep looks at every file
    monkeypatch.undo()
    assert db.collect_orphan_media(min_age_s=0) == 1 and not path.exists()


def test_a_failed_insert_removes_the_file_it_stored(db, monkeypatch):
    with pytest.raises(TableError):
        db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"abc"), nosuch=1)
    assert list(db.media.root.glob("??/*")) == []  # refused before storing

    def failing_execute(*args, **kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(sa.engine.Connection, "execute", failing_execute)
    with pytest.raises(sa.exc.OperationalError):
        db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"abc"))
    # The database failed, so whether a row refers to the file cannot be checked: it stays for the sweep.
    monkeypatch.undo()
    assert len(list(db.media.root.glob("??/*"))) == 1
    assert db.collect_orphan_media(min_age_s=3600) == 0  # too recent to be sure
    (orphan,) = db.media.root.glob("??/*")
    os.utime(orphan, (1000.0, 1000.0))
    assert db.collect_orphan_media(min_age_s=0, newer_than=1000.0) == 0  # judged by an earlier sweep
    assert db.collect_orphan_media(min_age_s=0, newer_than=999.0) == 1
    assert list(db.media.root.glob("??/*")) == []


def test_media_files_are_synced_outside_the_stores_lock(db, monkeypatch):
    # One lock over every fsync made the host store one image at a time, whoever uploaded it.
    held_during_sync = []
    real_fsync = os.fsync

    def fsync(fd):
        def probe():
            free = db.media.lock.acquire(blocking=False)
            if free:
                db.media.lock.release()
            held_during_sync.append(not free)
        other = threading.Thread(target=probe)
        other.start()
        other.join()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    row = db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"cell"))
    assert held_during_sync == [False] and row["photo"].get_bytes() == b"cell"


def test_concurrent_uploads_of_the_same_and_other_content(db):
    rows = []
    threads = [threading.Thread(target=lambda i=i: rows.append(db.app_tables.people.add_row(
        name=f"t{i}", photo=anvil.BlobMedia("image/png", b"same bytes" if i % 2 else b"own %d" % i))))
        for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["photo"].get_bytes() for r in rows) == sorted([b"same bytes"] * 4 + [b"own %d" % i for i in (0, 2, 4, 6)])
    names = [p.name for p in db.media.root.glob("??/*")]
    assert len(names) == 5 and not any(n.startswith(".tmp-") for n in names)  # one file per content, no leftovers
    assert not db.media._pins  # all unpinned once their rows were written


def test_a_media_write_that_fails_leaves_no_file_and_no_pin(db, monkeypatch):
    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"abc"))
    monkeypatch.undo()
    assert list(db.media.root.glob("??/*")) == [] and not db.media._pins
    assert len(db.app_tables.people.search()) == 0


def _shard(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:2]


def test_a_shard_folder_is_made_once_and_again_if_it_was_removed(db, monkeypatch):
    made = []
    real_mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda self, *a, **k: (made.append(self.name), real_mkdir(self, *a, **k)))
    # two contents in one shard (same first two hex digits of their SHA-256)
    first, *rest = (b"%d" % i for i in range(1000))
    same_shard = next(d for d in rest if _shard(d) == _shard(first))
    a = db.app_tables.people.add_row(name="a", photo=anvil.BlobMedia("image/png", first))
    db.app_tables.people.add_row(name="b", photo=anvil.BlobMedia("image/png", same_shard))
    folder = db.media.path(a["photo"].sha256).parent
    assert made == [folder.name]  # a syscall bound to fail (EEXIST) was made for every file before
    shutil.rmtree(folder)  # e.g. an operator cleaning up by hand
    c = db.app_tables.people.add_row(name="c", photo=anvil.BlobMedia("image/png", first))
    assert made == [folder.name] * 2 and c["photo"].get_bytes() == first


def test_the_sweep_removes_writes_a_crash_left_behind(db):
    row = db.app_tables.people.add_row(name="m", photo=anvil.BlobMedia("image/png", b"kept"))
    folder = db.media.path(row["photo"].sha256).parent
    stale, live = folder / (".tmp-1-2-" + "0" * 64), folder / (".tmp-3-4-" + "1" * 64)
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    os.utime(stale, (1000.0, 1000.0))
    assert db.collect_orphan_media(min_age_s=3600) == 0
    assert not stale.exists() and live.exists() and row["photo"].get_bytes() == b"kept"


def test_csv_export(db):
    db.app_tables.groups.add_row(title='has "quotes", commas')
    text = db.app_tables.groups.search().to_csv().get_bytes().decode()
    assert text.splitlines()[0] == "title,ID"
    assert '"has ""quotes"", commas"' in text


def test_schema_validation():
    with pytest.raises(SchemaError, match="unknown type"):
        parse_db_schema({"t": {"columns": [{"name": "a", "type": "text"}]}})
    with pytest.raises(SchemaError, match="unknown table"):
        parse_db_schema({"t": {"columns": [{"name": "a", "type": "link_single", "target": "nope"}]}})
    with pytest.raises(SchemaError, match="invalid column"):
        parse_db_schema({"t": {"columns": [{"name": "a b", "type": "string"}]}})
    with pytest.raises(SchemaError):
        parse_db_schema([{"name": "old list format"}])


def test_row_ids_are_never_reused(db):
    people = db.app_tables.people
    first = people.add_row(name="a")
    last = people.add_row(name="b")
    last.delete()
    again = people.add_row(name="c")
    assert again.get_id() != last.get_id() and first.get_id() != again.get_id()
    assert people.get_by_id(last.get_id()) is None  # a link to the deleted row finds nothing, not "c"


def test_a_sqlite_database_from_before_never_reused_ids_is_rebuilt_with_its_rows(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    before = parse_db_schema({**SCHEMA, "people": {"columns": [*SCHEMA["people"]["columns"],
                                                               {"name": "retired", "type": "string"},
                                                               {"name": "scan", "type": "media"}]}})
    old = Database(url, before, tmp_path / "media")
    for table in old._sql.values():  # as tables were made before
        table.dialect_options["sqlite"]["autoincrement"] = False
    old.create_tables()
    people = old.app_tables.people
    ann = people.add_row(name="Ann", age=41, photo=anvil.BlobMedia("image/png", b"png", name="a.png"),
                         retired="kept", scan=anvil.BlobMedia("image/png", b"old scan", name="s.png"))
    bob = people.add_row(name="Bob", friend=ann)
    ids = (ann.get_id(), bob.get_id())
    scan_file = old.media.path(ann["scan"].sha256)
    with old.engine.begin() as conn:
        conn.execute(sa.text('CREATE INDEX my_index ON app_people ("retired")'))
    old.dispose()

    new = Database(url, parse_db_schema(SCHEMA), tmp_path / "media")  # "retired" and "scan" are gone from it
    new.create_tables()
    people = new.app_tables.people
    assert [(r.get_id(), r["name"]) for r in people.search()] == [(ids[0], "Ann"), (ids[1], "Bob")]
    assert people.get_by_id(ids[1])["friend"]["name"] == "Ann" and people.get_by_id(ids[0])["photo"].get_bytes() == b"png"
    with new.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT retired FROM app_people WHERE name = 'Ann'")).scalar() == "kept"
        indexes = {r[1] for r in conn.execute(sa.text("PRAGMA index_list(app_people)")).all()}
    assert {"my_index", "ix_app_people_photo"} <= indexes  # the hand-made one and the schema's came back
    # a file only the dropped column refers to is still referenced: no sweep removes it
    os.utime(scan_file, (1000.0, 1000.0))
    assert new.collect_orphan_media(min_age_s=0) == 0 and scan_file.exists()
    carl = people.add_row(name="Carl")
    carl_id = carl.get_id()
    carl.delete()
    assert people.add_row(name="Dora").get_id() != carl_id
    new.create_tables()  # a second start changes nothing
    assert len(people.search()) == 3
    new.dispose()


def test_schema_additions_apply_and_type_changes_refuse(engine_url, tmp_path):
    first = Database(engine_url, parse_db_schema({"t": {"columns": [{"name": "a", "type": "string"}]}}),
                     tmp_path / "m")
    first.create_tables()
    first.app_tables.t.add_row(a="x")
    first.dispose()
    grown = Database(engine_url, parse_db_schema(
        {"t": {"columns": [{"name": "a", "type": "string"}, {"name": "b", "type": "number"}]}}), tmp_path / "m")
    grown.create_tables()
    row = grown.app_tables.t.get(a="x")
    assert row["b"] is None
    row["b"] = 5
    grown.dispose()
    changed = Database(engine_url, parse_db_schema({"t": {"columns": [{"name": "a", "type": "number"}]}}),
                       tmp_path / "m")
    with pytest.raises(SchemaError, match="types are never changed"):
        changed.create_tables()
    changed.dispose()


def test_the_app_schema_loads(tmp_path):
    from apphost.tables import load_schema

    schema = load_schema("anvil.yaml")
    assert {"users", "predictions"} <= set(schema)
    assert schema["predictions"].column("user").target == "users"
    db = Database(f"sqlite:///{tmp_path / 'app.db'}", schema, tmp_path / "media")
    db.create_tables()
    db.dispose()
