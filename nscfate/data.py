"""Datasets: readers for the three layouts, seeded splits, and split manifests with file hashes.

Layouts read by :func:`read_dataset`:

1. **IFC export** (Amnis IDEAS, and ``nscfate synth``): ``root/<medium>/<medium>_<batch>_<object>_Ch<n>.<ext>``
   with ``<ext>`` one of ``.ome.tif``, ``.ome.tiff``, ``.ome.bmp``, ``.tif``, ``.tiff``, ``.bmp``,
   ``.png``; ``<batch>`` is day + replicate (e.g. ``D3B``) and becomes the group. Only brightfield
   ``Ch1`` is read by default; the fluorescence marker channels Ch2-Ch4 define the answer and are refused
   as model input (:class:`~nscfate.errors.MarkerChannelError`) unless ``allow_marker_channels=True``.
   The channel comes from the ``_Ch<n>`` suffix of any file name (:func:`file_channel`), in every layout.
2. **Class folders**: ``root/<class>/*.{tif,tiff,png,bmp,jpg,jpeg}``, optionally one level deeper,
   ``root/<class>/<group>/*``, where the sub-folder names the acquisition batch.
3. **CSV manifest**: a ``.csv`` file with header ``path,label[,group]`` (extra columns ignored);
   relative paths are resolved against the CSV's folder.

Labels are medium keys of :data:`nscfate.classes.MEDIA` (folder names are matched case-insensitively).
Every sample has a group, by one rule for all layouts (:func:`sample_group`): the CSV ``group`` column,
else the IFC batch, else the class sub-folder, else - when the data carry no batch information - the
cell itself (its path in the dataset without the channel suffix), so that a cell's channels share a
group and no two cells do (a grouped split then degrades to a random one).

Splits are seeded: :func:`split_random` (stratified, as in the paper) and :func:`split_grouped` (no
group on both sides). :func:`write_split_manifest` records every file's SHA-256 and a manifest hash
that identifies the data independently of where it lies on disk.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import sys
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nscfate.classes import MEDIA, get_task
from nscfate.errors import DatasetError, ImageError, MarkerChannelError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".bmp", ".jpg", ".jpeg")
BRIGHTFIELD_CHANNEL = 1
#: A copy's mark that file managers add: browsers and KDE "x_Ch2 (1).ome.tif", "x_Ch2.ome (1).tif";
#: "x_Ch2-1.ome.tif"; macOS "x_Ch2 copy 2.ome.tif"; Windows "x_Ch2.ome - Copy (2).tif"; GNOME
#: "x_Ch2 (copy).tif", "(another copy)", "(3rd copy)". A copied marker file is still a marker file, and
#: a copied file keeps its batch: as a group of its own, a copy could land on the other side of a
#: grouped split from its original.
_COPY_MARK = r"(?: ?\(\d+\)| copy(?: \d+)?|-\d+| - copy(?: \(\d+\))?| \((?:another |\d+(?:st|nd|rd|th) )?copy\))?"
#: IDEAS export names: <medium>_<day><replicate>_<object>_Ch<n>.[ome.]<ext> (a copy's mark allowed)
IFC_NAME = re.compile(
    rf"^(?P<prefix>.+)_(?P<batch>[^_]+)_(?P<object>\d+)_Ch(?P<channel>\d+){_COPY_MARK}(?:\.ome)?{_COPY_MARK}"
    r"\.(?:tiff?|bmp|png|jpe?g)$",
    re.IGNORECASE,
)
#: The channel suffix alone, whatever precedes it: IDEAS's default ``<object>_Ch<n>.ome.tif`` and names
#: with no batch carry marker channels too. Decides the channel of every file (:func:`file_channel`).
CHANNEL_SUFFIX = re.compile(rf"(?:^|_)Ch(?P<channel>\d+){_COPY_MARK}(?:\.ome)?{_COPY_MARK}\.[^.]+$", re.IGNORECASE)
#: Fewest images of one class that a split can put on both sides.
MIN_PER_CLASS = 2
SPLIT_KINDS = ("random", "grouped")
MANIFEST_VERSION = 1


@dataclass(frozen=True, slots=True)  # slots: a 600,000-image index is 600,000 of these
class Sample:
    """One image: its file, its label (a medium key), its group (acquisition batch) and, for IFC
    exports, its channel number (None when the file name carries none)."""

    path: str
    label: str
    group: str
    channel: int | None = None


class SampleTable(Sequence[Sample]):
    """Samples stored column by column: every path in one byte string, labels and groups as small
    integer codes. About 100 bytes per image (most of it the path) where a list of :class:`Sample`
    objects takes about 200, so a 600,000-image training run does not carry 70 MB of index through
    training. Reads like a list (``len``, indexing, slicing, iteration), each item a :class:`Sample`
    made on access."""

    __slots__ = ("_paths", "_ends", "_labels", "_label_names", "_groups", "_group_names", "_channels")

    def __init__(self, samples: Iterable[Sample] = ()):
        paths, ends = bytearray(), array("q")
        labels, groups, channels = array("i"), array("i"), array("i")
        label_codes: dict[str, int] = {}
        group_codes: dict[str, int] = {}
        for s in samples:
            paths += os.fsencode(s.path)  # the exact file name back from os.fsdecode
            ends.append(len(paths))
            labels.append(label_codes.setdefault(s.label, len(label_codes)))
            groups.append(group_codes.setdefault(s.group, len(group_codes)))
            channels.append(-1 if s.channel is None else s.channel)
        self._paths, self._ends, self._labels, self._groups, self._channels = bytes(paths), ends, labels, groups, channels
        self._label_names, self._group_names = list(label_codes), list(group_codes)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return SampleTable(self[i] for i in range(*index.indices(len(self))))
        i = index.__index__()
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("sample index out of range")
        start = self._ends[i - 1] if i else 0
        channel = self._channels[i]
        return Sample(os.fsdecode(self._paths[start:self._ends[i]]), self._label_names[self._labels[i]],
                      self._group_names[self._groups[i]], None if channel < 0 else channel)

    def __repr__(self) -> str:
        return f"<SampleTable of {len(self)} samples>"


# ------------------------------------------------------------------------------------------------
# readers


def read_dataset(source: str | Path, *, task: str | None = None, channel: int | None = BRIGHTFIELD_CHANNEL,
                 allow_marker_channels: bool = False) -> list[Sample]:
    """Read a dataset directory (IFC export or class folders) or a CSV manifest.

    Args:
        source: a directory or a ``.csv`` file.
        task: keep only the classes of this task (see ``nscfate.classes.TASKS``); each must be present.
        channel: IFC channel to read (1 = brightfield); None reads every channel.
        allow_marker_channels: permit fluorescence channels 2-4 (never as model input: they encode
            the label; meant for inspection and for controls).

    Returns:
        Samples sorted by path.

    Raises:
        DatasetError: missing/empty source, unknown label, missing file, a task class with no images.
        MarkerChannelError: a marker channel was asked for, or listed in a manifest, without
            ``allow_marker_channels``.
    """
    path = Path(source)
    if channel is not None and channel != BRIGHTFIELD_CHANNEL and not allow_marker_channels:
        raise MarkerChannelError(
            f"channel {channel} is a fluorescence marker channel; markers define the label and must not be "
            "model input. Use the brightfield channel 1, or pass allow_marker_channels=True for inspection")
    if channel is None and not allow_marker_channels:
        raise MarkerChannelError("reading every channel includes the marker channels 2-4; pass "
                                 "allow_marker_channels=True (inspection only) or choose channel=1")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(f"{path}: a dataset is a directory or a .csv manifest (path,label[,group])")
        samples = _read_csv(path, channel, allow_marker_channels)
    else:
        samples = _read_tree(path, channel)
    if task is not None:
        samples = _restrict_to_task(samples, task, path)
    if not samples:
        raise DatasetError(f"{path}: no images found; expected {_layouts_help()}")
    return sorted(samples, key=lambda s: s.path)


def _layouts_help() -> str:
    return ("root/<medium>/<medium>_<day><replicate>_<object>_Ch1.ome.tif (IFC export), "
            f"root/<class>/*{{{','.join(IMAGE_EXTENSIONS)}}} or a CSV manifest path,label[,group]")


def parse_label(name: str, where: str) -> str:
    """The medium key for a folder name or manifest label (case-insensitive)."""
    key = name.strip().lower()
    if key not in MEDIA:
        raise DatasetError(f"{where}: unknown label {name!r}; labels are medium keys: {', '.join(MEDIA)}")
    return key


def parse_ifc_name(filename: str) -> tuple[str, str, int] | None:
    """(prefix, batch, channel) of an IFC export file name, or None if it is not one."""
    m = IFC_NAME.match(filename)
    if not m:
        return None
    return m["prefix"], m["batch"], int(m["channel"])


def file_channel(filename: str | os.PathLike) -> int | None:
    """The IFC channel of a file (``..._Ch<n>.[ome.]<ext>``, 1 = brightfield), or None if its name
    carries none. The one rule for "is this a marker channel" (datasets, ``nscfate predict``)."""
    m = CHANNEL_SUFFIX.search(os.path.basename(filename))
    return int(m["channel"]) if m else None


def sample_group(path: str, *, column: str = "", folder: str = "") -> str:
    """The group of an image, by one rule for every layout: the CSV's ``group`` column (``column``); else
    the ``<day><replicate>`` batch of an IFC name; else the class sub-folder it lies in (``folder``); else,
    with no batch information, the cell itself: ``path`` without the channel suffix, ``path`` being the
    file's path in the dataset (below the root of class folders, or below the CSV's folder; absolute
    outside it). So a cell's channel files share a group, two cells of one file name in different
    folders do not, and the same files read from class folders or from a CSV beside them get the same
    groups."""
    # batch names interned: a handful of them shared by every image of a 600,000-image index
    if column:
        return sys.intern(column)
    ifc = parse_ifc_name(os.path.basename(path))
    if ifc is not None:
        return sys.intern(ifc[1])
    if folder:
        return sys.intern(folder)
    head, name = os.path.split(os.path.normpath(path))
    return os.path.join(head, _cell_name(name))


def _cell_name(filename: str) -> str:
    """The file name without its channel suffix: the cell, shared by all its channels' files."""
    m = CHANNEL_SUFFIX.search(filename)
    return filename[:m.start()] if m and m.start() else filename


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def image_files(folder: str | Path) -> list[str]:
    """Paths of the image files under ``folder`` (sub-folders too, hidden ones skipped), sorted."""
    return sorted(path for path, _ in _image_files(str(folder)))


