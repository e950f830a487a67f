"""Model-side speed on this machine: inference images/s of every architecture at 45x60, 60x60 and 75x75
through the Predictor's compiled function, and training images/s of ResNet50.

Inference goes through ``nscfate.Predictor`` itself (its fixed-signature ``tf.function``, input
``(None, h, w, 1)`` float32, so no retracing between batch sizes) on batches of ``--batch`` prepared
images; each architecture is built by ``nscfate.architectures.build_model`` with random weights (speed
does not depend on the weights). Rates are the median of ``--repeats`` timed batches after a warm-up.
The architectures are measured in rotating order each repeat, so load changes hit them alike.

Training: ``model.fit`` steps of ResNet50 (AdamW, sparse cross-entropy, as ``nscfate.training``) on
in-memory batches, after warm-up steps.

Thread settings: TensorFlow sizes its intra-op pool to the cores this process may use
(``os.sched_getaffinity``) unless ``--intra-op``/``--inter-op`` (``tf.config.threading``) say otherwise;
``--thread-sweep`` re-runs ResNet50 at 75x75 in subprocesses with each setting, in rotating rounds, to
show the effect.

oneDNN: TensorFlow's x86 builds run convolutions and matrix products through oneDNN unless the
environment says ``TF_ENABLE_ONEDNN_OPTS=0`` (read once, when TensorFlow loads). ``--onednn-pairs N``
runs ResNet50 at 75x75 with it on and off in N pairs of fresh subprocesses, taken in turn, at the
batch size and at batch 1, and gives each pair's ratio: the machine's speed drifts more from one
minute to the next than the difference, so only pairs run close together compare.

    python bench/model_speed.py --write-doc
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NON_NEGATIVE, POSITIVE, median, report_load, setup_logging, write_section  # noqa: E402

log = logging.getLogger("bench.model_speed")
SIZES = ((45, 60), (60, 60), (75, 75))


def predictor_for(arch: str, size: tuple[int, int], num_classes: int = 4):
    """A Predictor around a freshly built model (random weights): the compiled function serving uses."""
    from nscfate.architectures import build_model
    from nscfate.classes import get_task
    from nscfate.modeldir import ModelInfo
    from nscfate.predictor import Predictor

    task = get_task("medium4")
    model = build_model(arch, num_classes, size)
    info = ModelInfo(path=Path("."), name=f"{arch}-bench", version="0", task="medium4", arch=arch,
                     classes=tuple(task.classes), display_names={c: c for c in task.classes}, input_size=size,
                     metadata={}, metrics={}, config={})
    return Predictor(info, model)


def prepared_batch(size: tuple[int, int], n: int, seed: int = 0) -> list:
    """``n`` prepared synthetic crops (``nscfate.synth`` rendering + ``prepare_image``)."""
    from nscfate.predictor import PreparedImage
    from nscfate.preprocessing import prepare_image
    from nscfate.synth import SynthConfig, generate

    config = SynthConfig(per_class=max(1, -(-n // 4)), seed=seed)
    images = [img.pixels for m in config.media for img in generate(config, m)][:n]
    return [PreparedImage(array=prepare_image(im.astype(np.float32) / 255.0, size), image={}) for im in images]


def inference_rates(archs: list[str], batch: int, repeats: int) -> dict[tuple[str, tuple[int, int]], float]:
    """Images/s per (arch, size): median over ``repeats`` rotating rounds of one timed batch each."""
    import keras

    setups = {}
    for arch in archs:
        for size in SIZES:
            keras.utils.set_random_seed(0)
            p = predictor_for(arch, size)
            items = prepared_batch(size, batch)
            p.predict_prepared(items)  # warm-up: trace + first run
            setups[(arch, size)] = (p, items)
            log.info("built %s at %dx%d", arch, *size)
    times: dict = {k: [] for k in setups}
    keys = list(setups)
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            p, items = setups[k]
            t0 = time.perf_counter()
            p.predict_prepared(items)
            times[k].append(time.perf_counter() - t0)
    return {k: batch / median(v) for k, v in times.items()}


def training_rate(arch: str, size: tuple[int, int], batch: int, steps: int) -> float:
    """Images/s of ``model.fit`` steps on in-memory batches (after 3 warm-up steps)."""
    import keras

    from nscfate.architectures import build_model

    keras.utils.set_random_seed(0)
    model = build_model(arch, 4, size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    x = np.stack([p.array for p in prepared_batch(size, batch)])
    y = np.arange(batch) % 4
    import tensorflow as tf

    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(3), epochs=1, verbose=0)  # warm-up (traces)
    data = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
    t0 = time.perf_counter()
    model.fit(data, epochs=1, verbose=0)
    return steps * batch / (time.perf_counter() - t0)


def resnet50_rate(batch: int, repeats: int, env: dict[str, str] | None = None, *args: str) -> float:
    """ResNet50 75x75 images/s in a fresh subprocess (so that settings read when TensorFlow loads apply)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--archs", "resnet50", "--only-size", "75x75",
           "--batch", str(batch), "--repeats", str(repeats), "--no-training", "--json", *args]
    res = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])["resnet50@75x75"]


