"""Load test: many concurrent clients uploading cell images to the local host.

    python bench/load_test.py                          # starts a host with 2 workers (tiny model), 50 x 20
    python bench/load_test.py --clients 50 --uploads 20 --model models/resnet50-medium4
    python bench/load_test.py --url http://127.0.0.1:3030 --email ann@lab.org   # a running host
                                                        # (password from NSCFATE_BENCH_PASSWORD)

Each client signs in once the way the web UI does (session cookie + CSRF header; ``--auth basic`` sends
HTTP Basic with every request instead) and uploads ``--uploads`` single images one after the other,
each a different synthetic cell. All uploads of a run carry one experiment tag, so afterwards the
history is checked: exactly one row per upload, no duplicates, nothing missing.

Prints one JSON object (also written to ``--out``): requests, errors, status counts, latency
percentiles (ms), throughput (uploads/s), rows found, duplicates, missing, workers, model.

Without ``--url`` the real host is started here - ``python -m apphost --workers N`` on a free loopback
port with a temporary data directory and a lab admin account for the clients - and stopped afterwards;
the resident memory of the host and of its workers is then sampled through the run (``rss_mb``, Linux):
the growth over the second half, per image, shows whether serving keeps memory per call
(``growth_bytes_per_image``; the first half includes the model's warm-up for each new batch size).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apphost.testing import free_port  # noqa: E402
from bench.common import POSITIVE  # noqa: E402

log = logging.getLogger("load_test")
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    stored_ids: list[str] = field(default_factory=list)
    sent_shas: list[str] = field(default_factory=list)


def cell_png(seed: int) -> bytes:
    """A distinct synthetic single-cell PNG per seed."""
    import numpy as np

    from nscfate.testing import cell_image, to_png_bytes

    return to_png_bytes(cell_image(np.random.default_rng(seed), (47, 60)))


async def _client(base_url: str, email: str, password: str, auth: str, n: int, first_seed: int, experiment: str,
                  out: Outcome, timeout: float) -> None:
    import hashlib

    kwargs = {"auth": (email, password)} if auth == "basic" else {"headers": {"X-Requested-With": "fetch"}}
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, **kwargs) as client:
        if auth == "session":
            r = await client.post("/_/auth/login", json={"email": email, "password": password})
            if r.status_code != 200:
                out.errors.append(f"sign-in: {r.status_code} {r.text[:200]}")
                return
            client.headers["X-CSRF-Token"] = r.json()["csrf_token"]
        for i in range(n):
            data = cell_png(first_seed + i)
            out.sent_shas.append(hashlib.sha256(data).hexdigest())
            t0 = time.perf_counter()
            try:
                r = await client.post("/_/api/predictions", data={"experiment": experiment},
                                      files=[("file", (f"cell-{first_seed + i}.png", data, "image/png"))])
            except httpx.HTTPError as exc:
                out.errors.append(f"{type(exc).__name__}: {exc}")
                out.statuses["no answer"] = out.statuses.get("no answer", 0) + 1
                continue
            out.latencies_ms.append((time.perf_counter() - t0) * 1000)
            out.statuses[str(r.status_code)] = out.statuses.get(str(r.status_code), 0) + 1
            if r.status_code == 200 and r.json()["results"][0].get("ok"):
                out.stored_ids.append(r.json()["results"][0]["id"])
            else:
                out.errors.append(f"upload: {r.status_code} {r.text[:200]}")


def _percentile(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 1) if values else None


def history_of(base_url: str, email: str, password: str, experiment: str) -> list[dict]:
    """Every history row of the run's experiment (paged through the REST API)."""
    rows, page = [], 0
    with httpx.Client(base_url=base_url, auth=(email, password), timeout=60) as c:
        while True:
            r = c.get("/_/api/predictions", params={"experiment": experiment, "page": page, "page_size": 200})
            r.raise_for_status()
            body = r.json()
            rows += body["rows"]
            page += 1
            if page >= body["pages"]:
                return rows


def run_load(base_url: str, email: str, password: str, *, clients: int = 50, uploads: int = 20,
             auth: str = "session", timeout: float = 120.0, host_pid: int | None = None) -> dict:
    """Run the load and check the history; returns the figures. With ``host_pid`` (a host started here),
    the host's and its workers' memory is sampled while the uploads run (``rss_mb``)."""
    experiment = f"load-{uuid.uuid4().hex[:10]}"
    out = Outcome()

    async def all_clients() -> None:
        await asyncio.gather(*(_client(base_url, email, password, auth, uploads, 10_000 + c * uploads, experiment,
                                       out, timeout) for c in range(clients)))

    cell_png(0)  # imports outside the timed part
    memory = MemorySampler(host_pid) if host_pid else contextlib.nullcontext()
    with memory:
        started = time.perf_counter()
        asyncio.run(all_clients())
        wall = time.perf_counter() - started
    rows = history_of(base_url, email, password, experiment)
    row_ids = [r["id"] for r in rows]
    row_shas = [r["image_sha256"] for r in rows]
    with httpx.Client(base_url=base_url, timeout=30) as c:
        health = c.get("/_/api/health").json()
    total = clients * uploads
    lat = out.latencies_ms
    return {
        "clients": clients, "uploads_per_client": uploads, "auth": auth, "requests": total,
        "answered": len(lat), "ok": len(out.stored_ids), "errors": len(out.errors), "error_examples": out.errors[:5],
        "statuses": dict(sorted(out.statuses.items())),
        "latency_ms": {"p50": _percentile(lat, 50), "p90": _percentile(lat, 90), "p95": _percentile(lat, 95),
                       "p99": _percentile(lat, 99), "max": round(max(lat), 1) if lat else None,
                       "mean": round(statistics.fmean(lat), 1) if lat else None},
        "wall_s": round(wall, 2), "throughput_per_s": round(len(out.stored_ids) / wall, 1) if wall else None,
        "history_rows": len(rows), "duplicate_rows": len(row_shas) - len(set(row_shas)),  # one image per upload
        "missing_rows": len(set(out.stored_ids) - set(row_ids)),
        "rows_match_uploads": sorted(row_shas) == sorted(out.sent_shas) and sorted(row_ids) == sorted(out.stored_ids),
        "workers": health.get("workers"), "models": health.get("models"),
        "rss_mb": memory.figures(len(out.stored_ids)) if host_pid else None,
    }


