"""Anvil Data Tables (``anvil.tables``) on SQL, for running ``server_code/`` on the local host.

The tables are created from ``anvil.yaml``'s ``db_schema`` (the new map format; one schema for hosted
Anvil and this host). Storage is SQLAlchemy Core: a SQLite file (WAL mode) by default, PostgreSQL by
URL. Every query is parameterised.

What server modules see is Anvil's public API: ``app_tables.<name>`` with ``add_row``, ``add_rows``, ``get``,
``get_by_id``, ``search`` (``anvil.tables.query`` operators and ``anvil.tables.order_by``), rows with
``row["col"]``, ``update``, ``delete``, ``get_id``, slicing and ``len`` of searches, and transactions
through ``anvil.tables.Transaction`` / ``in_transaction`` (their private calls are routed here by
``apphost.runtime``).

Host-specific choices, documented in docs/ANVIL_APP.md:
- datetimes are stored as UTC and come back timezone-aware (naive datetimes are taken as UTC);
- numbers are stored as double precision; integral values come back as ``int``;
- media bytes live outside the rows in a content-addressed store (files named by their SHA-256);
  the row holds the hash, content type and name;
- searching on ``simpleObject``, ``media`` and ``link_multiple`` columns and ``q.full_text_match`` are
  not supported and raise ``TableError`` saying so.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import os
import re
import threading
import time
import zlib
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anvil
import anvil.tables
import anvil.tables.query as q
import sqlalchemy as sa
import yaml
from anvil.tables import NoSuchColumnError, RowDeleted, TableError, TransactionConflict

log = logging.getLogger(__name__)
#: A media column is two SQL columns: ``name`` (the file's SHA-256) and ``name + MEDIA_META_SUFFIX``
#: (its content type, name and length as JSON).
MEDIA_META_SUFFIX = "__media"

COLUMN_TYPES = frozenset(
    {"string", "number", "bool", "date", "datetime", "media", "simpleObject", "link_single", "link_multiple"}
)
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_ROW_ID_RE = re.compile(r"^\[(\d+),(\d+)\]$")
_PAGE = 500  # rows fetched per round trip when iterating a search
_TMP_PREFIX = ".tmp-"  # media files being written (removed by the orphan sweep if a crash leaves one)
_SCHEMA_TABLE = "anvil_host_columns"


class SchemaError(ValueError):
    """``anvil.yaml``'s ``db_schema`` is invalid, or differs from the database in a way that cannot
    be applied automatically."""


# --------------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    target: str | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise NoSuchColumnError(f"No such column '{name}' in table '{self.name}'")


def parse_db_schema(db_schema: Any) -> dict[str, TableSpec]:
    """Validate a ``db_schema`` map (new format) and return its tables by python name."""
    if not isinstance(db_schema, dict) or not db_schema:
        raise SchemaError("db_schema must be a non-empty map of table name -> table (Anvil's new format)")
    tables: dict[str, TableSpec] = {}
    for tname, tdef in db_schema.items():
        if not isinstance(tname, str) or not _NAME_RE.match(tname) or "__" in tname:
            raise SchemaError(f"invalid table name {tname!r}: use letters, digits and single underscores")
        if not isinstance(tdef, dict) or not isinstance(tdef.get("columns"), list):
            raise SchemaError(f"table {tname!r} must be a map with a 'columns' list")
        cols: list[ColumnSpec] = []
        seen: set[str] = set()
        for cdef in tdef["columns"]:
            if not isinstance(cdef, dict):
                raise SchemaError(f"table {tname!r}: each column must be a map with name and type")
            cname, ctype = cdef.get("name"), cdef.get("type")
            if not isinstance(cname, str) or not _NAME_RE.match(cname) or "__" in cname:
                raise SchemaError(f"table {tname!r}: invalid column name {cname!r}")
            if cname in seen:
                raise SchemaError(f"table {tname!r}: column {cname!r} defined twice")
            if ctype not in COLUMN_TYPES:
                raise SchemaError(
                    f"table {tname!r} column {cname!r}: unknown type {ctype!r}; "
                    f"known types: {', '.join(sorted(COLUMN_TYPES))}"
                )
            target = cdef.get("target")
            if ctype.startswith("link_"):
                if not isinstance(target, str):
                    raise SchemaError(f"table {tname!r} column {cname!r}: link columns need a 'target' table")
            elif target is not None:
                raise SchemaError(f"table {tname!r} column {cname!r}: only link columns take a 'target'")
            seen.add(cname)
            cols.append(ColumnSpec(cname, ctype, target))
        tables[tname] = TableSpec(tname, tuple(cols))
    for spec in tables.values():
        for col in spec.columns:
            if col.target is not None and col.target not in tables:
                raise SchemaError(
                    f"table {spec.name!r} column {col.name!r} links to unknown table {col.target!r}"
                )
    return tables


def load_schema(anvil_yaml: str | os.PathLike[str]) -> dict[str, TableSpec]:
    """Read ``db_schema`` from an ``anvil.yaml`` file."""
    with open(anvil_yaml, encoding="utf-8") as f:
        app = yaml.safe_load(f)
    if not isinstance(app, dict):
        raise SchemaError(f"{anvil_yaml} is not a YAML map")
    return parse_db_schema(app.get("db_schema"))


def _check_indexes(schema: dict[str, TableSpec], indexes: dict[str, list[tuple[str, ...]]]) -> dict[str, list[tuple[str, ...]]]:
    """``indexes`` checked against the schema: known tables, and columns a search can compare."""
    for table, column_lists in indexes.items():
        if table not in schema:
            raise SchemaError(f"an index names the unknown table {table!r}")
        for columns in column_lists:
            for name in columns:
                col = schema[table].column(name)
                if col.type in ("simpleObject", "media", "link_multiple"):
                    raise SchemaError(f"cannot index the {col.type} column {table}.{name}")
    return indexes


def _index_name(table: str, columns: tuple[str, ...]) -> str:
    """``ix_<table>_<columns>``, shortened with a checksum to PostgreSQL's 63 characters when longer."""
    name = "_".join(("ix", table, *columns))
    return name if len(name) <= 63 else f"{name[:54]}_{zlib.crc32(name.encode()):08x}"


def table_number(name: str) -> int:
    """A stable number for a table, used in Anvil-style row ids ``[table,row]``."""
    return 100000 + zlib.crc32(name.encode("utf-8")) % 900000


# --------------------------------------------------------------------------------------------------
# Media


