"""ResNet50 training speed with mixed precision and XLA, on any Keras backend (meant for one GPU).

Trains ``nscfate.architectures.build_model("resnet50", 4, (75, 75))`` with ``model.fit`` and reports
the steady images/s, and from it the time of ``--target-epochs`` epochs over ``--target-images``
images (10 x 600,000 by default; the goal is under 10 minutes on one GPU).

Why any backend: the GPU machines lent to this project carry JAX and PyTorch built for CUDA but no
TensorFlow, and TensorFlow's wheel (~600 MB) cannot travel there (64 MiB per call). The models are
Keras 3 models (``nscfate.layers`` uses ``keras.ops`` only), so they train unchanged on JAX
(``KERAS_BACKEND=jax``), where XLA compiles the whole training step. Options:

- ``--precision mixed_bfloat16`` (or ``mixed_float16``): Keras's mixed-precision policy; the
  normalisation layer and the softmax stay float32, as ``nscfate.architectures`` builds them;
- ``--xla``: ``model.compile(jit_compile=True)`` (what the JAX backend always wants);
- ``--steps-per-execution N``: N training steps per compiled call, fewer returns to Python.

Data: the images of ``--data`` are decoded and prepared once by
``nscfate.preprocessing.load_prepared`` (the one image -> model input path), in ``--prepare-jobs``
processes, into float32 arrays under ``--arrays`` (``images.npy`` of shape (n, 75, 75, 1) and
``labels.npy``; 13.5 GB for 600,000 images), written once and reused. Training reads them
memory-mapped: each step gathers a shuffled batch from memory (a fresh permutation every epoch), so the
input is never what limits a GPU; the script measures that gather alone too.

On a GPU machine (the device tool; commands in docs/PERFORMANCE.md, "ResNet50 training")::

    KERAS_BACKEND=jax python bench/gpu_training.py --data /tmp/s600k --arrays /tmp/s600k-75 \\
        --epochs 2 --batch-size 256 --precision mixed_bfloat16 --xla --write-doc

Check on CPU with a tiny setting (any backend; TensorFlow's is the project's default)::

    python bench/gpu_training.py --data /work/data/perf/synth/s60k --limit 512 --arrays /tmp/arrays-check \\
        --epochs 1 --batch-size 32 --precision mixed_float16 --xla --skip-steps 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import NON_NEGATIVE, POSITIVE, report_load, setup_logging, write_section  # noqa: E402

log = logging.getLogger("bench.gpu_training")
SIZE = (75, 75)
TASK = "medium4"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CHUNK = 2048  # images per preparation job: small enough to balance the processes and log progress


def _prepare_chunk(job: tuple[str, int, list[str]]) -> int:
    """Prepare ``paths`` into rows ``start:start + len(paths)`` of the shared ``images.npy``."""
    from nscfate.preprocessing import load_prepared

    images_path, start, paths = job
    images = np.load(images_path, mmap_mode="r+")
    for i, path in enumerate(paths):
        images[start + i] = load_prepared(path, SIZE)
    images.flush()
    return len(paths)


def ensure_arrays(data: Path, out: Path, limit: int | None, jobs: int) -> dict:
    """Prepared images and labels of ``data`` under ``out`` (written once; reused when complete).
    Returns the index: count, classes, and how fast they were prepared."""
    index_path = out / "arrays.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        if (index.get("source"), index.get("limit")) != (str(data), limit):
            raise SystemExit(f"{out} holds images prepared from {index.get('source')} (limit {index.get('limit')}), "
                             f"not {data} (limit {limit}): use another --arrays folder, or delete this one")
        log.info("using %d prepared images in %s", index["count"], out)
        return index
    from nscfate.classes import get_task
    from nscfate.data import label_indices, read_dataset

    classes = list(get_task(TASK).classes)
    samples = read_dataset(data, task=TASK)
    if limit:
        order = np.random.default_rng(0).permutation(len(samples))[:limit]
        samples = [samples[int(i)] for i in sorted(order)]
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "labels.npy", label_indices(samples, classes))
    images_path = out / "images.npy"
    np.lib.format.open_memmap(images_path, mode="w+", dtype=np.float32, shape=(len(samples), *SIZE, 1)).flush()
    paths = [str(s.path) for s in samples]
    chunks = [(str(images_path), k, paths[k:k + CHUNK]) for k in range(0, len(paths), CHUNK)]
    t0, done = time.perf_counter(), 0
    with ProcessPoolExecutor(jobs) as pool:
        for n in pool.map(_prepare_chunk, chunks):
            done += n
            if done % (50 * CHUNK) < CHUNK or done == len(paths):
                log.info("prepared %d / %d images", done, len(paths))
    seconds = time.perf_counter() - t0
    index = {"count": len(paths), "classes": classes, "input_size": list(SIZE), "source": str(data), "limit": limit,
             "prepare_seconds": round(seconds, 1), "prepare_jobs": jobs,
             "prepare_images_per_s": round(len(paths) / seconds)}
    index_path.write_text(json.dumps(index, indent=1))  # last: its presence means the arrays are complete
    log.info("prepared %d images with %d process(es) in %.0f s (%.0f images/s)", len(paths), jobs, seconds,
             len(paths) / seconds)
    return index


def gather_rate(images: np.ndarray, batch: int, steps: int) -> float:
    """Images/s of gathering shuffled batches from ``images`` (the input side of a training step)."""
    order = np.random.default_rng(1).permutation(len(images))
    steps = min(steps, len(images) // batch)
    t0 = time.perf_counter()
    for k in range(steps):
        np.ascontiguousarray(images[order[k * batch:(k + 1) * batch]])
    return steps * batch / (time.perf_counter() - t0)


def describe_device() -> str:
    """The accelerator Keras's backend will use, in words ("CPU only" if none)."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform != "cpu"]
        return f"{gpus[0].device_kind} (x{len(gpus)})" if gpus else "CPU only"
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus) \
        if gpus else "CPU only"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="synthetic (or real) dataset folder")
    ap.add_argument("--arrays", type=Path, required=True, help="folder for the prepared arrays (written once)")
    ap.add_argument("--limit", type=POSITIVE, help="use this many images (a quick check)")
    ap.add_argument("--prepare-jobs", type=POSITIVE, default=os.cpu_count(), help="processes preparing the images")
    ap.add_argument("--epochs", type=POSITIVE, default=1)
    ap.add_argument("--batch-size", type=POSITIVE, default=256)
    ap.add_argument("--precision", choices=PRECISIONS, default="float32", help="Keras dtype policy")
    ap.add_argument("--xla", action="store_true", help="compile the training step with XLA (jit_compile=True)")
    ap.add_argument("--steps-per-execution", type=POSITIVE, default=1)
    ap.add_argument("--skip-steps", type=NON_NEGATIVE, default=10, help="steps per epoch left out of the rate")
    ap.add_argument("--target-epochs", type=POSITIVE, default=10)
    ap.add_argument("--target-images", type=POSITIVE, default=600_000)
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")

    # Prepared first, before Keras starts its backend: the preparing processes are forked, and forking a
    # process that holds JAX's threads or a CUDA context can deadlock them.
    index = ensure_arrays(args.data, args.arrays, args.limit, args.prepare_jobs)
    import keras

    backend = keras.config.backend()
    device = describe_device()
    log.info("Keras %s on %s; device: %s", keras.__version__, backend, device)
    n_images = index["count"] // args.batch_size * args.batch_size  # whole batches: one compiled step shape
    steps = n_images // args.batch_size
    if steps <= args.skip_steps + args.steps_per_execution:
        raise SystemExit(f"{index['count']} images make {steps} batches of {args.batch_size}; need more than "
                         f"--skip-steps {args.skip_steps} + --steps-per-execution {args.steps_per_execution}")
    images = np.load(args.arrays / "images.npy", mmap_mode="r")[:n_images]
    labels = np.load(args.arrays / "labels.npy")[:n_images]
    input_rate = gather_rate(images, args.batch_size, steps=200)
    log.info("input alone (shuffled batches gathered from the arrays): %.0f images/s", input_rate)

    from nscfate.architectures import build_model

    old_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(args.precision)
    try:
        keras.utils.set_random_seed(0)
        model = build_model("resnet50", len(index["classes"]), SIZE)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                      metrics=["accuracy"], jit_compile=args.xla, steps_per_execution=args.steps_per_execution)
    finally:
        keras.config.set_dtype_policy(old_policy)

    class Stamps(keras.callbacks.Callback):
        """Steady images/s per epoch: from the end of step ``--skip-steps`` (tracing and compiling done)
        to the end of the epoch. With N steps per execution Keras reports every Nth step."""

        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.marks = time.perf_counter(), []

        def on_train_batch_end(self, batch, logs=None):
            self.marks.append((batch + 1, time.perf_counter()))

        def on_epoch_end(self, epoch, logs=None):
            wall = time.perf_counter() - self.start
            first = next(m for m in self.marks if m[0] >= args.skip_steps)
            last = self.marks[-1]
            rate = (last[0] - first[0]) * args.batch_size / (last[1] - first[1])
            epochs.append({"epoch": epoch + 1, "wall_s": wall, "images_per_s": rate,
                           "loss": float((logs or {}).get("loss", float("nan")))})
            log.info("epoch %d: %.1f s, %.0f images/s (steady), loss %.3f", epoch + 1, wall, rate, epochs[-1]["loss"])

    epochs: list[dict] = []
    t0 = time.perf_counter()
    model.fit(images, labels, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
              callbacks=[Stamps()])
    total = time.perf_counter() - t0
    after = report_load("after")

    steady = sorted(e["images_per_s"] for e in epochs)[len(epochs) // 2]
    target_s = args.target_epochs * args.target_images / steady
    setting = (f"Keras {keras.__version__} on {backend}; {args.precision}, XLA {'on' if args.xla else 'off'}, "
               f"{args.steps_per_execution} step(s) per execution; batch {args.batch_size}")
    print(f"device: {device}; {setting}; {n_images:,} images")
    print(f"prepared {index['count']:,} images at {index['prepare_images_per_s']:,} images/s "
          f"({index['prepare_jobs']} processes); input alone: {input_rate:.0f} images/s")
    for e in epochs:
        print(f"epoch {e['epoch']}: {e['wall_s']:.1f} s, {e['images_per_s']:.0f} images/s, loss {e['loss']:.3f}")
    print(f"{args.epochs} epoch(s) in {total:.1f} s; at {steady:.0f} images/s, {args.target_epochs} epochs over "
          f"{args.target_images:,} images take {target_s / 60:.1f} min (goal: under 10 min)")
    print(str(before), "->", str(after))

    if args.write_doc:
        rows = "\n".join(f"| {e['epoch']} | {e['wall_s']:.1f} | {e['images_per_s']:.0f} | {e['loss']:.3f} |"
                         for e in epochs)
        write_section("gpu_training", "ResNet50 training with mixed precision and XLA", f"""
Device: {device}. {setting}. {n_images:,} images of `{index['source']}`, prepared once into float32
arrays by {index['prepare_jobs']} processes at {index['prepare_images_per_s']:,} images/s; shuffled
batches gathered from them alone: {input_rate:,.0f} images/s.

| epoch | wall s (incl. compiling) | images/s (steady) | loss |
|---|---|---|---|
{rows}

**{args.target_epochs} epochs over {args.target_images:,} images at {steady:,.0f} images/s: {target_s / 60:.1f} min**
(goal: under 10 min).
""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