# --------------------------------------------------------------------------------------------------
# memory of the host and its workers


def _rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (Linux /proc); 0 when it has exited."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _children(parent: int) -> list[int]:
    """The child processes of ``parent`` (the host's workers)."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[1].split()[1]) == parent:  # the name may hold ")"
                        pids.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # it exited meanwhile
    return pids


class MemorySampler:
    """Samples the resident memory of the host and of its workers (together) every ``interval`` seconds
    while the load runs."""

    def __init__(self, host_pid: int, interval: float = 2.0) -> None:
        self.host_pid, self.interval = host_pid, interval
        self.host: list[float] = []
        self.workers: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        self.host.append(_rss_mb(self.host_pid))
        self.workers.append(sum(_rss_mb(pid) for pid in _children(self.host_pid)))

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def figures(self, images: int) -> dict:
        """For the host and the workers: first, middle and last sample, 8 points of the run, and the growth
        per image over the second half (the first includes each new batch size's warm-up)."""
        return {"host": _series(self.host, images), "workers": _series(self.workers, images)}


def _series(s: list[float], images: int) -> dict | None:
    if len(s) < 3 or not s[-1]:
        return None
    middle = s[len(s) // 2]
    return {"start": round(s[0], 1), "middle": round(middle, 1), "end": round(s[-1], 1), "max": round(max(s), 1),
            "points": [round(s[round(i * (len(s) - 1) / 7)], 1) for i in range(8)],
            "growth_bytes_per_image": round((s[-1] - middle) * 2**20 / (images / 2)) if images else None}


# --------------------------------------------------------------------------------------------------
# starting a host


class StartedHost:
    """``python -m apphost --workers N`` on a free loopback port with a temporary data directory."""

    def __init__(self, model: str, workers: int, data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.email, self.password = "bench@lab.org", secrets.token_urlsafe(18)
        self.log_path = data_dir / "host.log"
        env = {k: v for k, v in os.environ.items() if k not in ("ANVIL_UPLINK_KEY", "DATABASE_URL")}
        env.update({"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2", "NSCFATE_DATA_DIR": str(data_dir / "data"),
                    "NSCFATE_ADMIN_EMAIL": self.email, "NSCFATE_ADMIN_PASSWORD": self.password})
        self._log = open(self.log_path, "wb")
        log.info("starting python -m apphost --workers %d --model %s", workers, model)
        self.proc = subprocess.Popen([sys.executable, "-m", "apphost", "--port", str(self.port), "--workers",
                                      str(workers), "--model", model], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, cwd=ROOT)
        self._wait_workers(workers)

    def _wait_workers(self, workers: int, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the host exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/_/api/health", timeout=5).json().get("workers", 0) >= workers:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"the workers did not connect within {timeout:.0f} s; see {self.log_path}")

    def close(self) -> None:
        """Ctrl-C, as a person would stop it (the host stops its workers)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def _tiny_model(tmp: Path) -> tuple[str, str]:
    """A tiny test model made now: the figures then measure the platform, not the network."""
    from nscfate.testing import make_tiny_model_dir

    path = make_tiny_model_dir(tmp / "tiny-medium4", task="medium4")
    return str(path), "tiny-medium4 (a 3-layer test CNN, 32x32 input: measures the platform, not ResNet50)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=POSITIVE, default=50, help="concurrent clients (default 50)")
    parser.add_argument("--uploads", type=POSITIVE, default=20, help="uploads per client (default 20)")
    parser.add_argument("--auth", choices=["session", "basic"], default="session",
                        help="session: sign in once, cookie + CSRF (the web UI); basic: HTTP Basic per request")
    parser.add_argument("--url", help="a running host (default: start one here)")
    parser.add_argument("--email", help="account on the running host (password: $NSCFATE_BENCH_PASSWORD)")
    parser.add_argument("--workers", type=POSITIVE, default=2, help="workers of the started host (default 2)")
    parser.add_argument("--model", help="model directory or name for the started host (default: a tiny test model)")
    parser.add_argument("--out", type=Path, help="also write the JSON figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per upload
    with tempfile.TemporaryDirectory(prefix="nscfate-load-") as tmp:
        host = None
        if args.url:
            password = os.environ.get("NSCFATE_BENCH_PASSWORD")
            if not args.email or not password:
                parser.error("--url needs --email and the password in NSCFATE_BENCH_PASSWORD")
            base, email, model_note = args.url.rstrip("/"), args.email, None
        else:
            model, model_note = (args.model, args.model) if args.model else _tiny_model(Path(tmp))
            host = StartedHost(model, args.workers, Path(tmp))
            base, email, password = host.url, host.email, host.password
        try:
            log.info("%d clients x %d uploads against %s", args.clients, args.uploads, base)
            figures = run_load(base, email, password, clients=args.clients, uploads=args.uploads, auth=args.auth,
                               host_pid=host.proc.pid if host else None)
        finally:
            if host is not None:
                host.close()
    figures["model_note"] = model_note
    figures["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    text = json.dumps(figures, indent=1)
    sys.stdout.write(text + "\n")
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    clean = figures["errors"] == 0 and figures["ok"] == figures["requests"] and figures["rows_match_uploads"]
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