class MediaStore:
    """Content-addressed files for media columns: ``<root>/<sha[:2]>/<sha256>``.

    File names are only ever SHA-256 hex digests computed here, never anything a user supplied.
    Files referenced by rows inside a not-yet-committed transaction are pinned so a concurrent
    delete of another row with the same content does not remove them.
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._pins: dict[str, int] = {}

    def path(self, sha: str) -> Path:
        if not isinstance(sha, str) or not _SHA256_RE.match(sha):
            raise ValueError("media id must be a SHA-256 hex digest")
        return self.root / sha[:2] / sha

    def put(self, data: bytes) -> str:
        """Store bytes (once per content) and pin them; the caller unpins after its row is committed.

        The file is written and synced outside the store's lock, so that several uploads sync their files
        at the same time: one lock held over every sync made the whole host store one image at a time (a
        disk takes several syncs at once: 200 files of 30 kB in 8 threads took 41 ms here, one after
        another 136 ms). Pinning and the existence check stay under the lock, which is what makes them
        atomic with a delete's check-and-remove."""
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        with self.lock:
            self._pins[sha] = self._pins.get(sha, 0) + 1
            if target.exists():
                return sha
        try:
            # a name of this thread's own: two uploads of the same content write side by side, and the
            # second rename replaces the first's file with the same bytes
            tmp = target.parent / f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{sha}"
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                try:
                    fd = os.open(tmp, flags, 0o600)
                except FileNotFoundError:  # the first file of its shard: make the folder only then
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fd = os.open(tmp, flags, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except BaseException:
            self.unpin(sha)  # no row will refer to it
            raise
        return sha

    def read(self, sha: str) -> bytes:
        try:
            return self.path(sha).read_bytes()
        except FileNotFoundError:
            raise TableError(f"the media file {sha[:12]}... is missing from the media store") from None

    def exists(self, sha: str) -> bool:
        return self.path(sha).exists()

    def pin(self, sha: str) -> None:
        with self.lock:
            self._pins[sha] = self._pins.get(sha, 0) + 1

    def unpin(self, sha: str) -> None:
        with self.lock:
            n = self._pins.get(sha, 0) - 1
            if n <= 0:
                self._pins.pop(sha, None)
            else:
                self._pins[sha] = n

    def is_pinned(self, sha: str) -> bool:
        with self.lock:
            return sha in self._pins

    def remove(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)


class StoredMedia(anvil.Media):
    """A media value read from a row; bytes are loaded from the store on demand."""

    def __init__(self, store: MediaStore, sha256: str, content_type: str | None, name: str | None, length: int):
        self._store = store
        self.sha256 = sha256
        self._content_type = content_type
        self._name = name
        self._length = length

    def get_bytes(self) -> bytes:
        return self._store.read(self.sha256)

    def get_content_type(self) -> str | None:
        return self._content_type

    def get_name(self) -> str | None:
        return self._name

    def get_length(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"StoredMedia[{self._content_type},{self._length} bytes,{self.sha256[:12]}]"


# --------------------------------------------------------------------------------------------------
# Values: Python <-> SQL


def _to_utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _jsonb_order(value: Any) -> Any:
    """``value`` with every dict's keys in the order PostgreSQL's jsonb keeps them, which is where
    Anvil stores simpleObject columns: shorter keys first, then by their bytes (so code that relies on
    a dict's order, e.g. a model's class order, fails here as it would on Anvil)."""
    if isinstance(value, dict):
        return {k: _jsonb_order(value[k]) for k in sorted(value, key=lambda k: (len(str(k).encode()), str(k).encode()))}
    if isinstance(value, (list, tuple)):
        return [_jsonb_order(v) for v in value]
    return value


def _json_or_error(value: Any, what: str) -> str:
    try:
        return json.dumps(_jsonb_order(value), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TableError(f"{what} must be JSON-compatible (dict, list, str, number, bool, None): {e}") from None


# --------------------------------------------------------------------------------------------------
# Database


#: Seconds a write waits for the write lock on SQLite (also the connections' ``busy_timeout``).
SQLITE_WRITE_TIMEOUT_S = 10.0


class _Txn:
    def __init__(self, conn: sa.Connection, trans: sa.Transaction, holds_writer: bool = False):
        self.conn = conn
        self.trans = trans
        self.holds_writer = holds_writer
        self.pinned: list[str] = []
        self.released: list[str] = []


class Database:
    """The SQL storage behind ``app_tables``. Thread-safe; explicit transactions are per thread."""

    def __init__(self, url: str, schema: dict[str, TableSpec], media_root: str | os.PathLike[str],
                 indexes: dict[str, list[tuple[str, ...]]] | None = None):
        """``indexes``: more indexes (table -> column tuples) for the searches the app makes of long tables,
        beside the ones of every date, datetime, link and media column; e.g. ``{"predictions":
        [("experiment", "created")]}`` gives one experiment's rows by time without sorting them."""
        self.url = url
        self.schema = schema
        self.indexes = _check_indexes(schema, indexes or {})
        self.media = MediaStore(media_root)
        self.is_sqlite = url.startswith("sqlite")
        self.engine = self._make_engine(url)
        self.metadata = sa.MetaData()
        self._sql: dict[str, sa.Table] = {}
        # set when removing a file had to be left undone: the next sweep then looks at every file
        self.sweep_everything = False
        # where stored files are referenced; create_tables adds media columns the schema no longer names
        self._media_columns = [(f"app_{spec.name}", c.name) for spec in schema.values() for c in spec.columns
                               if c.type == "media"]
        self._local = threading.local()
        self._writer = threading.Lock()  # SQLite: this process's writers take turns (see _write_turn)
        numbers = {table_number(n): n for n in schema}
        if len(numbers) != len(schema):
            raise SchemaError("two table names map to the same row-id number; rename one table")
        self._by_number = numbers
        self._define_tables()
        self.app_tables = AppTables(self)

    # ---- setup

    def _make_engine(self, url: str) -> sa.Engine:
        if not url.startswith("sqlite"):
            return sa.create_engine(url, pool_pre_ping=True)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy/us emit BEGIN (pysqlite's own transaction handling is unreliable).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_WRITE_TIMEOUT_S * 1000)}")
            cur.execute("PRAGMA case_sensitive_like=ON")  # Anvil's q.like is case-sensitive
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            # Explicit Anvil transactions take the write lock up front so they serialise cleanly.
            immediate = conn.get_execution_options().get("anvil_immediate", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    def _define_tables(self) -> None:
        sa.Table(
            _SCHEMA_TABLE, self.metadata,
            sa.Column("table_name", sa.String(200), primary_key=True),
            sa.Column("column_name", sa.String(200), primary_key=True),
            sa.Column("column_type", sa.String(40), nullable=False),
            sa.Column("target", sa.String(200)),
        )
        for spec in self.schema.values():
            cols: list[sa.Column[Any]] = [sa.Column("_id", sa.Integer, primary_key=True, autoincrement=True)]
            for c in spec.columns:
                cols.extend(self._sql_columns(c))
            name = f"app_{spec.name}"
            indexes = [sa.Index(_index_name(name, columns), *columns) for columns in self.indexes.get(spec.name, [])]
            # sqlite_autoincrement: ids of deleted rows are never given again (SQLite would reuse the
            # highest); a row id in a link, a URL or an exported CSV keeps meaning that row.
            self._sql[spec.name] = sa.Table(name, self.metadata, *cols, *indexes, sqlite_autoincrement=True)

    @staticmethod
    def _sql_columns(c: ColumnSpec) -> list[sa.Column[Any]]:
        kinds: dict[str, Any] = {
            "string": sa.Text, "number": sa.Float(53), "bool": sa.Boolean, "date": sa.Date,
            "datetime": sa.DateTime, "simpleObject": sa.Text, "link_multiple": sa.Text,
        }
        if c.type == "media":
            return [sa.Column(c.name, sa.String(64), index=True), sa.Column(c.name + MEDIA_META_SUFFIX, sa.Text)]
        if c.type == "link_single":
            return [sa.Column(c.name, sa.Integer, index=True)]
        return [sa.Column(c.name, kinds[c.type], index=c.type in ("datetime", "date"))]

    def create_tables(self) -> None:
        """Create missing tables and add missing columns; refuse a changed column type."""
        self.metadata.create_all(self.engine)
        meta = self.metadata.tables[_SCHEMA_TABLE]
        insp = sa.inspect(self.engine)
        with self.engine.begin() as conn:
            known = {(r.table_name, r.column_name): (r.column_type, r.target) for r in conn.execute(sa.select(meta))}
            for spec in self.schema.values():
                sql_table = self._sql[spec.name]
                existing = {c["name"] for c in insp.get_columns(sql_table.name)}
                for c in spec.columns:
                    prev = known.get((spec.name, c.name))
                    if prev is not None and prev != (c.type, c.target):
                        raise SchemaError(
                            f"column {spec.name}.{c.name} is {prev[0]} in the database but {c.type} in "
                            "anvil.yaml; migrate the data by hand (types are never changed automatically)"
                        )
                    for col in self._sql_columns(c):
                        if col.name not in existing:
                            ddl = sa.schema.CreateColumn(col).compile(dialect=self.engine.dialect)
                            conn.execute(sa.text(f"ALTER TABLE {sql_table.name} ADD COLUMN {ddl}"))
                            log.info("added column %s.%s", sql_table.name, col.name)
                    if prev is None:
                        conn.execute(sa.insert(meta).values(
                            table_name=spec.name, column_name=c.name, column_type=c.type, target=c.target))
                if self.is_sqlite:
                    self._ensure_sqlite_autoincrement(conn, sql_table)
                made = {i["name"] for i in sa.inspect(conn).get_indexes(sql_table.name)}
                for index in sql_table.indexes:  # create_all makes a new table's, not an existing one's
                    if index.name not in made:
                        index.create(conn)
                        log.info("added index %s", index.name)
        self._media_columns = self._find_media_columns()

    def _find_media_columns(self) -> list[tuple[str, str]]:
        """(table, column) of every media column in the database: the schema's, and ones anvil.yaml no
        longer names but whose data is still there (their files are still referenced)."""
        insp = sa.inspect(self.engine)
        found = []
        for name in insp.get_table_names():
            if name.startswith("app_"):
                cols = {c["name"] for c in insp.get_columns(name)}
                found += [(name, c.removesuffix(MEDIA_META_SUFFIX)) for c in sorted(cols)
                          if c.endswith(MEDIA_META_SUFFIX) and c.removesuffix(MEDIA_META_SUFFIX) in cols]
        return found

    @staticmethod
    def _ensure_sqlite_autoincrement(conn: sa.Connection, table: sa.Table) -> None:
        """Rebuild a table made before ids were AUTOINCREMENT (same rows, same ids, every column and
        index it had, also ones anvil.yaml no longer names), in the caller's transaction. Ids deleted
        before this ran may be given once more; none after."""
        created = conn.execute(sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                               {"t": table.name}).scalar()
        if created is None or "AUTOINCREMENT" in created.upper():
            return
        old = f"{table.name}__before_autoincrement"
        columns = [(r[1], r[2]) for r in conn.execute(sa.text(f'PRAGMA table_info("{table.name}")')).all()]
        indexes = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND "
                                       "tbl_name = :t AND sql IS NOT NULL"), {"t": table.name}).all()
        for name, _ in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))  # the new table's indexes take these names
        conn.execute(sa.text(f'ALTER TABLE "{table.name}" RENAME TO "{old}"'))
        table.create(conn)
        for name, decl in columns:  # columns the schema dropped keep their data
            if name not in table.c:
                conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{name}" {decl}'))
        names = ", ".join(f'"{name}"' for name, _ in columns)
        n = conn.execute(sa.text(f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{old}"')).rowcount
        conn.execute(sa.text(f'DROP TABLE "{old}"'))
        made = {r[0] for r in conn.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                                   "tbl_name = :t"), {"t": table.name}).all()}
        for name, sql in indexes:  # indexes made by hand come back too
            if name not in made:
                conn.execute(sa.text(sql))
        log.info("rebuilt %s with never-reused row ids (%d rows kept)", table.name, n)

    def dispose(self) -> None:
        self.engine.dispose()

    # ---- connections and transactions

    def _txn(self) -> _Txn | None:
        return getattr(self._local, "txn", None)

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[sa.Connection]:
        """The current thread's transaction connection, or a short autocommitted one.

        Pass ``write=True`` when the short transaction writes: on SQLite it then takes the write lock
        up front (``BEGIN IMMEDIATE``). A deferred transaction that reads and then writes fails at once
        with "database is locked" (no busy wait) if another connection wrote in between.
        """
        txn = self._txn()
        if txn is not None:
            with _conflicts_as_anvil_errors():
                yield txn.conn
            return
        released: list[str] = []
        self._local.released = released
        try:
            with _conflicts_as_anvil_errors(), self.begin(write=write) as conn:
                yield conn
        finally:
            self._local.released = None
        self._collect_media_quietly(released)

    def _acquire_writer(self) -> None:
        """Wait for this process's turn to write on SQLite.

        SQLite admits one writer; a connection that finds the lock taken polls with growing sleeps (up to
        100 ms each), so with several threads writing (every stored prediction is a write) the lock sat
        idle for milliseconds after each commit. Writers of this process queue on a Python lock instead,
        which hands over at once; writers in other processes still meet SQLite's busy_timeout.
        """
        if not self._writer.acquire(timeout=SQLITE_WRITE_TIMEOUT_S):
            raise TransactionConflict(f"the database stayed busy for {SQLITE_WRITE_TIMEOUT_S:g} s; try again")

    @contextmanager
    def begin(self, write: bool = False) -> Iterator[sa.Connection]:
        """``engine.begin()``; with ``write=True`` on SQLite the transaction is ``BEGIN IMMEDIATE``, taken
        in turn with this process's other writers."""
        if not (write and self.is_sqlite):
            with self.engine.begin() as conn:
                yield conn
            return
        self._acquire_writer()
        try:
            with self.engine.connect() as conn:
                conn.execution_options(anvil_immediate=True)
                with conn.begin():
                    yield conn
        finally:
            self._writer.release()

    def open_transaction(self, isolation: str | None = None) -> None:
        """Begin an explicit transaction in this thread (``anvil.tables.Transaction``)."""
        if self._txn() is not None:
            raise TableError("Cannot nest transactions: a transaction is already open")
        if self.is_sqlite:
            self._acquire_writer()  # held until close_transaction, like SQLite's own write lock
        conn = None
        try:
            conn = self.engine.connect()
            if self.is_sqlite:
                conn = conn.execution_options(anvil_immediate=True)
            elif isolation != "relaxed":
                conn = conn.execution_options(isolation_level="SERIALIZABLE")
            with _conflicts_as_anvil_errors():
                trans = conn.begin()
        except BaseException:
            if conn is not None:
                conn.close()
            if self.is_sqlite:
                self._writer.release()
            raise
        self._local.txn = _Txn(conn, trans, holds_writer=self.is_sqlite)

    def close_transaction(self, abort: bool) -> None:
        """Commit (or roll back when ``abort``) this thread's transaction."""
        txn = self._txn()
        if txn is None:
            raise TableError("No transaction is open")
        self._local.txn = None
        try:
            with _conflicts_as_anvil_errors():
                if abort:
                    txn.trans.rollback()
                else:
                    txn.trans.commit()
        finally:
            txn.conn.close()
            if txn.holds_writer:
                self._writer.release()
            for sha in txn.pinned:
                self.media.unpin(sha)
        # after the commit (or rollback) a failing check must not turn into an error of the write
        self._collect_media_quietly(txn.released if not abort else txn.pinned)

    def rollback_dangling(self) -> bool:
        """Roll back a transaction a finished call left open; True if there was one."""
        if self._txn() is None:
            return False
        self.close_transaction(abort=True)
        return True

    # ---- media bookkeeping

    def _store_media(self, value: anvil.Media) -> tuple[str, dict[str, Any]]:
        if isinstance(value, StoredMedia) and value._store is self.media:
            sha, length = value.sha256, value.get_length()
            self.media.pin(sha)
            if not self.media.exists(sha):
                self.media.unpin(sha)
                raise TableError("this media value belongs to a deleted row and its file is gone")
        else:
            data = value.get_bytes()
            if not isinstance(data, bytes):
                raise TableError("media content must be bytes")
            sha, length = self.media.put(data), len(data)
        txn = self._txn()
        if txn is not None:
            txn.pinned.append(sha)  # keep pinned until commit
        else:
            self._local.pinned_once = getattr(self._local, "pinned_once", []) + [sha]
        return sha, {"content_type": value.get_content_type(), "name": value.get_name(), "length": length}

    def _unpin_once(self, failed: bool = False) -> None:
        shas = getattr(self._local, "pinned_once", [])
        self._local.pinned_once = []
        for sha in shas:
            self.media.unpin(sha)
        if failed:
            self._collect_media_quietly(shas)

    def _note_released(self, shas: list[str]) -> None:
        txn = self._txn()
        target = txn.released if txn is not None else getattr(self._local, "released", None)
        if target is not None:
            target.extend(s for s in shas if s)

    def _collect_media(self, shas: list[str]) -> None:
        """Remove media files no committed row references any more."""
        for sha in set(shas):
            with self.media.lock:
                if self.media.is_pinned(sha) or self._media_referenced(sha):
                    continue
                self.media.remove(sha)

    def _collect_media_quietly(self, shas: list[str]) -> None:
        """Remove these files unless a committed row refers to them (after a delete, an update that
        replaced them, or a failed write). The database may fail meanwhile: then they stay for
        :meth:`collect_orphan_media` (the host runs it at start and hourly)."""
        if not shas:
            return
        try:
            self._collect_media(shas)
        except Exception as e:  # noqa: BLE001 - the write's own outcome is what the caller must see
            self.sweep_everything = True
            log.info("media files left for the next sweep: %s", type(e).__name__)

    def collect_orphan_media(self, min_age_s: float = 3600.0, newer_than: float | None = None,
                             now: float | None = None) -> int:
        """Remove stored files no row refers to (left when a write failed with the database down, or by
        a crash) that are older than ``min_age_s`` at ``now`` (default: the clock's) and, with
        ``newer_than`` (a time), were modified after it (older ones were judged by an earlier sweep);
        returns how many were removed. Safe while the host runs."""
        removed = 0
        now = time.time() if now is None else now
        for path in self.media.root.glob("??/*"):
            sha = path.name
            if sha.startswith(_TMP_PREFIX):  # a write a crash interrupted (a live one is not an hour old)
                try:
                    if now - path.stat().st_mtime >= min_age_s:
                        path.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            if not _SHA256_RE.match(sha):
                continue
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:  # removed meanwhile (a delete's own collection)
                continue
            if now - mtime < min_age_s or (newer_than is not None and mtime <= newer_than):
                continue
            with self.media.lock:
                if not self.media.is_pinned(sha) and not self._media_referenced(sha):
                    self.media.remove(sha)
                    removed += 1
        return removed

    def _media_referenced(self, sha: str) -> bool:
        with self.engine.connect() as conn:
            for table, column in self._media_columns:
                hit = conn.execute(sa.text(f'SELECT 1 FROM "{table}" WHERE "{column}" = :sha LIMIT 1'),
                                   {"sha": sha}).first()
                if hit is not None:
                    return True
        return False

    # ---- value conversion

    def to_sql(self, spec: TableSpec, values: dict[str, Any]) -> dict[str, Any]:
        """Check column names and types and convert values to their SQL form."""
        out: dict[str, Any] = {}
        for name, value in values.items():
            col = spec.column(name)
            what = f"column '{name}' ({col.type}) of table '{spec.name}'"
            if value is None:
                out[name] = None
                if col.type == "media":
                    out[name + MEDIA_META_SUFFIX] = None
                continue
            t = col.type
            if t == "string":
                if not isinstance(value, str):
                    raise TableError(f"{what} takes a string, not {type(value).__name__}")
                out[name] = value
            elif t == "number":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TableError(f"{what} takes a number, not {type(value).__name__}")
                out[name] = float(value)
            elif t == "bool":
                if not isinstance(value, bool):
                    raise TableError(f"{what} takes True or False, not {type(value).__name__}")
                out[name] = value
            elif t == "date":
                if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
                    raise TableError(f"{what} takes a datetime.date, not {type(value).__name__}")
                out[name] = value
            elif t == "datetime":
                if not isinstance(value, dt.datetime):
                    raise TableError(f"{what} takes a datetime.datetime, not {type(value).__name__}")
                out[name] = _to_utc_naive(value)
            elif t == "simpleObject":
                out[name] = _json_or_error(value, what)
            elif t == "media":
                if not isinstance(value, anvil.Media):
                    raise TableError(f"{what} takes a Media object, not {type(value).__name__}")
                sha, meta = self._store_media(value)
                out[name] = sha
                out[name + MEDIA_META_SUFFIX] = json.dumps(meta)
            elif t == "link_single":
                out[name] = self._link_pk(col, value, what)
            elif t == "link_multiple":
                if not isinstance(value, (list, tuple)):
                    raise TableError(f"{what} takes a list of rows, not {type(value).__name__}")
                out[name] = json.dumps([self._link_pk(col, v, what) for v in value])
        return out

    def _link_pk(self, col: ColumnSpec, value: Any, what: str) -> int:
        if not isinstance(value, Row) or value._table.spec.name != col.target or value._table._db is not self:
            raise TableError(f"{what} takes a row from table '{col.target}'")
        return value._pk

    def from_sql(self, spec: TableSpec, record: Any, columns: tuple[ColumnSpec, ...] | None = None) -> dict[str, Any]:
        """A fetched record's values by column name: of ``columns`` (the ones a search fetched), or all."""
        m = record._mapping
        out: dict[str, Any] = {}
        for c in spec.columns if columns is None else columns:
            v = m[c.name]
            if v is None:
                out[c.name] = [] if c.type == "link_multiple" else None
            elif c.type == "number":
                out[c.name] = int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v)
            elif c.type == "datetime":
                out[c.name] = v.replace(tzinfo=dt.timezone.utc)
            elif c.type == "simpleObject":
                out[c.name] = json.loads(v)
            elif c.type == "media":
                meta = json.loads(m[c.name + MEDIA_META_SUFFIX] or "{}")
                out[c.name] = StoredMedia(self.media, v, meta.get("content_type"), meta.get("name"),
                                          int(meta.get("length", 0)))
            elif c.type == "link_single":
                out[c.name] = Row(self.app_tables[c.target], int(v), None)
            elif c.type == "link_multiple":
                target = self.app_tables[c.target]
                out[c.name] = [Row(target, int(pk), None) for pk in json.loads(v)]
            else:
                out[c.name] = v
        return out

    def sql_table(self, name: str) -> sa.Table:
        return self._sql[name]

    def table_for_number(self, number: int) -> str | None:
        return self._by_number.get(number)


