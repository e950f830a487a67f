"""Shortcut audit: can the labels be predicted from things that are not the cell?

``nscfate audit DATA`` fits logistic-regression baselines (``nscfate.baselines``) on hand features
of the decoded images (raw intensities: the absolute background level is exactly what a shortcut
would use) and scores them on a held-out part:

=================  ======================================================  =====================
baseline           features                                                far above chance means
=================  ======================================================  =====================
background         border grey level and noise, frame mean/SD              a background shortcut
                                                                           (acquisition differs by
                                                                           class): WARNING
crop size          crop height and width                                   an export artefact:
                                                                           WARNING
size + intensity   cell area/diameter, intensity inside the cell, ...      reference only (cell
                                                                           size is real biology)
=================  ======================================================  =====================

"Far above chance": accuracy >= chance + :data:`MARGIN`, where chance is the majority-class share of
the test part. That margin is large enough that a clean benchmark's few-hundred-image test part stays
quiet, and small enough that a shortcut which separates even one class of four (e.g. the real
oligodendrocyte background, which lifts 4-class accuracy from 0.25 to about 0.5) is flagged.
Per-class recall says which class the shortcut gives away.

The audit also says how many images are copies of another (``nscfate.data.find_copies``, over the
whole dataset): not a shortcut, but a copy in train and another in test inflates any held-out number.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: Accuracy above chance (absolute) from which a shortcut baseline is flagged.
MARGIN = 0.15
#: Below this many test images an audit that flags nothing cannot say there is no shortcut: the
#: baselines' accuracy is too noisy to tell chance from a strong cue.
MIN_TEST_IMAGES = 100
#: Baselines: name -> (feature set of nscfate.baselines, columns kept or None for all, flags shortcuts).
BASELINES: dict[str, tuple[str, tuple[str, ...] | None, bool]] = {
    "background": ("background", None, True),
    "crop_size": ("size_intensity", ("height", "width"), True),
    "size_intensity": ("size_intensity", None, False),
}


@dataclass(frozen=True)
class BaselineResult:
    name: str
    accuracy: float
    chance: float
    per_class_recall: dict[str, float]
    shortcut_check: bool  # whether this baseline flags a shortcut when far above chance
    flagged: bool


@dataclass(frozen=True)
class AuditReport:
    data: str
    task: str
    n_train: int
    n_test: int
    classes: tuple[str, ...]
    results: tuple[BaselineResult, ...]
    warnings: tuple[str, ...] = field(default=())
    copies: dict = field(default_factory=dict)  # nscfate.data.find_copies of the dataset
    unreadable: tuple[str, ...] = field(default=())  # files of the subset that could not be decoded (left out)

    @property
    def flagged(self) -> bool:
        return any(r.flagged for r in self.results)

    @property
    def conclusive(self) -> bool:
        """Whether the audit can tell: a flagged shortcut always, "none found" only with enough images."""
        return self.flagged or self.n_test >= MIN_TEST_IMAGES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flagged"], d["conclusive"] = self.flagged, self.conclusive
        return d


def _features(images: Sequence[np.ndarray], kind: str, columns: tuple[str, ...] | None) -> np.ndarray:
    from nscfate.baselines import SIZE_INTENSITY_FEATURES, feature_matrix

    x = feature_matrix(images, kind)
    if columns is None:
        return x
    idx = [SIZE_INTENSITY_FEATURES.index(c) for c in columns]
    return x[:, idx]


def audit_arrays(train_images: Sequence[np.ndarray], train_labels: Sequence[str], test_images: Sequence[np.ndarray],
                 test_labels: Sequence[str], classes: Sequence[str], *, data: str = "", task: str = "") -> AuditReport:
    """Run every baseline on decoded images (2-D float arrays) with medium-key labels."""
    from nscfate.baselines import LogisticRegression

    test_labels = np.asarray(test_labels)
    shares = [float(np.mean(test_labels == c)) for c in classes]
    chance = max(shares)
    results, warnings = [], []
    for name, (kind, columns, check) in BASELINES.items():
        model = LogisticRegression().fit(_features(train_images, kind, columns), np.asarray(train_labels))
        pred = model.predict(_features(test_images, kind, columns))
        acc = float(np.mean(pred == test_labels))
        recall = {c: float(np.mean(pred[test_labels == c] == c)) if np.any(test_labels == c) else float("nan")
                  for c in classes}
        flagged = check and acc >= chance + MARGIN
        results.append(BaselineResult(name, acc, chance, recall, check, flagged))
        if flagged:
            best = max(recall, key=lambda c: recall[c])
            warnings.append(
                f"SHORTCUT: a {name.replace('_', ' ')}-only classifier reaches {acc:.1%} accuracy "
                f"(chance {chance:.1%}); class {best!r} is recognised at {recall[best]:.1%} recall without "
                "looking at the cell. A model trained on this data can score well for the wrong reason. "
                "Acquire all classes in the same batches with the same settings, or remove the artefact, "
                "before trusting its accuracy (a grouped split does not remove a class-level confound).")
    return AuditReport(data=data, task=task, n_train=len(train_images), n_test=len(test_images),
                       classes=tuple(classes), results=tuple(results), warnings=tuple(warnings))


def audit(data: str | os.PathLike, *, task: str = "medium4", channel: int = 1, max_images: int = 4000,
          test_fraction: float = 0.3, seed: int = 0) -> AuditReport:
    """Audit a dataset: read it, take a seeded class-stratified subset of at most ``max_images``
    images, decode them, and run :func:`audit_arrays` on a stratified random split; count the copies
    of one picture among all its images."""
    from dataclasses import replace

    from nscfate.classes import get_task
    from nscfate.data import find_copies, read_dataset
    from nscfate.errors import DatasetError, ImageError
    from nscfate.io import decode_image

    classes = [c for c in get_task(task).classes]
    samples = read_dataset(data, task=task, channel=channel)
    rng = np.random.default_rng(seed)
    by_class = {c: [s for s in samples if s.label == c] for c in classes}
    present = [c for c in classes if by_class[c]]
    if len(present) < 2:
        raise DatasetError(f"the audit needs images of at least two classes of {task}; found {present}")
    per_class = max(2, max_images // len(present))
    train_x, train_y, test_x, test_y, unreadable = [], [], [], [], []
    for c in present:
        chosen = [by_class[c][i] for i in rng.permutation(len(by_class[c]))[:per_class]]
        n_test = max(1, int(round(len(chosen) * test_fraction)))
        for i, s in enumerate(chosen):
            try:
                pixels = decode_image(s.path).pixels
            except ImageError as exc:  # one broken file is reported, as inspect does; it does not end the audit
                log.warning("left out of the audit: %s (%s)", s.path, exc)
                unreadable.append(s.path)
                continue
            (test_x if i < n_test else train_x).append(pixels)
            (test_y if i < n_test else train_y).append(c)
    report = audit_arrays(train_x, train_y, test_x, test_y, present, data=os.fspath(data), task=task)
    root = data if os.path.isdir(data) else os.path.dirname(os.fspath(data))
    return replace(report, copies=find_copies(samples, root=root), unreadable=tuple(unreadable))


def format_report(report: AuditReport) -> str:
    """Human-readable table plus the warnings, and the copies of one picture."""
    from nscfate.data import describe_copies

    lines = [f"shortcut audit of {report.data} (task {report.task}; {report.n_train} train / {report.n_test} test images)",
             "", f"{'baseline':<16}{'accuracy':>10}{'chance':>9}  per-class recall", ""]
    for r in report.results:
        recall = "  ".join(f"{c}={v:.2f}" for c, v in r.per_class_recall.items())
        mark = "  <-- SHORTCUT" if r.flagged else ("" if r.shortcut_check else "  (reference)")
        lines.append(f"{r.name:<16}{r.accuracy:>10.3f}{r.chance:>9.3f}  {recall}{mark}")
    lines.append("")
    if report.warnings:
        banner = "!" * 78
        lines += [banner, *report.warnings, banner]
    elif not report.conclusive:
        lines.append(f"too few images to tell: {report.n_test} test images (at least {MIN_TEST_IMAGES} are needed "
                     "to tell a shortcut from chance); audit more images of each class")
    else:
        lines.append("no shortcut found: background-only and crop-size-only baselines are near chance")
    if report.copies:
        lines += ["", describe_copies(report.copies)]
    if report.unreadable:
        lines += ["", f"UNREADABLE: {len(report.unreadable)} image(s) could not be decoded and were left out, "
                      f"e.g. {report.unreadable[0]}"]
    return "\n".join(lines) + "\n"
