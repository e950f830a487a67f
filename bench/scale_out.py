"""Scale-out: throughput with N workers on the hub, each pinned to its own core(s) or capped at its own CPU budget.

For each worker count N the script starts the host and N ``python -m uplink`` workers, worker i pinned
(``os.sched_setaffinity``) to its own core set; TensorFlow in a worker sizes its thread pools to the
cores it may use. It then measures, back to back:

- **hub**: ``predict_cell_fate_batch`` calls of ``--files-per-call`` images from ``--clients`` concurrent
  callers (a client uplink in this process, through the host's hub, which sends each call to the least
  busy worker) - the workers' throughput without the web tier;
- **REST**: the same images through ``POST /_/api/predictions`` from ``--clients`` concurrent clients;
- **bare**: N bare-model processes pinned (and capped) as the workers are, each predicting its share of
  the images in batches of 32 (``serving_throughput.BareModels``): what the machine itself gives N
  models side by side, so that "hub / bare" shows what the hub loses as workers are added.

A machine with C cores can show at most C single-core workers, and the host, the clients and
anything else running share those cores with them: on 2 cores, 2 pinned workers leave no core for
the host. ``--cpu-quota Q`` (root; cgroup cpu controller) caps each worker at Q of a core instead: a
fixed CPU budget of its own, as a worker on a machine of its own has, while the host and the clients
use what is left. Workers then go round-robin over the cores, as many per core as fit (at most 0.9 of
a core's time to workers), so a 2-core machine can show 1 to 3 workers at 0.3.

    python bench/scale_out.py --images 512 --write-doc
    python bench/scale_out.py --images 768 --workers 1,2,3 --cpu-quota 0.3 --write-doc
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

from bench.common import (POSITIVE, add_model_arguments, chosen_model, float_at_least, median,  # noqa: E402
                          positive_list, report_load, sample_images, setup_logging, write_section)
from bench.serving_throughput import BareModels, rest_rate, signed_in_clients  # noqa: E402
from bench.stack import ServingStack  # noqa: E402
from uplink.framing import install_fast_masking  # noqa: E402

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


def core_sets(n_workers: int, cores_per_worker: int, quota: float | None = None) -> list[set[int]]:
    """Disjoint core sets for ``n_workers`` workers, from the cores this process may use; with a CPU
    ``quota`` per worker, one core each, round-robin, as many per core as leave it 10% for the rest."""
    cores = sorted(os.sched_getaffinity(0))
    if quota:
        per_core = int(0.9 / quota + 1e-9)
        if n_workers > per_core * len(cores):
            raise SystemExit(f"{n_workers} workers at {quota:g} of a core need more than this machine's "
                             f"{len(cores)} cores can give workers (0.9 of each)")
        return [{cores[i % len(cores)]} for i in range(n_workers)]
    need = n_workers * cores_per_worker
    if need > len(cores):
        raise SystemExit(f"{n_workers} workers x {cores_per_worker} core(s) need {need} cores; this machine "
                         f"lets this process use {len(cores)}")
    return [set(cores[i * cores_per_worker:(i + 1) * cores_per_worker]) for i in range(n_workers)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--workers", type=positive_list, default="1,2", help="worker counts to measure (comma-separated)")
    ap.add_argument("--cores-per-worker", type=POSITIVE, default=1)
    ap.add_argument("--images", type=POSITIVE, default=512)
    ap.add_argument("--clients", type=POSITIVE, default=8)
    ap.add_argument("--files-per-call", type=POSITIVE, default=16)
    ap.add_argument("--rounds", type=POSITIVE, default=2)
    ap.add_argument("--cpu-quota", type=float_at_least(0, exclusive=True), help="cap each worker at this fraction of a core (cgroup; root)")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")

    model_dir, model_note = chosen_model(args)
    counts = args.workers
    plans = {n: core_sets(n, args.cores_per_worker, args.cpu_quota) for n in counts}
    images = sample_images(args.images, seed=23)
    results: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        bare = BareModels(model_dir, n, 0, plans[n], args.images, 32, cpu_quota=args.cpu_quota)
        try:
            with tempfile.TemporaryDirectory(dir=args.work) as tmp, \
                    ServingStack(model_dir, Path(tmp) / "host", workers=n, cores=plans[n],
                                 cpu_quota=args.cpu_quota) as stack:
                import anvil.server

                install_fast_masking()  # as the worker does: ws4py would mask each image sent byte by byte
                anvil.server.connect(stack.key, url=stack.uplink_url, quiet=True)  # a server uplink: trusted, as a server module
                hub_rate(images[:64], args.clients, args.files_per_call)  # warm-up of every worker
                with signed_in_clients(stack, args.clients) as sessions:
                    rest_rate(sessions, images[:64], args.files_per_call, "warm-up")
                    runs: dict[str, list[float]] = {"bare": [], "hub": [], "REST": []}
                    for r in range(args.rounds):
                        runs["bare"].append(bare.rate())
                        runs["hub"].append(hub_rate(images, args.clients, args.files_per_call))
                        runs["REST"].append(rest_rate(sessions, images, args.files_per_call, f"n{n}r{r}"))
                        log.info("%d worker(s), round %d: %s", n, r,
                                 ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()) + " images/s")
                results[n] = runs
                anvil.server.disconnect()
        finally:
            bare.close()
    after = report_load("after")

    base = counts[0]
    lines = []
    for n in counts:
        m = {k: median(v) for k, v in results[n].items()}
        vs = {k: m[k] / median(results[base][k]) for k in m}
        cores = ", ".join("{" + ",".join(map(str, sorted(c))) + "}" for c in plans[n])
        lines.append(f"| {n} | {cores} | {m['bare']:.1f} | {vs['bare']:.2f}x | {m['hub']:.1f} | {vs['hub']:.2f}x | "
                     f"{m['REST']:.1f} | {vs['REST']:.2f}x | {m['hub'] / m['bare']:.0%} |")
        print(f"{n} worker(s) on cores {cores}: bare {m['bare']:.1f} images/s ({vs['bare']:.2f}x), hub {m['hub']:.1f} "
              f"({vs['hub']:.2f}x), REST {m['REST']:.1f} ({vs['REST']:.2f}x); hub / bare {m['hub'] / m['bare']:.0%}")
    print(str(before), "->", str(after))

    if args.write_doc:
        table = "\n".join(lines)
        if args.cpu_quota:
            section, title = "scale_out_quota", "Scale-out: workers with a CPU budget of their own"
            layout = (f"each worker capped at {args.cpu_quota:g} of a core (its own cgroup CPU quota) and pinned to one "
                      "core, round-robin; the host and the callers are not capped and use the rest")
        else:
            section, title = "scale_out", "Scale-out: workers pinned to their own cores"
            layout = (f"{args.cores_per_worker} core(s) per worker; the host and the callers are not pinned: they "
                      "share the workers' cores")
        write_section(section, title, f"""
Model: {model_note}. {args.images} images per measurement, {args.clients} concurrent callers,
{args.files_per_call} images per call/request, medians of {args.rounds} rounds. "hub" =
`predict_cell_fate_batch` through the host's hub (no web tier); "REST" = the whole path incl. history
rows. Layout: {layout}.

| workers | cores (one set per worker) | bare images/s | vs 1 | hub images/s | vs 1 | REST images/s | vs 1 | hub / bare |
|---|---|---|---|---|---|---|---|---|
{table}""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