@contextmanager
def _conflicts_as_anvil_errors() -> Iterator[None]:
    """Lock timeouts (SQLite) and serialisation failures (PostgreSQL) are Anvil's TransactionConflict,
    which ``anvil.tables.in_transaction`` retries."""
    try:
        yield
    except sa.exc.OperationalError as e:
        text = str(e.orig).lower()
        code = getattr(e.orig, "sqlstate", None) or getattr(e.orig, "pgcode", None)
        if "database is locked" in text or "deadlock" in text or code in ("40001", "40P01"):
            raise TransactionConflict("another transaction changed the same data; try again") from e
        raise


# --------------------------------------------------------------------------------------------------
# The public API: app_tables, Table, Row, SearchIterator


class AppTables(anvil.tables._base_classes.AppTables):
    """``app_tables``: attribute access to each table in ``db_schema``."""

    def __init__(self, db: Database):
        object.__setattr__(self, "_db", db)
        object.__setattr__(self, "_tables", {n: Table(db, s) for n, s in db.schema.items()})

    def __getattr__(self, name: str) -> Table:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self._tables[name]
        except KeyError:
            raise AttributeError(f"No such app table: '{name}'") from None

    def __getitem__(self, name: str) -> Table:
        return self.__getattr__(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("app_tables is read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __dir__(self) -> list[str]:
        return list(self._tables)


class Table(anvil.tables.Table):
    """One data table (``app_tables.<name>``)."""

    __slots__ = ("_db", "spec", "_sql", "_columns", "_insert_stmt")

    def __new__(cls, *args: Any, **kwargs: Any) -> Table:
        return object.__new__(cls)

    def __init__(self, db: Database, spec: TableSpec):
        self._db = db
        self.spec = spec
        self._sql = db.sql_table(spec.name)
        self._columns = tuple(c for c in self._sql.c.keys() if c != "_id")  # what an INSERT writes
        self._insert_stmt: sa.Insert | None = None

    def __repr__(self) -> str:
        return f"<Table {self.spec.name}>"

    def add_row(self, **values: Any) -> Row:
        """Add a row; keyword arguments are column values. Returns the new row."""
        return self.add_rows([values])[0]

    def add_rows(self, rows: Iterable[dict[str, Any]]) -> list[Row]:
        """Add several rows with one INSERT (Anvil's ``add_rows``): each item is a dict of column values,
        a column it leaves out is None. Returns the new rows in the same order. All or none: if any value
        is refused, no row is added."""
        rows = [dict(values) for values in rows]
        if not rows:
            return []
        try:
            sql_rows = [self._db.to_sql(self.spec, values) for values in rows]
            params = [{c: r.get(c) for c in self._columns} for r in sql_rows]
            with self._db.connect(write=True) as conn:
                if conn.dialect.insert_executemany_returning:
                    # One statement object per table, so SQLAlchemy compiles and keys it once; the rows
                    # go as multi-row INSERT ... VALUES ... RETURNING (1,000 rows per statement).
                    pks = conn.execute(self._insert(), params).scalars().all()
                    if self._db.is_sqlite:
                        # SQLite returns the ids in no promised order (and SQLAlchemy has no way to pair
                        # them up there but one INSERT per row); AUTOINCREMENT ids rise in the order the
                        # rows go in.
                        pks.sort()
                else:  # SQLite before 3.35 has no RETURNING: one INSERT per row
                    pks = [conn.execute(self._sql.insert(), p).inserted_primary_key[0] for p in params]
        except BaseException:
            self._db._unpin_once(failed=True)
            raise
        self._db._unpin_once()
        return [self._written_row(pk, values, written) for pk, values, written in zip(pks, rows, params)]

    def _insert(self) -> sa.Insert:
        if self._insert_stmt is None:
            # PostgreSQL: SQLAlchemy pairs the returned ids with the rows given (its "sentinel")
            self._insert_stmt = self._sql.insert().returning(self._sql.c._id,
                                                             sort_by_parameter_order=not self._db.is_sqlite)
        return self._insert_stmt

    def _written_row(self, pk: int, values: dict[str, Any], params: dict[str, Any]) -> Row:
        """A new row with the values a read would give, from the INSERT's parameters (no SELECT per add);
        linked rows are the ones the caller passed, with whatever values they already hold."""
        written = self._db.from_sql(self.spec, _Written(params))
        for c in self.spec.columns:
            if c.type == "link_single" and isinstance(values.get(c.name), Row):
                written[c.name] = values[c.name]
            elif c.type == "link_multiple" and values.get(c.name):
                written[c.name] = list(values[c.name])
        return Row(self, int(pk), written)

    def get(self, *queries: Any, **kwargs: Any) -> Row | None:
        """The single row matching the query, None if none; TableError if several match."""
        # iter(): list() of the search itself asks its len() first, a COUNT query for nothing
        rows = list(iter(self.search(*queries, **kwargs)[0:2]))
        if len(rows) > 1:
            raise TableError("More than one row matched this query")
        return rows[0] if rows else None

    def get_by_id(self, row_id: str, fetch: Any = None) -> Row | None:
        """The row with this id (from ``row.get_id()``), or None."""
        if not isinstance(row_id, str):
            raise TypeError("row ids are strings")
        m = _ROW_ID_RE.match(row_id)
        if m is None or int(m.group(1)) != table_number(self.spec.name):
            return None
        row = Row(self, int(m.group(2)), None)
        try:
            row._load()
        except RowDeleted:
            return None
        return row

    def has_row(self, row: Any) -> bool:
        if not isinstance(row, Row) or row._table is not self:
            return False
        with self._db.connect() as conn:
            return conn.execute(sa.select(self._sql.c._id).where(self._sql.c._id == row._pk)).first() is not None

    def search(self, *queries: Any, **kwargs: Any) -> SearchIterator:
        """Rows matching the query (``q.*`` operators, column=value), ordered by ``order_by``."""
        where, order, fetch = _compile(self, queries, kwargs)
        return SearchIterator(self, where, order, fetch=fetch)

    def list_columns(self) -> list[dict[str, Any]]:
        return [
            {"name": c.name, "type": c.type, **({"table_id": c.target} if c.target else {})}
            for c in self.spec.columns
        ]

    def delete_all_rows(self) -> None:
        self.search().delete_all_rows()

    def to_csv(self, escape_for_excel: bool = False) -> anvil.BlobMedia:
        return self.search().to_csv(escape_for_excel)


class _Written:
    """What :meth:`Database.from_sql` reads from a fetched record (``_mapping``), for values just
    inserted (columns not given are NULL, as in the database)."""

    __slots__ = ("_mapping",)

    def __init__(self, mapping: dict[str, Any]):
        self._mapping = mapping


class Row(anvil.tables.Row):
    """A table row. Values are cached when read; ``update``/``delete`` write through immediately."""

    __slots__ = ("_table", "_pk", "_values")

    def __new__(cls, *args: Any, **kwargs: Any) -> Row:
        return object.__new__(cls)

    def __init__(self, table: Table, pk: int, values: dict[str, Any] | None):
        self._table = table
        self._pk = pk
        self._values = values

    def _load(self) -> dict[str, Any]:
        if self._values is None:
            t = self._table
            with t._db.connect() as conn:
                rec = conn.execute(sa.select(t._sql).where(t._sql.c._id == self._pk)).first()
            if rec is None:
                raise RowDeleted("This row has been deleted")
            self._values = t._db.from_sql(t.spec, rec)
        return self._values

    def get_id(self) -> str:
        return f"[{table_number(self._table.spec.name)},{self._pk}]"

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str):
            raise TypeError(f"Row columns are always strings, not {type(key).__name__}")
        values = self._load()
        if key not in values:
            self._table.spec.column(key)  # NoSuchColumnError for a column the table does not have
            self._values = None  # a search fetched only some columns (q.fetch_only): read the whole row
            values = self._load()
        return _copy_value(values[key])

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except NoSuchColumnError:
            return default

    def __setitem__(self, key: str, value: Any) -> None:
        self.update(**{key: value})

    def keys(self) -> list[str]:
        return [c.name for c in self._table.spec.columns]

    def values(self) -> list[Any]:
        return [self[k] for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self.keys()]

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.items())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def update(self, **values: Any) -> None:
        """Set several columns at once."""
        t = self._table
        old_media: list[str] = []
        try:
            sql_values = t._db.to_sql(t.spec, values)
            media_cols = [c.name for c in t.spec.columns if c.type == "media" and c.name in values]
            with t._db.connect(write=True) as conn:
                if media_cols:
                    rec = conn.execute(sa.select(*(t._sql.c[n] for n in media_cols))
                                       .where(t._sql.c._id == self._pk)).first()
                    old_media = [v for v in (rec or ()) if v]
                if sql_values:
                    res = conn.execute(sa.update(t._sql).where(t._sql.c._id == self._pk).values(**sql_values))
                    if res.rowcount == 0:
                        raise RowDeleted("This row has been deleted")
                t._db._note_released(old_media)
        except BaseException:
            t._db._unpin_once(failed=True)
            raise
        t._db._unpin_once()
        self._values = None  # read back on next access, in stored form

    def delete(self) -> None:
        """Delete this row (and its media files once nothing references them)."""
        t = self._table
        media_cols = [c.name for c in t.spec.columns if c.type == "media"]
        with t._db.connect(write=True) as conn:
            shas: list[str] = []
            if media_cols:
                rec = conn.execute(sa.select(*(t._sql.c[n] for n in media_cols))
                                   .where(t._sql.c._id == self._pk)).first()
                shas = [v for v in (rec or ()) if v]
            res = conn.execute(sa.delete(t._sql).where(t._sql.c._id == self._pk))
            if res.rowcount == 0:
                raise RowDeleted("This row has been deleted")
            t._db._note_released(shas)
        self._values = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Row):
            return NotImplemented
        return self._table is other._table and self._pk == other._pk

    def __hash__(self) -> int:
        return hash((self._table.spec.name, self._pk))

    def __repr__(self) -> str:
        return f"<Row {self._table.spec.name} {self.get_id()}>"