def _image_files(folder: str, rel: tuple[str, ...] = ()) -> Iterable[tuple[str, tuple[str, ...]]]:
    """(path, sub-folders below the class folder) of every image file under ``folder``, as strings.

    ``os.scandir`` rather than ``Path.rglob``: no Path object per file (a 600,000-image tree made the
    reading step the peak of a training run's memory), and hidden folders are skipped, not walked.
    Symlinked folders are not followed (as ``rglob``); symlinked files are read."""
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from _image_files(entry.path, rel + (entry.name,))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                yield entry.path, rel


def _read_tree(root: Path, channel: int | None) -> list[Sample]:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        stray = [p.name for p in root.iterdir() if _is_image(p)][:3]
        hint = f" (found images directly in it: {', '.join(stray)}; put them in class folders)" if stray else ""
        raise DatasetError(f"{root}: no class folders{hint}; expected {_layouts_help()}")
    samples: list[Sample] = []
    prefix_mismatch = 0
    for class_dir in class_dirs:
        label = parse_label(class_dir.name, f"{root}: folder {class_dir.name!r}")
        files = sorted(_image_files(str(class_dir)))
        if not files:
            raise DatasetError(f"{class_dir}: class folder {class_dir.name!r} holds no images "
                               f"({', '.join(IMAGE_EXTENSIONS)})")
        skipped: Counter[int] = Counter()
        before = len(samples)
        for f, sub in files:
            name = os.path.basename(f)
            ch = file_channel(name)
            if channel is not None and ch is not None and ch != channel:
                skipped[ch] += 1
                continue
            ifc = parse_ifc_name(name)
            prefix_mismatch += ifc is not None and ifc[0].lower() != label
            # the path as a CSV beside the class folders would list it (a file in a sub-folder has its batch)
            samples.append(Sample(f, label, sample_group(f"{class_dir.name}/{name}", folder="/".join(sub)), ch))
        if len(samples) == before:  # images, but all of other channels
            raise DatasetError(f"{class_dir}: no Ch{channel} files in class folder {class_dir.name!r}; "
                               f"found only channels {sorted(skipped)}")
    if prefix_mismatch:
        log.warning("%d IFC file names start with another medium than their folder; the folder is the label",
                    prefix_mismatch)
    return samples


