"""Dataset readers (three layouts), marker-channel refusal, splits and manifests."""

import hashlib
import json
import os
from collections import Counter

import numpy as np
import pytest

from nscfate import errors
from nscfate.data import (
    Sample,
    file_channel,
    file_sha256,
    inspect_dataset,
    make_split,
    parse_ifc_name,
    read_dataset,
    read_split_manifest,
    split_grouped,
    split_random,
    subsample,
    write_split_manifest,
)
from nscfate.synth import SynthConfig, write_dataset
from tests.imagegen import cell_array, pil_bytes, tiff_bytes


@pytest.fixture(scope="module")
def ifc_root(tmp_path_factory):
    """A small synthetic IFC export with marker channels: 4 media x 12 images, groups D1A..D3B."""
    root = tmp_path_factory.mktemp("ifc")
    write_dataset(SynthConfig(per_class=12, seed=5, days=(1, 3), replicates=2, with_markers=True), root)
    return root


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, expected", [
    ("astro_D3B_000042_Ch1.ome.tif", ("astro", "D3B", 1)),
    ("oligo_D1A_7_Ch4.ome.tiff", ("oligo", "D1A", 4)),
    ("rashh_D7C_000001_Ch2.ome.bmp", ("rashh", "D7C", 2)),
    ("nt3_D3A_12_Ch1.tif", ("nt3", "D3A", 1)),
    ("my_medium_D2A_5_Ch1.BMP", ("my_medium", "D2A", 1)),
    ("cell_001.png", None),
    ("astro_D3B_000042_Ch1.jpg", ("astro", "D3B", 1)),  # converted to JPEG: the batch still counts
    ("astro_D3B_000005_Ch1 (1).ome.tif", ("astro", "D3B", 1)),  # a copy keeps its batch (its group)
    ("oligo_D1A_7_Ch1.ome - Copy.tif", ("oligo", "D1A", 1)),
])
def test_parse_ifc_name(name, expected):
    assert parse_ifc_name(name) == expected


@pytest.mark.parametrize("name, channel", [
    ("astro_D3B_000042_Ch1.ome.tif", 1),
    ("123_Ch2.ome.tif", 2),  # IDEAS's default export name: object number and channel only
    ("astro_123_Ch3.OME.TIFF", 3),
    ("Ch4.bmp", 4),
    ("astro_D3B_000042_ch2.jpg", 2),
    ("cell_001.png", None),
    ("Chart.png", None),
    ("x_Ch2_crop.png", None),
    ("x_Ch2 (1).ome.tif", 2),  # copies a file manager made: still that channel
    ("x_Ch3.ome (1).tif", 3),
    ("x_Ch4-1.ome.tif", 4),
    ("x_Ch2 copy.tif", 2),
    ("x_Ch2 copy 2.ome.tif", 2),
    ("x_Ch3.ome - Copy.tif", 3),  # Windows Explorer
    ("x_Ch3 - Copy (2).ome.tif", 3),
    ("x_Ch4 (copy).tif", 4),  # GNOME Files
    ("x_Ch4.ome (another copy).tif", 4),
    ("x_Ch2 (3rd copy).ome.tif", 2),
    ("x_Ch2 - notes.tif", None),
    ("cell-7.png", None),
])
def test_file_channel(name, channel):
    assert file_channel(name) == channel
    assert file_channel(f"/data/astro/{name}") == channel


def test_ifc_layout_reads_brightfield_only(ifc_root):
    samples = read_dataset(ifc_root)
    assert len(samples) == 48
    assert {s.channel for s in samples} == {1}
    assert Counter(s.label for s in samples) == {"astro": 12, "oligo": 12, "rashh": 12, "nt3": 12}
    assert {s.group for s in samples} == {"D1A", "D1B", "D3A", "D3B"}
    s = next(s for s in samples if s.path.endswith("astro_D3B_000003_Ch1.ome.tif"))
    assert s == Sample(s.path, "astro", "D3B", 1)
    assert samples == sorted(samples, key=lambda s: s.path)


