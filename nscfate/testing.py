"""Helpers for tests across the project (worker, web app, library): a complete tiny model directory
in a few seconds, and simple single-cell images.

``make_tiny_model_dir(path, task="medium4", input_size=(32, 32))`` is a stable interface: other parts'
tests rely on it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from nscfate.classes import get_task


def cell_image(rng: np.random.Generator, size: tuple[int, int] = (47, 60), radius: float = 9.0,
               background: float = 0.40, noise: float = 0.004, texture: float = 0.03,
               centre: tuple[float, float] | None = None) -> np.ndarray:
    """A float32 2-D brightfield-like crop in [0, 1]: one round cell with a dark rim and a brighter,
    granular interior on a flat noisy background. Not the benchmark (that is :mod:`nscfate.synth`),
    just a plausible test input."""
    h, w = size
    cy, cx = centre if centre is not None else (h / 2 + rng.uniform(-2, 2), w / 2 + rng.uniform(-2, 2))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    r = np.hypot(yy - cy, xx - cx)
    img = np.full((h, w), background, np.float32)
    rim = np.exp(-((r - radius) ** 2) / 2.0)
    inside = r < radius - 1
    img -= 0.25 * rim
    img[inside] += 0.08 + texture * rng.standard_normal(int(inside.sum())).astype(np.float32)
    img += noise * rng.standard_normal((h, w)).astype(np.float32)
    return np.clip(img, 0.0, 1.0)


def add_cell(image: np.ndarray, rng: np.random.Generator, centre: tuple[float, float], radius: float) -> np.ndarray:
    """A copy of ``image`` with one more cell drawn at ``centre`` (for doublet tests)."""
    other = cell_image(rng, image.shape, radius, background=0.0, noise=0.0, centre=centre)
    return np.clip(image + other, 0.0, 1.0).astype(np.float32)


def to_png_bytes(image: np.ndarray, bits: int = 8) -> bytes:
    """Encode a [0, 1] float image as 8- or 16-bit grey PNG bytes."""
    import cv2

    dtype, top = (np.uint8, 255) if bits == 8 else (np.uint16, 65535)
    ok, buf = cv2.imencode(".png", np.round(np.clip(image, 0, 1) * top).astype(dtype))
    assert ok
    return buf.tobytes()


def pil_bytes(arr_or_image, fmt: str, **save_kwargs) -> bytes:
    """``arr_or_image`` (array or PIL image) encoded by Pillow as ``fmt`` (e.g. "JPEG", "BMP", "GIF")."""
    from PIL import Image

    im = arr_or_image if isinstance(arr_or_image, Image.Image) else Image.fromarray(arr_or_image)
    buf = io.BytesIO()
    im.save(buf, fmt, **save_kwargs)
    return buf.getvalue()


def cv2_png(arr: np.ndarray) -> bytes:
    """PNG through OpenCV (keeps 16 bits, also in colour); colour arrays are RGB(A)."""
    import cv2

    if arr.ndim == 3:
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise RuntimeError("OpenCV could not encode a PNG")
    return buf.tobytes()


def tiff_bytes(arr: np.ndarray, **kwargs) -> bytes:
    """TIFF written by tifffile (``kwargs`` as ``tifffile.imwrite``: ome, photometric, ...)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


#: Training epochs of the tiny fixture model (~280 steps of 16 images: about 3 s on one CPU core).
EPOCHS = 40


def _class_images(rng: np.random.Generator, n_classes: int, per_class: int, size=(47, 60)):
    """Class k: cells of radius 6 + 3k px (a cue a tiny CNN picks up in a few steps)."""
    images, labels = [], []
    for k in range(n_classes):
        for _ in range(per_class):
            images.append(cell_image(rng, size, radius=6 + 3 * k + rng.uniform(-1, 1)))
            labels.append(k)
    return images, np.asarray(labels)


def _tiny_cnn(n_classes: int, input_size: tuple[int, int]):
    import keras
    from keras import layers

    from nscfate.architectures import HEAD_LAYER
    from nscfate.layers import PercentileNormalization

    inputs = keras.Input(shape=(*input_size, 1), name="image")
    x = PercentileNormalization(name="normalize", dtype="float32")(inputs)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name=HEAD_LAYER)(x)
    return keras.Model(inputs, outputs, name="nscfate_tiny_cnn")


def make_tiny_model_dir(path: str | os.PathLike, task: str = "medium4", input_size: tuple[int, int] = (32, 32),
                        *, name: str | None = None, version: str = "0.0.1", seed: int = 0,
                        plots: bool = False) -> Path:
    """Build, briefly train and export a complete model directory (a few seconds on CPU).

    The model is a tiny CNN (three convolutions) with the same preprocessing layer as real models,
    trained for a few hundred steps on synthetic cells whose radius depends on the class (it separates
    them well, so its predictions change with the input), but it is a test fixture, not a model: the
    card says so.

    Args:
        path: the model directory to create (must not exist).
        task: ``"medium4"`` or ``"astro_vs_oligo"``.
        input_size: model input (height, width).
        name: registry name (default ``"tiny-<task>"``); version: its version.
        plots: give the card its plots (confusion matrix, ROC, calibration of the fixture's test cells;
            about a second of matplotlib).

    Returns:
        ``Path(path)``.
    """
    import keras

    from nscfate.modeldir import save_model_dir
    from nscfate.preprocessing import prepare_image

    t = get_task(task)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels = _class_images(rng, len(t.classes), per_class=32)
    x = np.stack([prepare_image(im, input_size) for im in images])
    order = rng.permutation(len(x))
    x, labels = x[order], labels[order]
    n_test = max(len(t.classes) * 2, len(x) // 5)
    model = _tiny_cnn(len(t.classes), input_size)
    model.compile(optimizer=keras.optimizers.Adam(0.003), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[n_test:], labels[n_test:], batch_size=16, epochs=EPOCHS, verbose=0, shuffle=True)
    _, acc = model.evaluate(x[:n_test], labels[:n_test], verbose=0)
    card_plots = []
    if plots:
        from nscfate.evaluation import card_plots as render

        card_plots = render({"test": (labels[:n_test], model.predict(x[:n_test], verbose=0))}, t.classes,
                            t.display_names)
    config = {"task": task, "arch": "tiny-cnn", "input_size": list(input_size), "epochs": EPOCHS, "batch_size": 16,
              "seed": seed, "note": "nscfate.testing.make_tiny_model_dir test fixture"}
    save_model_dir(
        path, model, name=name or f"tiny-{task}", version=version, task=task, arch="tiny-cnn",
        golden_input=x[:4], config=config, metrics={"test": {"n": int(n_test), "accuracy": float(acc)}},
        training_data={"description": f"{len(x) - n_test} synthetic test cells (radius by class), "
                                      "nscfate.testing; a TEST FIXTURE, not a usable model", "synthetic": True},
        reproduce_command=f"python -c \"from nscfate.testing import make_tiny_model_dir; "
                          f"make_tiny_model_dir('{Path(path).name}', task='{task}', input_size={tuple(input_size)})\"",
        plots=card_plots,
    )
    return Path(path)