class SearchIterator(anvil.tables.SearchIterator):
    """A lazy search: ``len()`` counts in SQL, slices become LIMIT/OFFSET, iteration pages (by id past the
    first page)."""

    __slots__ = ("_table", "_where", "_order", "_offset", "_limit", "_fetch")

    def __new__(cls, *args: Any, **kwargs: Any) -> SearchIterator:
        return object.__new__(cls)

    def __init__(self, table: Table, where: Any, order: list[Any], offset: int = 0, limit: int | None = None,
                 fetch: _Fetch | None = None):
        self._table = table
        self._where = where
        self._order = order
        self._offset = offset
        self._limit = limit
        self._fetch = fetch  # q.fetch_only's columns; None: all of them

    def _select(self, columns: list[Any], offset: int, limit: int | None) -> sa.Select[Any]:
        stmt = sa.select(*columns).where(self._where).order_by(*self._order)
        if offset:
            stmt = stmt.offset(offset)
        return stmt.limit(limit) if limit is not None else stmt

    def __len__(self) -> int:
        # A plain COUNT: the order does not change how many rows match, and counting an ordered,
        # offset subquery walked every row in order (SQLite: not its fast count; PostgreSQL: a sort).
        t = self._table._sql
        with self._table._db.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(t).where(self._where)).scalar_one())
        n = max(0, total - self._offset)
        return n if self._limit is None else min(n, self._limit)

    def __bool__(self) -> bool:
        return True

    def __iter__(self) -> Iterator[Row]:
        """The first page in one query; past it, the ids of the rest in order in one query, then their rows
        a page at a time by id. Paging with OFFSET read all the earlier rows again for every page (a
        million rows: some 10^9 rows read). Which rows come after the first page is settled when it is
        passed: rows deleted later are left out, rows added later do not come, no row comes twice.
        Each page comes with the rows its link columns point to, in one query per link column (as Anvil's
        Accelerated Tables fetch linked rows with a search), not one query per linked row read."""
        db, table, t = self._table._db, self._table, self._table._sql
        first = _PAGE if self._limit is None else min(_PAGE, self._limit)
        with db.connect() as conn:
            records = conn.execute(self._select(_selected(table, self._fetch), self._offset, first)).all()
        seen = set()
        for row in _rows(table, records, self._fetch):
            seen.add(row._pk)
            yield row
        if len(records) < first or len(records) == self._limit:
            return
        with db.connect() as conn:
            rest = conn.execute(self._select([t.c._id], self._offset, self._limit)).scalars()
            ids = array("q", (pk for pk in rest if pk not in seen))
        for start in range(0, len(ids), _PAGE):
            chunk = ids[start:start + _PAGE].tolist()
            with db.connect() as conn:
                found = {row._pk: row for row in _rows(table, conn.execute(
                    sa.select(*_selected(table, self._fetch)).where(t.c._id.in_(chunk))).all(), self._fetch)}
            for pk in chunk:
                if pk in found:  # else deleted meanwhile
                    yield found[pk]

    def __getitem__(self, idx: int | slice) -> Row | SearchIterator:
        if isinstance(idx, slice):
            if idx.step not in (None, 1):
                raise ValueError("search slices do not support a step")
            start = _non_negative(idx.start, 0)
            stop = _non_negative(idx.stop, None)
            limit = None if stop is None else max(0, stop - start)
            if self._limit is not None:
                remaining = max(0, self._limit - start)
                limit = remaining if limit is None else min(limit, remaining)
            return SearchIterator(self._table, self._where, self._order, self._offset + start, limit, self._fetch)
        i = _non_negative(idx, 0)
        rows = list(iter(self[i:i + 1]))  # not list(search): its len() is a COUNT query
        if not rows:
            raise IndexError("search index out of range")
        return rows[0]

    def delete_all_rows(self) -> None:
        for row in list(self):
            row.delete()

    def to_csv(self, escape_for_excel: bool = False) -> anvil.BlobMedia:
        """The rows as CSV (media columns as their name; links as row ids)."""
        cols = self._table.spec.columns
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([c.name for c in cols] + ["ID"])
        for row in self:
            cells = []
            for c in cols:
                v = row[c.name]
                if isinstance(v, anvil.Media):
                    v = v.get_name() or ""
                elif isinstance(v, Row):
                    v = v.get_id()
                elif isinstance(v, list) and c.type == "link_multiple":
                    v = " ".join(r.get_id() for r in v)
                elif isinstance(v, (dict, list)):
                    v = json.dumps(v)
                elif isinstance(v, (dt.datetime, dt.date)):
                    v = v.isoformat()
                cells.append("" if v is None else str(v))
            writer.writerow(cells + [row.get_id()])
        data = out.getvalue()
        if escape_for_excel:
            data = "\ufeff" + data
        return anvil.BlobMedia("text/csv", data.encode("utf-8"), name=f"{self._table.spec.name}.csv")


