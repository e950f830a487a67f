"""The model directory: a trained model and everything needed to trust and serve it.

::

    model.keras          Keras 3 model (preprocessing layers inside); weights float32 or float16
    labels.json          task and ordered classes with display names (index = output index)
    config.json          the training config that produced it
    metrics.json         held-out evaluation
    metadata.json        name, version, versions of nscfate/TF/Keras/NumPy/Python, date, git SHA,
                         data manifest hash, input contract, weights dtype, golden tolerance
    README.md            model card (says plainly when the training data was synthetic)
    golden_input.npy     a few prepared inputs, float32 (n, h, w, 1)
    golden_output.npy    the model's probabilities for them, float32 (n, classes)
    plots/*.png          the card's plots (confusion matrix, ROC, calibration on held-out data), listed
                         with their titles in metadata.json; optional
    checksums.sha256     sha256 of every file above, ``sha256sum -c`` format

Half precision: ResNet50 in float32 is ~95 MB, over the 50 MB budget of a shipped directory. With
``weights_dtype="float16"`` the weight arrays inside ``model.keras`` are stored as float16; the model's
variables stay float32 (Keras casts on assignment when loading), so inference runs in float32 and the
golden pair, computed from the float16-rounded weights, reproduces.

:func:`read_model_dir` parses the JSON files without importing TensorFlow (cheap, for listings);
:func:`load_keras_model` loads the network; :func:`verify_model_dir` checks checksums and the golden pair.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import os
import platform
import re
import secrets
import shutil
import subprocess
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nscfate import __version__
from nscfate.classes import get_task
from nscfate.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
METADATA_FILE = "metadata.json"
CARD_FILE = "README.md"
GOLDEN_INPUT_FILE = "golden_input.npy"
GOLDEN_OUTPUT_FILE = "golden_output.npy"
CHECKSUMS_FILE = "checksums.sha256"
PLOTS_DIR = "plots"
#: Every file of a model directory except the checksum list itself.
CONTENT_FILES: tuple[str, ...] = (MODEL_FILE, LABELS_FILE, CONFIG_FILE, METRICS_FILE, METADATA_FILE,
                                  CARD_FILE, GOLDEN_INPUT_FILE, GOLDEN_OUTPUT_FILE)
#: Size budget of a shipped model directory (bytes).
MAX_MODEL_DIR_BYTES = 50_000_000
#: Golden-pair tolerance (max abs difference of probabilities): covers CPU/GPU and oneDNN round-off.
DEFAULT_GOLDEN_ATOL = 1e-3
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory says about its model (parsed JSON; no TensorFlow needed)."""

    path: Path
    name: str
    version: str
    task: str
    arch: str
    classes: tuple[str, ...]
    display_names: dict[str, str]
    input_size: tuple[int, int]
    metadata: dict[str, Any] = field(repr=False)
    metrics: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(repr=False)

    @property
    def synthetic(self) -> bool:
        """Whether the training data was synthetic (from the metadata)."""
        return bool(self.metadata.get("training_data", {}).get("synthetic", False))

    @property
    def plots(self) -> list[tuple[str, Path]]:
        """The card's plots as (title, PNG path), in the order the metadata lists them."""
        return [(p["title"], self.path / p["file"]) for p in self.metadata.get("plots", [])]

    def card(self) -> dict[str, Any]:
        """A short JSON-able description for listings and the web app."""
        test = self.metrics.get("test", {}) if isinstance(self.metrics.get("test"), dict) else {}
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "arch": self.arch,
            "classes": [{"key": k, "display_name": self.display_names[k]} for k in self.classes],
            "input_size": list(self.input_size),
            "trained_on": self.metadata.get("training_data", {}).get("description", "unknown"),
            "synthetic_training_data": self.synthetic,
            "test_accuracy": test.get("accuracy"),
            "test_split": self.metadata.get("training_data", {}).get("split"),  # how test was held out
            "grouped_test_accuracy": self.metrics.get("grouped_test", {}).get("accuracy")
            if isinstance(self.metrics.get("grouped_test"), dict) else None,
            "created": self.metadata.get("created"),
        }


