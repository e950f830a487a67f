"""Streaming ``tf.data`` input pipelines and TFRecord shards.

The training path decodes and prepares images with exactly the functions serving uses
(:func:`nscfate.io.decode_image` then :func:`nscfate.preprocessing.prepare_image`), called through
``tf.numpy_function`` in parallel map workers. TensorFlow streams sample indices (the whole set is
shuffled every epoch through a keyed permutation, with no shuffle buffer) and the file paths stay in
the caller's samples (a compact :class:`~nscfate.data.SampleTable` in training); images stream through
the parallel map and a bounded prefetch queue, so the pixels in memory do not grow with the dataset
(the index of paths and labels does, by about 100 bytes per image).

TFRecord shards (:func:`write_tfrecord_shards`) store either the raw file bytes (decoded and prepared
when read, through the same two functions) or the prepared float32 arrays (fixed input size, no
decoding when read). Reading uses one file per shard, so ``tf.distribute`` can auto-shard by file
across workers, or pass ``num_workers``/``worker_index`` to shard explicitly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from nscfate.data import Sample, label_indices
from nscfate.errors import DatasetError, ImageError
from nscfate.io import DEFAULT_LIMITS, DecodeLimits
from nscfate.preprocessing import DEFAULT_INPUT_SIZE, load_prepared

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
SHARD_MODES = ("raw", "prepared")
SHARD_INDEX = "shards.json"


def _map_load(ds: tf.data.Dataset, input_size: tuple[int, int], limits: DecodeLimits, skip_bad: bool, *,
              samples: Sequence[Sample] | None = None) -> tf.data.Dataset:
    """Map ``(x, label)`` to ``(prepared image, label)`` in parallel workers, dropping (and logging)
    unreadable images when ``skip_bad``. ``x`` is an index into ``samples`` (image files), or with no
    ``samples`` the encoded image bytes (shard records)."""
    h, w = input_size

    def load(x) -> tuple[np.ndarray, bool]:
        source = samples[int(x)].path if samples is not None else bytes(x)
        try:
            return load_prepared(source, input_size, limits), np.bool_(True)
        except ImageError as exc:
            if not skip_bad:
                raise
            log.warning("skipping unreadable image %s: %s", source if samples is not None else "(shard record)", exc)
            return np.zeros((h, w, 1), np.float32), np.bool_(False)

    def tf_load(x, y):
        image, ok = tf.numpy_function(load, [x], (tf.float32, tf.bool), stateful=False)
        image.set_shape((h, w, 1))
        ok.set_shape(())
        return image, y, ok

    ds = ds.map(tf_load, num_parallel_calls=AUTOTUNE)
    # Named functions: AutoGraph cannot read the source of two lambdas on one line and warns.
    def is_ok(image, y, ok):
        return ok

    def drop_flag(image, y, ok):
        return image, y

    return ds.filter(is_ok).map(drop_flag)


def _permuted_range(n: int, seed: int) -> tf.data.Dataset:
    """0 .. n-1 in a random order, a new one every iteration (and every repeat), reproducible from
    ``seed``. Each position goes through a keyed permutation (``tf.random.experimental.index_shuffle``),
    so nothing holds the n indices: ``tf.data``'s ``shuffle(n)`` keeps one tensor per element (~170
    bytes each, 70 MB for a 420,000-image training split)."""
    key = tf.constant(seed, tf.int64)

    def one_order(draw):
        pair = tf.stack([draw, key])

        def permute(i):
            return tf.random.experimental.index_shuffle(i, pair, n - 1)

        return tf.data.Dataset.range(n).map(permute)

    # one random draw per iteration picks that iteration's permutation
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1).flat_map(one_order)


def _finish(ds: tf.data.Dataset, batch_size: int, augment: Callable | None, drop_remainder: bool) -> tf.data.Dataset:
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def make_dataset(
    samples: Sequence[Sample],
    classes: Sequence[str],
    *,
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    batch_size: int = 32,
    shuffle: bool = True,
    shuffle_buffer: int = 0,
    seed: int = 0,
    repeat: bool = False,
    augment: Callable | None = None,
    skip_bad: bool = True,
    drop_remainder: bool = False,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> tf.data.Dataset:
    """Batches ``(images float32 (B, h, w, 1), labels int32 (B,))`` streamed from image files.

    The stream carries sample indices, not paths: the file names stay in the samples the caller
    already holds, TensorFlow streams indices (the whole-set shuffle is a keyed permutation, no
    buffer), and each parallel map call looks its file up. So the whole dataset is shuffled every epoch
    at no memory cost.

    Args:
        samples: what to read (``nscfate.data.read_dataset`` or a split).
        classes: ordered class names; labels become indices into it.
        input_size: model input (height, width).
        shuffle, shuffle_buffer, seed: shuffle the file order, reshuffled every epoch, reproducibly from
            ``seed``; ``shuffle_buffer`` 0 (default) shuffles the whole set, ``k`` draws from a window of
            ``k`` files.
        repeat: loop forever (for ``steps_per_epoch`` training).
        augment: optional ``fn(image, label) -> (image, label)`` applied per image before batching.
        skip_bad: drop images that fail to decode (logged) instead of failing the run.
        limits: decode limits.
    """
    if not samples:
        raise DatasetError("no samples to build a pipeline from")
    labels = tf.constant(label_indices(samples, classes))
    n = len(samples)
    ds = tf.data.Dataset.range(n)
    if shuffle:
        if shuffle_buffer <= 0:
            ds = _permuted_range(n, seed)
        else:
            ds = ds.shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def with_label(i):
        return i, tf.gather(labels, i)

    ds = ds.map(with_label)
    ds = _map_load(ds, input_size, limits, skip_bad, samples=samples)
    return _finish(ds, batch_size, augment, drop_remainder)


# ------------------------------------------------------------------------------------------------
# TFRecord shards


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(values: Sequence[int]) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def write_tfrecord_shards(
    samples: Sequence[Sample],
    out_dir: str | Path,
    classes: Sequence[str],
    *,
    mode: str = "raw",
    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
    shard_size: int = 4096,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> list[Path]:
    """Write ``samples`` to ``out_dir/shard-00000-of-NNNNN.tfrecord`` files plus ``shards.json``.

    ``mode="raw"`` stores each file's bytes (decoded and prepared when read); ``mode="prepared"``
    stores the prepared (h, w, 1) float32 array for ``input_size``. Unreadable images raise
    :class:`~nscfate.errors.ImageError` in prepared mode, before anything is written; shards are
    written to temporary names and renamed when complete.
    """
    if mode not in SHARD_MODES:
        raise DatasetError(f"shard mode must be one of {', '.join(SHARD_MODES)}, got {mode!r}")
    if shard_size < 1:
        raise DatasetError("shard_size must be positive")
    labels = label_indices(samples, classes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(samples) // shard_size))
    paths, counts = [], []
    for k in range(n_shards):
        final = out / f"shard-{k:05d}-of-{n_shards:05d}.tfrecord"
        tmp = final.with_suffix(".tmp")
        chunk = range(k * shard_size, min((k + 1) * shard_size, len(samples)))
        try:
            with tf.io.TFRecordWriter(str(tmp)) as writer:
                for i in chunk:
                    s = samples[i]
                    if mode == "raw":
                        with open(s.path, "rb") as fh:
                            payload = fh.read()
                    else:
                        payload = load_prepared(s.path, input_size, limits).astype("<f4").tobytes()
                    example = tf.train.Example(features=tf.train.Features(feature={
                        "data": _bytes_feature(payload),
                        "label": _int_feature([int(labels[i])]),
                        "group": _bytes_feature(s.group.encode()),
                        "path": _bytes_feature(s.path.encode()),
                    }))
                    writer.write(example.SerializeToString())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(final)
        paths.append(final)
        counts.append(len(chunk))
    index = {"mode": mode, "classes": list(classes), "input_size": list(input_size), "count": len(samples),
             "shards": [{"file": p.name, "count": c} for p, c in zip(paths, counts)]}
    (out / SHARD_INDEX).write_text(json.dumps(index, indent=1) + "\n")
    log.info("wrote %d %s records in %d shard(s) to %s", len(samples), mode, n_shards, out)
    return paths


def read_shard_index(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / SHARD_INDEX
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a shard index written by write_tfrecord_shards ({exc})") from None


def make_tfrecord_dataset(
    shard_dir: str | Path,
    classes: Sequence[str] | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    batch_size: int = 32,
    shuffle: bool = True,
    shuffle_buffer: int = 2048,
    seed: int = 0,
    repeat: bool = False,
    augment: Callable | None = None,
    num_workers: int = 1,
    worker_index: int = 0,
    skip_bad: bool = True,
    drop_remainder: bool = False,
    limits: DecodeLimits = DEFAULT_LIMITS,
) -> tf.data.Dataset:
    """Batches ``(images, labels)`` read from shards written by :func:`write_tfrecord_shards`.

    ``classes``: the model's class order; the shards store label indices, so shards written for another
    order are refused instead of silently mislabelled (``None``: the order the shards record). ``input_size`` defaults to the one recorded for prepared shards (and must match it); raw shards
    need it (or use the default model input). ``num_workers``/``worker_index`` give this worker every
    ``num_workers``-th shard.
    """
    index = read_shard_index(shard_dir)
    if classes is not None and list(classes) != index["classes"]:
        raise DatasetError(f"{shard_dir}: the shards label classes in the order {index['classes']}, not "
                           f"{list(classes)}; write them again for this model's classes")
    mode = index["mode"]
    recorded = tuple(index["input_size"])
    if mode == "prepared":
        if input_size is not None and tuple(input_size) != recorded:
            raise DatasetError(f"shards hold images prepared at {recorded}, not {tuple(input_size)}")
        input_size = recorded
    input_size = tuple(input_size or DEFAULT_INPUT_SIZE)
    files = [str(Path(shard_dir) / s["file"]) for s in index["shards"]]
    if not 0 <= worker_index < num_workers:
        raise DatasetError(f"worker_index {worker_index} is not in 0..{num_workers - 1}")
    files = files[worker_index::num_workers]
    if not files:
        raise DatasetError(f"{shard_dir}: {len(index['shards'])} shard(s) cannot feed {num_workers} workers")
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # shuffled: read several shards at once; in order: one after the other, so records keep their order
    cycle = min(len(files), 4) if shuffle else 1
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=AUTOTUNE)
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    spec = {"data": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    parsed = ds.map(lambda r: tf.io.parse_single_example(r, spec), num_parallel_calls=AUTOTUNE)
    h, w = input_size
    if mode == "prepared":
        def unpack(e):
            image = tf.reshape(tf.io.decode_raw(e["data"], tf.float32, little_endian=True), (h, w, 1))
            return image, tf.cast(e["label"], tf.int32)

        images = parsed.map(unpack, num_parallel_calls=AUTOTUNE)
    else:
        pairs = parsed.map(lambda e: (e["data"], tf.cast(e["label"], tf.int32)))
        images = _map_load(pairs, input_size, limits, skip_bad)
    return _finish(images, batch_size, augment, drop_remainder)

