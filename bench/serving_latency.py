"""Single-image latency end to end vs the bare Predictor, measured side by side in one run.

Three paths, interleaved image by image (the order rotates every repetition, so drifting machine load
hits all three alike), each image a distinct synthetic IFC crop (8-bit OME-TIFF):

- **bare**: ``Predictor.predict(bytes)`` in this process (decode, prepare, model) - the floor;
- **uplink**: a client uplink in this process calls the worker's ``predict_cell_fate_batch`` through the
  host's hub (websocket -> hub -> worker -> batcher -> model and back): the hub + worker overhead;
- **REST**: ``POST /_/api/predictions`` with the image (HTTP Basic, as scripts authenticate; or the web
  UI's session cookie with ``--auth session``): HTTP -> server module (validation) -> hub -> worker ->
  model -> history row (SQLite + media file) -> JSON.

The host and the worker are separate processes (``bench/stack.py``), as in production. The target is
a REST median at most 1.5x the bare median.

    python bench/serving_latency.py --images 60 --write-doc
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (NON_NEGATIVE, POSITIVE, Stats, add_model_arguments, chosen_model, report_load,  # noqa: E402
                          sample_images, scratch_line, setup_logging, write_section)
from bench.stack import ServingStack  # noqa: E402
from uplink.framing import install_fast_masking  # noqa: E402

log = logging.getLogger("bench.serving_latency")
TARGET = 1.5


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--images", type=POSITIVE, default=60, help="distinct images, each sent once per path")
    ap.add_argument("--warmup", type=NON_NEGATIVE, default=5, help="untimed requests per path first")
    ap.add_argument("--auth", choices=("basic", "session"), default="basic", help="how the REST client signs in")
    ap.add_argument("--worker-args", default="", help="extra options for python -m uplink, e.g. '--max-wait-ms 5'")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")

    from nscfate.predictor import Predictor, set_cpu_threads

    set_cpu_threads()  # the worker's defaults, so that bare and served run the model alike

    model_dir, model_note = chosen_model(args)
    images = sample_images(args.images + args.warmup, seed=7)
    bare = Predictor.from_directory(model_dir)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp, \
            ServingStack(model_dir, Path(tmp) / "host", worker_args=args.worker_args.split()) as stack, \
            (stack.client() if args.auth == "basic" else stack.session_client()) as client:
        import anvil
        import anvil.server

        scratch = scratch_line(Path(tmp))  # beside the host's data directory, where its media files go
        install_fast_masking()  # as the worker does: ws4py would mask each image sent byte by byte
        anvil.server.connect(stack.key, url=stack.uplink_url, quiet=True)  # a server uplink: trusted, as a server module

        def run_bare(name: str, data: bytes) -> None:
            bare.predict(data, filename=name)

        def run_uplink(name: str, data: bytes) -> None:
            out = anvil.server.call("predict_cell_fate_batch", [anvil.BlobMedia("image/tiff", data, name=name)])
            assert "predicted_class" in out[0], out

        def run_rest(name: str, data: bytes) -> None:
            r = client.post("/_/api/predictions", files=[("file", (name, data, "image/tiff"))],
                            data={"experiment": "latency"})
            assert r.status_code == 200 and r.json()["n_ok"] == 1, r.text[:300]

        paths = {"bare": run_bare, "uplink": run_uplink, "REST": run_rest}
        names = list(paths)
        for name, data in images[:args.warmup]:
            for fn in paths.values():
                fn(name, data)
        times: dict[str, list[float]] = {n: [] for n in names}
        for i, (name, data) in enumerate(images[args.warmup:]):
            order = names[i % 3:] + names[:i % 3]
            for path in order:
                t0 = time.perf_counter()
                paths[path](name, data)
                times[path].append(1e3 * (time.perf_counter() - t0))
        anvil.server.disconnect()
    after = report_load("after")

    stats = {n: Stats.of(v) for n, v in times.items()}
    ratio = stats["REST"].median / stats["bare"].median
    per_image_ratio = sorted(r / b for r, b in zip(times["REST"], times["bare"]))
    for n in names:
        print(f"{n:>7}: {stats[n]}")
    print(f"REST / bare median ratio: {ratio:.2f}x (target <= {TARGET}x); uplink / bare "
          f"{stats['uplink'].median / stats['bare'].median:.2f}x")
    print(scratch)
    print(str(before), "->", str(after))

    if args.write_doc:
        rows = "\n".join(
            f"| {n} | {stats[n].median:.1f} | {stats[n].p90:.1f} | {stats[n].minimum:.1f} | "
            f"{stats[n].median / stats['bare'].median:.2f}x |" for n in names)
        write_section("serving_latency", "Single-image latency", f"""
Model: {model_note}. {args.images} distinct synthetic crops (OME-TIFF), each through the three paths in
rotating order; REST client authenticated with {'HTTP Basic' if args.auth == 'basic' else 'a session cookie'}.

| path | median ms | p90 ms | min ms | median / bare |
|---|---|---|---|---|
{rows}

**REST end to end / bare Predictor: {ratio:.2f}x** (target <= {TARGET}x; per-image ratio median
{per_image_ratio[len(per_image_ratio) // 2]:.2f}x).
{scratch}""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
