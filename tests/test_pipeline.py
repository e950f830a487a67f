"""The tf.data pipeline yields exactly what serving computes (decode_image -> prepare_image), from
files and from TFRecord shards."""

import numpy as np
import pytest

from nscfate import errors
from nscfate.data import Sample
from nscfate.io import decode_image
from nscfate.preprocessing import load_prepared, prepare_image
from tests.imagegen import cell_array, cv2_png, pil_bytes, tiff_bytes

tf = pytest.importorskip("tensorflow")
from nscfate.pipeline import (  # noqa: E402
    make_dataset,
    make_tfrecord_dataset,
    read_shard_index,
    write_tfrecord_shards,
)

CLASSES = ("astro", "oligo", "rashh", "nt3")
SIZE = (45, 60)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    encoders = [lambda a: tiff_bytes(a), lambda a: cv2_png(a), lambda a: pil_bytes(a, "BMP")]
    samples = []
    for i in range(10):
        arr = cell_array(h=37 + 2 * i, w=60, dtype=np.uint16 if i % 3 == 1 else np.uint8, seed=i)
        ext = ("tif", "png", "bmp")[i % 3]
        if ext == "bmp" and arr.dtype != np.uint8:
            arr = (arr // 257).astype(np.uint8)
        path = root / f"cell{i}.{ext}"
        path.write_bytes(encoders[i % 3](arr))
        samples.append(Sample(str(path), CLASSES[i % 4], f"g{i % 2}", None))
    return samples


def _serving(path):
    return prepare_image(decode_image(path).pixels, SIZE)


def _collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def test_pipeline_equals_serving_path(files):
    images, labels = _collect(make_dataset(files, CLASSES, input_size=SIZE, batch_size=4, shuffle=False))
    assert images.shape == (10, *SIZE, 1) and images.dtype == np.float32
    for s, image, label in zip(files, images, labels):
        np.testing.assert_array_equal(image, _serving(s.path))  # bit-identical, not just close
        assert CLASSES[label] == s.label
    np.testing.assert_array_equal(load_prepared(files[0].path, SIZE), _serving(files[0].path))


def test_shuffle_is_seeded_and_complete(files):
    def order(seed):
        return _collect(make_dataset(files, CLASSES, input_size=SIZE, batch_size=3, seed=seed))[0][:, 20, 30, 0]

    a, b, c = order(1), order(1), order(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert sorted(a.tolist()) == sorted(c.tolist())  # same images, other order


def test_every_epoch_is_a_new_complete_permutation():
    """The whole-set shuffle (no buffer: a keyed permutation per iteration) visits every index once per
    pass, in a new order each pass, repeated or not."""
    from nscfate.pipeline import _permuted_range

    ds = _permuted_range(50, seed=4)
    first, second = [int(i) for i in ds], [int(i) for i in ds]
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    passes = np.array([int(i) for i in ds.repeat(3)]).reshape(3, 50)
    assert all(sorted(p.tolist()) == list(range(50)) for p in passes) and len({tuple(p) for p in passes}) == 3
    assert [int(i) for i in _permuted_range(50, seed=4)] == first  # reproducible from the seed
    assert [int(i) for i in _permuted_range(1, seed=4)] == [0]


def test_shuffle_draws_from_the_whole_set_unless_given_a_window(files):
    # 200 samples sorted by label, as a reader returns them (only the first file's pixels matter here)
    ordered = [Sample(files[0].path, CLASSES[i // 50], "g", None) for i in range(200)]

    def first_batch_labels(**kw):
        ds = make_dataset(ordered, CLASSES, input_size=SIZE, batch_size=20, seed=3, **kw)
        return set(next(iter(ds))[1].numpy().tolist())

    assert len(first_batch_labels()) == 4  # every class in the first batch: drawn from all 200
    assert first_batch_labels(shuffle_buffer=10) == {0}  # a window of 10 files stays within the first class


def test_bad_image_skipped_or_raised(files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(cv2_png(cell_array())[:100])
    samples = [*files[:3], Sample(str(bad), "astro", "g", None)]
    images, _ = _collect(make_dataset(samples, CLASSES, input_size=SIZE, shuffle=False))
    assert len(images) == 3
    with pytest.raises(tf.errors.OpError, match="truncated or corrupt"):
        _collect(make_dataset(samples, CLASSES, input_size=SIZE, shuffle=False, skip_bad=False))


def test_unknown_label_refused(files):
    with pytest.raises(errors.DatasetError, match="not classes of this model"):
        make_dataset(files, ("astro", "oligo"), input_size=SIZE)


@pytest.mark.parametrize("mode", ["raw", "prepared"])
def test_tfrecord_shards_roundtrip(files, tmp_path, mode):
    paths = write_tfrecord_shards(files, tmp_path / mode, CLASSES, mode=mode, input_size=SIZE, shard_size=4)
    assert [p.name for p in paths] == [f"shard-0000{k}-of-00003.tfrecord" for k in range(3)]
    assert read_shard_index(tmp_path / mode)["count"] == 10
    images, labels = _collect(make_tfrecord_dataset(tmp_path / mode, input_size=SIZE, shuffle=False, batch_size=4))
    expected = np.stack([_serving(s.path) for s in files])
    np.testing.assert_array_equal(images, expected)
    assert [CLASSES[i] for i in labels] == [s.label for s in files]


def test_tfrecord_worker_sharding(files, tmp_path):
    write_tfrecord_shards(files, tmp_path, CLASSES, mode="prepared", input_size=SIZE, shard_size=3)  # 4 shards
    parts = [_collect(make_tfrecord_dataset(tmp_path, shuffle=False, num_workers=2, worker_index=k))[0] for k in (0, 1)]
    assert len(parts[0]) + len(parts[1]) == 10
    whole = np.concatenate(parts)
    expected = np.stack([_serving(s.path) for s in files])
    assert sorted(whole[:, 20, 30, 0].tolist()) == sorted(expected[:, 20, 30, 0].tolist())
    with pytest.raises(errors.DatasetError, match="prepared at"):
        make_tfrecord_dataset(tmp_path, input_size=(75, 75))


def test_tfrecord_shards_refuse_another_class_order(files, tmp_path):
    write_tfrecord_shards(files, tmp_path, CLASSES, mode="prepared", input_size=SIZE)
    _collect(make_tfrecord_dataset(tmp_path, CLASSES, shuffle=False))  # the order they were written for
    with pytest.raises(errors.DatasetError, match="label classes in the order"):
        make_tfrecord_dataset(tmp_path, tuple(reversed(CLASSES)))
