"""Small test images, encoded in memory with the real libraries (Pillow, OpenCV, tifffile)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from nscfate.testing import cv2_png, pil_bytes, tiff_bytes  # noqa: F401 - the encoders tests import from here


def cell_array(h: int = 47, w: int = 60, dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """A grey IFC-like crop: light background, dark-rimmed round cell, a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    img = 0.6 + 0.01 * rng.standard_normal((h, w))
    img[r < 10] = 0.45
    img[(r >= 8) & (r < 10)] = 0.2
    img = np.clip(img, 0, 1)
    if np.dtype(dtype).kind in "ui":
        return np.round(img * np.iinfo(dtype).max).astype(dtype)
    return img.astype(dtype)


def expected_float(arr: np.ndarray) -> np.ndarray:
    """What decode_image must return for a grey integer/float array."""
    if arr.dtype.kind in "ui":
        top = np.iinfo(arr.dtype).max
        if arr.dtype.itemsize > 2 and arr.min() >= 0 and arr.max() <= 65535:  # 16-bit values stored wider
            top = 65535
        elif arr.dtype.itemsize > 2 and arr.min() >= -32768 and arr.max() <= 32767:
            top = 32767
        return arr.astype(np.float32) / top
    return arr.astype(np.float32)








def skimage_data(name: str) -> Path:
    """A file shipped in scikit-image's wheel (real images, no download)."""
    path = Path(str(resources.files("skimage") / "data" / name))
    assert path.is_file(), f"scikit-image is missing {name}"
    return path