def _read_csv(path: Path, channel: int | None, allow_marker_channels: bool) -> list[Sample]:
    base = path.parent
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "path" not in fields or "label" not in fields:
                raise DatasetError(f"{path}: the CSV header must name columns path,label[,group]; "
                                   f"got {reader.fieldnames}")
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: malformed CSV ({exc})") from None
    samples, missing = [], []
    listed: dict[str, tuple[int, str]] = {}  # file -> (line, label) of its first row
    for line, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise DatasetError(f"{path}, line {line}: empty path")
        file = Path(row["path"])
        file = file if file.is_absolute() else base / file
        label = parse_label(row.get("label", ""), f"{path}, line {line}")
        first = listed.setdefault(os.path.abspath(file), (line, label))
        if first[0] != line:  # twice would count it twice; under two labels it would teach both
            raise DatasetError(f"{path}, line {line}: {row['path']} is listed again (first on line {first[0]}"
                               + (f", as {first[1]}; here as {label})" if first[1] != label else ")"))
        if not file.is_file():
            missing.append(row["path"])
            continue
        ch = file_channel(file.name)
        if ch is not None and ch != BRIGHTFIELD_CHANNEL and not allow_marker_channels:
            raise MarkerChannelError(f"{path}, line {line}: {file.name} is marker channel Ch{ch}; markers define the "
                                     "label and must not be model input (list brightfield Ch1 files)")
        if channel is not None and ch is not None and ch != channel:
            continue
        cell = os.path.relpath(file, base)  # below the CSV's folder, as a class-folder tree there names it
        cell = os.path.abspath(file) if cell.split(os.sep, 1)[0] == os.pardir else cell
        samples.append(Sample(str(file), label, sample_group(cell, column=row.get("group", "")), ch))
    if missing:
        raise DatasetError(f"{path}: {len(missing)} listed file(s) do not exist, e.g. {', '.join(missing[:3])}")
    if not rows:
        raise DatasetError(f"{path}: the manifest lists no images")
    return samples


def _restrict_to_task(samples: list[Sample], task_name: str, where: Path) -> list[Sample]:
    task = get_task(task_name)
    kept = [s for s in samples if s.label in task.classes]
    if len(kept) < len(samples):  # e.g. a binary model on a 4-medium export: said, not silent
        others = Counter(s.label for s in samples if s.label not in task.classes)
        log.info("%s: %d images of classes outside task %r left out (%s)", where, len(samples) - len(kept),
                 task.name, ", ".join(f"{label} {n}" for label, n in sorted(others.items())))
    present = {s.label for s in kept}
    absent = [c for c in task.classes if c not in present]
    if absent:
        raise DatasetError(f"{where}: task {task.name!r} needs classes {', '.join(task.classes)}; "
                           f"no images for {', '.join(absent)}")
    return kept