def test_marker_channels_refused_unless_allowed(ifc_root):
    for ch in (2, 3, 4):
        with pytest.raises(errors.MarkerChannelError, match="marker"):
            read_dataset(ifc_root, channel=ch)
    with pytest.raises(errors.MarkerChannelError):
        read_dataset(ifc_root, channel=None)
    markers = read_dataset(ifc_root, channel=3, allow_marker_channels=True)
    assert len(markers) == 48 and all(s.path.endswith("_Ch3.ome.tif") for s in markers)
    everything = read_dataset(ifc_root, channel=None, allow_marker_channels=True)
    assert Counter(s.channel for s in everything) == {1: 48, 2: 48, 3: 48, 4: 48}


def test_task_restriction(ifc_root):
    samples = read_dataset(ifc_root, task="astro_vs_oligo")
    assert {s.label for s in samples} == {"astro", "oligo"} and len(samples) == 24
    with pytest.raises(errors.ConfigError):
        read_dataset(ifc_root, task="nope")


def test_task_with_missing_class(tmp_path):
    _write(tmp_path / "astro" / "a.png", pil_bytes(cell_array(), "PNG"))
    with pytest.raises(errors.DatasetError, match="no images for oligo"):
        read_dataset(tmp_path, task="astro_vs_oligo")


@pytest.mark.parametrize("ext", [".ome.tiff", ".ome.bmp", ".tif", ".bmp"])
def test_ifc_extensions_tolerated(tmp_path, ext):
    data = pil_bytes(cell_array(), "BMP") if "bmp" in ext else tiff_bytes(cell_array())
    for i in range(2):
        _write(tmp_path / "oligo" / f"oligo_D7A_{i}_Ch1{ext}", data)
        _write(tmp_path / "oligo" / f"oligo_D7A_{i}_Ch3{ext}", data)
    samples = read_dataset(tmp_path)
    assert len(samples) == 2 and all(s.group == "D7A" and s.channel == 1 for s in samples)


def test_marker_channels_refused_whatever_precedes_the_channel(tmp_path):
    """IDEAS's default names (``<object>_Ch<n>``) and names without a batch carry markers too: only Ch1
    is read, and a cell's channels share one group (the cell: no batch to group by)."""
    data = tiff_bytes(cell_array())
    for label in ("astro", "oligo"):
        for i in range(3):
            for ch in (1, 2, 3):
                _write(tmp_path / label / f"{i}_Ch{ch}.ome.tif", data)
                _write(tmp_path / label / f"{label}_{i}_Ch{ch}.ome.tif", data)
    samples = read_dataset(tmp_path)
    assert len(samples) == 12 and {s.channel for s in samples} == {1}
    assert all(s.path.endswith("_Ch1.ome.tif") for s in samples)
    everything = read_dataset(tmp_path, channel=None, allow_marker_channels=True)
    assert Counter(s.channel for s in everything) == {1: 12, 2: 12, 3: 12}
    by_group: dict[str, set] = {}
    for s in everything:
        by_group.setdefault(s.group, set()).add(s.channel)
    assert len(by_group) == 12 and all(channels == {1, 2, 3} for channels in by_group.values())
    assert {"astro/0", "astro/astro_0", "oligo/2"} <= set(by_group)
    split = split_grouped(everything, 0.3, seed=0)  # no cell on both sides
    assert {s.group for s in split.train}.isdisjoint({s.group for s in split.test})
    _write(tmp_path / "m" / "astro" / "7_Ch2.ome.tif", data)
    _write(tmp_path / "m" / "oligo" / "7_Ch1.ome.tif", data)
    with pytest.raises(errors.DatasetError, match="no Ch1 files in class folder 'astro'"):
        read_dataset(tmp_path / "m")


