"""Throughput of many images through the REST API vs the bare model's batched throughput, side by side.

Each round runs, back to back on the same machine state:

- **bare**: ``Predictor.predict_prepared`` on batches of ``--max-batch`` prepared images (the model
  alone, the same compiled function the worker uses) over the first round's images;
- **REST**: ``--images`` synthetic crops (OME-TIFF) sent by ``--clients`` concurrent clients, each
  request carrying ``--files-per-request`` files; new images every round, as real uploads are (each
  one's file is written and synced to the media store, not found there from an earlier round) (``POST /_/api/predictions``, HTTP Basic): server code
  -> hub -> worker (micro-batching ``--max-batch`` / ``--max-wait-ms``) -> model -> one history row per
  image -> JSON.

The rounds alternate which path runs first; the ratio REST / bare is taken per round and the median
reported. Target: at least 85%. The worker's batch-size histogram (``worker_stats``) shows how well the
micro-batcher filled its batches, and the CPU time each process used per image shows where the time went.

By default everything shares the machine's cores, so the web tier (host, clients) takes CPU from the
model. ``--worker-cores 0`` measures the deployed layout instead, where Anvil's servers run the web tier
and the worker has its machine to itself: the worker and the bare model get the same cores, the host
and the clients the others (``os.sched_setaffinity``; the bare model runs in this process's main thread,
pinned before TensorFlow starts, the clients in threads pinned to the other cores).

    python bench/serving_throughput.py --images 512 --clients 8 --files-per-request 16 --write-doc
    python bench/serving_throughput.py --images 512 --clients 8 --files-per-request 16 --worker-cores 0 --write-doc
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (add_model_arguments, chosen_model, cpu_seconds, median,  # noqa: E402
                          report_load, sample_images, setup_logging, write_section)
from bench.stack import ServingStack  # noqa: E402

log = logging.getLogger("bench.serving_throughput")
TARGET = 0.85


def bare_rate(predictor, prepared: list, batch: int) -> float:
    """Images/s of ``predict_prepared`` over ``prepared`` in batches of ``batch``."""
    t0 = time.perf_counter()
    for i in range(0, len(prepared), batch):
        predictor.predict_prepared(prepared[i:i + batch])
    return len(prepared) / (time.perf_counter() - t0)


def rest_rate(stack: ServingStack, images: list[tuple[str, bytes]], clients: int, per_request: int,
              experiment: str, client_cores: set[int] | None = None) -> float:
    """Images/s of all ``images`` through ``POST /_/api/predictions`` from ``clients`` threads."""
    requests = [images[i:i + per_request] for i in range(0, len(images), per_request)]
    sessions = [stack.client() for _ in range(clients)]
    for s in sessions:  # sign in once (argon2) before timing, as a long-running script would
        s.get("/_/api/predictions", params={"page_size": 1}).raise_for_status()

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
    for s in sessions:
        s.close()
    assert done == len(images)
    return done / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--files-per-request", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=32, help="worker --max-batch, and the bare batch size")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="worker --max-wait-ms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker-cores", help="pin the worker and the bare model to these cores (e.g. '0'), the host "
                                           "and the clients to the rest: the deployed layout")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")
    worker_cores = other_cores = None
    if args.worker_cores:
        worker_cores = {int(c) for c in args.worker_cores.split(",")}
        other_cores = os.sched_getaffinity(0) - worker_cores
        if not other_cores or not worker_cores <= os.sched_getaffinity(0):
            raise SystemExit(f"--worker-cores {args.worker_cores} must leave some of {sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, worker_cores)  # before TensorFlow sizes its thread pools

    from nscfate.predictor import Predictor, set_cpu_threads

    set_cpu_threads()  # the worker's defaults, so that bare and served run the model alike

    model_dir, model_note = chosen_model(args)
    round_images = [sample_images(args.images, seed=11 + r) for r in range(args.rounds)]
    bare = Predictor.from_directory(model_dir)
    prepared = [bare.prepare(data, filename=name) for name, data in round_images[0]]
    bare_rates, rest_rates = [], []
    worker_args = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, \
            ServingStack(model_dir, Path(tmp) / "host", worker_args=worker_args,
                         cores=[worker_cores], host_cores=other_cores) as stack:
        import anvil.server

        bare_rate(bare, prepared[:args.max_batch * 2], args.max_batch)  # warm-up
        rest_rate(stack, sample_images(64, seed=10), args.clients, args.files_per_request, "warm-up", other_cores)
        anvil.server.connect(stack.client_key, url=stack.uplink_url, quiet=True)
        stats_before = anvil.server.call("worker_stats")["batches"]
        cpu_rest = {"host": 0.0, "worker": 0.0, "clients": 0.0}  # CPU seconds used during the REST rounds
        procs = {"host": stack.pids()["host"], "worker": stack.pids()["workers"], "clients": [os.getpid()]}
        for r in range(args.rounds):
            order = ("bare", "REST") if r % 2 == 0 else ("REST", "bare")
            for path in order:
                if path == "bare":
                    bare_rates.append(bare_rate(bare, prepared, args.max_batch))
                else:
                    cpu0 = {k: sum(cpu_seconds(p) for p in pids) for k, pids in procs.items()}
                    rest_rates.append(rest_rate(stack, round_images[r], args.clients, args.files_per_request,
                                                f"round{r}", other_cores))
                    for k, pids in procs.items():
                        cpu_rest[k] += sum(cpu_seconds(p) for p in pids) - cpu0[k]
                log.info("round %d %s: %.1f images/s", r, path, (bare_rates if path == "bare" else rest_rates)[-1])
        stats_after = anvil.server.call("worker_stats")["batches"]
        anvil.server.disconnect()
    after = report_load("after")

    ((name, b0),) = stats_before.items()
    b1 = stats_after[name]
    sizes = {int(k): v - b0["sizes"].get(k, 0) for k, v in b1["sizes"].items() if v - b0["sizes"].get(k, 0)}
    n_batches = sum(sizes.values())
    mean_batch = sum(k * v for k, v in sizes.items()) / max(1, n_batches)
    ratios = [r / b for r, b in zip(rest_rates, bare_rates)]
    ratio = median(ratios)
    print(f"bare  : {', '.join(f'{x:.1f}' for x in bare_rates)} images/s")
    print(f"REST  : {', '.join(f'{x:.1f}' for x in rest_rates)} images/s")
    print(f"REST / bare per round: {', '.join(f'{x:.0%}' for x in ratios)}; median {ratio:.0%} (target >= {TARGET:.0%})")
    print(f"worker batches during the timed rounds: {n_batches}, mean size {mean_batch:.1f}, sizes {dict(sorted(sizes.items()))}")
    n_rest = args.images * len(rest_rates)
    cpu_ms = {k: 1000 * v / n_rest for k, v in cpu_rest.items()}
    cpu_text = ", ".join(f"{k} {v:.1f} ms" for k, v in cpu_ms.items())
    model_cores = len(worker_cores) if worker_cores else before.cpus
    print(f"CPU time per image in the REST rounds: {cpu_text} (bare model: "
          f"{1000 / median(bare_rates) * model_cores:.1f} ms of CPU on {model_cores} core(s) if it keeps them busy)")
    print(str(before), "->", str(after))

    layout = (f"worker and bare model pinned to core(s) {sorted(worker_cores)}, host and clients to "
              f"{sorted(other_cores)} (the deployed layout: the web tier runs elsewhere)" if worker_cores
              else f"everything sharing the machine's {before.cpus} cores")
    section = "serving_throughput_pinned" if worker_cores else "serving_throughput"
    if args.write_doc:
        write_section(section, "Worker on its own core" if worker_cores else "All on shared cores", f"""
Model: {model_note}. {args.images} new synthetic crops per round, {args.clients} concurrent clients,
{args.files_per_request} files per request; worker `--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}`;
bare = `predict_prepared` on batches of {args.max_batch}. {args.rounds} rounds, alternating which runs first.
Layout: {layout}.

| round | bare images/s | REST images/s | REST / bare |
|---|---|---|---|
""" + "\n".join(f"| {i + 1} | {b:.1f} | {r:.1f} | {r / b:.0%} |" for i, (b, r) in enumerate(zip(bare_rates, rest_rates))) + f"""

**REST / bare: {ratio:.0%}** (median of the rounds; target >= {TARGET:.0%}). Worker batches during the
timed rounds: {n_batches}, mean size {mean_batch:.1f} (histogram {dict(sorted(sizes.items()))}).
CPU time per image during the REST rounds (from /proc): {cpu_text}.""", before, after, level=4)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