def label_indices(samples: Sequence[Sample], classes: Sequence[str]) -> np.ndarray:
    """Class index of each sample's label in ``classes`` (the model's output order)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({s.label for s in samples if s.label not in index})
    if unknown:
        raise DatasetError(f"labels {', '.join(unknown)} are not classes of this model ({', '.join(classes)})")
    return np.array([index[s.label] for s in samples], np.int32)


# ------------------------------------------------------------------------------------------------
# splits


@dataclass(frozen=True)
class Split:
    """A train/test split and how it was made."""

    train: list[Sample]
    test: list[Sample]
    kind: str
    seed: int
    test_fraction: float
    subsample: float | None = None


def subsample(samples: Sequence[Sample], fraction: float, seed: int = 0) -> list[Sample]:
    """A stratified, seeded subsample keeping ``fraction`` of each class (the paper used 15 %),
    at least one image per class."""
    if not 0.0 < fraction <= 1.0:
        raise DatasetError(f"subsample fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 1])
    kept: list[Sample] = []
    for label, items in _by_label(samples).items():
        n = max(1, int(round(len(items) * fraction)))
        kept.extend(items[i] for i in sorted(rng.permutation(len(items))[:n]))
    return sorted(kept, key=lambda s: s.path)


def _by_label(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.path):
        out.setdefault(s.label, []).append(s)
    return dict(sorted(out.items()))


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test fraction must be between 0 and 1, got {test_fraction}")


def split_random(samples: Sequence[Sample], test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Stratified random split: each class contributes ``test_fraction`` of its images to the test set."""
    _check_fraction(test_fraction)
    rng = np.random.default_rng([seed, 2])
    train, test = [], []
    for label, items in _by_label(samples).items():
        if len(items) < MIN_PER_CLASS:
            raise DatasetError(f"class {label!r} has {len(items)} image(s); a split needs at least {MIN_PER_CLASS}")
        n_test = min(max(1, int(round(len(items) * test_fraction))), len(items) - 1)
        order = rng.permutation(len(items))
        test.extend(items[i] for i in order[:n_test])
        train.extend(items[i] for i in order[n_test:])
    return Split(_sorted(train), _sorted(test), "random", seed, test_fraction)


def split_grouped(samples: Sequence[Sample], test_fraction: float = 0.2, seed: int = 0, attempts: int = 200) -> Split:
    """Grouped split: whole groups go to one side, so no acquisition batch is in both train and test.

    Groups of one image (names without batch information make each cell its own group) are held out
    class by class: ``test_fraction`` of each class's such images, at random, as :func:`split_random`
    would, so that a class without batches next to classes with them gets its share, not what whole
    batches leave of the target (often one or two images). For the other groups (batches), tries
    ``attempts`` seeded orders, filling the test set group by group up to ``test_fraction`` of their
    images, and keeps the order whose test fraction is closest to the target among those with every
    class on both sides.
    """
    _check_fraction(test_fraction)
    # Each sample as (group, label) codes and each attempt in NumPy: without batch information every
    # file is its own group (600,000 of them), where testing membership in a list of the chosen groups
    # was quadratic. Same seeded orders and the same choices as that loop.
    group_code: dict[str, int] = {}
    label_code: dict[str, int] = {}
    g_codes, l_codes = array("q"), array("q")
    for s in samples:
        g_codes.append(group_code.setdefault(s.group, len(group_code)))
        l_codes.append(label_code.setdefault(s.label, len(label_code)))
    groups, labels = sorted(group_code), sorted(label_code)
    if len(groups) < 2:
        raise DatasetError(f"a grouped split needs at least 2 groups; the data has {len(groups)} ({', '.join(groups)})")
    gi = _ranks(group_code, groups)[np.frombuffer(g_codes, np.int64)]  # each sample's index in groups
    li = _ranks(label_code, labels)[np.frombuffer(l_codes, np.int64)]
    size = np.bincount(gi, minlength=len(groups))
    has = np.zeros((len(groups), len(labels)), bool)  # group holds label
    has[gi, li] = True
    groups_with = has.sum(axis=0)
    for j, label in enumerate(labels):
        if groups_with[j] < 2:
            label_groups = [groups[i] for i in np.flatnonzero(has[:, j])]
            raise DatasetError(f"grouped split impossible: all images of class {label!r} are in one group "
                               f"({', '.join(label_groups)}), so it cannot be on both sides")
    lone = size == 1
    in_test = np.zeros(len(groups), bool)
    in_test[_lone_test(lone, has, groups_with, test_fraction, seed)] = True
    lone_in_test = has[in_test].sum(axis=0)  # per label
    batches = np.flatnonzero(~lone)  # all groups when every group has several images: the split as it was
    total = int(size[batches].sum())
    target = test_fraction * total
    rng = np.random.default_rng([seed, 3])
    best: tuple[float, np.ndarray] | None = None
    for _ in range(attempts if len(batches) else 0):
        order = batches[rng.permutation(len(batches))]
        chosen, n = _fill_test(order, size[order], target, total)
        counts = has[chosen].sum(axis=0) + lone_in_test  # test groups holding each label
        if not (counts > 0).all() or not (counts < groups_with).all():  # a class missing from a side
            continue
        score = abs(n / total - test_fraction)
        if best is None or score < best[0]:
            best = (score, chosen)
    if best is None and len(batches):
        raise DatasetError(f"grouped split impossible: no choice of the {len(batches)} groups puts every class "
                           "on both sides; add acquisition batches or use a random split")
    if best is not None:
        in_test[best[1]] = True
    test, train = [], []
    for s, t in zip(samples, in_test[gi].tolist()):
        (test if t else train).append(s)
    return Split(_sorted(train), _sorted(test), "grouped", seed, test_fraction)