def test_class_folder_layout_with_and_without_groups(tmp_path):
    png = pil_bytes(cell_array(), "PNG")
    _write(tmp_path / "astro" / "plate1" / "a.png", png)
    _write(tmp_path / "astro" / "plate2" / "b.jpg", pil_bytes(cell_array(), "JPEG"))
    _write(tmp_path / "NT3" / "c.tiff", tiff_bytes(cell_array()))
    _write(tmp_path / "NT3" / "notes.txt", b"not an image")
    samples = read_dataset(tmp_path)
    by_name = {s.path.rsplit("/", 1)[-1]: s for s in samples}
    assert set(by_name) == {"a.png", "b.jpg", "c.tiff"}
    assert by_name["a.png"].group == "plate1" and by_name["b.jpg"].group == "plate2"
    assert by_name["c.tiff"].label == "nt3" and by_name["c.tiff"].group == "NT3/c.tiff"  # no batch: the file
    assert all(s.channel is None for s in samples)


def test_csv_manifest(tmp_path):
    png = pil_bytes(cell_array(), "PNG")
    _write(tmp_path / "imgs" / "x1.png", png)
    _write(tmp_path / "imgs" / "x2.png", png)
    abs_file = _write(tmp_path / "elsewhere" / "astro_D3A_1_Ch1.ome.tif", tiff_bytes(cell_array()))
    jpeg = _write(tmp_path / "imgs" / "nt3_D7B_12_Ch1.jpg", pil_bytes(cell_array(), "JPEG"))  # an IDEAS name, converted
    (tmp_path / "m.csv").write_text(
        f"path,label,group,comment\nimgs/x1.png,oligo,run1,ok\nimgs/x2.png,Rashh,,\n{abs_file},astro,,\n{jpeg},nt3,,\n")
    samples = read_dataset(tmp_path / "m.csv")
    got = {s.path.rsplit("/", 1)[-1]: (s.label, s.group, s.channel) for s in samples}
    assert got == {"x1.png": ("oligo", "run1", None), "x2.png": ("rashh", "imgs/x2.png", None),
                   "astro_D3A_1_Ch1.ome.tif": ("astro", "D3A", 1), "nt3_D7B_12_Ch1.jpg": ("nt3", "D7B", 1)}
    assert str(tmp_path / "imgs" / "x1.png") in {s.path for s in samples}


def test_groups_follow_one_rule_whether_read_from_class_folders_or_a_csv(tmp_path):
    """Names without a batch: each cell is its own group, also when two exports number their cells
    alike (a CSV used to group ``d1/astro/1_Ch1`` with ``d2/astro/1_Ch1``), and a CSV beside class
    folders groups their files as the folders do."""
    for k, name in enumerate(["astro/1_Ch1.ome.tif", "astro/1_Ch2.ome.tif", "astro/cell7.png", "nt3/1_Ch1.ome.tif",
                              "nt3/astro_D3A_5_Ch1.ome.tif", "astro/plate1/2_Ch1.ome.tif"]):
        _write(tmp_path / "tree" / name, pil_bytes(cell_array(seed=k), "PNG"))
    for export in ("d1", "d2"):
        _write(tmp_path / "exports" / export / "astro" / "1_Ch1.ome.tif", pil_bytes(cell_array(seed=9), "PNG"))
    (tmp_path / "tree" / "m.csv").write_text("path,label\nastro/1_Ch1.ome.tif,astro\nastro/cell7.png,astro\n"
                                             "nt3/1_Ch1.ome.tif,nt3\nnt3/astro_D3A_5_Ch1.ome.tif,nt3\n")
    (tmp_path / "exports" / "m.csv").write_text("path,label\nd1/astro/1_Ch1.ome.tif,astro\nd2/astro/1_Ch1.ome.tif,astro\n")
    groups = {s.path: s.group for s in read_dataset(tmp_path / "tree")}
    listed = {s.path: s.group for s in read_dataset(tmp_path / "tree" / "m.csv")}
    assert listed == {path: groups[path] for path in listed}
    assert groups[str(tmp_path / "tree" / "astro" / "plate1" / "2_Ch1.ome.tif")] == "plate1"  # the sub-folder
    exports = read_dataset(tmp_path / "exports" / "m.csv")
    assert sorted(s.group for s in exports) == ["d1/astro/1", "d2/astro/1"]
    every_channel = {s.path: s.group for s in read_dataset(tmp_path / "tree", channel=None, allow_marker_channels=True)}
    cell = tmp_path / "tree" / "astro"
    assert every_channel[str(cell / "1_Ch1.ome.tif")] == every_channel[str(cell / "1_Ch2.ome.tif")] == "astro/1"