# ----------------------------------------------------------------------------------------- reading

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"model directory {path.parent} has no {path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON: {exc}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_checksums(path: str | os.PathLike) -> None:
    """Raise :class:`ModelError` unless every file listed in ``checksums.sha256`` exists and matches, and
    every content file is listed."""
    root = Path(path)
    listing = root / CHECKSUMS_FILE
    if not listing.is_file():
        raise ModelError(f"model directory {root} has no {CHECKSUMS_FILE}")
    expected: dict[str, str] = {}
    for line in listing.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, _, name = line.partition("  ")
            expected[name.strip()] = digest.strip()
    missing = [f for f in (*CONTENT_FILES, *_plot_files(root)) if f not in expected]
    if missing:
        raise ModelError(f"{listing} does not list {', '.join(missing)}")
    for name, digest in expected.items():
        file = root / name
        if not file.is_file():
            raise ModelError(f"model directory {root} has no {name}")
        if sha256_file(file) != digest:
            raise ModelError(f"checksum mismatch for {file}: the model directory was modified or is corrupt")


def _plot_files(root: Path) -> list[str]:
    """The plot files (PNG) present in a model directory, as relative POSIX paths; other files a copy
    may bring along (e.g. a desktop's .DS_Store) are not part of the model."""
    folder = root / PLOTS_DIR
    return sorted(f"{PLOTS_DIR}/{p.name}" for p in folder.glob("*.png") if p.is_file()) if folder.is_dir() else []