SWEEP_ROUNDS = 3


def thread_sweep(settings: list[tuple[int, int]], batch: int, repeats: int,
                 rounds: int = SWEEP_ROUNDS) -> dict[tuple[int, int], list[float]]:
    """ResNet50 75x75 images/s with each (intra, inter) setting, one per round: each setting once per
    round in a fresh subprocess, in rotating order (one run of each is within this VM's drift of the
    next)."""
    rates: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    for r in range(rounds):
        for intra, inter in settings[r % len(settings):] + settings[:r % len(settings)]:
            v = resnet50_rate(batch, repeats, None, "--intra-op", str(intra), "--inter-op", str(inter))
            rates[(intra, inter)].append(v)
            log.info("round %d, intra-op %d, inter-op %d: %.1f images/s", r + 1, intra, inter, v)
    return rates


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def onednn_is_on(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether TensorFlow loaded with this environment uses oneDNN (its default on x86)."""
    return env.get(ONEDNN_ENV, "1").strip().lower() not in ("0", "false")


def onednn_pairs(pairs: int, batch: int, repeats: int) -> list[dict[tuple[bool, int], float]]:
    """ResNet50 75x75 images/s with oneDNN on and off, at ``batch`` and at 1: one dict per pair, keyed
    (oneDNN on?, batch). The two settings alternate which runs first."""
    out = []
    for i in range(pairs):
        rates = {}
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            env = {ONEDNN_ENV: "1" if on else "0"}
            rates[(on, batch)] = resnet50_rate(batch, repeats, env)
            rates[(on, 1)] = resnet50_rate(1, 6 * repeats, env)  # one image a call: more calls for a steady median
        log.info("pair %d: batch %d on %.1f off %.1f, batch 1 on %.1f off %.1f images/s", i + 1, batch,
                 rates[(True, batch)], rates[(False, batch)], rates[(True, 1)], rates[(False, 1)])
        out.append(rates)
    return out


def onednn_table(pairs: list[dict[tuple[bool, int], float]], batch: int) -> str:
    rows = [f"| pair | on, batch {batch} | off, batch {batch} | off / on | on, batch 1 | off, batch 1 | off / on |",
            "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(pairs, 1):
        rows.append(f"| {i} | {r[(True, batch)]:.1f} | {r[(False, batch)]:.1f} | {r[(False, batch)] / r[(True, batch)]:.2f} "
                    f"| {r[(True, 1)]:.1f} | {r[(False, 1)]:.1f} | {r[(False, 1)] / r[(True, 1)]:.2f} |")
    big = median([r[(False, batch)] / r[(True, batch)] for r in pairs])
    one = median([r[(False, 1)] / r[(True, 1)] for r in pairs])
    rows.append(f"\n**oneDNN off / on: {big:.2f}x at batch {batch}, {one:.2f}x at batch 1** (medians of the pairs' ratios).")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from nscfate.architectures import ARCHITECTURES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(ARCHITECTURES))
    ap.add_argument("--batch", type=POSITIVE, default=32, help="images per model call (the worker's default max batch)")
    ap.add_argument("--repeats", type=POSITIVE, default=5)
    ap.add_argument("--only-size", help="measure one size, e.g. 75x75")
    ap.add_argument("--intra-op", type=NON_NEGATIVE, default=0, help="tf.config.threading intra-op threads (0: TF's default)")
    ap.add_argument("--inter-op", type=NON_NEGATIVE, default=0, help="tf.config.threading inter-op threads (0: TF's default)")
    ap.add_argument("--train-steps", type=POSITIVE, default=20)
    ap.add_argument("--train-batch", type=POSITIVE, default=32)
    ap.add_argument("--no-training", action="store_true")
    ap.add_argument("--thread-sweep", action="store_true", help="also ResNet50 75x75 under several thread settings")
    ap.add_argument("--onednn-pairs", type=NON_NEGATIVE, default=0, metavar="N",
                    help="also ResNet50 75x75 with oneDNN on and off (TF_ENABLE_ONEDNN_OPTS), N pairs of fresh processes")
    ap.add_argument("--json", action="store_true", help="print the inference rates as one JSON line")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    global SIZES
    if args.only_size:
        SIZES = (tuple(int(v) for v in args.only_size.split("x")),)

    import tensorflow as tf

    if args.intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op)
    if args.inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    before = report_load("before")
    archs = args.archs.split(",")
    rates = inference_rates(archs, args.batch, args.repeats)
    if args.json:
        print(json.dumps({f"{a}@{h}x{w}": v for (a, (h, w)), v in rates.items()}))
        return 0
    train = None if args.no_training else training_rate("resnet50", (75, 75), args.train_batch, args.train_steps)
    sweep = None
    if args.thread_sweep:
        cores = len(os.sched_getaffinity(0))
        sweep = thread_sweep(sorted({(1, 1), (cores, 1), (cores, 2), (2 * cores, 2)}), args.batch, args.repeats)
    onednn = onednn_pairs(args.onednn_pairs, args.batch, args.repeats) if args.onednn_pairs else None
    after = report_load("after")

    header = "| architecture | " + " | ".join(f"{h}x{w}" for h, w in SIZES) + " |"
    rows = [header, "|---|" + "---|" * len(SIZES)]
    for arch in archs:
        rows.append(f"| {arch} | " + " | ".join(f"{rates[(arch, s)]:.0f}" for s in SIZES) + " |")
    table = "\n".join(rows)
    print(table)
    threads = (f"intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, inter-op "
               f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'}")
    if train:
        print(f"ResNet50 75x75 training: {train:.1f} images/s (batch {args.train_batch})")
    if sweep:
        for (intra, inter), v in sweep.items():
            print(f"threads intra {intra} inter {inter}: median {median(v):.1f} images/s "
                  f"({', '.join(f'{x:.1f}' for x in v)})")
    if onednn:
        print(onednn_table(onednn, args.batch))
    print(str(before), "->", str(after))

    if args.write_doc:
        extra = ""
        if train:
            extra += (f"\nTraining, ResNet50 at 75x75 (`model.fit` on in-memory batches of {args.train_batch}, AdamW): "
                      f"**{train:.1f} images/s** on this CPU.\n")
        if sweep:
            extra += (f"\nThread settings, ResNet50 at 75x75, a fresh process each, {SWEEP_ROUNDS} rounds in rotating order:\n\n"
                      "| intra-op | inter-op | images/s (median) | each round |\n|---|---|---|---|\n")
            extra += "\n".join(f"| {i} | {j} | {median(v):.1f} | {', '.join(f'{x:.1f}' for x in v)} |"
                                for (i, j), v in sweep.items()) + "\n"
        if onednn:
            extra += (f"\noneDNN on and off (`{ONEDNN_ENV}`; the tables above: "
                      f"{'on' if onednn_is_on() else 'off'}), ResNet50 at 75x75, "
                      f"{len(onednn)} pairs of fresh processes taken in turn, images/s:\n\n{onednn_table(onednn, args.batch)}\n")
        write_section("model_speed", "Model speed per architecture", f"""
Inference images/s through `Predictor.predict_prepared` (the fixed-signature compiled function), batches
of {args.batch}, random weights, median of {args.repeats} rotating rounds; TensorFlow threads: {threads}
(default = sized to the cores the process may use).

{table}
{extra}""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
