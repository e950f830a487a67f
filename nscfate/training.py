"""Training: from a validated :class:`nscfate.config.RunConfig` to an exported model directory.

Steps of :func:`train`:

1. read the dataset (``nscfate.data.read_dataset``; brightfield only) and split it: optionally whole
   acquisition batches are held out first (``data.grouped_holdout``; reported as ``grouped_test``), the
   rest is split into train / val / test at random or by group (``data.split``); ``data.subsample``
   thins the training set. The split manifest (with file hashes) is written to the run folder and its
   hash goes into the model's metadata. A resumed run keeps its split: once an epoch has run, the data
   must split exactly as the run's ``split.json`` says (same files, same contents), or the run is
   refused (``--restart`` trains from scratch on the current data), so that a file added between
   sessions cannot reshuffle earlier training images into the test set.
2. stream the images with ``nscfate.pipeline`` (the whole set shuffled every epoch, decode +
   ``prepare_image`` in parallel, batches, prefetch): no pixels are held beyond the batches in flight,
   only an index of paths and labels grows with the dataset, and glibc's mmap threshold is fixed
   (``nscfate.memory``) so that freed memory does not pile up in the heap. Training images get random
   flips (and 90-degree turns for square inputs): cells in suspension have no orientation.
3. build the model (:func:`nscfate.architectures.build_model`) under ``MirroredStrategy`` and with
   mixed precision when GPUs are present (``train.distribute``/``train.mixed_precision`` = auto), AdamW
   or SGD with warm-up + cosine decay, balanced class weights.
4. fit with checkpoints in the run folder: ``backup/`` (``keras.callbacks.BackupAndRestore``, so
   running the same command again resumes after the last finished epoch; Keras deletes it when the fit
   ends), ``best.weights.h5`` (best validation accuracy), ``history.csv``, ``train.log``; early stopping
   on validation accuracy. A run whose fit has ended (epochs in ``history.csv``, no ``backup/``) is not
   trained again: running the command again (with ``--overwrite`` if the model directory exists) only
   repeats step 5 with its best weights; ``--restart`` trains it again from scratch.
5. restore the best weights, evaluate on the held-out sets (same pipeline, no augmentation), and
   export the model directory (:func:`nscfate.modeldir.save_model_dir`) with those metrics.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nscfate.config import RunConfig
from nscfate.errors import ConfigError, DatasetError, ImageError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
BEST_WEIGHTS = "best.weights.h5"
HISTORY_FILE = "history.csv"
SPLIT_FILE = "split.json"
BACKUP_DIR = "backup"
MONITOR = "val_accuracy"
#: Held-out images kept as the golden input of the exported model.
GOLDEN_COUNT = 8


@dataclass(frozen=True)
class Splits:
    """The samples of each split (``grouped_test`` empty when no batches are held out)."""

    train: Sequence
    val: Sequence
    test: Sequence
    grouped_test: Sequence

    def parts(self) -> dict[str, Sequence]:
        return {"train": self.train, "val": self.val, "test": self.test, "grouped_test": self.grouped_test}


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    run_dir: Path
    metrics: dict[str, Any]


# ------------------------------------------------------------------------------------- data

def load_splits(cfg: RunConfig) -> Splits:
    """Read and split the dataset as the config says (nothing is written)."""
    from nscfate import data as D

    samples = D.read_dataset(cfg.data.path, task=cfg.task, channel=cfg.data.channel)
    if not samples:
        raise DatasetError(f"no images for task {cfg.task} in {cfg.data.path}")
    seed = cfg.data.seed
    grouped = cfg.data.split == "grouped" or bool(cfg.data.grouped_holdout)
    unbatched = D.classes_without_batches(samples) if grouped else []
    if unbatched and len(unbatched) == len({s.label for s in samples}):
        log.warning("the file names and folders of %s carry no acquisition batch (day + replicate), so each "
                    "image is its own group: the grouped split holds out single images, which is no more "
                    "honest than a random one (the model card will say so); see docs/DATA.md for the naming",
                    cfg.data.path)
    elif unbatched:
        log.warning("the file names and folders of class(es) %s in %s carry no acquisition batch (day + "
                    "replicate), so each of their images is its own group: the grouped split holds out a share "
                    "of their images one by one, at random, which for them is no more honest than a random "
                    "split (the model card will say so); see docs/DATA.md for the naming",
                    ", ".join(unbatched), cfg.data.path)
    grouped_test: list = []
    rest = list(samples)

    def split(what, parts, kind, fraction, seed):
        try:
            return D.make_split(parts, kind, fraction, seed=seed)
        except DatasetError as exc:
            per_class = Counter()
            for label, group in {(s.label, s.group) for s in samples}:
                per_class[label] += 1
            raise DatasetError(
                f"{exc} (while splitting off {what}). The data has {min(per_class.values())} to "
                f"{max(per_class.values())} groups per class; grouped train / val / test splits need at least 3 "
                "groups (acquisition batches) per class, 4 with --grouped-holdout: use --split random, or no "
                "--grouped-holdout") from None

    if cfg.data.grouped_holdout:
        held = split("the held-out batches (--grouped-holdout)", rest, "grouped", cfg.data.grouped_holdout, seed + 100)
        rest, grouped_test = held.train, held.test
    test_split = split("test", rest, cfg.data.split, cfg.data.test_fraction, seed)
    val_share = cfg.data.val_fraction / (1.0 - cfg.data.test_fraction)
    val_split = split("val", test_split.train, cfg.data.split, val_share, seed + 1)
    train = val_split.train
    if cfg.data.subsample < 1.0:
        train = D.subsample(train, cfg.data.subsample, seed=seed)
    # Compact tables from here on: the lists and Sample objects of the splitting go when this returns.
    splits = Splits(*(D.SampleTable(part) for part in (train, val_split.test, test_split.test, grouped_test)))
    for name, part in splits.parts().items():
        log.info("%s: %d images, %d groups", name, len(part), len({s.group for s in part}))
    return splits


def write_manifest(path: Path, parts: dict[str, list], cfg: RunConfig, *, warn_copies: bool = True) -> str:
    """The split manifest of a run (:func:`nscfate.data.write_manifest_file`: subset, label, group and
    file SHA-256 per image), with four subsets: train, val, test, grouped_test. Returns the manifest hash."""
    from nscfate import data as D

    return D.write_manifest_file(path, parts, {
        "kind": cfg.data.split, "seed": cfg.data.seed, "test_fraction": cfg.data.test_fraction,
        "val_fraction": cfg.data.val_fraction, "grouped_holdout": cfg.data.grouped_holdout,
        "subsample": cfg.data.subsample}, warn_copies=warn_copies)


def read_manifest(path: str | Path, subset: str, *, verify: bool = True) -> list:
    """The samples of one subset (train, val, test, grouped_test) of a run's split manifest
    (:func:`nscfate.data.read_manifest_file`: hash checked; with ``verify`` every file of the subset
    must still have its recorded SHA-256)."""
    from nscfate import data as D

    doc, parts = D.read_manifest_file(path, [subset], verify=verify)
    if not parts.get(subset):
        known = sorted({str(e.get("subset")) for e in doc["samples"] if isinstance(e, dict)})
        raise DatasetError(f"{path} has no {subset!r} images; subsets: {', '.join(known)}")
    return parts[subset]


def _run_split(run: Path, splits: Splits, cfg: RunConfig) -> str:
    """Write the run's split manifest, or keep the one an earlier session trained on; returns its hash.

    Once an epoch has run, the current data must give exactly the recorded split (the manifest hash
    covers subset, label, group and file SHA-256 of every image, so an equal hash means the same images
    in every subset): the run then resumes on it and ``split.json`` is left as it is. Otherwise (files
    added, removed or changed; or a split that comes out differently) a :class:`DatasetError` says what
    changed: a new random split would move images the run has trained on into val/test. Before any
    epoch has run there is nothing to leak, and the current split replaces the recorded one.

    The check hashes every file once, as writing the manifest always has, into a streamed temporary
    manifest; only the refusal reads both manifests to count the differences. Copies of one picture in
    two subsets are warned about only for the split the run goes on with, not for one it refuses."""
    from nscfate import data as D

    path = run / SPLIT_FILE
    if not path.is_file() or not _started(run):
        return write_manifest(path, splits.parts(), cfg)
    fresh = run / f"{SPLIT_FILE}.new"
    try:
        digest = write_manifest(fresh, splits.parts(), cfg, warn_copies=False)
        if digest != _recorded_manifest_hash(path):
            raise DatasetError(_split_changed(path, fresh, cfg))
    finally:
        fresh.unlink(missing_ok=True)
    log.info("the data split as this run's %s says: resuming on it", SPLIT_FILE)
    D.warn_copies_across_subsets(path)
    return digest


def _recorded_manifest_hash(path: Path) -> str | None:
    """The ``manifest_sha256`` a manifest records: written last, so read from the file's end (a large
    manifest is not parsed whole); the whole file only if the end does not hold it."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 512))
            tail = f.read().decode("utf-8", "replace")
        found = re.search(r'"manifest_sha256":\s*"([0-9a-f]{64})"\s*}\s*$', tail)
        if found:
            return found.group(1)
        return json.loads(path.read_text(encoding="utf-8")).get("manifest_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _manifest_entries(path: Path) -> dict[str, tuple]:
    """path -> (subset, label, group, sha256) of a manifest's images (both manifests compared lie in
    the run folder, so their stored paths compare as they are)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {e["path"]: (e["subset"], e["label"], e["group"], e["sha256"]) for e in doc["samples"]}


def _split_changed(recorded: Path, fresh: Path, cfg: RunConfig) -> str:
    """The message refusing to resume a run whose data no longer give its split."""
    what = f"the data in {cfg.data.path} no longer give this run's split ({recorded})"
    try:
        old, new = _manifest_entries(recorded), _manifest_entries(fresh)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        old = new = None
    if old is not None and new is not None:
        added = sum(1 for p in new if p not in old)
        removed = sum(1 for p in old if p not in new)
        both = [p for p in new if p in old]
        changed = sum(1 for p in both if new[p][1:] != old[p][1:])
        moved = sum(1 for p in both if new[p][1:] == old[p][1:] and new[p][0] != old[p][0])
        what += f": {added} file(s) added, {removed} removed, {changed} changed"
        if moved:
            what += f", and {moved} unchanged image(s) would move between train/val/test"
        if not (added or removed or changed or moved):
            what += " (the manifest was edited)"
    return (f"{what}. A resumed run keeps its split, so that no image it trained on lands in val or test: "
            "put the data back as it was to resume, or run again with --restart to train from scratch on "
            "the current data (or choose another --run-dir)")


def _dataset(samples: Sequence, cfg: RunConfig, classes: Sequence[str], *, training: bool):
    """A batched ``tf.data`` stream of (prepared image, label) for ``samples`` (``nscfate.pipeline``)."""
    import tensorflow as tf

    from nscfate.pipeline import make_dataset

    augment = _augment_fn(cfg.model.input_size) if training and cfg.data.augment else None
    ds = make_dataset(samples, classes, input_size=cfg.model.input_size, batch_size=cfg.train.batch_size,
                      shuffle=training, shuffle_buffer=cfg.data.shuffle_buffer, seed=cfg.train.seed,
                      repeat=training, augment=augment)
    if cfg.train.label_smoothing:
        n = len(classes)
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, n)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds


def _augment_fn(input_size: tuple[int, int]):
    import tensorflow as tf

    square = input_size[0] == input_size[1]

    def augment(x, y):
        x = tf.image.random_flip_left_right(x)
        x = tf.image.random_flip_up_down(x)
        if square:
            x = tf.image.rot90(x, tf.random.uniform([], 0, 4, dtype=tf.int32))
        return x, y

    return augment


def class_weights(samples: Sequence, classes: Sequence[str]) -> dict[int, float]:
    """Balanced weights ``n / (k * n_c)`` (sklearn's 'balanced'); absent classes get weight 0."""
    per_label = Counter(s.label for s in samples)
    counts = np.array([per_label[c] for c in classes], dtype=np.float64)
    total, k = counts.sum(), len(classes)
    return {i: float(total / (k * c)) if c else 0.0 for i, c in enumerate(counts)}


# ------------------------------------------------------------------------------------ model

def _strategy_and_precision(cfg: RunConfig):
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    strategy = (tf.distribute.MirroredStrategy() if gpus and cfg.train.distribute == "auto"
                else tf.distribute.get_strategy())
    mixed = cfg.train.mixed_precision == "on" or (cfg.train.mixed_precision == "auto" and bool(gpus))
    log.info("devices: %d GPU(s); strategy %s; mixed precision %s", len(gpus), type(strategy).__name__,
             "on" if mixed else "off")
    return strategy, mixed


def _optimizer(cfg: RunConfig, steps_per_epoch: int):
    import keras

    t = cfg.train
    total = max(1, t.epochs * steps_per_epoch)
    warmup = min(total - 1, t.warmup_epochs * steps_per_epoch)
    if t.schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=t.learning_rate * (0.1 if warmup else 1.0), decay_steps=total - warmup,
            alpha=0.01, warmup_target=t.learning_rate if warmup else None, warmup_steps=warmup)
    else:
        lr = t.learning_rate
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9, nesterov=True, weight_decay=t.weight_decay or None)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=t.weight_decay)


