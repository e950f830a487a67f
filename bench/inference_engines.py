"""Inference engines for one model on this CPU: the Predictor's ``tf.function`` against XLA and TensorFlow
Lite (XNNPACK), side by side in one process.

- **tf.function**: what serving runs, ``Predictor._run`` (the fixed-signature compiled function).
- **XLA**: the same call under ``tf.function(jit_compile=True)``; it compiles once per batch size.
- **TFLite**: the whole model converted by ``tf.lite.TFLiteConverter`` and run by
  ``tf.lite.Interpreter`` (XNNPACK, one thread per core).

Each engine's outputs are compared with the ``tf.function``'s on the same batch. Rates: images/s of
``--calls`` calls (batch ``--batch``) and ``--calls-one`` calls (batch 1), the median of ``--rounds``
rounds in rotating order, so that the machine's drift hits every engine alike. Setup (compile or
convert) time and the RSS it added are printed too: they are what adopting an engine would cost a
worker at start.

    python bench/inference_engines.py --write-doc
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (POSITIVE, add_model_arguments, chosen_model, median, report_load, setup_logging,  # noqa: E402
                          write_section)

log = logging.getLogger("bench.inference_engines")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def xla_engine(model) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), jit_compile=True)
    return lambda x: np.asarray(fn(x))


def tflite_engine(model, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice (ai-edge-litert succeeds it)
        interpreter = tf.lite.Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert(),
                                          num_threads=threads)
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    shape = [None]

    def run(x: np.ndarray) -> np.ndarray:
        if shape[0] != x.shape:  # cheap (~0.3 ms): XNNPACK keeps its packed weights
            interpreter.resize_tensor_input(inp, list(x.shape))
            interpreter.allocate_tensors()
            shape[0] = x.shape
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        return interpreter.get_tensor(out).copy()

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(ap)
    ap.add_argument("--batch", type=POSITIVE, default=32, help="images per call (the worker's default max batch)")
    ap.add_argument("--calls", type=POSITIVE, default=5, help="timed calls of --batch images per round")
    ap.add_argument("--calls-one", type=POSITIVE, default=40, help="timed calls of one image per round")
    ap.add_argument("--rounds", type=POSITIVE, default=6)
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")

    from nscfate.predictor import Predictor, set_cpu_threads

    set_cpu_threads()  # the worker's defaults
    model_dir, model_note = chosen_model(args)
    predictor = Predictor.from_directory(model_dir)
    h, w = predictor.input_size
    rng = np.random.default_rng(0)
    batches = {args.batch: rng.normal(size=(args.batch, h, w, 1)).astype(np.float32),
               1: rng.normal(size=(1, h, w, 1)).astype(np.float32)}
    calls = {args.batch: args.calls, 1: args.calls_one}
    threads = len(os.sched_getaffinity(0))

    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tf.function": predictor._run}
    setup: dict[str, str] = {"tf.function": "(loaded with the model)"}
    for name, make in (("XLA", lambda: xla_engine(predictor.model)),
                       ("TFLite", lambda: tflite_engine(predictor.model, threads))):
        rss0, t0 = rss_mb(), time.perf_counter()
        engines[name] = make()
        for x in batches.values():  # XLA compiles per batch size; TFLite sizes its tensors
            engines[name](x)
        setup[name] = f"{time.perf_counter() - t0:.1f} s, +{rss_mb() - rss0:.0f} MB RSS"
        log.info("%s ready: %s", name, setup[name])

    diffs = {name: max(float(np.abs(fn(x) - predictor._run(x)).max()) for x in batches.values())
             for name, fn in engines.items()}
    rates: dict[tuple[str, int], list[float]] = {(n, b): [] for n in engines for b in batches}
    names = list(engines)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for b, x in batches.items():
                t0 = time.perf_counter()
                for _ in range(calls[b]):
                    engines[name](x)
                rates[(name, b)].append(b * calls[b] / (time.perf_counter() - t0))
        log.info("round %d: %s", r + 1, ", ".join(f"{n}@{b} {v[-1]:.1f}" for (n, b), v in rates.items()))
    after = report_load("after")

    med = {k: median(v) for k, v in rates.items()}
    rows = [f"| engine | batch {args.batch} images/s | vs tf.function | batch 1 images/s | vs tf.function "
            "| largest output difference | setup |", "|---|---|---|---|---|---|---|"]
    for name in names:
        cells = [f"{med[(name, b)]:.1f} | {med[(name, b)] / med[('tf.function', b)]:.2f}x" for b in batches]
        rows.append(f"| {name} | {' | '.join(cells)} | {diffs[name]:.1e} | {setup[name]} |")
    table = "\n".join(rows)
    print(table)
    print(str(before), "->", str(after))
    if args.write_doc:
        write_section("inference_engines", "Inference engines", f"""
Model: {model_note}. The Predictor's `tf.function` against XLA
(`jit_compile=True`) and TensorFlow Lite (the whole model converted, `tf.lite.Interpreter`, XNNPACK,
{threads} threads), one process, {args.calls} calls of {args.batch} images and {args.calls_one} of one image per engine and
round, medians of {args.rounds} rotating rounds. Setup: the compile or conversion and the first calls
at both batch sizes, and the RSS they added.

{table}
""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