def test_csv_errors(tmp_path):
    _write(tmp_path / "a.png", pil_bytes(cell_array(), "PNG"))
    cases = {
        "path,class\na.png,astro\n": "path,label",
        "path,label\na.png,neuron\n": "unknown label 'neuron'",
        "path,label\nmissing.png,astro\n": "do not exist",
        "path,label\n": "lists no images",
        "path,label\na.png,astro\n./a.png,oligo\n": r"line 3: ./a.png is listed again \(first on line 2, as astro; here as oligo\)",
        "path,label\na.png,astro\nb/../a.png,astro\n": r"line 3: b/../a.png is listed again \(first on line 2\)$",
    }
    for i, (text, message) in enumerate(cases.items()):
        (tmp_path / f"m{i}.csv").write_text(text)
        with pytest.raises(errors.DatasetError, match=message):
            read_dataset(tmp_path / f"m{i}.csv")
    _write(tmp_path / "oligo_D1A_1_Ch2.ome.tif", tiff_bytes(cell_array()))
    (tmp_path / "marker.csv").write_text("path,label\noligo_D1A_1_Ch2.ome.tif,oligo\n")
    with pytest.raises(errors.MarkerChannelError, match="Ch2"):
        read_dataset(tmp_path / "marker.csv")
    _write(tmp_path / "123_Ch3.ome.tif", tiff_bytes(cell_array()))  # IDEAS's default name
    (tmp_path / "marker2.csv").write_text("path,label\n123_Ch3.ome.tif,oligo\n")
    with pytest.raises(errors.MarkerChannelError, match="Ch3"):
        read_dataset(tmp_path / "marker2.csv")


def test_a_file_listed_twice_is_found_however_its_paths_are_spelled(tmp_path, monkeypatch):
    _write(tmp_path / "csvs" / "a.png", pil_bytes(cell_array(), "PNG"))
    (tmp_path / "csvs" / "m.csv").write_text(f"path,label\na.png,astro\n{tmp_path / 'csvs' / 'a.png'},oligo\n")
    monkeypatch.chdir(tmp_path)  # the CSV named by a relative path, one row absolute
    with pytest.raises(errors.DatasetError, match="line 3: .*a.png is listed again .*as astro; here as oligo"):
        read_dataset("csvs/m.csv")