# What a search fetches (q.fetch_only): column name -> None for the whole column (for a link column: the
# linked rows with all their columns), or, for a link column, what to fetch of the linked rows.
_Fetch = dict[str, "_Fetch | None"]


def _fetch_spec(table: Table, spec: dict[str, Any]) -> _Fetch:
    """q.fetch_only's spec (name -> True, or a linked column's spec), checked against the table."""
    out: _Fetch = {}
    for name, sub in spec.items():
        col = table.spec.column(name)
        if sub is True:
            out[name] = None
        elif col.type in ("link_single", "link_multiple"):
            out[name] = _fetch_spec(table._db.app_tables[col.target], sub)
        else:
            raise TableError(f"q.fetch_only: '{name}' is not a link column, so it takes no q.fetch_only() of its own")
    return out


def _selected(table: Table, fetch: _Fetch | None) -> list[Any]:
    """The SQL columns a search reads: all, or the row id and the fetched columns."""
    t = table._sql
    if fetch is None:
        return [t]
    cols = [t.c._id]
    for c in table.spec.columns:
        if c.name in fetch:
            cols.append(t.c[c.name])
            if c.type == "media":
                cols.append(t.c[c.name + MEDIA_META_SUFFIX])
    return cols


def _rows(table: Table, records: list[Any], fetch: _Fetch | None, links: bool = True) -> list[Row]:
    """Rows from fetched records; with ``links``, the rows their link columns point to are read too, in
    one query per link column (all their columns, or what ``fetch`` says for them)."""
    db = table._db
    columns = None if fetch is None else tuple(c for c in table.spec.columns if c.name in fetch)
    rows = [Row(table, int(rec._mapping["_id"]), db.from_sql(table.spec, rec, columns)) for rec in records]
    for c in (table.spec.columns if columns is None else columns) if links else ():
        if c.type not in ("link_single", "link_multiple"):
            continue
        linked = [v for row in rows for v in (row._values[c.name] if c.type == "link_multiple"
                                              else [row._values[c.name]]) if v is not None]
        sub = None if fetch is None else fetch[c.name]
        target = db.app_tables[c.target]
        pks = list(dict.fromkeys(r._pk for r in linked if r._values is None))
        found: dict[int, Row] = {}
        for start in range(0, len(pks), _PAGE):
            with db.connect() as conn:
                recs = conn.execute(sa.select(*_selected(target, sub)).where(
                    target._sql.c._id.in_(pks[start:start + _PAGE]))).all()
            # a fetch of their own reads the linked rows' links as it says; by default one level deep (the
            # linked rows' links are read when used: a chain of self-links must not be followed to its end)
            found.update((r._pk, r) for r in _rows(target, recs, sub, links=sub is not None))
        for r in linked:
            if r._values is None and r._pk in found:  # else deleted meanwhile: reading it raises RowDeleted
                r._values = found[r._pk]._values  # read-only: reads copy, updates replace the dict
    return rows