def classes_without_batches(samples: Iterable[Sample]) -> list[str]:
    """The classes most of whose images are a group of their own (their names carry no acquisition
    batch): a grouped split holds those out image by image, as a random split does."""
    samples = list(samples)
    size = Counter(s.group for s in samples)
    lone: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for s in samples:
        total[s.label] += 1
        lone[s.label] += size[s.group] == 1
    return sorted(label for label, n in total.items() if 2 * lone[label] > n)


def _lone_test(lone: np.ndarray, has: np.ndarray, groups_with: np.ndarray, test_fraction: float,
               seed: int) -> np.ndarray:
    """The groups of one image (indices) that go to the test set: ``test_fraction`` of each class's, at
    random; a class with no other groups keeps at least one on each side."""
    rng = np.random.default_rng([seed, 4])
    chosen = []
    for j in range(has.shape[1]):
        mine = np.flatnonzero(lone & has[:, j])
        if not len(mine):
            continue
        n_test = int(round(len(mine) * test_fraction))
        if len(mine) == groups_with[j]:  # only single images: both sides from them
            n_test = min(max(1, n_test), len(mine) - 1)
        chosen.append(mine[rng.permutation(len(mine))[:n_test]])
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


def _ranks(codes: dict[str, int], names: list[str]) -> np.ndarray:
    """For each code (in order of first appearance), the position of its name in sorted ``names``."""
    ranks = np.empty(len(names), np.int64)
    ranks[[codes[name] for name in names]] = np.arange(len(names))
    return ranks


def _fill_test(order: np.ndarray, sizes: np.ndarray, target: float, total: int) -> tuple[np.ndarray, int]:
    """The groups (indices, in ``order``) that fill the test set: take groups in order until it holds
    ``target`` images, passing over a group that would leave no training image. Returns them and their
    image count."""
    before = np.cumsum(sizes) - sizes  # images taken before each group, if none is passed over
    k = int(np.searchsorted(before, target, side="left"))  # first group reached with the target met
    if not (before[:k] + sizes[:k] > total - 1).any():
        return order[:k], int(before[k]) if k < len(order) else int(sizes.sum())
    chosen, n = [], 0  # a group passed over (one holding most images): group by group
    for g, m in zip(order.tolist(), sizes.tolist()):
        if n >= target:
            break
        if n + m > total - 1:
            continue
        chosen.append(g)
        n += m
    return np.array(chosen, np.int64), n


def make_split(samples: Sequence[Sample], kind: str = "random", test_fraction: float = 0.2, seed: int = 0,
               subsample_fraction: float | None = None) -> Split:
    """Subsample (optional) then split ``samples`` the ``kind`` way ("random" or "grouped")."""
    if kind not in SPLIT_KINDS:
        raise DatasetError(f"unknown split kind {kind!r}; known: {', '.join(SPLIT_KINDS)}")
    pool = list(samples) if subsample_fraction is None else subsample(samples, subsample_fraction, seed)
    split = (split_random if kind == "random" else split_grouped)(pool, test_fraction, seed)
    return Split(split.train, split.test, split.kind, split.seed, split.test_fraction, subsample_fraction)


def _sorted(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: s.path)


# ------------------------------------------------------------------------------------------------
# manifests


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def manifest_hash(entries: Iterable[dict]) -> str:
    """SHA-256 over (subset, label, group, file hash) of every entry, sorted: it names the data and
    the split, wherever the files lie."""
    digest = _ManifestDigest()
    for e in entries:
        digest.add(e)
    return digest.hexdigest()


