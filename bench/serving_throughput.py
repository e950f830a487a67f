"""Throughput of many images through the REST API vs the bare model's batched throughput, side by side.

Each round runs, back to back on the same machine state:

- **bare**: the model alone, in the same layout as the served workers: ``--workers`` processes (each
  with ``--worker-threads`` TensorFlow threads and the same CPU pinning), side by side, each running
  ``Predictor.predict_prepared`` (the compiled function the worker uses) on batches of ``--max-batch``
  over its share of the first round's images, prepared beforehand;
- **REST**: ``--images`` synthetic crops (OME-TIFF) sent by ``--clients`` concurrent clients, each
  request carrying ``--files-per-request`` files; new images every round, as real uploads are (each
  one's file is written and synced to the media store, not found there from an earlier round)
  (``POST /_/api/predictions``, HTTP Basic): server code -> hub -> worker(s) (micro-batching
  ``--max-batch`` / ``--max-wait-ms``) -> model -> one history row per image -> JSON.

The rounds alternate which path runs first; the ratio REST / bare is taken per round and the median
reported. Target: at least 85%. With one worker, its batch-size histogram (``worker_stats``) shows how
well the micro-batcher filled its batches. Where the time went: the CPU each process used per image, and
the model's cores' busy and idle time in each path (/proc/stat): the bare path's CPU per image over the
REST path's caps the ratio, and how much longer the cores sat idle in the REST rounds takes the rest.

By default everything shares the machine's cores, so the web tier (host, clients) takes CPU from the
model. ``--worker-cores 0`` measures the deployed layout instead, where Anvil's servers run the web tier
and the worker has its machine to itself: the worker and the bare model get the same cores, the host
and the clients the others (``os.sched_setaffinity``). ``--workers 2 --worker-threads 1`` measures one
single-threaded worker per core (``python -m apphost --workers 2 --worker-threads 1``) against two
single-threaded bare models.

    python bench/serving_throughput.py --images 512 --clients 8 --files-per-request 16 --write-doc
    python bench/serving_throughput.py --images 512 --clients 8 --files-per-request 16 --worker-cores 0 --write-doc
    python bench/serving_throughput.py --images 512 --clients 8 --files-per-request 16 --workers 2 --worker-threads 1 --write-doc
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (NON_NEGATIVE, POSITIVE, ROOT, CpuQuota, add_model_arguments, chosen_model,  # noqa: E402
                          core_jiffies, cpu_seconds, float_at_least, median, report_load, sample_images,
                          scratch_line, setup_logging, write_section)
from bench.stack import ServingStack  # noqa: E402
from uplink.framing import install_fast_masking  # noqa: E402

log = logging.getLogger("bench.serving_throughput")
TARGET = 0.85
FIRST_SEED = 11  # round r sends sample_images(--images, seed=FIRST_SEED + r)


@dataclass
class CoreUse:
    """What one path did with the model's cores over its rounds: images, and clock ticks (/proc/stat)
    busy and idle (I/O wait counts as idle)."""

    images: int = 0
    busy: int = 0
    idle: int = 0

    def add(self, before: tuple[int, int], after: tuple[int, int], images: int) -> None:
        """Count one round from two :func:`bench.common.core_jiffies` readings, (idle, total)."""
        idle = after[0] - before[0]
        self.idle += idle
        self.busy += after[1] - before[1] - idle
        self.images += images

    @property
    def busy_ms(self) -> float:
        """Milliseconds of CPU on the model's cores per image, by every process and the kernel."""
        return 1000 * self.busy / os.sysconf("SC_CLK_TCK") / max(1, self.images)

    @property
    def idle_share(self) -> float:
        return self.idle / max(1, self.busy + self.idle)


def explain_ratio(rest: CoreUse, bare: CoreUse) -> tuple[float, float]:
    """(cap, explained): the bare path's CPU per image on the model's cores over the REST path's, which is
    what REST / bare would be if both kept the cores equally busy; and that times how busy each kept
    them, which is the ratio of the two paths' images/s over all their rounds together."""
    cap = bare.busy_ms / rest.busy_ms
    return cap, cap * (1 - rest.idle_share) / (1 - bare.idle_share)


