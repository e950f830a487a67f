"""Evaluation of a model directory on a labelled dataset: metrics, plots and a readable report.

``nscfate evaluate MODEL_DIR --data DIR --out OUT_DIR`` writes into OUT_DIR:

- ``metrics.json``: accuracy, balanced accuracy, macro-F1, macro AUC, ECE, per-class precision/recall/
  F1/AUC, confusion matrix, 95% intervals (Wilson for accuracy, bootstrap for the others), accuracy per acquisition batch (group;
  listed up to 1,000 groups, summarised always), and the
  model's own random-split vs grouped-split test numbers from its ``metrics.json``;
- ``confusion_matrix.png`` (paper Fig. 4), ``roc.png`` (one-vs-rest, paper Fig. 3),
  ``reliability.png`` (calibration), ``per_group_accuracy.png``;
- ``report.md`` and ``report.html`` (the same content, images linked).

Images go through :class:`nscfate.Predictor`, the one inference path, in batches; only the
probabilities are kept, so memory does not grow with the images.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nscfate import metrics as M

log = logging.getLogger(__name__)

PLOTS = ("confusion_matrix.png", "roc.png", "reliability.png", "per_group_accuracy.png")
# Acquisition batches are tens to hundreds. More groups than this (e.g. one per image, when the file
# names carry no batch) are not listed in metrics.json, and more than MAX_GROUP_BARS are drawn as a
# histogram of their accuracies rather than a bar each (a bar per image made a plot too wide to save).
MAX_GROUPS_LISTED = 1000
MAX_GROUP_BARS = 80


def predict_samples(predictor, samples: Sequence, batch_size: int = 64, progress: bool = False):
    """Predict dataset samples (``nscfate.data.Sample``) in batches.

    Returns ``(labels, probs, groups, refused)``: integer labels in the predictor's class order, float32
    probabilities, group keys, and ``[(path, ImageError)]`` for images that could not be used.
    """
    from nscfate.errors import ImageError

    index = {c: i for i, c in enumerate(predictor.classes)}
    # Filled in place: a list of per-image arrays would cost ~150 bytes an image (600,000 images: 90 MB).
    n = len(samples)
    labels, probs, used = np.empty(n, np.int64), np.empty((n, len(predictor.classes)), np.float32), np.zeros(n, bool)
    groups, refused = [], []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="evaluate", unit="img", mininterval=5)
    for start in range(0, n, batch_size):
        chunk = samples[start:start + batch_size]
        results = predictor.predict_many([s.path for s in chunk], batch_size=batch_size)
        for i, (sample, result) in enumerate(zip(chunk, results), start):
            if isinstance(result, ImageError):
                refused.append((sample.path, result))
                continue
            labels[i], probs[i], used[i] = index[sample.label], result.probabilities, True
            groups.append(sample.group)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return labels[used], probs[used], groups, refused


def per_group_accuracy(labels: np.ndarray, probs: np.ndarray, groups: Sequence[str]) -> dict[str, dict]:
    """Accuracy of each group (acquisition batch): spread across groups shows batch effects. One pass
    over the images, however many groups (a dataset without batch information has one per image)."""
    names, index = np.unique(np.asarray([str(g) for g in groups], dtype=object), return_inverse=True)
    correct = np.asarray(probs).argmax(axis=1) == np.asarray(labels)
    n = np.bincount(index, minlength=len(names))
    right = np.bincount(index, weights=correct, minlength=len(names))
    return {str(g): {"n": int(k), "accuracy": float(r / k) if k else None} for g, k, r in zip(names, n, right)}


def group_summary(per_group: dict[str, dict]) -> dict[str, Any]:
    """How many groups, their sizes and the spread of their accuracies (what the report says of them)."""
    sizes = np.array([g["n"] for g in per_group.values()])
    accs = np.array([g["accuracy"] for g in per_group.values() if g["accuracy"] is not None])
    return {"groups": len(per_group), "median_images": float(np.median(sizes)) if sizes.size else 0.0,
            "accuracy_min": float(accs.min()) if accs.size else None,
            "accuracy_max": float(accs.max()) if accs.size else None}


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], out_dir: str | os.PathLike,
                         *, groups: Sequence[str] | None = None, display_names: dict[str, str] | None = None,
                         model_card: dict | None = None, model_metrics: dict | None = None,
                         title: str = "Evaluation", n_boot: int = 1000, seed: int = 0,
                         extra: dict | None = None) -> dict[str, Any]:
    """Metrics, plots and report for given predictions; returns the metrics dict (also in metrics.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = M.summarize(labels, probs, classes, n_boot=n_boot, seed=seed)
    if groups is not None:
        per_group = per_group_accuracy(labels, probs, groups)
        metrics["per_group_summary"] = group_summary(per_group)
        if len(per_group) <= MAX_GROUPS_LISTED:
            metrics["per_group"] = per_group
    if model_metrics:
        metrics["model_reported"] = {split: {k: m.get(k) for k in ("n", "accuracy", "accuracy_ci95", "macro_auc")}
                                     for split, m in model_metrics.items() if isinstance(m, dict) and "accuracy" in m}
    if extra:
        metrics.update(extra)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    names = [display_names.get(c, c) if display_names else c for c in classes]
    plot_confusion_matrix(np.asarray(metrics["confusion_matrix"]), names, out / "confusion_matrix.png")
    plot_roc(labels, probs, names, out / "roc.png")
    plot_reliability(labels, probs, out / "reliability.png", ece=metrics["ece"])
    plot_per_group(per_group if groups is not None else {}, out / "per_group_accuracy.png")
    write_report(metrics, out, title=title, display_names=display_names or {}, model_card=model_card)
    return metrics


def evaluate(model: str | os.PathLike | None, data: str | os.PathLike, out_dir: str | os.PathLike, *,
             channel: int | None = None, batch_size: int = 64, n_boot: int = 1000, limit: int | None = None,
             subset: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a model directory (or registered name) on every image of a labelled dataset (IFC
    ``channel``, default 1), or on one ``subset`` of a training run's split manifest (``split.json``:
    train, val, test, grouped_test; default test). An option that does not apply to the data given is
    an error, not silently ignored."""
    from nscfate.data import BRIGHTFIELD_CHANNEL, SampleTable, read_dataset
    from nscfate.errors import DatasetError
    from nscfate.predictor import Predictor

    from_manifest = os.fspath(data).endswith(".json")
    if from_manifest and channel is not None:
        raise DatasetError(f"{os.fspath(data)} is a split manifest, which lists its files; a channel applies to a "
                           "dataset folder only")
    if not from_manifest and subset is not None:
        raise DatasetError(f"{os.fspath(data)} is a dataset, not a training run's split.json; a subset "
                           "(train, val, test, grouped_test) applies to a split manifest only")
    predictor = Predictor.load(model, batch_size=batch_size)
    if from_manifest:
        from nscfate.training import read_manifest

        subset = subset or "test"
        listed = read_manifest(data, subset)
        # a binary model on a 4-medium run's split: its own classes only
        samples = [s for s in listed if s.label in predictor.classes]
        if not samples:
            raise DatasetError(f"{os.fspath(data)} ({subset}) has no images of {predictor.name}'s classes "
                               f"({', '.join(predictor.classes)}); its labels: "
                               f"{', '.join(sorted({s.label for s in listed}))}")
    else:
        # compact: ~100 bytes an image where the list of Samples takes ~200 (600,000 images: 60 MB less)
        samples = SampleTable(read_dataset(data, task=predictor.task,
                                           channel=BRIGHTFIELD_CHANNEL if channel is None else channel))
        trained_on = predictor.info.metadata.get("training_data", {}).get("path")
        if trained_on and Path(trained_on).resolve() == Path(data).resolve():
            log.warning("%s is the dataset %s was trained on: these numbers include its training images; "
                        "evaluate its run's split.json (--subset test or grouped_test) or new data instead",
                        os.fspath(data), predictor.name)
    if limit is not None:
        rng = np.random.default_rng(0)
        samples = [samples[i] for i in sorted(rng.permutation(len(samples))[:limit])]
    labels, probs, groups, refused = predict_samples(predictor, samples, batch_size, progress=progress)
    for path, exc in refused[:20]:
        log.warning("skipped %s: %s", path, exc)
    if refused:
        log.warning("%d of %d images could not be used", len(refused), len(samples))
    if not len(labels):
        from nscfate.errors import DatasetError

        raise DatasetError(f"no usable images in {data}")
    card = predictor.card()
    return evaluate_predictions(
        labels, probs, predictor.classes, out_dir, groups=groups, display_names=predictor.display_names,
        model_card=card, model_metrics=predictor.info.metrics, n_boot=n_boot,
        title=f"Evaluation of {predictor.name} {predictor.version} on {os.fspath(data)}"
              + (f" ({subset})" if from_manifest else ""),
        extra={"model": {"name": predictor.name, "version": predictor.version}, "data": os.fspath(data),
               "subset": subset if from_manifest else None, "refused": len(refused)},
    )


# --------------------------------------------------------------------------------------- plots

def card_plots(predictions: dict[str, tuple[np.ndarray, np.ndarray]], classes: Sequence[str],
               display_names: dict[str, str] | None = None) -> list[tuple[str, str, bytes]]:
    """The plots a model card carries, as ``(file name, title, PNG bytes)``: for the first held-out
    split of ``test``, ``val`` that has predictions, the confusion matrix, one-vs-rest ROC curves and the
    reliability diagram; and the confusion matrix of ``grouped_test`` (unseen acquisition batches)
    when there is one.

    Args:
        predictions: split name -> (integer labels, probabilities ``(n, classes)``).
    """
    import tempfile

    names = [display_names.get(c, c) if display_names else c for c in classes]
    k = len(classes)
    main = next((s for s in ("test", "val") if len(predictions.get(s, ((), ()))[0])), None)
    jobs = []
    if main is not None:
        labels, probs = predictions[main]
        n = len(labels)
        cm = M.confusion_matrix(labels, probs.argmax(axis=1), k)
        jobs += [
            (f"confusion_matrix_{main}.png", f"Confusion matrix, {main} split (n={n})",
             lambda path, cm=cm: plot_confusion_matrix(cm, names, path)),
            (f"roc_{main}.png", f"One-vs-rest ROC curves, {main} split (n={n})",
             lambda path, lab=labels, pr=probs: plot_roc(lab, pr, names, path)),
            (f"reliability_{main}.png", f"Calibration (reliability diagram), {main} split (n={n})",
             lambda path, lab=labels, pr=probs: plot_reliability(lab, pr, path, ece=M.expected_calibration_error(lab, pr))),
        ]
    if len(predictions.get("grouped_test", ((), ()))[0]):
        labels, probs = predictions["grouped_test"]
        cm = M.confusion_matrix(labels, probs.argmax(axis=1), k)
        jobs.append(("confusion_matrix_grouped_test.png",
                     f"Confusion matrix, unseen acquisition batches (n={len(labels)})",
                     lambda path, cm=cm: plot_confusion_matrix(cm, names, path)))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for file, title, draw in jobs:
            path = Path(tmp) / file
            draw(path)
            out.append((file, title, path.read_bytes()))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: np.ndarray, names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix with counts (paper Fig. 4 style)."""
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(names), 1.2 + 1.2 * len(names)))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted condition")
    ax.set_ylabel("true condition (medium)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(labels: np.ndarray, probs: np.ndarray, names: Sequence[str], path: Path) -> None:
    """One-vs-rest ROC curve per class with its AUC (paper Fig. 3 style)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for k, name in enumerate(names):
        positive = labels == k
        if 0 < positive.sum() < labels.size:
            fpr, tpr, _ = M.roc_curve(positive, probs[:, k])
            drawn = M.roc_corners(fpr, tpr)
            ax.plot(fpr[drawn], tpr[drawn], label=f"{name} (AUC {M.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("one-vs-rest ROC")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(labels: np.ndarray, probs: np.ndarray, path: Path, ece: float | None = None,
                     n_bins: int = 15) -> None:
    """Reliability diagram: accuracy vs mean confidence per confidence bin."""
    plt = _pyplot()
    bins = M.reliability_bins(labels, probs, n_bins)
    centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    filled = bins["count"] > 0
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(centres[filled], bins["accuracy"][filled], width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="C3", ms=4, label="bin mean confidence")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability" + (f" (ECE {ece:.3f})" if ece is not None else ""))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_per_group(per_group: dict[str, dict], path: Path) -> None:
    """Accuracy per acquisition batch: a bar each, or a histogram when there are many."""
    plt = _pyplot()
    names = [g for g in per_group if per_group[g]["accuracy"] is not None]
    many = len(names) > MAX_GROUP_BARS
    fig, ax = plt.subplots(figsize=(6 if many else max(4, 0.5 * len(names) + 2), 3.5))
    if many:
        ax.hist([per_group[g]["accuracy"] for g in names], bins=20, range=(0, 1), color="C0")
        ax.set_xlabel("accuracy of a group")
        ax.set_ylabel("groups")
        ax.set_title(f"accuracy of {len(names)} groups (acquisition batches)")
    else:
        if names:
            ax.bar(range(len(names)), [per_group[g]["accuracy"] for g in names], color="C0")
            ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no group information", ha="center", va="center")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title("accuracy per acquisition batch (group)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -------------------------------------------------------------------------------------- report

def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ci(m: dict, key: str) -> str:
    ci = m.get(f"{key}_ci95")
    return f"{_f(m.get(key))} [{_f(ci[0])}, {_f(ci[1])}]" if ci and None not in ci else _f(m.get(key))


def report_markdown(metrics: dict, *, title: str, display_names: dict[str, str], model_card: dict | None) -> str:
    """The report as Markdown (images referenced by file name)."""
    lines = [f"# {title}", ""]
    if model_card:
        lines += [f"Model `{model_card['name']}` {model_card['version']} ({model_card['arch']}, task "
                  f"`{model_card['task']}`), trained on: {model_card.get('trained_on', 'unknown')}."]
        if model_card.get("synthetic_training_data"):
            lines += ["", "**The model was trained on synthetic data.**"]
        lines.append("")
    lines += [
        "| metric | value [95% CI: Wilson for accuracy, bootstrap for the others] |", "|---|---|",
        f"| images | {metrics['n']}"
        + (f" ({metrics['refused']} more could not be read, left out)" if metrics.get("refused") else "") + " |",
        f"| accuracy | {_ci(metrics, 'accuracy')} |",
        f"| balanced accuracy | {_ci(metrics, 'balanced_accuracy')} |",
        f"| macro-F1 | {_ci(metrics, 'macro_f1')} |",
        f"| macro AUC (one-vs-rest) | {_ci(metrics, 'macro_auc')} |",
        f"| expected calibration error | {_f(metrics.get('ece'))} |",
        "",
        "## Per class", "",
        "| class | support | precision | recall | F1 | AUC |", "|---|---|---|---|---|---|",
    ]
    for c, m in metrics["per_class"].items():
        lines.append(f"| {display_names.get(c, c)} | {m['support']} | {_f(m['precision'])} | {_f(m['recall'])} | "
                     f"{_f(m['f1'])} | {_f(m['auc'])} |")
    reported = metrics.get("model_reported")
    if reported:
        lines += ["", "## Random split vs grouped split (from the model's own held-out evaluation)", "",
                  "A random split puts images of the same acquisition batch on both sides; a grouped split "
                  "holds out whole batches. A large gap means the model leans on batch effects.", "",
                  "| split | n | accuracy | macro AUC |", "|---|---|---|---|"]
        for split, m in reported.items():
            acc = _f(m.get("accuracy"))
            if m.get("accuracy_ci95"):
                acc += f" [{_f(m['accuracy_ci95'][0])}, {_f(m['accuracy_ci95'][1])}]"
            lines.append(f"| {split} | {m.get('n', '-')} | {acc} | {_f(m.get('macro_auc'))} |")
    groups = metrics.get("per_group_summary")
    if groups and groups["groups"]:
        lines += ["", "## Per acquisition batch", ""]
        if groups["median_images"] <= 1:
            lines += [f"{groups['groups']} groups, most of them a single image: most file names carry no "
                      "acquisition batch, so accuracy per batch cannot be told (see docs/DATA.md for the naming)."]
        else:
            lines += [f"{groups['groups']} groups (median {groups['median_images']:g} images); accuracy from "
                      f"{_f(groups['accuracy_min'])} to {_f(groups['accuracy_max'])}.", "",
                      "![accuracy per group](per_group_accuracy.png)"]
    lines += ["", "## Plots", "", "![confusion matrix](confusion_matrix.png)", "", "![ROC curves](roc.png)", "",
              "![reliability diagram](reliability.png)", ""]
    return "\n".join(lines)


def write_report(metrics: dict, out: Path, *, title: str, display_names: dict[str, str],
                 model_card: dict | None) -> None:
    """Write report.md and a self-contained-looking report.html (same content, images beside it)."""
    md = report_markdown(metrics, title=title, display_names=display_names, model_card=model_card)
    (out / "report.md").write_text(md, encoding="utf-8")
    (out / "report.html").write_text(_markdown_to_html(md, title), encoding="utf-8")


def _markdown_to_html(md: str, title: str) -> str:
    """Just enough Markdown (headings, tables, images, paragraphs, bold) for our own reports."""
    import re

    body, table = [], []

    def flush_table():
        if table:
            rows = [r for r in table if not re.fullmatch(r"\|[-| ]+\|", r)]
            cells = [[html.escape(c.strip()) for c in r.strip("|").split("|")] for r in rows]
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
                        + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif m := re.fullmatch(r"!\[(.*)\]\((.*)\)", line):
            body.append(f'<p><img src="{html.escape(m[2])}" alt="{html.escape(m[1])}"></p>')
        elif line.strip():
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
            text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
            body.append(f"<p>{text}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.3em .6em}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