class _ManifestDigest:
    """The manifest hash: SHA-256 of ``"\n".join(sorted(lines))``, each line
    ``subset<TAB>label<TAB>group<TAB>file sha256`` (:func:`_hash_line`).

    Kept compactly while a 600,000-image manifest is written (as strings the lines were its reading
    step's peak memory): a line is stored as the number of its ``subset<TAB>label<TAB>group<TAB>`` prefix
    (a dataset has a few hundred) and the file's 32-byte digest, ~36 bytes instead of ~140. Sorting by
    (prefix, digest) orders the lines exactly as sorting the strings does, because no prefix can begin
    another: each ends at its third tab. A field holding a tab, or a file hash that is not 64 lowercase
    hex digits, switches to plain strings for the whole manifest."""

    def __init__(self) -> None:
        self._prefixes: dict[str, int] = {}
        self._ranks = array("i")
        self._digests = bytearray()
        self._lines: list[str] | None = None  # plain strings, once the compact form cannot be used

    def add(self, e: dict) -> None:
        if self._lines is None:
            prefix, sha = f"{e['subset']}\t{e['label']}\t{e['group']}\t", e["sha256"]
            if prefix.count("\t") == 3 and isinstance(sha, str) and _SHA256_HEX.fullmatch(sha):
                self._ranks.append(self._prefixes.setdefault(prefix, len(self._prefixes)))
                self._digests += bytes.fromhex(sha)
                return
            self._lines = list(self._compact_lines())
        self._lines.append(_hash_line(e))

    def _compact_lines(self) -> Iterable[str]:
        names = list(self._prefixes)
        for i, rank in enumerate(self._ranks):
            yield names[rank] + self._digests[32 * i:32 * i + 32].hex()

    def hexdigest(self) -> str:
        h = hashlib.sha256()
        if self._lines is not None:
            lines: Iterable[str] = sorted(self._lines)
        else:
            names = sorted(self._prefixes)
            order_of = {name: k for k, name in enumerate(names)}
            by_name = np.array([order_of[name] for name in self._prefixes], np.int64)
            ranks = by_name[np.frombuffer(self._ranks, np.int32)] if len(self._ranks) else np.zeros(0, np.int64)
            words = np.frombuffer(bytes(self._digests), ">u8").reshape(-1, 4)  # big-endian: byte order
            order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0], ranks))
            lines = (names[ranks[i]] + self._digests[32 * i:32 * i + 32].hex() for i in order)
        for i, line in enumerate(lines):
            h.update((line if i == 0 else "\n" + line).encode())
        return h.hexdigest()

    def cross_subset_copies(self, examples: int = 3) -> tuple[int, list[str]]:
        """How many images have the same content (file SHA-256) as an image of another subset, and the
        SHA-256 of up to ``examples`` such contents: copies of one picture in train and test make the
        held-out numbers look better than they are."""
        if self._lines is not None:
            subset_names = [line.split("\t", 1)[0] for line in self._lines]
            shas = [line.rsplit("\t", 1)[1] for line in self._lines]
            subsets = np.unique(np.array(subset_names), return_inverse=True)[1].ravel()
            content = np.unique(np.array(shas), return_inverse=True)[1].ravel()
            copied, first = _copied(subsets, content, examples)
            return int(copied.sum()), [shas[i] for i in first]
        if not len(self._ranks):
            return 0, []
        subset_names = sorted({p.split("\t", 1)[0] for p in self._prefixes})
        subset_of_prefix = np.array([subset_names.index(p.split("\t", 1)[0]) for p in self._prefixes])
        subsets = subset_of_prefix[np.frombuffer(self._ranks, np.int32)]
        copied, first = _copied(subsets, _content_codes(bytes(self._digests)), examples)
        return int(copied.sum()), [bytes(self._digests[32 * i:32 * i + 32]).hex() for i in first]


def _content_codes(digests: bytes) -> np.ndarray:
    """One integer per 32-byte SHA-256 in ``digests``, equal where the digests are."""
    if not digests:
        return np.zeros(0, np.int64)
    words = np.frombuffer(digests, np.uint64).reshape(-1, 4)
    return np.unique(words, axis=0, return_inverse=True)[1].ravel()


def _copied(owner: np.ndarray, content: np.ndarray, examples: int) -> tuple[np.ndarray, list[int]]:
    """Which items have the content of an item of another owner (a subset of a split; or, each image
    its own owner, any other image), and the first item of up to ``examples`` such contents. The one
    rule for copies of a picture: manifests (:meth:`_ManifestDigest.cross_subset_copies`) and datasets
    (:func:`find_copies`)."""
    if not len(content):
        return np.zeros(0, bool), []
    lowest = np.full(content.max() + 1, owner.max() + 1)
    highest = np.full(content.max() + 1, -1)
    np.minimum.at(lowest, content, owner)
    np.maximum.at(highest, content, owner)
    copied = lowest[content] != highest[content]
    items = np.flatnonzero(copied)
    _, first = np.unique(content[items], return_index=True)
    return copied, items[np.sort(first)[:examples]].tolist()