def _non_negative(i: Any, default: int | None) -> int | None:
    if i is None:
        return default
    if not isinstance(i, int) or isinstance(i, bool) or i < 0:
        raise ValueError("search indices must be non-negative integers")
    return i


def _copy_value(v: Any) -> Any:
    """What a read of a column returns: a copy of a simpleObject value or of a link_multiple list (the rows
    in it as they are), so that changing it changes no row. The values are JSON (dicts, lists, immutable
    leaves) or lists of rows, so they are copied level by level: copy.deepcopy took three times as long,
    a third of the time of a long CSV export."""
    if isinstance(v, dict):
        return {k: _copy_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy_value(x) for x in v]
    return v


# --------------------------------------------------------------------------------------------------
# Query compilation: anvil.tables.query objects -> SQLAlchemy expressions

_COMPARISONS = {
    q.greater_than: "__gt__", q.less_than: "__lt__",
    q.greater_than_or_equal_to: "__ge__", q.less_than_or_equal_to: "__le__",
}


def _compile(table: Table, queries: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, list[Any], _Fetch | None]:
    order: list[Any] = []
    clauses: list[Any] = []
    fetch: _Fetch | None = None
    descending = False
    for query in queries:
        if isinstance(query, anvil.tables.order_by):
            col = table.spec.column(query.column_name)
            if col.type in ("simpleObject", "media", "link_multiple"):
                raise TableError(f"cannot order by the {col.type} column '{col.name}'")
            sql_col = table._sql.c[col.name]
            order.append(sql_col.asc() if query.ascending else sql_col.desc())
            descending = not query.ascending
        elif isinstance(query, q.fetch_only):
            fetch = _fetch_spec(table, query.spec)
        elif isinstance(query, q.page_size):
            continue  # a performance hint: pages here are _PAGE rows
        else:
            clauses.append(_compile_query(table, query))
    clauses.extend(_compile_column(table, name, value) for name, value in kwargs.items())
    # Ties go by row id in the direction of the last ordering column: an index holds its equal values in
    # row-id order, so it then gives the whole order, read either way. Against it (newest first, ties
    # oldest first) SQLite sorted every row it read, also the ones an OFFSET skips.
    order.append(table._sql.c._id.desc() if descending else table._sql.c._id.asc())
    return sa.and_(sa.true(), *clauses), order, fetch


