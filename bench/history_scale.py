"""Reviewing the prediction history when it is large: what a user's History page, CSV export, experiment
summary and delete cost at 10,000 to 1,000,000 prediction rows.

For each size, a fresh host database (SQLite in a temporary directory; with ``--postgres`` also a
throw-away PostgreSQL cluster) is filled with rows that look like a lab's year of use: several users,
50 experiments of uneven size, the four conditions, two models (three versions), probabilities,
warnings on some rows, ``created`` spread over a year. A few hundred rows come through the real upload
path (``classify_cell_images`` with a fake worker: real image files); the rest are written in bulk
through the host's table layer (``Database.to_sql`` converts each row exactly as ``add_row`` does; the
INSERTs go in batches) and share those rows' stored images.

Then the REST routes are timed as the web UI and scripts call them (``/_/api/...``: HTTP Basic, the
host's Starlette routes, the endpoint, ``server_code``, JSON), driven in-process through ASGI with the
response body counted and dropped as a server drops what it has sent. The count is timed on its own
(the ``len()`` of the history search, as ``search_history`` takes it). Peak memory of the CSV exports is
the growth of the process's peak RSS (VmHWM, reset before each export) over its RSS before.

    python bench/history_scale.py --rows 10000,100000,1000000 --write-doc
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import logging
import re
import sys
import tempfile
import time
import urllib.parse
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (DEFAULT_WORK, POSITIVE, Stats, positive_list, report_load, setup_logging,  # noqa: E402
                          write_section)

log = logging.getLogger("bench.history_scale")

PASSWORD = "a long bench passphrase"
#: (email, role, share of the experiments they own)
USERS = [("ada.admin@lab.org", "lab_admin", 0.05), ("rita.moreno@lab.org", "researcher", 0.25),
         ("sam.okafor@lab.org", "researcher", 0.20), ("li.wei@lab.org", "researcher", 0.20),
         ("jonas.berg@lab.org", "researcher", 0.15), ("maria.rossi@lab.org", "researcher", 0.10),
         ("visiting.student@partner.edu", "researcher", 0.05)]
EXPERIMENTS = 50
#: (name, version, share of the rows): the second version replaced the first half-way through the year
MODELS = [("resnet50-medium4", "1.0.0", 0.45), ("resnet50-medium4", "1.1.0", 0.45), ("resnet18-medium4", "1.0.0", 0.10)]
POOL_IMAGES = 256  # rows through the real upload path; the bulk rows share their stored images
BATCH = 10_000  # rows per INSERT batch


# ------------------------------------------------------------------------------------- the data


@dataclass
class Filled:
    n_rows: int
    seconds: float
    experiment: str  # a typical experiment (the median size) for the per-experiment operations
    experiment_rows: int
    date_from: str
    date_to: str
    month_rows: int
    deletable: list[str] = field(default_factory=list)  # ids of rows with an image of their own
    db_mb: float | None = None  # the SQLite file's size


def fill(rt, n_rows: int, n_deletes: int, seed: int = 0) -> Filled:
    """Fill ``rt``'s empty database with ``n_rows`` predictions that look like a year of a lab's use."""
    from apphost.testing import png_bytes
    from nscfate.classes import get_task

    t0 = time.perf_counter()
    db = rt.db
    rng = np.random.default_rng(seed)
    users = [rt.accounts.create_user(email, PASSWORD, role=role) for email, role, _ in USERS]
    sessions = [rt.accounts.create_session(u) for u in users]
    admin = sessions[0]

    # Real rows first (the upload path, real image files): their images are shared by the bulk rows.
    import anvil

    def upload(seeds: list[int], experiment: str) -> list[dict]:
        out = []
        for i in range(0, len(seeds), 16):
            files = [anvil.BlobMedia("image/png", png_bytes(s, size=16), name=f"cell{s}.png") for s in seeds[i:i + 16]]
            results = rt.call("classify_cell_images", files, experiment=experiment, session=admin)
            assert all(r["ok"] for r in results), results
            out += results
        return out

    upload(list(range(POOL_IMAGES)), "pool")
    deletable = [r["id"] for r in upload(list(range(POOL_IMAGES, POOL_IMAGES + n_deletes)), "to delete")]
    table = db.sql_table("predictions")
    with db.engine.connect() as conn:
        pool = [dict(r._mapping) for r in conn.execute(
            table.select().with_only_columns(table.c.image, table.c["image__media"], table.c.image_sha256))]

    n_bulk = n_rows - POOL_IMAGES - n_deletes
    task = get_task("medium4")
    classes = list(task.classes)
    class_names = [[k, task.display_names[k]] for k in classes]
    year = 365 * 86400.0
    end = time.time() - 86400  # the uploads above are today's
    # experiments: an owner, a time window, a size and a condition mix of their own
    owner_p = np.array([s for *_, s in USERS])
    owners = rng.choice(len(USERS), size=EXPERIMENTS, p=owner_p / owner_p.sum())
    starts = np.sort(rng.uniform(0, year - 14 * 86400, size=EXPERIMENTS))
    sizes = rng.lognormal(0, 0.6, size=EXPERIMENTS)
    mix = rng.dirichlet(np.full(len(classes), 2.0), size=EXPERIMENTS)
    exp_of = rng.choice(EXPERIMENTS, size=n_bulk, p=sizes / sizes.sum())
    offset = rng.uniform(0, 14 * 86400, size=n_bulk)  # an experiment is imaged over two weeks
    created = end - year + starts[exp_of] + offset
    order = np.argsort(created)  # rows are written in time order, as uploads write them
    exp_of, created = exp_of[order], created[order]
    other_user = rng.random(n_bulk) < 0.1  # a colleague uploads some of an experiment's images
    user_of = np.where(other_user, rng.integers(0, len(USERS), size=n_bulk), owners[exp_of])
    true_class = (mix[exp_of].cumsum(axis=1) > rng.random(n_bulk)[:, None]).argmax(axis=1)
    alpha = np.full((n_bulk, len(classes)), 0.6)
    alpha[np.arange(n_bulk), true_class] = 4.0
    probs = rng.gamma(alpha)
    probs /= probs.sum(axis=1, keepdims=True)
    second_half = created > end - year / 2
    model_of = np.where(rng.random(n_bulk) < 0.1, 2, np.where(second_half, 1, 0))
    warn_roll = rng.random(n_bulk)
    exp_names = [f"E{2026 if s > year / 2 else 2025}-{k + 1:03d}" for k, s in enumerate(starts)]
    notes = [None if rng.random() < 0.6 else f"plate {k % 4 + 1}, day {k % 7 + 1}" for k in range(EXPERIMENTS)]
    pool_pick = rng.integers(0, len(pool), size=n_bulk)
    user_rows = users

    def values(i: int) -> dict:
        p = probs[i]
        top = int(p.argmax())
        conf = float(p[top])
        warnings = []
        if warn_roll[i] < 0.01:
            warnings.append("no cell found: the image is nearly uniform (empty, flat or badly out of focus)")
        elif warn_roll[i] < 0.03:
            warnings.append("does not look like a single cell: 2 similar objects (doublet, debris or a field of "
                            "view?); the model expects one cell per image")
        if conf < 0.5:
            warnings.append(f"low confidence: the top class has probability {conf:.2f} (below 0.50); treat this "
                            "prediction as uncertain")
        name, version, _ = MODELS[model_of[i]]
        e = exp_of[i]
        return dict(
            created=dt.datetime.fromtimestamp(created[i], dt.timezone.utc), user=user_rows[user_of[i]],
            filename=f"{exp_names[e]}_{i % 997:03d}_{i}_Ch1.ome.tif", model_name=name, model_version=version,
            predicted_class=classes[top], confidence=conf,
            probabilities={k: float(v) for k, v in zip(classes, p)}, class_names=class_names,
            warnings=warnings, experiment=exp_names[e], notes=notes[e])

    spec = db.schema["predictions"]
    for start in range(0, n_bulk, BATCH):
        batch = []
        for i in range(start, min(n_bulk, start + BATCH)):
            row = db.to_sql(spec, values(i))  # exactly what add_row writes for these values
            media = pool[pool_pick[i]]
            row.update(image=media["image"], image__media=media["image__media"], image_sha256=media["image_sha256"])
            batch.append(row)
        with db.begin(write=True) as conn:
            conn.execute(table.insert(), batch)
    if db.is_sqlite:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")

    counts = np.bincount(exp_of, minlength=EXPERIMENTS)
    imaged = np.flatnonzero(counts)  # a small history leaves some experiments without rows
    typical = int(imaged[np.argsort(counts[imaged])[len(imaged) // 2]])
    month_end = end - year / 4
    month_rows = int(((created >= month_end - 30 * 86400) & (created < month_end)).sum())
    day = dt.datetime.fromtimestamp
    return Filled(n_rows, time.perf_counter() - t0, exp_names[typical], int(counts[typical]),
                  day(month_end - 30 * 86400, dt.timezone.utc).date().isoformat(),
                  day(month_end - 86400, dt.timezone.utc).date().isoformat(), month_rows, deletable)


# ------------------------------------------------------------------------------------ the client


@dataclass
class Answer:
    status: int
    body: bytes  # kept only for JSON answers
    size: int
    lines: int
    json: bool = False


class AsgiClient:
    """Requests to the host's Starlette routes in this process, as an HTTP server passes them: the
    response body is counted and dropped chunk by chunk (a server writes it to the socket)."""

    def __init__(self, app, email: str, password: str):
        self.app = app
        self.loop = asyncio.new_event_loop()
        token = base64.b64encode(f"{email}:{password}".encode()).decode()
        self.headers = [(b"host", b"bench"), (b"authorization", f"Basic {token}".encode())]

    def request(self, method: str, path: str, params: dict | None = None) -> Answer:
        return self.loop.run_until_complete(self._request(method, path, params or {}))

    async def _request(self, method: str, path: str, params: dict) -> Answer:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": urllib.parse.quote(path).encode(), "root_path": "",
                 "query_string": urllib.parse.urlencode(params).encode(), "headers": self.headers,
                 "client": ("127.0.0.1", 40000), "server": ("bench", 80)}
        answer = Answer(0, b"", 0, 0)
        keep = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                answer.status = message["status"]
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                answer.json = kind.startswith(b"application/json")
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                answer.size += len(chunk)
                answer.lines += chunk.count(b"\n")
                if answer.json:
                    keep.append(chunk)

        await self.app(scope, receive, send)
        answer.body = b"".join(keep)
        return answer

    def close(self) -> None:
        self.loop.close()


# ----------------------------------------------------------------------------------- measuring


def rss_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its RSS now; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Op:
    name: str
    run: callable
    repeats: int
    memory: bool = False
    times_ms: list[float] = field(default_factory=list)
    peak_mb: list[float] = field(default_factory=list)


def measure(rt, filled: Filled, repeats: int, csv_all_repeats: int) -> list[Op]:
    import json

    from starlette.applications import Starlette

    from apphost.http_api import api_routes

    predictions = sys.modules[f"{rt.package_name}.predictions"]
    client = AsgiClient(Starlette(routes=api_routes(rt)), USERS[0][0], PASSWORD)  # the lab admin: may delete any row
    deletable = list(filled.deletable)

    def rows_now() -> int:
        return filled.n_rows - (len(filled.deletable) - len(deletable))

    def get(path, params) -> Answer:
        a = client.request("GET", path, params)
        assert a.status == 200, (path, params, a.status, a.body[:300])
        return a

    def page(check_total=False, **params):
        def run():
            data = json.loads(get("/_/api/predictions", params).body)
            assert data["rows"] and (not check_total or data["total"] == rows_now()), (params, data["total"])
        return run

    def csv(expect_rows=None, **params):
        def run():
            lines = get("/_/api/predictions.csv", params).lines
            assert lines == (expect_rows or rows_now()) + 1, (params, lines)
        return run

    def delete():
        a = client.request("DELETE", "/_/api/predictions/" + deletable.pop())
        assert a.status == 200, a.body[:300]

    def count():
        assert rt.run(lambda: len(predictions.search_rows({}))) == rows_now()

    e = filled.experiment
    last_page = (filled.n_rows - len(deletable) - 1) // 25  # still there after the deletes
    ops = [
        Op("first page (25 rows)", page(check_total=True, page_size=25), repeats),
        Op(f"page {min(100, last_page)}", page(page=min(100, last_page), page_size=25), repeats),
        Op(f"last page ({last_page:,})", page(page=last_page, page_size=25), repeats),
        Op("200 newest (experiment suggestions)", page(page_size=200), repeats),
        Op(f"experiment = a typical one ({e}, {filled.experiment_rows:,} rows)", page(experiment=e), repeats),
        Op("condition = astro (display name)", page(condition="Astrocyte medium"), repeats),
        Op("user contains 'rita'", page(user="rita"), repeats),
        Op(f"one month ({filled.month_rows:,} rows)", page(date_from=filled.date_from, date_to=filled.date_to),
           repeats),
        Op("model = resnet18-medium4", page(model="resnet18-medium4"), repeats),
        Op("count of the whole history (len of the search)", count, repeats),
        Op(f"summary of that experiment ({e})", lambda: get("/_/api/summary", {"experiment": e}), repeats),
        Op(f"CSV of that experiment ({e})", csv(filled.experiment_rows, experiment=e), repeats, memory=True),
        Op("CSV of everything", csv(), csv_all_repeats, memory=True),
        # last in each round: the others count the rows that are left
        Op("delete one prediction", delete, min(repeats, len(deletable))),
    ]
    ops = [op for op in ops if op.repeats]
    for op in ops[:-1]:  # one untimed call each (imports, caches), the long export aside
        if op.name != "CSV of everything":
            op.run()
    # Round-robin: every operation once per round, so that drifting machine load hits them alike.
    for r in range(max(op.repeats for op in ops)):
        for op in (op for op in ops if r < op.repeats):
            peak = op.memory and reset_peak_rss()
            rss0 = rss_kb("VmRSS")
            t0 = time.perf_counter()
            op.run()
            op.times_ms.append(1e3 * (time.perf_counter() - t0))
            if peak:
                op.peak_mb.append((rss_kb("VmHWM") - rss0) / 1024)
            log.info("%s: %.1f ms", op.name, op.times_ms[-1])
    client.close()
    return ops


# ------------------------------------------------------------------------------------- backends


def sqlite_url(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'app.db'}"


def run_size(n: int, backend: str, pg_url: str | None, args) -> tuple[Filled, list[Op]]:
    from apphost.testing import FakeWorker, make_runtime, reset_postgres

    with tempfile.TemporaryDirectory(dir=args.work, prefix="history-") as tmp:
        tmp = Path(tmp)
        url = sqlite_url(tmp) if backend == "sqlite" else reset_postgres(pg_url)
        rt = make_runtime(tmp, FakeWorker(model_name="resnet50-medium4"), db_url=url)
        try:
            filled = fill(rt, n, args.repeats)
            log.info("%s: %d rows in %.1f s", backend, n, filled.seconds)
            ops = measure(rt, filled, args.repeats, args.csv_all_repeats)
            if backend == "sqlite":
                size = sum(f.stat().st_size for f in tmp.glob("app.db*"))
                filled.db_mb = size / 1e6
        finally:
            rt.close()
            rt.db.dispose()
    return filled, ops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=positive_list, default="10000,100000",
                    help="history sizes, comma-separated (e.g. 10000,100000,1000000)")
    ap.add_argument("--repeats", type=POSITIVE, default=5, help="timed calls of each operation per size")
    ap.add_argument("--csv-all-repeats", type=POSITIVE, default=2, help="timed exports of the whole history per size")
    ap.add_argument("--postgres", action="store_true", help="also on a throw-away PostgreSQL cluster")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"scratch folder (default {DEFAULT_WORK})")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    logging.getLogger("nscfate_app").setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = args.rows
    before = report_load("before")
    results: dict[tuple[str, int], tuple[Filled, list[Op]]] = {}
    with ExitStack() as stack:
        backends = {"sqlite": None}
        if args.postgres:
            from apphost.testing import postgres_cluster

            backends["postgres"] = stack.enter_context(postgres_cluster())
        for backend, pg_url in backends.items():
            for n in sizes:
                results[backend, n] = run_size(n, backend, pg_url, args)
                print_table(backend, n, *results[backend, n])
    after = report_load("after")
    print(str(before), "->", str(after))
    if args.write_doc:
        write_section("history_scale", "History at scale", doc_body(results, args), before, after)
    return 0


# ------------------------------------------------------------------------------------- reporting


def print_table(backend: str, n: int, filled: Filled, ops: list[Op]) -> None:
    print(f"\n{backend}, {n:,} rows (filled in {filled.seconds:.0f} s):")
    for op in ops:
        s = Stats.of(op.times_ms)
        peak = f", peak +{max(op.peak_mb):.0f} MB" if op.peak_mb else ""
        print(f"  {op.name:<44} median {s.median:9.1f} ms  max {max(op.times_ms):9.1f} ms (n={s.n}){peak}")


def _key(name: str) -> str:
    """An operation's name without what differs between sizes, in brackets (for the table's rows)."""
    return re.sub(r" \(.*\)$", "", name)


def doc_body(results, args) -> str:
    sizes = sorted({n for _, n in results})
    backends = list(dict.fromkeys(b for b, _ in results))
    parts = []
    for backend in backends:
        names = list(dict.fromkeys(_key(o.name) for n in sizes for o in results[backend, n][1]))
        lines = ["| operation | " + " | ".join(f"{n:,} rows" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
        for name in names:
            cells = []
            for n in sizes:
                o = next((o for o in results[backend, n][1] if _key(o.name) == name), None)
                cell = "not run" if o is None else f"{Stats.of(o.times_ms).median:,.1f}"
                if o is not None and o.peak_mb:
                    cell += f" (+{max(o.peak_mb):,.0f} MB)"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        fills = ", ".join(f"{n:,} in {f.seconds:.0f} s (typical experiment {f.experiment}: {f.experiment_rows:,} rows; "
                          f"one month: {f.month_rows:,})" for n in sizes for f in [results[backend, n][0]])
        parts.append(f"**{backend}** (median ms of {args.repeats} calls, the whole-history CSV of "
                     f"{args.csv_all_repeats}; peak RSS growth of the exports in brackets; filled: {fills}):\n\n"
                     + "\n".join(lines))
    return "\n\n".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