class _ProgressLog:
    """Per-epoch log lines (+ a tqdm bar per epoch on a terminal)."""

    def __new__(cls, steps_per_epoch: int, epochs: int):
        import keras

        class ProgressLog(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()
                self.bar = None
                if sys.stderr.isatty():
                    from tqdm import tqdm

                    self.bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                                    leave=False)

            def on_train_batch_end(self, batch, logs=None):
                if self.bar is not None:
                    self.bar.update(1)
                    if logs:
                        self.bar.set_postfix(loss=f"{logs.get('loss', 0):.3f}", acc=f"{logs.get('accuracy', 0):.3f}")

            def on_epoch_end(self, epoch, logs=None):
                if self.bar is not None:
                    self.bar.close()
                logs = logs or {}
                secs = time.perf_counter() - self.t0
                log.info("epoch %d/%d: %s (%.0f s)", epoch + 1, epochs,
                         ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float))), secs)

        return ProgressLog()


def _best_so_far(run: Path) -> float | None:
    """Best monitored value in an existing history.csv (so a resumed run does not overwrite a better
    checkpoint)."""
    values = [r[MONITOR] for r in history(run) if _finite(r.get(MONITOR))]
    return max(values) if values else None


def _early_stopping(run: Path, patience: int):
    """Early stopping on validation accuracy that counts the epochs of the run's earlier sessions (its
    history.csv): a resumed run stops where an uninterrupted one would, instead of granting its patience
    afresh after every restart."""
    import keras

    min_delta = 1e-3

    class ResumedEarlyStopping(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            best, best_epoch = None, None
            values = [r.get(MONITOR) for r in history(run)]
            for epoch, value in enumerate(values):
                if _finite(value) and (best is None or value - min_delta > best):
                    best, best_epoch = value, epoch
            if best is not None:  # as EarlyStopping would stand after those epochs
                self.best, self.best_epoch, self.wait = best, best_epoch, len(values) - 1 - best_epoch

    return ResumedEarlyStopping(monitor=MONITOR, mode="max", min_delta=min_delta, patience=patience)


def _started(run: Path) -> bool:
    """Whether an epoch of the run has finished in some session (history, backup or best weights)."""
    return bool(history(run)) or (run / BACKUP_DIR).exists() or (run / BEST_WEIGHTS).is_file()


def _fit_ended(run: Path) -> bool:
    """Whether the run's fit ended in an earlier session: epochs in its history and no backup left
    (``BackupAndRestore`` deletes it when ``fit`` returns, early stopping included; a session stopped
    by a crash or Ctrl-C leaves it, and the run resumes from it)."""
    return bool(history(run)) and not (run / BACKUP_DIR).exists()


def _within(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or inside it."""
    return a == b or b in a.parents


def _check_paths(cfg: RunConfig, *, restart: bool, overwrite: bool) -> None:
    """Refuse, before anything is read or written, what would delete what is not ours: ``--restart``
    and ``--overwrite`` remove a whole folder, so it must be a run folder or a model directory (or
    empty), and the data, the run folder and the model directory must not contain one another."""
    data, run, out = (Path(p).resolve() for p in (cfg.data.path, cfg.run_path, cfg.out))
    if _within(out, run) or _within(run, out):
        raise ConfigError(f"the model directory {cfg.out} and the run folder {cfg.run_path} must be separate folders")
    for name, folder in (("run folder", run), ("model directory", out)):
        if _within(data, folder) or (data.is_dir() and _within(folder, data)):
            raise ConfigError(f"the {name} {folder} and the data {cfg.data.path} must not contain one another")
    for flag, folder, marker, what in (("--restart", run, CONFIG_FILE, "a run folder of nscfate train"),
                                       ("--overwrite", out, "metadata.json", "a model directory")):
        if (restart if flag == "--restart" else overwrite) and folder.is_dir() and any(folder.iterdir()) \
                and not (folder / marker).is_file():
            raise ConfigError(f"{flag} would delete {folder}, which is not {what} (no {marker}); "
                              "not deleting it: choose another folder")


def _config_changes(previous: RunConfig, cfg: RunConfig) -> list[str]:
    """The settings that differ, as "key: old -> new". Paths count as the same folder however they are
    spelled ("data/" and "data"; a run saved before data paths were made absolute, from the same folder)."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    before, now = flat(previous.to_dict()), flat(cfg.to_dict())
    changes = []
    for key in sorted(before.keys() | now.keys()):
        a, b = before.get(key), now.get(key)
        if key in ("data.path", "out", "run_dir") and a and b and Path(a).resolve() == Path(b).resolve():
            continue
        if a != b:
            changes.append(f"{key}: {a!r} -> {b!r}")
    return changes


def _check_run_dir(cfg: RunConfig, restart: bool) -> Path:
    """Create the run folder, or keep it when it holds the same config (to resume or re-export it)."""
    run = cfg.run_path
    saved = run / CONFIG_FILE
    if run.exists() and restart:
        shutil.rmtree(run)
    if saved.is_file():
        from nscfate.config import load_config

        changes = _config_changes(load_config(saved), cfg)
        if changes:
            raise ConfigError(f"run folder {run} holds a different config ({'; '.join(changes)}); run again with "
                              "the same settings to resume it, with --restart to start over, or choose another "
                              "--run-dir")
    run.mkdir(parents=True, exist_ok=True)
    saved.write_text(cfg.to_yaml(), encoding="utf-8")
    return run


# ------------------------------------------------------------------------------------ train

def train(cfg: RunConfig, *, restart: bool = False, overwrite: bool = False, command: str | None = None,
          extra_callbacks: Sequence = ()) -> TrainResult:
    """Train and export a model directory as described in the module docstring.

    Args:
        cfg: the validated run config.
        restart: discard an existing run folder (its split, history and weights) and train from scratch,
            instead of resuming it (or, when its training has ended, exporting its best weights again).
        overwrite: replace an existing model directory at ``cfg.out``; it does not change what happens
            in the run folder.
        command: the command line that started the run (recorded in the model card).
        extra_callbacks: more Keras callbacks for ``fit``.
    """
    import keras

    from nscfate.architectures import build_model
    from nscfate.classes import get_task
    from nscfate.memory import pin_malloc_thresholds

    pin_malloc_thresholds()  # RSS flat through long passes, whatever the dataset's size
    # The data's folder as an absolute path: the same whatever the folder a session starts in, also in
    # the model's metadata (``nscfate evaluate`` compares it to the data it is given).
    cfg = replace(cfg, data=replace(cfg.data, path=str(Path(cfg.data.path).resolve())))
    _check_paths(cfg, restart=restart, overwrite=overwrite)
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite")
    classes = get_task(cfg.task).classes
    splits = load_splits(cfg)  # bad data fails here, before anything is written
    if not splits.train or not splits.val:
        raise DatasetError("the split left no training or no validation images; add images or change fractions")
    missing = [c for c in classes if not any(s.label == c for s in splits.train)]
    if missing:
        raise DatasetError(f"no training images of class(es) {', '.join(missing)} in {cfg.data.path}")
    run = _check_run_dir(cfg, restart)
    manifest_hash = _run_split(run, splits, cfg)
    rows = history(run)
    ended = _fit_ended(run)
    if ended and not (run / BEST_WEIGHTS).is_file():
        raise ConfigError(f"the run in {run} finished training but kept no best weights ({BEST_WEIGHTS}: no epoch "
                          "had a finite validation accuracy); run again with --restart to train it from scratch")
    file_log = logging.FileHandler(run / "train.log")
    file_log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("nscfate").addHandler(file_log)
    old_policy = keras.config.dtype_policy()
    try:
        if ended:
            log.info("the run in %s finished training in an earlier session (%d epochs): exporting its best "
                     "weights without training; run again with --restart to train it from scratch", run, len(rows))
        elif rows:
            log.info("resuming the run in %s after epoch %d", run, len(rows))
        keras.utils.set_random_seed(cfg.train.seed)
        steps = cfg.train.steps_per_epoch or math.ceil(len(splits.train) / cfg.train.batch_size)
        strategy, mixed = _strategy_and_precision(cfg)
        if mixed:
            keras.config.set_dtype_policy("mixed_float16")
        with strategy.scope():
            model = build_model(cfg.model.arch, len(classes), cfg.model.input_size, cfg.model.pretrained,
                                dropout=cfg.model.dropout)
            if not ended:  # (an ended run only loads its best weights: no optimizer state to restore)
                loss = (keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)
                        if cfg.train.label_smoothing else keras.losses.SparseCategoricalCrossentropy())
                model.compile(optimizer=_optimizer(cfg, steps), loss=loss, metrics=["accuracy"])
        log.info("model %s: %s parameters, input %s", cfg.model.arch, f"{model.count_params():,}", cfg.model.input_size)

        train_seconds = 0.0
        if not ended:
            train_seconds = _fit(model, run, splits, cfg, classes, steps, extra_callbacks)
        if (run / BEST_WEIGHTS).is_file():
            model.load_weights(run / BEST_WEIGHTS)

        metrics, predictions = evaluate_splits(model, splits, cfg, classes)
        metrics["training"] = _training_summary(run, train_seconds, steps, cfg, len(rows))
        info = export(model, cfg, splits, metrics, manifest_hash, overwrite=overwrite, command=command,
                      predictions=predictions)
        log.info("exported %s@%s to %s: test accuracy %s", info.name, info.version, out,
                 _fmt(metrics.get("test", {}).get("accuracy")))
        return TrainResult(model_dir=out, run_dir=run, metrics=metrics)
    finally:
        keras.config.set_dtype_policy(old_policy)
        logging.getLogger("nscfate").removeHandler(file_log)
        file_log.close()


def _fit(model, run: Path, splits: Splits, cfg: RunConfig, classes: Sequence[str], steps: int,
         extra_callbacks: Sequence = ()) -> float:
    """Fit ``model`` with the run folder's checkpoints (resuming from its backup); returns the seconds."""
    import keras

    train_ds = _dataset(splits.train, cfg, classes, training=True)
    val_ds = _dataset(splits.val, cfg, classes, training=False)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(run / BACKUP_DIR)),
        keras.callbacks.ModelCheckpoint(str(run / BEST_WEIGHTS), monitor=MONITOR, mode="max",
                                        save_best_only=True, save_weights_only=True,
                                        initial_value_threshold=_best_so_far(run)),
        keras.callbacks.CSVLogger(str(run / HISTORY_FILE), append=True),
        _ProgressLog(steps, cfg.train.epochs),
        *extra_callbacks,
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(_early_stopping(run, cfg.train.early_stopping_patience))
    weights = class_weights(splits.train, classes) if cfg.train.class_weights == "balanced" else None
    t0 = time.perf_counter()
    # validation_steps: without it Keras counts the validation batches on the first pass and warns
    # "Your input ran out of data" in every run's log when the pass ends
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs, steps_per_epoch=steps,
              validation_steps=math.ceil(len(splits.val) / cfg.train.batch_size),
              class_weight=weights, callbacks=callbacks, shuffle=False, verbose=0)  # the pipeline shuffles
    return time.perf_counter() - t0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _training_summary(run: Path, seconds: float, steps: int, cfg: RunConfig, epochs_before: int = 0) -> dict[str, Any]:
    rows = history(run)
    best = max((r for r in rows if _finite(r.get(MONITOR))), key=lambda r: r[MONITOR], default=None)
    epochs_now = len(rows) - epochs_before
    return {
        "epochs_run": len(rows),
        "epochs_this_session": epochs_now,
        "best_epoch": int(best["epoch"]) + 1 if best else None,
        "best_val_accuracy": best[MONITOR] if best else None,
        "seconds_this_session": round(seconds, 1),
        # training and validation passes of this session's epochs only
        "train_images_per_second": round(steps * cfg.train.batch_size * epochs_now / max(seconds, 1e-9), 1)
        if epochs_now > 0 else None,
    }