def find_copies(samples: Sequence[Sample], *, root: str | Path | None = None, examples: int = 3) -> dict:
    """The images of ``samples`` whose content (file SHA-256) is that of another image: a picture
    exported twice (``x.png``, ``x-copy.png``) can land in train and in test, which no split by name or
    group can see (training counts them as the manifests' ``copies_across_subsets``, by the same rule).

    Returns ``images`` (how many images have a copy), ``pictures`` (how many distinct pictures those
    are), ``across_classes`` (of those, pictures under more than one label) and ``examples`` (for up to
    ``examples`` pictures, the paths of its copies, relative to ``root`` when under it). Reads every
    file once; a file that cannot be read is left out (decoding it reports it)."""
    kept, digests = [], bytearray()
    for s in samples:
        try:
            digests += bytes.fromhex(file_sha256(s.path))
        except OSError:
            continue
        kept.append(s)
    content = _content_codes(bytes(digests))
    copied, first = _copied(np.arange(len(kept)), content, examples)
    labels = np.unique(np.array([s.label for s in kept]), return_inverse=True)[1].ravel()
    across, _ = _copied(labels, content, 0)

    def shown(path: str) -> str:
        rel = os.path.relpath(path, root) if root is not None else path
        return path if rel.split(os.sep, 1)[0] == os.pardir else rel

    return {
        "images": int(copied.sum()),
        "pictures": len(np.unique(content[copied])),
        "across_classes": len(np.unique(content[across])),
        "examples": [[shown(kept[i].path) for i in np.flatnonzero(content == content[k])] for k in first],
    }


def describe_copies(copies: dict) -> str:
    """One line on :func:`find_copies`'s result, for ``nscfate inspect`` and ``nscfate audit``."""
    if not copies.get("images"):
        return "copies: none (no two images have the same content)"
    across = f"; {copies['across_classes']} of them under more than one class" if copies["across_classes"] else ""
    return (f"COPIES: {copies['images']} images are copies of another image ({copies['pictures']} pictures{across}), "
            f"e.g. {'; '.join(' = '.join(paths) for paths in copies['examples'])}. Remove them before training: "
            "a copy in train and another in val or test makes the held-out numbers count pictures the model "
            "was trained on")


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _hash_line(e: dict) -> str:
    return f"{e['subset']}\t{e['label']}\t{e['group']}\t{e['sha256']}"


def write_manifest_file(path: str | Path, parts: dict[str, Sequence[Sample]], header: dict, *,
                        warn_copies: bool = True) -> str:
    """Write a split manifest: ``header`` (kind, seed, fractions...), the counts, then one JSON line per
    image (subset, path, label, group, channel, SHA-256 of the file), how many images have the content of
    an image in another subset (``copies_across_subsets``), and the manifest hash last; returns the hash.
    With ``warn_copies``, such copies are also logged as a warning (:func:`warn_copies_across_subsets`);
    a caller that may not use the split it writes passes False and warns once it does.
    Paths are stored relative to the manifest's folder when they lie under it. Entries are
    streamed to the file (a 600,000-image manifest never sits in memory whole); only what the hash is
    made of is kept, compactly (:class:`_ManifestDigest`)."""
    path = Path(path)
    base = path.parent.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {"version": MANIFEST_VERSION, **header, "counts": {k: len(v) for k, v in parts.items()}}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        digest, copies = _stream_manifest(tmp, head, parts, base)
    except BaseException:
        tmp.unlink(missing_ok=True)  # an unreadable file: no half-written manifest left behind
        raise
    os.replace(tmp, path)
    if copies and warn_copies:
        warn_copies_across_subsets(path)
    return digest


def _stream_manifest(tmp: Path, head: dict, parts: dict[str, Sequence[Sample]], base: Path) -> tuple[str, int]:
    """Write the manifest to ``tmp``; returns its hash and its number of copies across subsets."""
    digest = _ManifestDigest()
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(head)[:-1] + ', "samples": [\n')
        first = True
        for subset, items in parts.items():
            for s in items:
                file = Path(s.path).resolve()
                stored = str(file.relative_to(base)) if file.is_relative_to(base) else str(file)
                entry = {"subset": subset, "path": stored, "label": s.label, "group": s.group,
                         "channel": s.channel, "sha256": file_sha256(file)}
                f.write(("" if first else ",\n") + json.dumps(entry))
                first = False
                digest.add(entry)
        hexdigest = digest.hexdigest()
        copies, _ = digest.cross_subset_copies()
        f.write(f'\n], "copies_across_subsets": {copies}, "manifest_sha256": "{hexdigest}"}}\n')
    return hexdigest, copies


def warn_copies_across_subsets(manifest: str | Path) -> int:
    """Log a warning, naming a few, when images of a written manifest have the content of an image in
    another subset (train / val / test); returns how many do. Read back from the manifest (line by line),
    so that it can be said of the split a run actually uses, after deciding to use it."""
    digest = _ManifestDigest()
    for entry in _manifest_lines(Path(manifest)):
        digest.add(entry)
    copies, shas = digest.cross_subset_copies()
    if copies:
        log.warning("%d image(s) have the same content (file SHA-256) as an image in another subset of this "
                    "split (train / val / test): the held-out numbers count pictures the model was trained on; "
                    "remove the copies from the dataset. For example: %s", copies,
                    "; ".join(" = ".join(paths) for paths in _paths_with(Path(manifest), shas).values()))
    return copies


def _manifest_lines(manifest: Path) -> Iterable[dict]:
    """The entries of a manifest written by :func:`write_manifest_file`, one line each, streamed."""
    with manifest.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith('{"subset"'):
                yield json.loads(line.rstrip().rstrip(","))


def _paths_with(manifest: Path, shas: list[str]) -> dict[str, list[str]]:
    """``subset:path`` of a manifest's entries with these file SHA-256s."""
    wanted: dict[str, list[str]] = {sha: [] for sha in shas}
    for entry in _manifest_lines(manifest):
        if entry["sha256"] in wanted:
            wanted[entry["sha256"]].append(f"{entry['subset']}:{entry['path']}")
    return wanted