def _compile_query(table: Table, query: Any) -> Any:
    """A positional query: q.all_of / any_of / none_of combining column conditions."""
    if isinstance(query, (q.all_of, q.any_of, q.none_of)):
        parts = [_compile_query(table, a) for a in query.args]
        parts += [_compile_column(table, n, v) for n, v in query.kwargs.items()]
        if isinstance(query, q.all_of):
            return sa.and_(sa.true(), *parts)
        if isinstance(query, q.any_of):
            return sa.or_(sa.false(), *parts)
        return sa.not_(sa.or_(sa.false(), *parts))
    if isinstance(query, q.full_text_match):
        raise TableError("q.full_text_match is not supported by the local host; use q.ilike")
    raise TableError(f"unsupported query argument {query!r}; use q.* operators or column=value")


def _compile_column(table: Table, name: str, value: Any) -> Any:
    col = table.spec.column(name)
    sql_col = table._sql.c[col.name]
    if isinstance(value, (q.all_of, q.any_of, q.none_of)):
        if value.kwargs:
            raise TableError(f"column '{name}': q.{type(value).__name__} on a column takes values, not keywords")
        parts = [_compile_column(table, name, v) for v in value.args]
        if isinstance(value, q.all_of):
            return sa.and_(sa.true(), *parts)
        if isinstance(value, q.any_of):
            return sa.or_(sa.false(), *parts)
        return sa.not_(sa.or_(sa.false(), *parts))
    if value is None and col.type in ("simpleObject", "media"):
        return sql_col.is_(None)
    if col.type in ("simpleObject", "media", "link_multiple"):
        raise TableError(f"searching on the {col.type} column '{name}' is not supported by the local host")
    if isinstance(value, (q.like, q.ilike)):
        if col.type != "string":
            raise TableError(f"q.{type(value).__name__} only applies to string columns, not '{name}'")
        if not isinstance(value.pattern, str):
            raise TableError(f"q.{type(value).__name__} takes a string pattern")
        # A backslash escapes % and _ as in PostgreSQL, which Anvil's own tables run on (SQLite has no
        # LIKE escape character unless one is named).
        if isinstance(value, q.like):
            return sql_col.like(value.pattern, escape="\\")
        return sql_col.ilike(value.pattern, escape="\\")
    for kind, op in _COMPARISONS.items():
        if isinstance(value, kind):
            if value.value is None:
                raise TableError(f"column '{name}': cannot compare with None")
            return getattr(sql_col, op)(_query_value(table, col, value.value))
    if isinstance(value, q.full_text_match):
        raise TableError("q.full_text_match is not supported by the local host; use q.ilike")
    if value is None:
        return sql_col.is_(None)
    return sql_col == _query_value(table, col, value)


def _query_value(table: Table, col: ColumnSpec, value: Any) -> Any:
    if col.type == "link_single":
        if isinstance(value, Row) and value._table.spec.name == col.target:
            return value._pk
        raise TableError(f"column '{col.name}' is matched with a row from table '{col.target}'")
    return table._db.to_sql(table.spec, {col.name: value})[col.name]