def predict_dataset(model, samples: Sequence, cfg: RunConfig, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of ``samples`` through the pipeline without shuffling or augmentation.
    Labels come with the images, so an unreadable image the pipeline skips cannot misalign them.

    The one place a model runs outside :class:`~nscfate.Predictor`: the model is not exported yet (a
    Predictor loads a model directory). The images go through the same ``load_prepared``; the exported
    directory's golden pair then pins the Predictor's output, and ``nscfate evaluate`` uses the Predictor."""
    import tensorflow as tf

    from nscfate.pipeline import make_dataset

    if not samples:
        return np.zeros(0, np.int64), np.zeros((0, len(classes)), np.float32)
    ds = make_dataset(samples, classes, input_size=cfg.model.input_size, batch_size=cfg.train.batch_size,
                      shuffle=False, repeat=False)
    infer = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    labels, probs = [], []
    for x, y in ds:
        probs.append(np.asarray(infer(x), dtype=np.float32))
        labels.append(np.asarray(y, dtype=np.int64))
    return np.concatenate(labels), np.concatenate(probs)


def evaluate_splits(model, splits: Splits, cfg: RunConfig, classes: Sequence[str]
                    ) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Held-out metrics (``nscfate.metrics.summarize``) for val, test and grouped_test, and the
    (labels, probabilities) they came from (for the card's plots)."""
    from nscfate.metrics import summarize

    out: dict[str, Any] = {}
    predictions = {}
    for name in ("val", "test", "grouped_test"):
        samples = getattr(splits, name)
        if samples:
            labels, probs = predictions[name] = predict_dataset(model, samples, cfg, classes)
            out[name] = summarize(labels, probs, classes, n_boot=cfg.train.eval_bootstrap, seed=cfg.data.seed)
            if len(labels) < len(samples):  # the pipeline skips an unreadable file; the metrics say how many
                out[name]["refused"] = len(samples) - len(labels)
                log.warning("%s: %d of %d images could not be read and are not in its metrics", name,
                            out[name]["refused"], len(samples))
            log.info("%s accuracy %.4f (n=%d)", name, out[name]["accuracy"], len(labels))
    return out, predictions


def _is_synthetic(cfg: RunConfig, samples: Sequence = ()) -> bool:
    """``export.synthetic`` if set, else whether a ``synth.json`` (which ``nscfate synth`` writes beside
    its images) is in the data folder or the one above, or, for a CSV that lists images elsewhere, in
    the folders of its first image or the two above (``<root>/<class>/<file>``)."""
    if cfg.export.synthetic is not None:
        return cfg.export.synthetic
    path = Path(cfg.data.path)
    places = [path, path.parent]
    if samples:
        first = Path(samples[0].path).parent
        places += [first, first.parent, first.parent.parent]
    return any((p / "synth.json").is_file() for p in places)


def export(model, cfg: RunConfig, splits: Splits, metrics: dict, manifest_sha256: str, *, overwrite: bool,
           command: str | None, predictions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
    """Write the model directory for a trained model (with the card's plots of ``predictions``)."""
    from nscfate import data as D
    from nscfate.classes import get_task
    from nscfate.evaluation import card_plots
    from nscfate.modeldir import save_model_dir
    from nscfate.preprocessing import load_prepared

    task = get_task(cfg.task)
    golden = []
    for sample in (splits.test or splits.val):  # the first readable ones: a broken file must not block export
        try:
            golden.append(load_prepared(sample.path, cfg.model.input_size))
        except ImageError as exc:
            log.warning("not a golden input: %s", exc)
        if len(golden) == GOLDEN_COUNT:
            break
    if not golden:
        raise DatasetError("no held-out image could be read for the model's golden input/output pair")
    golden = np.stack(golden)
    every = [s for part in splits.parts().values() for s in part]
    synthetic = _is_synthetic(cfg, every)
    unbatched = D.classes_without_batches(every)
    batches = len(unbatched) < len({s.label for s in every})  # some classes come in acquisition batches
    description = cfg.export.description or (
        f"{'synthetic ' if synthetic else ''}images of {Path(cfg.data.path).name} "
        f"({len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test"
        + (f" / {len(splits.grouped_test)} " + ("in held-out acquisition batches" if batches else
                                                  "held out as grouped_test (no batch in the names)")
           if splits.grouped_test else "") + ")")
    training_data = {
        "description": description,
        "synthetic": synthetic,
        "path": str(cfg.data.path),
        "manifest_sha256": manifest_sha256,
        "split": cfg.data.split,
        "groups": "acquisition batches" if batches else "single images (the names carry no batch)",
        "unbatched_classes": unbatched if batches else [],  # held out as single images next to batches
        "num_train": len(splits.train), "num_val": len(splits.val), "num_test": len(splits.test),
        "num_grouped_test": len(splits.grouped_test),
    }
    return save_model_dir(
        cfg.out, model, name=cfg.model_name, version=cfg.export.version, task=cfg.task, arch=cfg.model.arch,
        golden_input=golden, config=cfg.to_dict(), metrics=metrics, training_data=training_data,
        reproduce_command=command, notes=cfg.export.notes, weights_dtype=cfg.export.weights_dtype,
        plots=card_plots(predictions or {}, task.classes, task.display_names),
        overwrite=overwrite,
    )


def history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch history of a run folder ([] before its first epoch)."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _history_value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _history_value(text: str | None) -> Any:
    """A history.csv cell: Keras's CSVLogger writes numbers, ``nan`` for a diverged loss, ``NA`` for a
    missing value."""
    if text in (None, "", "NA"):
        return None
    try:
        return json.loads(text)
    except ValueError:
        try:
            return float(text)  # nan, inf
        except ValueError:
            return text
