"""The one preprocessing: from a decoded 2-D brightfield image to model input.

Training (``nscfate.data`` pipelines) and serving (``nscfate.Predictor``) both call
:func:`prepare_image`; nothing else turns an image into model input.

Two stages:

1. Geometry, here in NumPy because crops vary in size and a batch needs one shape:
   pad the crop to the aspect ratio of the model input (centred, filled with the estimated
   background grey, never zeros, so the padding carries no edge artefact), then resize to the model's
   input size (area interpolation when shrinking, bilinear when enlarging). Output is float32
   ``(height, width, 1)`` with the decoded intensities unchanged in scale.
2. Intensity, inside the saved Keras model (``nscfate.layers``): per-image percentile normalisation
   ``(x - p1) / (p99 - p1)`` and, for architectures that take colour, channel replication. Because
   these are layers of the model, a saved model carries them and serving cannot drift from training.
"""

from __future__ import annotations

import numpy as np

from nscfate.errors import ConfigError, InvalidPixelValuesError
from nscfate.io import DEFAULT_LIMITS, DecodeLimits, decode_image

#: Input sizes used in the paper, as (height, width).
PAPER_INPUT_SIZES: tuple[tuple[int, int], ...] = ((45, 60), (60, 60), (75, 75))
DEFAULT_INPUT_SIZE: tuple[int, int] = (75, 75)
#: Width in pixels of the image border used to estimate the background grey.
BACKGROUND_BORDER = 2


def parse_input_size(value: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Accept ``"75"``, ``"45x60"`` (height x width) or a pair; return ``(height, width)``."""
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"image size {value!r} is not HEIGHTxWIDTH, e.g. 75x75 or 45x60") from None
        if len(nums) == 1:
            nums = nums * 2
    else:
        nums = [int(v) for v in value]
    if len(nums) != 2 or min(nums) < 16 or max(nums) > 1024:
        raise ConfigError(f"image size {value!r} must be two integers between 16 and 1024")
    return nums[0], nums[1]


def median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D array of finite floats, the same value without its any-axis, NaN-checking
    machinery, which costs more than the work on a crop's border (the worker takes three per image)."""
    n = values.size
    if not n:
        raise ValueError("median of an empty array")
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float((part[k - 1] + part[k]) / 2)  # in the array's dtype, as np.median's mean of the two


def percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) of a 1-D array of finite floats, the same value
    from one partition: np.percentile spends ~150 us on a crop's 3,000 pixels, a third of the worker's
    single-cell check, in its general machinery."""
    n = values.size
    if not n:
        raise ValueError("percentile of an empty array")
    position = q / 100 * (n - 1)
    k = int(position)
    if k + 1 >= n:
        return float(np.partition(values, n - 1)[n - 1])
    part = np.partition(values, (k, k + 1))
    below, above, t = part[k], part[k + 1], position - k
    # numpy's interpolation, term for term (from the nearer neighbour), so the values are identical
    return float(above - (above - below) * (1 - t) if t >= 0.5 else below + (above - below) * t)


def border_pixels(image: np.ndarray) -> np.ndarray:
    """The outer ``BACKGROUND_BORDER`` pixels of a 2-D image (fewer in a tiny one), each once: IFC crops
    are centred on the cell, so the frame is mostly background."""
    b = min(BACKGROUND_BORDER, max(1, min(image.shape[:2]) // 4))
    return np.concatenate([image[:b].ravel(), image[-b:].ravel(), image[b:-b, :b].ravel(), image[b:-b, -b:].ravel()])


def estimate_background(image: np.ndarray) -> float:
    """Median grey of the image's frame (:func:`border_pixels`)."""
    return median(border_pixels(image))


def pad_to_aspect(image: np.ndarray, aspect: float, fill: float | None = None) -> np.ndarray:
    """Pad ``image`` (2-D) symmetrically to ``height / width == aspect`` with ``fill`` (default: the
    estimated background)."""
    if fill is None:
        fill = estimate_background(image)
    h, w = image.shape
    if h / w < aspect:  # too wide: add rows
        new_h, new_w = int(round(w * aspect)), w
    else:  # too tall: add columns
        new_h, new_w = h, int(round(h / aspect))
    if (new_h, new_w) == (h, w):
        return image
    out = np.full((new_h, new_w), fill, dtype=image.dtype)
    top, left = (new_h - h) // 2, (new_w - w) // 2
    out[top:top + h, left:left + w] = image
    return out


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a 2-D float32 image to ``size`` = (height, width)."""
    import cv2  # imported here: cv2 is only needed once pixels are handled

    h, w = size
    shrinking = image.shape[0] > h or image.shape[1] > w
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def prepare_image(image: np.ndarray, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE) -> np.ndarray:
    """Decoded 2-D image -> float32 array ``(height, width, 1)`` ready for the model.

    The intensity normalisation is not done here: it is a layer inside the model.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise InvalidPixelValuesError(f"expected a 2-D grey image, got an array of shape {image.shape}")
    if not np.isfinite(image).all():
        raise InvalidPixelValuesError("image contains NaN or infinite values; finite intensities only")
    h, w = input_size
    padded = pad_to_aspect(image, h / w)
    out = resize(padded, (h, w)).astype(np.float32, copy=False)
    return out[:, :, np.newaxis]


def load_prepared(source, input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
                  limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """``prepare_image(decode_image(source).pixels, input_size)``: the one image -> model input path."""
    return prepare_image(decode_image(source, limits=limits).pixels, input_size)