def bare_rate(predictor, prepared: list, batch: int) -> float:
    """Images/s of ``predict_prepared`` over ``prepared`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch):
        predictor.predict_prepared(prepared[i:i + batch])
    return len(prepared) / (time.perf_counter() - t0)


def bare_child(model_dir: Path, threads: int, share: int, of: int, n_images: int, batch: int) -> None:
    """A bare-model process (``--bare-child``): prepares its share of the first round's images, says
    ``ready``, then for each ``go`` line on stdin predicts them all and prints ``start end count``
    (``time.monotonic``, which is the same clock in every process)."""
    from nscfate.predictor import Predictor, set_cpu_threads

    set_cpu_threads(threads)  # as `python -m uplink --intra-op-threads` does
    predictor = Predictor.from_directory(model_dir)
    images = sample_images(n_images, seed=FIRST_SEED)[share::of]
    prepared = [predictor.prepare(data, filename=name) for name, data in images]
    bare_rate(predictor, prepared[:batch * 2], batch)  # warm-up
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        t0 = time.monotonic()
        bare_rate(predictor, prepared, batch)
        print(f"{t0} {time.monotonic()} {len(prepared)}", flush=True)


class BareModels:
    """``n`` bare-model processes (:func:`bare_child`), pinned like the workers (``cores[i]`` for process
    ``i``; with ``cpu_quota``, capped like them too), run side by side."""

    def __init__(self, model_dir: Path, n: int, threads: int, cores: Sequence[set[int] | None], n_images: int,
                 batch: int, cpu_quota: float | None = None):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.procs, self.quotas = [], []
        for i in range(n):
            preexec = (lambda c=cores[i]: os.sched_setaffinity(0, c)) if cores[i] else None
            self.procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--bare-child", "--model", str(model_dir),
                 "--worker-threads", str(threads), "--share", f"{i}/{n}", "--images", str(n_images),
                 "--max-batch", str(batch)], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, preexec_fn=preexec))
            if cpu_quota:
                self.quotas.append(CpuQuota(f"nscfate-bench-{os.getpid()}-bare{i}", cpu_quota).add(self.procs[-1].pid))
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                self.close()
                raise RuntimeError(f"a bare-model process failed to start (status {p.poll()})")

    def rate(self) -> float:
        """Images/s of all processes together: every image, from the first start to the last end."""
        for p in self.procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        spans = [tuple(float(x) for x in p.stdout.readline().split()) for p in self.procs]
        return sum(n for _, _, n in spans) / (max(e for _, e, _ in spans) - min(s for s, _, _ in spans))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=60)
        for quota in self.quotas:
            quota.close()


@contextlib.contextmanager
def signed_in_clients(stack: ServingStack, n: int) -> Iterator[list]:
    """``n`` HTTP clients of the benchmark's lab admin, each signed in (argon2) once, as a long-running
    upload script would be, closed when the block ends. Made once per benchmark, not per measurement:
    making an httpx client loads the CA certificates (~56 ms of CPU here), which was counted as the
    clients' CPU of every round."""
    sessions = []
    try:
        for _ in range(n):
            sessions.append(stack.client())
            sessions[-1].get("/_/api/predictions", params={"page_size": 1}).raise_for_status()
        yield sessions
    finally:
        for session in sessions:
            session.close()