def write_split_manifest(split: Split, path: str | Path) -> str:
    """Write ``split`` as JSON with every file's SHA-256 (:func:`write_manifest_file`); returns the
    manifest hash."""
    return write_manifest_file(path, {"train": split.train, "test": split.test},
                               {"kind": split.kind, "seed": split.seed, "test_fraction": split.test_fraction,
                                "subsample": split.subsample})


def read_manifest_file(path: str | Path, subsets: Iterable[str] | None = None, *,
                       verify: bool = True) -> tuple[dict, dict[str, list[Sample]]]:
    """Read a split manifest (:func:`write_manifest_file`): its header and the samples of each subset
    (only ``subsets`` when given). The manifest hash must match its entries (a hand-edited manifest is
    refused); with ``verify``, every file returned must exist and still have its recorded SHA-256.

    Raises:
        DatasetError: not a manifest, edited, or files missing or changed.
    """
    path = Path(path)
    wanted = None if subsets is None else set(subsets)
    parts: dict[str, list[Sample]] = {}
    bad = []
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc["samples"]
        digest = manifest_hash(entries)
        for e in entries:
            if wanted is not None and e["subset"] not in wanted:
                continue
            file = Path(e["path"]) if Path(e["path"]).is_absolute() else path.parent / e["path"]
            if verify and (not file.is_file() or file_sha256(file) != e["sha256"]):
                bad.append(e["path"])
            parts.setdefault(e["subset"], []).append(Sample(str(file), e["label"], e["group"], e.get("channel")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a split manifest ({type(exc).__name__}: {exc})") from None
    if digest != doc.get("manifest_sha256"):
        raise DatasetError(f"{path}: manifest hash mismatch (the file was edited)")
    if bad:
        raise DatasetError(f"{path}: {len(bad)} file(s) missing or changed since the manifest was written, "
                           f"e.g. {', '.join(bad[:3])}")
    return doc, parts


def read_split_manifest(path: str | Path, *, verify: bool = True) -> tuple[Split, str]:
    """Read a manifest written by :func:`write_split_manifest`; returns (split, manifest hash).
    With ``verify``, every file must exist and still have its recorded SHA-256."""
    doc, parts = read_manifest_file(path, verify=verify)
    split = Split(parts.get("train", []), parts.get("test", []), doc["kind"], doc["seed"], doc["test_fraction"],
                  doc.get("subsample"))
    return split, doc["manifest_sha256"]


# ------------------------------------------------------------------------------------------------
# inspection


def inspect_dataset(source: str | Path, *, max_images: int | None = None, seed: int = 0) -> dict:
    """Counts per class, group and channel (every channel, markers included), the brightfield images
    that are copies of another (:func:`find_copies`, over all of them), and image size and bit-depth
    statistics of the brightfield images (decoded headers and pixels; at most ``max_images`` of them,
    chosen at random with ``seed``, when given)."""
    from nscfate.io import decode_image

    samples = read_dataset(source, channel=None, allow_marker_channels=True)
    channels = Counter("none" if s.channel is None else str(s.channel) for s in samples)
    images = [s for s in samples if s.channel in (None, BRIGHTFIELD_CHANNEL)]
    per_class = Counter(s.label for s in images)
    per_group = Counter(s.group for s in images)
    class_group: dict[str, dict[str, int]] = {}
    for s in images:
        class_group.setdefault(s.label, Counter())[s.group] += 1
    chosen = images
    if max_images is not None and len(images) > max_images:
        idx = np.random.default_rng(seed).choice(len(images), max_images, replace=False)
        chosen = [images[i] for i in sorted(idx)]
    heights, widths, depths, formats, errors = [], [], Counter(), Counter(), Counter()
    for s in chosen:
        try:
            info = decode_image(s.path).info
        except ImageError as exc:
            errors[exc.code] += 1
            continue
        heights.append(info.original_shape[0])
        widths.append(info.original_shape[1])
        depths[f"{info.bit_depth}-bit {info.dtype}"] += 1
        formats[info.format + (" (OME)" if info.ome else "")] += 1

    def stats(values: list[int]) -> dict:
        if not values:
            return {}
        return {"min": int(np.min(values)), "median": float(np.median(values)), "max": int(np.max(values))}

    return {
        "source": str(source),
        "images": len(images),
        "files": len(samples),
        "classes": dict(sorted(per_class.items())),
        "groups": dict(sorted(per_group.items())),
        "class_groups": {k: dict(sorted(v.items())) for k, v in sorted(class_group.items())},
        "channels": dict(sorted(channels.items())),
        "copies": find_copies(images, root=Path(source) if Path(source).is_dir() else Path(source).parent),
        "decoded": len(heights),
        "height": stats(heights),
        "width": stats(widths),
        "bit_depths": dict(depths),
        "formats": dict(formats),
        "unreadable": dict(errors),
    }


def samples_to_dicts(samples: Iterable[Sample]) -> list[dict]:
    return [asdict(s) for s in samples]
