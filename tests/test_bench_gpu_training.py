"""bench/gpu_training.py: the prepared arrays it trains from are the one preparation path's output."""

import json

import numpy as np
import pytest

from bench.gpu_training import SIZE, ensure_arrays
from nscfate.data import read_dataset
from nscfate.preprocessing import load_prepared
from nscfate.synth import SynthConfig, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_dataset(SynthConfig(per_class=6, seed=3), root)
    return root


def test_arrays_hold_each_image_prepared_once_and_are_reused(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr("bench.gpu_training.CHUNK", 5)  # several chunks, the last one short
    out = tmp_path / "arrays"
    index = ensure_arrays(dataset, out, limit=None, jobs=2)
    samples = read_dataset(dataset, task="medium4")
    assert index["count"] == len(samples) == 24 and index["classes"] == ["astro", "oligo", "rashh", "nt3"]
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    assert images.shape == (24, *SIZE, 1) and images.dtype == np.float32
    for i, s in enumerate(samples):  # row i is sample i, prepared exactly as serving prepares it
        np.testing.assert_array_equal(images[i], load_prepared(s.path, SIZE))
        assert index["classes"][labels[i]] == s.label

    (out / "images.npy").write_bytes(b"not read again")  # complete arrays are reused, not rewritten
    assert ensure_arrays(dataset, out, limit=None, jobs=2) == json.loads((out / "arrays.json").read_text())
    assert (out / "images.npy").read_bytes() == b"not read again"


def test_a_limit_takes_a_fixed_subset_and_incomplete_arrays_are_rewritten(dataset, tmp_path):
    out = tmp_path / "arrays"
    out.mkdir()
    (out / "images.npy").write_bytes(b"left by an interrupted run")  # no arrays.json: not complete
    index = ensure_arrays(dataset, out, limit=10, jobs=1)
    assert index["count"] == 10
    images = np.load(out / "images.npy")
    paths = {str(s.path): s for s in read_dataset(dataset, task="medium4")}
    rows = {images[i].tobytes() for i in range(10)}
    assert len(rows) == 10  # ten different images
    assert rows <= {load_prepared(p, SIZE).tobytes() for p in paths}
    assert ensure_arrays(dataset, tmp_path / "again", limit=10, jobs=1)["count"] == 10
    np.testing.assert_array_equal(np.load(tmp_path / "again" / "images.npy"), images)  # the same subset
    with pytest.raises(SystemExit, match="use another --arrays folder"):
        ensure_arrays(dataset, out, limit=None, jobs=1)  # made with another limit: not reused silently
    with pytest.raises(SystemExit, match="use another --arrays folder"):
        ensure_arrays(tmp_path / "elsewhere", out, limit=10, jobs=1)