def test_directory_errors(tmp_path):
    with pytest.raises(errors.DatasetError, match="no such file"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(errors.DatasetError, match="no class folders"):
        read_dataset(tmp_path)
    _write(tmp_path / "astro" / "empty.txt", b"")
    with pytest.raises(errors.DatasetError, match="holds no images"):
        read_dataset(tmp_path)
    _write(tmp_path / "astro" / "a.png", pil_bytes(cell_array(), "PNG"))
    _write(tmp_path / "neurons" / "b.png", pil_bytes(cell_array(), "PNG"))
    with pytest.raises(errors.DatasetError, match="unknown label 'neurons'"):
        read_dataset(tmp_path)
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(errors.DatasetError, match="directory or a .csv"):
        read_dataset(tmp_path / "x.txt")


def test_only_marker_files(tmp_path):
    _write(tmp_path / "oligo" / "oligo_D1A_1_Ch1.ome.tif", tiff_bytes(cell_array()))
    _write(tmp_path / "astro" / "astro_D1A_1_Ch2.ome.tif", tiff_bytes(cell_array()))
    with pytest.raises(errors.DatasetError, match="no Ch1 files in class folder 'astro'; found only channels \\[2\\]"):
        read_dataset(tmp_path)


def test_hidden_folders_ignored(tmp_path):
    _write(tmp_path / "astro" / "a.png", pil_bytes(cell_array(), "PNG"))
    _write(tmp_path / "astro" / ".ipynb_checkpoints" / "a-checkpoint.png", pil_bytes(cell_array(), "PNG"))
    assert [s.path.rsplit("/", 1)[-1] for s in read_dataset(tmp_path)] == ["a.png"]


# ------------------------------------------------------------------------------------------------
# splits


def _samples(per_class=20, groups=5, labels=("astro", "oligo", "rashh", "nt3")):
    return [Sample(f"/d/{lab}/{lab}_{i:03d}.png", lab, f"D3{'ABCDEFGH'[i % groups]}", 1)
            for lab in labels for i in range(per_class)]


def test_random_split_is_stratified_and_seeded():
    samples = _samples()
    a, b, c = split_random(samples, 0.2, seed=1), split_random(samples, 0.2, seed=1), split_random(samples, 0.2, seed=2)
    assert a == b and a.test != c.test
    assert Counter(s.label for s in a.test) == {"astro": 4, "oligo": 4, "rashh": 4, "nt3": 4}
    assert not {s.path for s in a.train} & {s.path for s in a.test}
    assert len(a.train) + len(a.test) == len(samples)


def test_random_split_needs_two_per_class():
    with pytest.raises(errors.DatasetError, match="'oligo' has 1 image"):
        split_random(_samples(per_class=5, labels=("astro",)) + _samples(per_class=1, labels=("oligo",)))


def test_grouped_split_never_leaks_a_group():
    samples = _samples(per_class=30, groups=5)
    for seed in range(5):
        split = split_grouped(samples, 0.2, seed=seed)
        train_groups, test_groups = {s.group for s in split.train}, {s.group for s in split.test}
        assert train_groups.isdisjoint(test_groups)
        assert {s.label for s in split.test} == {s.label for s in split.train} == {"astro", "oligo", "rashh", "nt3"}
        assert len(split.test) == 24  # one of five equal groups
    assert split_grouped(samples, 0.2, seed=3) == split_grouped(samples, 0.2, seed=3)


def test_grouped_split_gives_a_class_without_batches_its_share():
    """Next to classes in acquisition batches, a class whose images are each their own group (names
    without a batch) gets the test fraction of its images, at random - not what whole batches leave of
    the target (5 of 100 here) - and a class of single images only keeps one on each side."""
    batched = _samples(per_class=100, groups=4, labels=("astro", "oligo", "rashh"))  # batches of 75 images
    lone = [Sample(f"/d/nt3/{i}_Ch1.ome.tif", "nt3", f"nt3/{i}", 1) for i in range(100)]
    for seed in range(3):
        split = split_grouped(batched + lone, 0.2, seed=seed)
        test = Counter(s.label for s in split.test)
        assert test == {"astro": 25, "oligo": 25, "rashh": 25, "nt3": 20}  # one whole batch; a fifth of nt3
        assert {s.group for s in split.train}.isdisjoint({s.group for s in split.test})
    assert split_grouped(batched + lone, 0.2, seed=1).test != split_grouped(batched + lone, 0.2, seed=2).test
    pair = split_grouped(batched + lone[:2], 0.2, seed=0)
    assert Counter(s.label for s in pair.test)["nt3"] == Counter(s.label for s in pair.train)["nt3"] == 1


def test_grouped_split_impossible():
    with pytest.raises(errors.DatasetError, match="at least 2 groups"):
        split_grouped(_samples(groups=1))
    one_group_class = _samples(groups=4) + [Sample(f"/d/ctrl{i}.png", "ctrl", "X", 1) for i in range(5)]
    with pytest.raises(errors.DatasetError, match="class 'ctrl' are in one group"):
        split_grouped(one_group_class)


class _CountedName(str):
    """A group name that counts its comparisons."""

    compared = 0
    __hash__ = str.__hash__

    def __eq__(self, other):
        _CountedName.compared += 1
        return str.__eq__(self, other)

    def __lt__(self, other):
        _CountedName.compared += 1
        return str.__lt__(self, other)


def test_grouped_split_compares_group_names_a_linear_number_of_times():
    """Data without batch information make every file its own group (600,000 of them): the split must
    not compare every group with every chosen one in each of its attempts (that never finished)."""
    n = 400
    samples = [Sample(f"/d/{lab}/{i}.png", lab, _CountedName(f"{lab}/{i}.png"), None)
               for lab in ("astro", "oligo") for i in range(n // 2)]
    _CountedName.compared = 0
    split = split_grouped(samples, 0.2, seed=0)
    assert len(split.test) == 80
    assert _CountedName.compared < 20 * n  # sorting and a few look-ups per image; quadratic: millions


def test_subsample_and_make_split():
    samples = _samples(per_class=40)
    sub = subsample(samples, 0.15, seed=0)
    assert Counter(s.label for s in sub) == {"astro": 6, "oligo": 6, "rashh": 6, "nt3": 6}
    assert sub == subsample(samples, 0.15, seed=0)
    split = make_split(samples, "grouped", 0.2, seed=0, subsample_fraction=0.5)
    assert split.subsample == 0.5 and len(split.train) + len(split.test) == 80
    with pytest.raises(errors.DatasetError):
        make_split(samples, "stratified")
    with pytest.raises(errors.DatasetError):
        subsample(samples, 0.0)


def test_split_manifest_roundtrip_and_verification(ifc_root, tmp_path):
    split = make_split(read_dataset(ifc_root), "grouped", 0.25, seed=0)
    digest = write_split_manifest(split, ifc_root / "split.json")
    doc = json.loads((ifc_root / "split.json").read_text())
    assert doc["manifest_sha256"] == digest and len(doc["samples"]) == 48
    first = doc["samples"][0]
    assert not first["path"].startswith("/")  # relative to the manifest, so the tree can move
    assert first["sha256"] == file_sha256(ifc_root / first["path"])
    # the hash's definition (shipped models record it): SHA-256 of the sorted subset/label/group/sha lines
    lines = sorted(f"{e['subset']}\t{e['label']}\t{e['group']}\t{e['sha256']}" for e in doc["samples"])
    assert digest == hashlib.sha256("\n".join(lines).encode()).hexdigest()
    back, digest2 = read_split_manifest(ifc_root / "split.json")
    assert digest2 == digest and back.kind == "grouped"
    assert [s.path for s in back.test] == [s.path for s in split.test]
    # same data written elsewhere -> same hash; a changed file is detected
    assert write_split_manifest(split, tmp_path / "m" / "split.json") == digest
    victim = ifc_root / doc["samples"][1]["path"]
    original = victim.read_bytes()
    try:
        victim.write_bytes(original + b"\x00")
        with pytest.raises(errors.DatasetError, match="changed"):
            read_split_manifest(ifc_root / "split.json")
    finally:
        victim.write_bytes(original)
        (ifc_root / "split.json").unlink()


def test_run_manifests_refuse_edits_and_malformed_entries(ifc_root, tmp_path):
    from nscfate.data import write_manifest_file
    from nscfate.training import read_manifest

    samples = read_dataset(ifc_root)
    path = tmp_path / "split.json"
    write_manifest_file(path, {"train": samples[:10], "test": samples[10:14]}, {"kind": "random", "seed": 0})
    assert [s.path for s in read_manifest(path, "test")] == [s.path for s in samples[10:14]]
    with pytest.raises(errors.DatasetError, match="no 'val' images; subsets: test, train"):
        read_manifest(path, "val")
    doc = json.loads(path.read_text())
    doc["samples"][0]["label"] = "oligo" if doc["samples"][0]["label"] != "oligo" else "astro"  # relabelled
    path.write_text(json.dumps(doc))
    with pytest.raises(errors.DatasetError, match="manifest hash mismatch"):
        read_manifest(path, "test")
    del doc["samples"][0]["sha256"]
    path.write_text(json.dumps(doc))
    with pytest.raises(errors.DatasetError, match="not a split manifest"):
        read_manifest(path, "test")
    path.write_text("[1, 2]")
    with pytest.raises(errors.DatasetError, match="not a split manifest"):
        read_manifest(path, "test")
    # a file that vanished while writing: an error, and neither a manifest nor a temporary file left
    gone = Sample(str(tmp_path / "gone.png"), "astro", "D3A")
    with pytest.raises(FileNotFoundError):
        write_manifest_file(tmp_path / "new" / "split.json", {"train": [samples[0], gone]}, {"kind": "random"})
    assert list((tmp_path / "new").iterdir()) == []


def test_a_manifest_counts_copies_of_one_picture_across_subsets(tmp_path, caplog):
    """The same picture in train and test (a re-export, a copied file) is counted and warned about: the
    held-out numbers would count pictures the model trained on. Copies within one subset are not."""
    import logging

    from nscfate.data import write_manifest_file

    pictures = [pil_bytes(cell_array(seed=k), "PNG") for k in range(3)]
    files = {}
    for name, k in (("a.png", 0), ("a-again.png", 0), ("b.png", 1), ("b-copy.png", 1), ("c.png", 2)):
        (tmp_path / name).write_bytes(pictures[k])
        files[name] = Sample(str(tmp_path / name), "astro", name)
    parts = {"train": [files["a.png"], files["a-again.png"], files["b.png"]],
             "test": [files["b-copy.png"], files["c.png"]]}
    for group_tab in ("", "\t"):  # compact hashing, and the plain one a tab in a field switches to
        parts["train"][2] = Sample(files["b.png"].path, "astro", "b" + group_tab)
        path = tmp_path / "split.json"
        with caplog.at_level(logging.WARNING, logger="nscfate.data"):
            caplog.clear()
            write_manifest_file(path, parts, {"kind": "random", "seed": 0})
        assert json.loads(path.read_text())["copies_across_subsets"] == 2  # b.png and its copy
        assert "2 image(s) have the same content" in caplog.text and "b-copy.png" in caplog.text
    write_manifest_file(path, {"train": [files["a.png"], files["a-again.png"]], "test": [files["c.png"]]}, {})
    assert json.loads(path.read_text())["copies_across_subsets"] == 0


def test_inspect_dataset(ifc_root):
    report = inspect_dataset(ifc_root)
    assert report["images"] == 48 and report["files"] == 192
    assert report["classes"] == {"astro": 12, "nt3": 12, "oligo": 12, "rashh": 12}
    assert report["channels"] == {"1": 48, "2": 48, "3": 48, "4": 48}
    assert sum(report["groups"].values()) == 48 and set(report["groups"]) == {"D1A", "D1B", "D3A", "D3B"}
    assert report["width"] == {"min": 60, "median": 60.0, "max": 60}
    assert 37 <= report["height"]["min"] <= report["height"]["median"] <= report["height"]["max"] <= 57
    assert report["bit_depths"] == {"8-bit uint8": 48} and report["formats"] == {"tiff (OME)": 48}
    sampled = inspect_dataset(ifc_root, max_images=10)
    assert sampled["decoded"] == 10 and sampled["images"] == 48
    assert np.isfinite(report["height"]["median"])


def test_inspect_reports_copies_of_one_picture(tmp_path):
    """The same picture twice (``x.png`` and ``x-copy.png``; one under two classes) is counted before
    training, by the rule that manifests count copies across subsets with."""
    from nscfate.commands.inspect import format_report

    pictures = [pil_bytes(cell_array(seed=k), "PNG") for k in range(4)]
    for name, k in (("astro/a.png", 0), ("astro/a-copy.png", 0), ("astro/a (1).png", 0), ("astro/b.png", 1),
                    ("oligo/c.png", 2), ("nt3/c.png", 2), ("nt3/d.png", 3), ("nt3/d_Ch2.png", 3)):  # d_Ch2: a marker
        _write(tmp_path / name, pictures[k])
    report = inspect_dataset(tmp_path)
    assert report["copies"] == {"images": 5, "pictures": 2, "across_classes": 1,
                                "examples": [["astro/a (1).png", "astro/a-copy.png", "astro/a.png"],
                                             ["nt3/c.png", "oligo/c.png"]]}
    assert "COPIES: 5 images are copies of another image (2 pictures; 1 of them under more than one class)" in format_report(report)
    (tmp_path / "astro" / "a-copy.png").unlink()
    (tmp_path / "astro" / "a (1).png").unlink()
    (tmp_path / "nt3" / "c.png").unlink()
    assert inspect_dataset(tmp_path)["copies"] == {"images": 0, "pictures": 0, "across_classes": 0, "examples": []}


@pytest.mark.parametrize("seed", range(6))
def test_manifest_hash_is_the_hash_of_the_sorted_lines_for_any_names(seed):
    """The compact form of the manifest hash gives exactly SHA-256 of the sorted lines, also for group
    names that begin one another, hold characters below a tab, non-ASCII or a tab (plain-string
    fallback), and for file hashes that are not lowercase hex."""
    from nscfate.data import manifest_hash

    rng = np.random.default_rng(seed)
    groups = ["D3", "D3A", "D3A2", "d3", "Ä", "x\x01y", "", "a b"] + (["tab\there"] if seed % 2 else [])
    entries = []
    for _ in range(int(rng.integers(0, 300))):
        sha = bytes(rng.integers(0, 256, 32, dtype=np.uint8)).hex()
        if seed == 5 and rng.random() < 0.05:
            sha = sha.upper()
        entries.append({"subset": str(rng.choice(["train", "val", "test", "grouped_test"])),
                        "label": str(rng.choice(["astro", "oligo", "rashh", "nt3"])),
                        "group": str(rng.choice(groups)), "sha256": sha})
    if entries and seed == 3:
        entries.append(dict(entries[0]))  # the same file listed twice
    lines = sorted(f"{e['subset']}\t{e['label']}\t{e['group']}\t{e['sha256']}" for e in entries)
    assert manifest_hash(entries) == hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_sample_table_reads_like_the_list_it_was_made_from(tmp_path):
    """Training keeps its splits as SampleTables: the same samples, in order, also for odd file names."""
    from nscfate.data import Sample, SampleTable

    odd = os.fsdecode(b"/data/astro/\xff\xfe-not-utf8.tif")  # a file name that is not valid UTF-8
    samples = [Sample("/data/astro/a_D3A_0_Ch1.ome.tif", "astro", "D3A", 1),
               Sample("/data/oligo/b.png", "oligo", "oligo/b.png", None),
               Sample(odd, "astro", "D3A", 1), Sample("/data/nt3/é.tif", "nt3", "D4B", 12)]
    table = SampleTable(samples)
    assert len(table) == 4 and list(table) == samples and table[-1] == samples[-1]
    assert list(table[1:3]) == samples[1:3] and isinstance(table[1:3], SampleTable)
    assert table[2].path == odd and os.fsencode(table[2].path) == b"/data/astro/\xff\xfe-not-utf8.tif"
    assert not SampleTable([]) and bool(table)
    with pytest.raises(IndexError):
        table[4]