def rest_rate(sessions: list, images: list[tuple[str, bytes]], per_request: int, experiment: str,
              client_cores: set[int] | None = None) -> float:
    """Images/s of all ``images`` through ``POST /_/api/predictions``, a thread per client of ``sessions``."""
    requests = [images[i:i + per_request] for i in range(0, len(images), per_request)]
    clients = len(sessions)

    def send(k: int) -> int:
        files = [("file", (name, data, "image/tiff")) for name, data in requests[k]]
        r = sessions[k % clients].post("/_/api/predictions", files=files, data={"experiment": experiment})
        if r.status_code != 200 or r.json()["n_ok"] != len(files):
            raise RuntimeError(f"request {k}: {r.status_code} {r.text[:300]}")
        return len(files)

    t0 = time.perf_counter()
    pin = (lambda: os.sched_setaffinity(0, client_cores)) if client_cores else None
    with ThreadPoolExecutor(clients, initializer=pin) as pool:
        done = sum(pool.map(send, range(len(requests))))
    elapsed = time.perf_counter() - t0
    assert done == len(images)
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--images", type=POSITIVE, default=512)
    ap.add_argument("--clients", type=POSITIVE, default=8)
    ap.add_argument("--files-per-request", type=POSITIVE, default=16)
    ap.add_argument("--max-batch", type=POSITIVE, default=32, help="worker --max-batch, and the bare batch size")
    ap.add_argument("--max-wait-ms", type=float_at_least(0), default=5.0, help="worker --max-wait-ms")
    ap.add_argument("--workers", type=POSITIVE, default=1, help="worker processes (and bare-model processes)")
    ap.add_argument("--worker-threads", type=NON_NEGATIVE, default=0,
                    help="TensorFlow threads of each worker and bare model (default 0: every core it may use)")
    ap.add_argument("--rounds", type=POSITIVE, default=3)
    ap.add_argument("--worker-cores", help="pin the worker(s) and the bare model(s) to these cores (e.g. '0'), "
                                           "the host and the clients to the rest: the deployed layout")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    ap.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--share", default="0/1", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bare_child:
        share, of = (int(x) for x in args.share.split("/"))
        bare_child(args.model, args.worker_threads, share, of, args.images, args.max_batch)
        return 0
    setup_logging()
    before = report_load("before")
    worker_cores = other_cores = None
    if args.worker_cores:
        worker_cores = {int(c) for c in args.worker_cores.split(",")}
        other_cores = os.sched_getaffinity(0) - worker_cores
        if not other_cores or not worker_cores <= os.sched_getaffinity(0):
            raise SystemExit(f"--worker-cores {args.worker_cores} must leave some of {sorted(os.sched_getaffinity(0))}")

    model_dir, model_note = chosen_model(args)
    round_images = [sample_images(args.images, seed=FIRST_SEED + r) for r in range(args.rounds)]
    bare_rates, rest_rates = [], []
    worker_args = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                   "--intra-op-threads", str(args.worker_threads)]
    bare = BareModels(model_dir, args.workers, args.worker_threads, [worker_cores] * args.workers, args.images,
                      args.max_batch)
    try:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp, \
                ServingStack(model_dir, Path(tmp) / "host", workers=args.workers, worker_args=worker_args,
                             cores=[worker_cores] * args.workers, host_cores=other_cores) as stack, \
                signed_in_clients(stack, args.clients) as sessions:
            import anvil.server

            scratch = scratch_line(Path(tmp))  # beside the host's data directory, where its media files go
            rest_rate(sessions, sample_images(64, seed=10), args.files_per_request, "warm-up", other_cores)
            install_fast_masking()  # as the worker does: ws4py would mask each image sent byte by byte
            anvil.server.connect(stack.key, url=stack.uplink_url, quiet=True)  # a server uplink: trusted, as a server module
            stats_before = anvil.server.call("worker_stats")["batches"]
            procs = {"REST": {"host": stack.pids()["host"], "worker": stack.pids()["workers"], "clients": [os.getpid()]},
                     "bare": {"bare model": [p.pid for p in bare.procs]}}
            cpu = {path: dict.fromkeys(names, 0.0) for path, names in procs.items()}  # CPU seconds in each path's rounds
            use = {"bare": CoreUse(), "REST": CoreUse()}
            for r in range(args.rounds):
                order = ("bare", "REST") if r % 2 == 0 else ("REST", "bare")
                for path in order:
                    cpu0 = {k: sum(cpu_seconds(p) for p in pids) for k, pids in procs[path].items()}
                    jiffies0 = core_jiffies(worker_cores)
                    if path == "bare":
                        bare_rates.append(bare.rate())
                    else:
                        rest_rates.append(rest_rate(sessions, round_images[r], args.files_per_request, f"round{r}",
                                                    other_cores))
                    use[path].add(jiffies0, core_jiffies(worker_cores), args.images)
                    for k, pids in procs[path].items():
                        cpu[path][k] += sum(cpu_seconds(p) for p in pids) - cpu0[k]
                    log.info("round %d %s: %.1f images/s", r, path, (bare_rates if path == "bare" else rest_rates)[-1])
            stats_after = anvil.server.call("worker_stats")["batches"]
            anvil.server.disconnect()
    finally:
        bare.close()
    after = report_load("after")

    batches_text = ""
    if args.workers == 1:  # with several, worker_stats reaches whichever worker the hub picks
        ((name, b0),) = stats_before.items()
        b1 = stats_after[name]
        sizes = {int(k): v - b0["sizes"].get(k, 0) for k, v in b1["sizes"].items() if v - b0["sizes"].get(k, 0)}
        n_batches = sum(sizes.values())
        mean_batch = sum(k * v for k, v in sizes.items()) / max(1, n_batches)
        batches_text = (f"Worker batches during the timed rounds: {n_batches}, mean size {mean_batch:.1f} "
                        f"(histogram {dict(sorted(sizes.items()))}).")
        print(batches_text)
    ratios = [r / b for r, b in zip(rest_rates, bare_rates)]
    ratio = median(ratios)
    print(f"bare  : {', '.join(f'{x:.1f}' for x in bare_rates)} images/s")
    print(f"REST  : {', '.join(f'{x:.1f}' for x in rest_rates)} images/s")
    print(f"REST / bare per round: {', '.join(f'{x:.0%}' for x in ratios)}; median {ratio:.0%} (target >= {TARGET:.0%})")
    cpu_ms = {k: 1000 * v / use[path].images for path in cpu for k, v in cpu[path].items()}
    cpu_text = ", ".join(f"{k} {v:.1f} ms" for k, v in cpu_ms.items())
    cores = f"core(s) {sorted(worker_cores)}" if worker_cores else "cores"
    cap, explained = explain_ratio(use["REST"], use["bare"])
    account_text = (f"busy per image on the model's {cores}, by every process and the kernel: REST {use['REST'].busy_ms:.1f} "
                    f"ms, bare {use['bare'].busy_ms:.1f} ms, so CPU alone caps REST / bare at {cap:.0%}; the cores "
                    f"sat idle {use['REST'].idle_share:.0%} of the REST rounds and {use['bare'].idle_share:.0%} of the "
                    f"bare ones, which leaves {explained:.0%} (the ratio of the two paths' images/s over all rounds)")
    print(f"CPU per image (from /proc): {cpu_text}")
    print(f"Cores: {account_text}")
    print(scratch)
    print(str(before), "->", str(after))

    threads = f"{args.worker_threads} TensorFlow thread(s) each" if args.worker_threads else "TensorFlow's default threads"
    processes = f"{args.workers} worker(s) and {args.workers} bare-model process(es), {threads}"
    if worker_cores:
        layout = (f"worker(s) and bare model(s) pinned to core(s) {sorted(worker_cores)}, host and clients to "
                  f"{sorted(other_cores)} (the deployed layout: the web tier runs elsewhere)")
        section, title = "serving_throughput_pinned", "Worker on its own core"
    else:
        layout = f"everything sharing the machine's {before.cpus} cores"
        section, title = (("serving_throughput", "All on shared cores") if args.workers == 1 else
                          ("serving_throughput_workers", f"{args.workers} workers on shared cores"))
    if args.write_doc:
        write_section(section, title, f"""
Model: {model_note}. {args.images} new synthetic crops per round, {args.clients} concurrent clients,
{args.files_per_request} files per request; worker `--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}`;
bare = `predict_prepared` on batches of {args.max_batch}. {processes}. {args.rounds} rounds, alternating which runs first.
Layout: {layout}.

| round | bare images/s | REST images/s | REST / bare |
|---|---|---|---|
""" + "\n".join(f"| {i + 1} | {b:.1f} | {r:.1f} | {r / b:.0%} |" for i, (b, r) in enumerate(zip(bare_rates, rest_rates))) + f"""

**REST / bare: {ratio:.0%}** (median of the rounds; target >= {TARGET:.0%}). {batches_text}
CPU per image (from /proc): {cpu_text}; {account_text}.
{scratch}""", before, after, level=4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
