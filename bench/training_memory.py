"""Training memory vs dataset size, and the input pipeline vs the same model fed from memory.

Part 1 - memory: the real ``nscfate train`` command (read + split + manifest with file hashes, the
streaming ``tf.data`` pipeline, bounded training steps, evaluation of the held-out sets, export) on a
small and a large synthetic set on disk (``nscfate synth``), each in its own process; peak RSS from
``wait4`` (the kernel's high-water mark of that process), RSS sampled every 0.5 s for the profile. The
training steps are the same for both sizes, so only what scales with the number of images differs.

Part 2 - pipeline: ``model.fit`` steps fed by ``nscfate.pipeline.make_dataset`` (files on disk: decode +
prepare_image in parallel map calls, shuffle buffer, prefetch) vs the same images prepared once and fed
from memory; plus the pipeline alone (no model). Interleaved rounds; ratio pipeline / memory per model.

    nscfate synth --out /work/data/perf/synth/s60k --per-class 15000 --seed 60
    nscfate synth --out /work/data/perf/synth/s600k --per-class 150000 --seed 600
    python bench/training_memory.py --small /work/data/perf/synth/s60k --large /work/data/perf/synth/s600k --write-doc
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import DEFAULT_WORK, POSITIVE, median, report_load, setup_logging, write_section  # noqa: E402

log = logging.getLogger("bench.training_memory")


# ------------------------------------------------------------------------------------- part 1: memory

def count_images(data: Path) -> int:
    return sum(1 for _ in data.glob("*/*_Ch1.ome.tif"))


def train_peak_rss(data: Path, work: Path, args) -> dict:
    """Run ``nscfate train`` on ``data`` in a subprocess; its peak RSS (MB), wall time and RSS samples."""
    out, run = work / f"model-{data.name}", work / f"run-{data.name}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "nscfate", "train", "--data", str(data), "--arch", args.arch,
           "--image-size", args.image_size, "--epochs", "1", "--steps-per-epoch", str(args.steps),
           "--batch-size", str(args.batch_size), "--patience", "0", "--set", "train.eval_bootstrap=0",
           "--out", str(out), "--run-dir", str(run)]
    log.info("running %s", " ".join(cmd))
    t0 = time.perf_counter()
    logf = open(work / f"train-{data.name}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.wait(0.5):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((time.perf_counter() - t0, int(line.split()[1]) / 1024))
            except OSError:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    logf.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"nscfate train failed ({proc.returncode}); see {work / f'train-{data.name}.log'}")
    return {"images": count_images(data), "peak_mb": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - t0,
            "samples": samples, "log": (work / f"train-{data.name}.log").read_text(errors="replace")}


def profile(samples: list[tuple[float, float]], points: int = 8) -> str:
    """RSS (MB) at evenly spaced moments of a run, as 'a -> b -> ...'."""
    if not samples:
        return "-"
    idx = np.linspace(0, len(samples) - 1, points).round().astype(int)
    return " -> ".join(f"{samples[i][1]:.0f}" for i in idx)


# ------------------------------------------------------------------------------------- part 2: pipeline

def pipeline_vs_memory(data: Path, arch: str, size: tuple[int, int], batch: int, steps: int, n_images: int,
                       rounds: int) -> dict[str, list[float]]:
    """Images/s of model.fit fed by the streaming pipeline vs from memory, and of the pipeline alone."""
    import keras
    import tensorflow as tf

    from nscfate.architectures import build_model
    from nscfate.classes import get_task
    from nscfate.data import read_dataset
    from nscfate.pipeline import make_dataset
    from nscfate.preprocessing import load_prepared

    classes = get_task("medium4").classes
    rng = np.random.default_rng(0)
    all_samples = read_dataset(data, task="medium4")
    samples = [all_samples[i] for i in rng.choice(len(all_samples), size=min(n_images, len(all_samples)),
                                                  replace=False)]
    del all_samples
    labels = np.array([classes.index(s.label) for s in samples], np.int32)
    memory = np.stack([load_prepared(s.path, size) for s in samples])  # the same images, prepared once

    def streamed():
        return make_dataset(samples, classes, input_size=size, batch_size=batch, shuffle=True, repeat=True)

    def in_memory():
        return (tf.data.Dataset.from_tensor_slices((memory, labels)).shuffle(4096, seed=0).repeat()
                .batch(batch).prefetch(tf.data.AUTOTUNE))

    keras.utils.set_random_seed(0)
    model = build_model(arch, len(classes), size)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    model.fit(in_memory(), epochs=1, steps_per_epoch=3, verbose=0)  # warm-up (traces the train step)

    class Stamps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())

    def fit_rate(ds) -> float:
        """Images/s over the steps after the first ``skip`` (pipeline start-up excluded)."""
        stamps = Stamps()
        stamps.times = []
        skip = 3
        model.fit(ds, epochs=1, steps_per_epoch=steps + skip, verbose=0, callbacks=[stamps])
        return steps * batch / (stamps.times[-1] - stamps.times[skip - 1])

    def pipeline_rate() -> float:
        it = iter(streamed())
        next(it)
        t0 = time.perf_counter()
        for _ in range(steps):
            next(it)
        return steps * batch / (time.perf_counter() - t0)

    rates: dict[str, list[float]] = {"pipeline": [], "memory": [], "pipeline alone": []}
    for r in range(rounds):
        order = ["pipeline", "memory"] if r % 2 == 0 else ["memory", "pipeline"]
        for name in order:
            rates[name].append(fit_rate(streamed() if name == "pipeline" else in_memory()))
        rates["pipeline alone"].append(pipeline_rate())
        log.info("%s round %d: %s", arch, r, {k: round(v[-1], 1) for k, v in rates.items()})
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=Path, required=True, help="the smaller synthetic set (e.g. 60,000 images)")
    ap.add_argument("--large", type=Path, required=True, help="the larger synthetic set (e.g. 600,000 images)")
    ap.add_argument("--arch", default="cnn", help="model trained in the memory runs (small: cnn)")
    ap.add_argument("--image-size", default="45x60")
    ap.add_argument("--steps", type=POSITIVE, default=100, help="training steps of the memory runs (same for both)")
    ap.add_argument("--batch-size", type=POSITIVE, default=64)
    ap.add_argument("--pipeline-archs", default="cnn,resnet50", help="models for the pipeline comparison")
    ap.add_argument("--pipeline-steps", type=POSITIVE, default=30)
    ap.add_argument("--pipeline-images", type=POSITIVE, default=4096)
    ap.add_argument("--rounds", type=POSITIVE, default=2)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK / "training-memory")
    ap.add_argument("--write-doc", action="store_true", help="write the section of docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    setup_logging()
    args.work.mkdir(parents=True, exist_ok=True)
    before = report_load("before")
    size = tuple(int(v) for v in args.image_size.split("x"))

    runs = {}
    if not args.skip_memory:
        for data in (args.small, args.large):
            runs[data] = train_peak_rss(data, args.work, args)
            log.info("%s: %d images, peak RSS %.0f MB, %.0f s", data, runs[data]["images"], runs[data]["peak_mb"],
                     runs[data]["seconds"])
    pipes = {}
    if not args.skip_pipeline:
        for arch in args.pipeline_archs.split(","):
            pipes[arch] = pipeline_vs_memory(args.small, arch, size, args.batch_size if arch == "cnn" else 32,
                                             args.pipeline_steps if arch == "cnn" else max(5, args.pipeline_steps // 3),
                                             args.pipeline_images, args.rounds)
    after = report_load("after")

    lines = []
    if runs:
        small, large = runs[args.small], runs[args.large]
        growth = large["peak_mb"] / small["peak_mb"]
        print(f"peak RSS: {small['images']:,} images {small['peak_mb']:.0f} MB; {large['images']:,} images "
              f"{large['peak_mb']:.0f} MB ({growth:.2f}x for {large['images'] / small['images']:.0f}x the images)")
        lines += ["| images | peak RSS MB | wall s | RSS MB over the run (8 points) |", "|---|---|---|---|"]
        for r in (small, large):
            lines.append(f"| {r['images']:,} | {r['peak_mb']:.0f} | {r['seconds']:.0f} | {profile(r['samples'])} |")
        lines.append("")
        lines.append(f"**Peak RSS {large['peak_mb']:.0f} MB for {large['images']:,} images vs "
                     f"{small['peak_mb']:.0f} MB for {small['images']:,}: {growth:.2f}x** for "
                     f"{large['images'] / small['images']:.0f}x the images "
                     f"({(large['peak_mb'] - small['peak_mb']) * 1e6 / max(1, large['images'] - small['images']):.0f} "
                     "bytes per extra image).")
    if pipes:
        lines += ["", "| model | fed by the pipeline (images/s) | fed from memory | pipeline / memory | pipeline alone |",
                  "|---|---|---|---|---|"]
        for arch, r in pipes.items():
            ratio = median([p / m for p, m in zip(r["pipeline"], r["memory"])])
            print(f"{arch}: pipeline {median(r['pipeline']):.1f}, memory {median(r['memory']):.1f} images/s "
                  f"({ratio:.0%}); pipeline alone {median(r['pipeline alone']):.1f} images/s")
            lines.append(f"| {arch} | {median(r['pipeline']):.1f} | {median(r['memory']):.1f} | {ratio:.0%} | "
                         f"{median(r['pipeline alone']):.1f} |")
    print(str(before), "->", str(after))

    if args.write_doc:
        body = "\n".join(lines)
        write_section("training_memory", "Training memory and the input pipeline", f"""
Memory runs: `nscfate train --arch {args.arch} --image-size {args.image_size} --epochs 1 --steps-per-epoch
{args.steps} --batch-size {args.batch_size} --patience 0 --set train.eval_bootstrap=0` on each set (the
whole command: read, split, manifest with file hashes, training, evaluation of val + test, export).
Pipeline runs: {args.pipeline_images} images of the small set, `model.fit` steps fed by
`nscfate.pipeline.make_dataset` vs the same images prepared once in memory, {args.rounds} interleaved rounds.

{body}""", before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
