"""ResNet50 training speed with mixed precision and XLA (meant for one GPU; runs unchanged on CPU).

Trains ``nscfate.architectures.build_model("resnet50", 4, (75, 75))`` with ``model.fit`` on prepared
TFRecord shards (``nscfate.pipeline.write_tfrecord_shards(mode="prepared")``: float32 arrays read by
TensorFlow ops, no Python decoding per image, so the input keeps up with a GPU). Options:

- ``--mixed-precision``: Keras ``mixed_float16`` policy (the normalisation layer and the softmax stay
  float32, as ``nscfate.architectures`` builds them);
- ``--xla``: ``model.compile(jit_compile=True)``.

It reports the input pipeline's images/s alone, then per epoch the wall time and the steady images/s
(first ``--skip-steps`` steps excluded: tracing/compilation), and extrapolates the time of
``--target-epochs`` epochs over ``--target-images`` images (10 x 600,000 by default).

On a GPU machine, once (writes ~13.5 GB of prepared shards for 600,000 images at 75x75)::

    nscfate synth --out /data/s600k --per-class 150000 --seed 600 --jobs 16
    python bench/gpu_training.py --data /data/s600k --shards /data/s600k-prepared-75 --write-shard-jobs 16 \\
        --epochs 10 --batch-size 256 --mixed-precision --xla --write-doc

Check on CPU with a tiny setting::

    python bench/gpu_training.py --data /work/data/perf/synth/s60k --limit 512 --shards /tmp/shards-check \\
        --epochs 1 --batch-size 32 --mixed-precision --xla
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import report_load, setup_logging, write_section  # noqa: E402

log = logging.getLogger("bench.gpu_training")
SIZE = (75, 75)


def _write_part(job: tuple[list, str, list[str], int]) -> int:
    from nscfate.pipeline import write_tfrecord_shards

    samples, out_dir, classes, shard_size = job
    write_tfrecord_shards(samples, out_dir, classes, mode="prepared", input_size=SIZE, shard_size=shard_size)
    return len(samples)


def ensure_shards(data: Path, shards: Path, limit: int | None, jobs: int, shard_size: int = 8192) -> Path:
    """Prepared 75x75 TFRecord shards of ``data`` under ``shards`` (written once; reused when present).
    With ``jobs`` > 1 the images are split into ``jobs`` parts, each written by its own process into
    ``shards/part-k``; the training reads every part."""
    if (shards / "parts.json").is_file():
        return shards
    from nscfate.classes import get_task
    from nscfate.data import read_dataset

    classes = list(get_task("medium4").classes)
    samples = read_dataset(data, task="medium4")
    if limit:
        import random

        samples = random.Random(0).sample(samples, min(limit, len(samples)))
    parts = [samples[k::jobs] for k in range(jobs)]
    t0 = time.perf_counter()
    dirs = [str(shards / f"part-{k}") for k in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        n = sum(pool.map(_write_part, [(p, d, classes, shard_size) for p, d in zip(parts, dirs)]))
    (shards / "parts.json").write_text(json.dumps({"parts": [Path(d).name for d in dirs], "count": n}))
    log.info("wrote %d prepared images to %s in %.0f s", n, shards, time.perf_counter() - t0)
    return shards


def dataset(shards: Path, batch: int, repeat: bool):
    """Batches from every part's shards, shuffled; ``(count, tf.data.Dataset)``."""
    import tensorflow as tf

    from nscfate.pipeline import make_tfrecord_dataset

    index = json.loads((shards / "parts.json").read_text())
    parts = [make_tfrecord_dataset(shards / p, batch_size=batch, shuffle=True, shuffle_buffer=8192, seed=k,
                                   drop_remainder=True).unbatch()
             for k, p in enumerate(index["parts"])]
    ds = tf.data.Dataset.sample_from_datasets(parts, seed=0, stop_on_empty_dataset=False) if len(parts) > 1 \
        else parts[0]
    ds = ds.batch(batch, drop_remainder=True)
    if repeat:
        ds = ds.repeat()
    return index["count"], ds.prefetch(tf.data.AUTOTUNE)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="synthetic (or real) dataset folder")
    ap.add_argument("--shards", type=Path, required=True, help="folder for the prepared TFRecord shards")
    ap.add_argument("--limit", type=int, help="use this many images (a quick check)")
    ap.add_argument("--write-shard-jobs", type=int, default=1, help="processes writing the shards")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--mixed-precision", action="store_true")
    ap.add_argument("--xla", action="store_true")
    ap.add_argument("--skip-steps", type=int, default=10, help="steps per epoch left out of the rate")
    ap.add_argument("--pipeline-steps", type=int, default=50, help="batches timed for the pipeline alone")
    ap.add_argument("--target-epochs", type=int, default=10)
    ap.add_argument("--target-images", type=int, default=600_000)
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    before = report_load("before")

    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = ", ".join(tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus) \
        if gpus else "CPU only"
    log.info("devices: %s", device)
    shards = ensure_shards(args.data, args.shards, args.limit, args.write_shard_jobs)
    n_images, ds = dataset(shards, args.batch_size, repeat=False)
    steps = n_images // args.batch_size
    if steps <= args.skip_steps:
        raise SystemExit(f"{n_images} images make {steps} batches of {args.batch_size}; need more than "
                         f"--skip-steps {args.skip_steps}")

    # the input alone
    _, pipe = dataset(shards, args.batch_size, repeat=True)
    it = iter(pipe)
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(args.pipeline_steps):
        next(it)
    pipeline_rate = args.pipeline_steps * args.batch_size / (time.perf_counter() - t0)
    del it, pipe
    log.info("input pipeline alone: %.0f images/s", pipeline_rate)

    from nscfate.architectures import build_model

    old_policy = keras.config.dtype_policy()
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = build_model("resnet50", 4, SIZE)
        optimizer = keras.optimizers.AdamW(1e-3)
        model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"],
                      jit_compile=args.xla)
    finally:
        keras.config.set_dtype_policy(old_policy)

    class Stamps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start, self.times = time.perf_counter(), []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            wall = time.perf_counter() - self.start
            rate = (len(self.times) - args.skip_steps) * args.batch_size / (self.times[-1] - self.times[args.skip_steps - 1])
            epochs.append({"epoch": epoch + 1, "wall_s": wall, "images_per_s": rate,
                           "loss": float((logs or {}).get("loss", float("nan")))})
            log.info("epoch %d: %.1f s, %.0f images/s (steady), loss %.3f", epoch + 1, wall, rate, epochs[-1]["loss"])

    epochs: list[dict] = []
    t0 = time.perf_counter()
    model.fit(ds, epochs=args.epochs, verbose=0, callbacks=[Stamps()], shuffle=False)  # the dataset shuffles itself
    total = time.perf_counter() - t0
    after = report_load("after")

    steady = sorted(e["images_per_s"] for e in epochs)[len(epochs) // 2]
    target_s = args.target_epochs * args.target_images / steady
    print(f"device: {device}; mixed precision {'on' if args.mixed_precision else 'off'}, XLA "
          f"{'on' if args.xla else 'off'}; {n_images:,} images, batch {args.batch_size}")
    print(f"input pipeline alone: {pipeline_rate:.0f} images/s")
    for e in epochs:
        print(f"epoch {e['epoch']}: {e['wall_s']:.1f} s, {e['images_per_s']:.0f} images/s, loss {e['loss']:.3f}")
    print(f"{args.epochs} epoch(s) in {total:.1f} s; at {steady:.0f} images/s, {args.target_epochs} epochs over "
          f"{args.target_images:,} images take {target_s / 60:.1f} min (goal: under 10 min)")
    print(str(before), "->", str(after))

    if args.write_doc:
        rows = "\n".join(f"| {e['epoch']} | {e['wall_s']:.1f} | {e['images_per_s']:.0f} |" for e in epochs)
        write_section("gpu_training", "ResNet50 training with mixed precision and XLA", f"""
Device: {device}. Mixed precision {'on' if args.mixed_precision else 'off'}, XLA {'on' if args.xla else 'off'},
{n_images:,} images (prepared 75x75 TFRecord shards), batch {args.batch_size}. Input pipeline alone:
{pipeline_rate:.0f} images/s.

| epoch | wall s | images/s (steady) |
|---|---|---|
{rows}

**{args.target_epochs} epochs over {args.target_images:,} images at {steady:.0f} images/s: {target_s / 60:.1f} min**
(goal: under 10 min).
""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