def read_model_dir(path: str | os.PathLike, *, check: bool = True) -> ModelInfo:
    """Parse a model directory's JSON files (and, with ``check``, verify its checksums).

    Raises:
        ModelError: missing or malformed files, checksum mismatch.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelError(f"{root} is not a model directory")
    if check:
        check_checksums(root)
    labels = _read_json(root / LABELS_FILE)
    meta = _read_json(root / METADATA_FILE)
    try:
        classes = tuple(c["key"] for c in labels["classes"])
        display = {c["key"]: c["display_name"] for c in labels["classes"]}
        h, w = meta["input"]["shape"][:2]
        return ModelInfo(path=root, name=meta["name"], version=meta["version"], task=labels["task"],
                         arch=meta["arch"], classes=classes, display_names=display, input_size=(int(h), int(w)),
                         metadata=meta, metrics=_read_json(root / METRICS_FILE),
                         config=_read_json(root / CONFIG_FILE))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{root}: labels.json/metadata.json lack a required field ({exc!r})") from None


def load_keras_model(path: str | os.PathLike):
    """Load ``model.keras`` of a model directory (float32 variables, no optimizer)."""
    import keras

    import nscfate.layers  # noqa: F401  (registers the custom layers for deserialisation)

    file = Path(path) / MODEL_FILE
    if not file.is_file():
        raise ModelError(f"model directory {path} has no {MODEL_FILE}")
    try:
        return keras.models.load_model(file, compile=False)
    except (ValueError, OSError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelError(f"cannot load {file}: {exc}") from None


def verify_model_dir(path: str | os.PathLike, atol: float | None = None, model=None) -> ModelInfo:
    """Full check: checksums, JSON files, the model loads, and its output on ``golden_input.npy`` is
    within ``atol`` (default: the directory's ``golden_atol``) of ``golden_output.npy``.

    Returns the :class:`ModelInfo`; raises :class:`ModelError` on any failure.
    """
    info = read_model_dir(path, check=True)
    model = model if model is not None else load_keras_model(path)
    golden_in = np.load(Path(path) / GOLDEN_INPUT_FILE)
    golden_out = np.load(Path(path) / GOLDEN_OUTPUT_FILE)
    got = np.asarray(model(golden_in, training=False), dtype=np.float32)
    tol = float(atol if atol is not None else info.metadata.get("golden_atol", DEFAULT_GOLDEN_ATOL))
    check_golden(got, golden_out, tol, where=str(path))
    return info


def check_golden(got: np.ndarray, want: np.ndarray, atol: float, where: str = "model") -> float:
    """Max abs difference of ``got`` and ``want``; :class:`ModelError` when shapes differ or it exceeds
    ``atol``."""
    if got.shape != want.shape:
        raise ModelError(f"{where}: golden output shape {want.shape}, model gives {got.shape}")
    diff = float(np.max(np.abs(got - want)))
    if not diff <= atol:
        raise ModelError(f"{where}: golden pair does not reproduce (max difference {diff:.2e} > {atol:.0e})")
    return diff


# ----------------------------------------------------------------------------------------- writing

def _git_sha() -> str | None:
    """The git commit of the source tree nscfate runs from, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"nscfate": __version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _store_weights_half(keras_file: Path) -> None:
    """Rewrite the float32 weight arrays inside a ``.keras`` archive as float16 (same layout)."""
    import h5py

    def half(name, obj, dst):
        if isinstance(obj, h5py.Dataset):
            arr = obj[()]
            if arr.dtype == np.float32:
                largest = float(np.max(np.abs(arr), initial=0.0))
                if largest > float(np.finfo(np.float16).max):
                    raise ConfigError(f"weight {name} reaches {largest:.3g}, beyond float16's range: export with "
                                      "weights_dtype='float32'")
                arr = arr.astype(np.float16)
            node = dst.create_dataset(name, data=arr)
        else:
            node = dst.require_group(name)
        for k, v in obj.attrs.items():
            node.attrs[k] = v

    with zipfile.ZipFile(keras_file) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zo:
        for filename, data in entries:
            if filename == "model.weights.h5":
                buf = io.BytesIO()
                with h5py.File(io.BytesIO(data), "r") as src, h5py.File(buf, "w") as dst:
                    for k, v in src.attrs.items():
                        dst.attrs[k] = v
                    src.visititems(lambda name, obj: half(name, obj, dst))
                data = buf.getvalue()
            zo.writestr(filename, data)
    keras_file.write_bytes(out.getvalue())


def _labels(task: str) -> dict[str, Any]:
    t = get_task(task)
    return {"task": t.name, "description": t.description,
            "classes": [{"index": i, "key": k, "display_name": t.display_names[k]} for i, k in enumerate(t.classes)]}


def _json_dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def dir_size(path: str | os.PathLike) -> int:
    """Total bytes of the files in a directory (not recursive: model directories are flat)."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def save_model_dir(
    path: str | os.PathLike,
    model,
    *,
    name: str,
    version: str,
    task: str,
    arch: str,
    golden_input: np.ndarray,
    config: dict[str, Any],
    metrics: dict[str, Any],
    training_data: dict[str, Any],
    reproduce_command: str | None = None,
    notes: str = "",
    weights_dtype: str = "auto",
    golden_atol: float = DEFAULT_GOLDEN_ATOL,
    plots: Sequence[tuple[str, str, bytes]] = (),
    overwrite: bool = False,
) -> ModelInfo:
    """Write a complete, verified model directory at ``path``.

    The directory is assembled in a temporary sibling and moved into place only once it verifies
    (checksums and golden pair), so a failure leaves nothing half-written.

    Args:
        model: the trained ``keras.Model`` (any compile state; the optimizer is not stored).
        name, version: registry name (e.g. ``"resnet50-medium4"``) and version (e.g. ``"1.0.0"``).
        task, arch: the :mod:`nscfate.classes` task and :mod:`nscfate.architectures` arch.
        golden_input: a few prepared inputs ``(n, h, w, 1)`` float32 (e.g. held-out images).
        config, metrics: the training config and held-out metrics (JSON-able dicts).
        training_data: at least ``{"description": str, "synthetic": bool}``; ``manifest_sha256`` when
            known (hash of the split manifest the model was trained on).
        reproduce_command: the exact command line that reproduces the model (for the card).
        notes: extra Markdown for the card (e.g. why an architecture was chosen).
        weights_dtype: ``"float32"``, ``"float16"``, or ``"auto"`` (float16 when float32 weights would
            take more than 80% of :data:`MAX_MODEL_DIR_BYTES`).
        golden_atol: tolerance recorded for the golden pair.
        plots: the card's plots as ``(file name, title, PNG bytes)``
            (:func:`nscfate.evaluation.card_plots`), stored under ``plots/``.
        overwrite: replace an existing directory.

    Raises:
        ConfigError: bad arguments, ``path`` exists and ``overwrite`` is false.
        ModelError: the written directory does not verify.
    """
    import keras

    target = Path(path)
    task_obj = get_task(task)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target} already exists; choose another output or allow overwriting")
    if target.is_dir() and any(target.iterdir()) and not (target / METADATA_FILE).is_file():
        raise ConfigError(f"{target} is not a model directory (no {METADATA_FILE}); overwriting would delete it: "
                          "choose another output")
    if weights_dtype not in ("auto", "float32", "float16"):
        raise ConfigError(f"weights_dtype must be auto, float32 or float16, got {weights_dtype!r}")
    if not {"description", "synthetic"} <= set(training_data):
        raise ConfigError("training_data needs 'description' and 'synthetic'")
    golden_input = np.asarray(golden_input, dtype=np.float32)
    in_shape = tuple(model.input_shape[1:])
    if golden_input.ndim != 4 or tuple(golden_input.shape[1:]) != in_shape:
        raise ConfigError(f"golden_input must have shape (n, {', '.join(map(str, in_shape))}), got {golden_input.shape}")
    if model.output_shape[-1] != len(task_obj.classes):
        raise ConfigError(f"model has {model.output_shape[-1]} outputs, task {task} has {len(task_obj.classes)} classes")
    n_params = int(sum(int(np.prod(v.shape)) for v in model.weights))
    if weights_dtype == "auto":
        weights_dtype = "float16" if n_params * 4 > 0.8 * MAX_MODEL_DIR_BYTES else "float32"

    target.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir applies the process umask, as for any shared directory (mkdtemp would make it private,
    # and reading the umask means setting it, which is not thread-safe); the random name keeps it unique.
    tmp = target.parent / f".{target.name}.{secrets.token_hex(8)}"
    tmp.mkdir()
    try:
        # A clean float32 copy: no optimizer state, no mixed-precision policy in the saved config.
        clean = _float32_copy(model, keras)
        clean.save(tmp / MODEL_FILE)
        if weights_dtype == "float16":
            _store_weights_half(tmp / MODEL_FILE)
        float32_out = np.asarray(clean(golden_input, training=False), dtype=np.float32)
        stored = load_keras_model(tmp)  # what users will load: the golden output comes from it
        golden_output = np.asarray(stored(golden_input, training=False), dtype=np.float32)
        half_error = float(np.max(np.abs(golden_output - float32_out)))
        if not half_error <= DEFAULT_GOLDEN_ATOL:  # NaN too: a weight beyond float16's range
            # The metrics describe the float32 model; a float16 copy that answers differently is another model.
            raise ConfigError(f"stored as float16, the weights change the golden outputs by {half_error:.3g} "
                              f"(more than {DEFAULT_GOLDEN_ATOL:g}): export with weights_dtype='float32'")
        np.save(tmp / GOLDEN_INPUT_FILE, golden_input)
        np.save(tmp / GOLDEN_OUTPUT_FILE, golden_output)

        h, w = in_shape[:2]
        meta = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "task": task,
            "arch": arch,
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
            "versions": _versions(),
            "git_sha": _git_sha(),
            "training_data": dict(training_data),
            "input": {
                "shape": [h, w, 1],
                "dtype": "float32",
                "preprocessing": f"nscfate.preprocessing.prepare_image(image2d, ({h}, {w})) on the decoded "
                                 "brightfield image (nscfate.io.decode_image); raw intensities, the "
                                 "percentile normalisation is a layer inside the model",
            },
            "output": {"kind": "softmax probabilities", "classes": list(task_obj.classes)},
            "parameters": n_params,
            "weights_dtype": weights_dtype,
            "half_precision_max_abs_error": half_error,
            "golden_atol": golden_atol,
            "plots": _write_plots(tmp, plots),
        }
        _json_dump(_labels(task), tmp / LABELS_FILE)
        _json_dump(config, tmp / CONFIG_FILE)
        _json_dump(metrics, tmp / METRICS_FILE)
        _json_dump(meta, tmp / METADATA_FILE)
        (tmp / CARD_FILE).write_text(render_card(meta, _labels(task), metrics, config, reproduce_command, notes),
                                     encoding="utf-8")
        write_checksums(tmp)
        verify_model_dir(tmp, model=stored)
        size = dir_size(tmp)
        if size > MAX_MODEL_DIR_BYTES:
            log.warning("model directory is %.1f MB, over the %.0f MB budget of shipped models",
                        size / 1e6, MAX_MODEL_DIR_BYTES / 1e6)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote model directory %s (%.1f MB, weights %s)", target, dir_size(target) / 1e6, weights_dtype)
    return read_model_dir(target)


def _float32_copy(model, keras):
    """The model rebuilt from its config as float32 (mixed-precision policies dropped), same weights."""
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        copy = keras.Model.from_config(_strip_policies(model.get_config()))
    finally:
        keras.config.set_dtype_policy(old)
    copy.set_weights([np.asarray(w, dtype=np.float32) if np.asarray(w).dtype.kind == "f" else np.asarray(w)
                      for w in model.get_weights()])
    return copy


def _strip_policies(obj: Any) -> Any:
    """Drop mixed-precision dtype policies from a model config so layers rebuild as float32."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k == "dtype" and isinstance(v, dict) and v.get("class_name") == "DTypePolicy" \
                    and v.get("config", {}).get("name") in ("mixed_float16", "mixed_bfloat16"):
                out[k] = "float32"
            else:
                out[k] = _strip_policies(v)
        return out
    if isinstance(obj, list):
        return [_strip_policies(v) for v in obj]
    return obj


def write_checksums(path: str | os.PathLike) -> None:
    """Write ``checksums.sha256`` for the content files and plots of a model directory."""
    root = Path(path)
    lines = [f"{sha256_file(root / f)}  {f}" for f in (*CONTENT_FILES, *_plot_files(root))]
    (root / CHECKSUMS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_plots(root: Path, plots: Sequence[tuple[str, str, bytes]]) -> list[dict[str, str]]:
    """Write the plots into ``root/plots/`` (replacing what was there); their metadata entries."""
    for file, _, png in plots:  # all checked before anything is replaced
        if Path(file).name != file or not file.endswith(".png") or not png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ConfigError(f"a plot must be PNG bytes with a plain .png file name, got {file!r}")
    folder = root / PLOTS_DIR
    shutil.rmtree(folder, ignore_errors=True)
    entries = []
    for file, title, png in plots:
        folder.mkdir(exist_ok=True)
        (folder / file).write_bytes(png)
        entries.append({"file": f"{PLOTS_DIR}/{file}", "title": title})
    return entries


def attach_plots(path: str | os.PathLike, plots: Sequence[tuple[str, str, bytes]], note: str = "") -> ModelInfo:
    """Give an existing model directory (e.g. one made before models carried plots) these card plots:
    they replace its ``plots/``, the metadata lists them, the card's Plots section shows them, and the
    checksums are rewritten. The model, metrics and golden pair are untouched. Registries pin the
    checksum list, so register the directory again afterwards (``nscfate models --register``).
    ``note`` (Markdown) goes under the section's heading, e.g. how the plots were made."""
    root = Path(path)
    check_checksums(root)  # never re-sign a directory that was already modified
    meta = _read_json(root / METADATA_FILE)
    meta["plots"] = _write_plots(root, plots)
    if note:
        meta["plots_note"] = note
    _json_dump(meta, root / METADATA_FILE)
    card = (root / CARD_FILE).read_text(encoding="utf-8")
    card = re.sub(r"\n## Plots\n.*?(?=\n## |\Z)", "\n", card, flags=re.S)  # a previous Plots section
    head, sep, tail = card.partition("\n## Provenance\n")
    (root / CARD_FILE).write_text(head.rstrip("\n") + "\n\n" + _plots_section(meta) + sep + tail
                                  if sep else card.rstrip("\n") + "\n\n" + _plots_section(meta), encoding="utf-8")
    write_checksums(root)
    return read_model_dir(root)


def _plots_section(meta: dict) -> str:
    """The card's Markdown section that shows its plots ("" when it has none)."""
    plots = meta.get("plots") or []
    if not plots:
        return ""
    lines = ["## Plots", ""]
    if meta.get("plots_note"):
        lines += [meta["plots_note"].strip(), ""]
    for p in plots:
        lines += [f"**{p['title']}**", "", f"![{p['title']}]({p['file']})", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- card

def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "-" if v is None else str(v)


def render_card(meta: dict, labels: dict, metrics: dict, config: dict, reproduce_command: str | None,
                notes: str) -> str:
    """The model card (README.md) of a model directory."""
    data = meta["training_data"]
    synthetic = bool(data.get("synthetic"))
    h, w, _ = meta["input"]["shape"]
    lines = [
        f"# {meta['name']} {meta['version']}",
        "",
        f"Predicts the **differentiation condition** (the culture medium a neural stem cell was grown in) "
        f"from one single-cell brightfield image. Task `{labels['task']}`: {labels['description']}. "
        "The labels are culture media, not a stained cell identity.",
        "",
    ]
    if synthetic:
        lines += [
            "> **Trained on SYNTHETIC data.** This model was trained and evaluated on the synthetic "
            "imaging-flow-cytometry benchmark generated by `nscfate synth`, not on real cells. Its "
            "numbers say that the pipeline works; they say nothing about accuracy on real neural stem "
            "cells. Retrain on real data (same command, `--data` pointing at an IFC export) before "
            "using it for science.",
            "",
        ]
    lines += [
        "## Model",
        "",
        f"- architecture: `{meta['arch']}` ({meta['parameters']:,} parameters), weights stored as "
        f"{meta['weights_dtype']}"
        + (f" (max abs change of probabilities vs float32 on the golden input: "
           f"{meta['half_precision_max_abs_error']:.1e})" if meta["weights_dtype"] == "float16" else ""),
        f"- input: one grey brightfield image, `prepare_image` to {h}x{w} (pad to aspect with the "
        "background grey, resize); raw intensities, percentile normalisation is inside the model",
        "- output: softmax probabilities, in this order:",
        "",
        "| index | key | class |",
        "|---|---|---|",
    ]
    lines += [f"| {c['index']} | `{c['key']}` | {c['display_name']} |" for c in labels["classes"]]
    lines += ["", "## Training data", "", f"- {data['description']}"]
    for key in ("manifest_sha256", "num_train", "num_val", "num_test", "num_grouped_test", "split"):
        if key in data:
            lines.append(f"- {key}: `{data[key]}`")
    lines += ["", "## Held-out evaluation", ""]
    rows = [(split, m) for split, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]
    if rows:
        lines += ["| split | n | accuracy | balanced accuracy | macro-F1 | macro AUC |", "|---|---|---|---|---|---|"]
        for split, m in rows:
            acc = _fmt(m.get("accuracy"))
            ci = m.get("accuracy_ci95")
            if ci:
                acc += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            lines.append(f"| {split} | {_fmt(m.get('n'))} | {acc} | {_fmt(m.get('balanced_accuracy'))} | "
                         f"{_fmt(m.get('macro_f1'))} | {_fmt(m.get('macro_auc'))} |")
    else:
        lines.append("No held-out evaluation was recorded.")
    per_class = metrics.get("test", {}).get("per_class") if isinstance(metrics.get("test"), dict) else None
    if per_class:
        names = {c["key"]: c["display_name"] for c in labels["classes"]}
        lines += ["", "Per class on `test`:", "", "| class | n | precision | recall | AUC (one-vs-rest) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {names.get(k, k)} | {m.get('support')} | {_fmt(m.get('precision'))} | {_fmt(m.get('recall'))} | "
                  f"{_fmt(m.get('auc'))} |" for k, m in per_class.items()]
    if rows:
        batches = not str(data.get("groups", "")).startswith("single")
        grouped_is = ("whole acquisition batches (day + replicate)" if batches else
                      "single images, because the data's names carry no acquisition batch: no more honest "
                      "than a random split")
        if batches and data.get("unbatched_classes"):
            grouped_is += (f" and single images of {', '.join(data['unbatched_classes'])} (their names carry no "
                           "batch: for them no more honest than a random split)")
        test_is = (f"holds out {grouped_is}" if data.get("split") == "grouped" else "is a random split by image")
        held = (f"; `grouped_test` holds out {grouped_is}"
                + (", which is the honest number when batches differ" if batches else "")
                if "grouped_test" in metrics and data.get("split") != "grouped" else "")
        lines += ["", f"`test` {test_is}{held}."]
    lines.append("")
    if reproduce_command:
        lines += ["## Reproduce", "", "```bash", reproduce_command, "```", ""]
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    lines += [
        "## Limitations",
        "",
        "- Labels are the culture medium, so the model predicts a condition, not a cell's fate as a marker "
        "would show it.",
        "- Inputs are expected to be single-cell brightfield crops like imaging-flow-cytometry exports "
        "(about 60 px wide); whole fields of view or fluorescence channels are out of scope.",
        "",
    ]
    if meta.get("plots"):
        lines += _plots_section(meta).splitlines()
    lines += [
        "## Provenance",
        "",
        f"- created {meta['created']} with nscfate {meta['versions']['nscfate']}, TensorFlow "
        f"{meta['versions']['tensorflow']}, Keras {meta['versions']['keras']}"
        + (f", git {meta['git_sha'][:12]}" if meta.get("git_sha") else ""),
        f"- files are listed with their sha256 in `{CHECKSUMS_FILE}`; `golden_input.npy` -> "
        f"`golden_output.npy` must reproduce within {meta['golden_atol']:g}",
        "",
    ]
    return "\n".join(lines)
