"""Scale-out: throughput with 1 and 2 workers on the hub, each worker pinned to its own CPU core(s).

For each worker count N the script starts the host and N ``python -m uplink`` workers, worker i pinned
(``os.sched_setaffinity``) to its own core set; TensorFlow in a worker sizes its thread pools to the
cores it may use. It then measures, back to back:

- **hub**: ``predict_cell_fate_batch`` calls of ``--files-per-call`` images from ``--clients`` concurrent
  callers (a client uplink in this process, through the host's hub, which sends each call to the least
  busy worker) - the workers' throughput without the web tier;
- **REST**: the same images through ``POST /_/api/predictions`` from ``--clients`` concurrent clients.

A machine with C cores can show at most C single-core workers, and the host, the clients and
anything else running share those cores with them: on 2 cores, 2 pinned workers leave no core for
the host. The doc section says what the machine allowed.

    python bench/scale_out.py --images 256 --write-doc
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

from bench.common import (add_model_arguments, chosen_model, median, report_load,  # noqa: E402
                          sample_images, setup_logging, write_section)
from bench.serving_throughput import rest_rate  # noqa: E402
from bench.stack import ServingStack  # noqa: E402

log = logging.getLogger("bench.scale_out")


def hub_rate(images: list[tuple[str, bytes]], clients: int, per_call: int) -> float:
    """Images/s of ``predict_cell_fate_batch`` calls through the hub (the client uplink must be
    connected)."""
    import anvil
    import anvil.server

    calls = [[anvil.BlobMedia("image/tiff", data, name=name) for name, data in images[i:i + per_call]]
             for i in range(0, len(images), per_call)]

    def send(batch) -> int:
        out = anvil.server.call("predict_cell_fate_batch", batch)
        assert all("predicted_class" in o for o in out), out
        return len(out)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(send, calls))
    return done / (time.perf_counter() - t0)


def core_sets(n_workers: int, cores_per_worker: int) -> list[set[int]]:
    """Disjoint core sets for ``n_workers`` workers, from the cores this process may use."""
    cores = sorted(os.sched_getaffinity(0))
    need = n_workers * cores_per_worker
    if need > len(cores):
        raise SystemExit(f"{n_workers} workers x {cores_per_worker} core(s) need {need} cores; this machine "
                         f"lets this process use {len(cores)}")
    return [set(cores[i * cores_per_worker:(i + 1) * cores_per_worker]) for i in range(n_workers)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--workers", default="1,2", help="worker counts to measure (comma-separated)")
    ap.add_argument("--cores-per-worker", type=int, default=1)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--files-per-call", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")

    model_dir, model_note = chosen_model(args)
    counts = [int(n) for n in args.workers.split(",")]
    plans = {n: core_sets(n, args.cores_per_worker) for n in counts}
    images = sample_images(args.images, seed=23)
    results: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        with tempfile.TemporaryDirectory(dir=args.work) as tmp, \
                ServingStack(model_dir, Path(tmp) / "host", workers=n, cores=plans[n]) as stack:
            import anvil.server

            anvil.server.connect(stack.client_key, url=stack.uplink_url, quiet=True)
            hub_rate(images[:64], args.clients, args.files_per_call)  # warm-up of every worker
            rest_rate(stack, images[:64], args.clients, args.files_per_call, "warm-up")
            hub, rest = [], []
            for r in range(args.rounds):
                hub.append(hub_rate(images, args.clients, args.files_per_call))
                rest.append(rest_rate(stack, images, args.clients, args.files_per_call, f"n{n}r{r}"))
                log.info("%d worker(s), round %d: hub %.1f, REST %.1f images/s", n, r, hub[-1], rest[-1])
            results[n] = {"hub": hub, "REST": rest}
            anvil.server.disconnect()
    after = report_load("after")

    base = counts[0]
    lines = []
    for n in counts:
        h, r = median(results[n]["hub"]), median(results[n]["REST"])
        hb, rb = median(results[base]["hub"]), median(results[base]["REST"])
        cores = ", ".join("{" + ",".join(map(str, sorted(c))) + "}" for c in plans[n])
        lines.append(f"| {n} | {cores} | {h:.1f} | {h / hb:.2f}x | {r:.1f} | {r / rb:.2f}x |")
        print(f"{n} worker(s) on cores {cores}: hub {h:.1f} images/s ({h / hb:.2f}x), REST {r:.1f} images/s "
              f"({r / rb:.2f}x)")
    print(str(before), "->", str(after))

    if args.write_doc:
        table = "\n".join(lines)
        write_section("scale_out", "Scale-out: workers pinned to their own cores", f"""
Model: {model_note}. {args.images} images per measurement, {args.clients} concurrent callers,
{args.files_per_call} images per call/request, {args.cores_per_worker} core(s) per worker, medians of
{args.rounds} rounds. "hub" = `predict_cell_fate_batch` through the host's hub (no web tier); "REST" = the
whole path incl. history rows. The host and the callers are not pinned: they share the workers' cores.

| workers | cores (one set per worker) | hub images/s | vs 1 | REST images/s | vs 1 |
|---|---|---|---|---|---|
{table}""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
