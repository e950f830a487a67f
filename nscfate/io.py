"""Decoding: bytes, a path or a binary file object -> one 2-D float32 brightfield image.

:func:`decode_image` is the only way images enter the library (training, serving, inspection). It
accepts the formats the imaging-flow-cytometry exports and lab tools produce:

========  ====================================================================================
PNG       8/16-bit grey, grey+alpha, RGB, RGBA, palette (pixels via OpenCV, which keeps 16-bit
          colour; Pillow would reduce it to 8 bits)
JPEG      grey, RGB, CMYK; EXIF orientation applied (Pillow)
BMP       1/4/8-bit palette or grey, 16/24/32-bit colour, including the 24-bit grey (R=G=B)
          ``.ome.bmp`` exports of IDEAS (Pillow)
TIFF      8/16/32-bit integer and 16/32/64-bit float, 1-bit, grey/RGB/RGBA/palette/CMYK,
          multi-page with a page choice, OME-TIFF (tifffile)
========  ====================================================================================

Pixel values: integer images are divided by their dtype's maximum (so uint8 and uint16 both land in
[0, 1]; signed integers keep their sign), 32- and 64-bit ones whose values fit 16 bits by the 16-bit
maximum (:func:`_integer_full_scale`); float images keep their values and must be finite.
Colour: R=G=B colour (within 2 grey levels, for lossy formats) is grey and is read as such silently;
real colour is converted with ITU-R BT.601 luma weights and a warning in ``info.warnings``. Alpha is
composited over the image's own background (the median grey of its opaque pixels), so a transparent
frame becomes background rather than a black or white border.

Every failure raises a specific :class:`nscfate.errors.ImageError` subclass. Size limits are checked
in this order, each before the work it protects: bytes before reading the whole input, then page
count, channels, pixel count and minimum side from the *header*, before any pixel is decoded (a
decompression bomb is refused without allocating its pixels).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nscfate.errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooSmallError,
    InvalidPixelValuesError,
    NotAnImageError,
    TooManyBytesError,
    TooManyChannelsError,
    TooManyPixelsError,
    UnsupportedFormatError,
)

#: Formats :func:`decode_image` reads, as reported in ``ImageInfo.format``.
SUPPORTED_FORMATS: tuple[str, ...] = ("png", "jpeg", "bmp", "tiff")
ACCEPTED = "PNG, JPEG, BMP or TIFF (incl. OME-TIFF)"

# Magic numbers. Supported formats first; the rest are recognised only to name them in the error.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x93NUMPY", "NumPy .npy"),
    (b"\x89HDF", "HDF5"),
    (b"qoif", "QOI"),
)


@dataclass(frozen=True)
class DecodeLimits:
    """Limits applied by :func:`decode_image`. Defaults suit single-cell crops (tens of pixels) with a
    wide margin for whole fields of view, and keep one decode below ~200 MB of memory.

    Attributes:
        max_bytes: largest encoded input accepted (default 20 MiB).
        max_pixels: largest height x width of the decoded page (default 25 megapixels), checked from
            the header before pixels are decoded.
        min_side: smallest height or width that can hold a cell (default 8 px).
        max_channels: most samples per pixel, alpha included (default 4: RGBA or CMYK).
        max_pages: most pages in a multi-page TIFF (default 256).
    """

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 25_000_000
    min_side: int = 8
    max_channels: int = 4
    max_pages: int = 256

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "min_side", "max_channels", "max_pages"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer")


DEFAULT_LIMITS = DecodeLimits()


@dataclass
class ImageInfo:
    """What was found while decoding.

    Attributes:
        format: "png", "jpeg", "bmp" or "tiff".
        dtype: dtype of the stored samples, e.g. "uint8", "uint16", "float32".
        bit_depth: bits per sample as stored (1, 8, 12, 16, 32, 64).
        original_shape: shape of the chosen page as stored, e.g. (47, 60) or (47, 60, 3).
        pages: number of pages (1 except for multi-page TIFF).
        page: the page decoded.
        channels: samples per pixel as stored (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA/CMYK).
        ome: True for OME-TIFF.
        n_bytes: size of the encoded input.
        warnings: anything the caller should know (colour converted to grey, page chosen, ...).
    """

    format: str
    dtype: str
    bit_depth: int
    original_shape: tuple[int, ...]
    pages: int = 1
    page: int = 0
    channels: int = 1
    ome: bool = False
    n_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        # Built field by field: dataclasses.asdict deep-copies every value, ~0.13 ms an image in the worker.
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["original_shape"] = list(self.original_shape)
        d["warnings"] = list(self.warnings)
        return d


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``pixels`` is a 2-D float32 array (height, width); ``info`` says what was read."""

    pixels: np.ndarray
    info: ImageInfo


Source = bytes | bytearray | memoryview | str | os.PathLike | BinaryIO


def decode_image(
    source: Source,
    *,
    page: int | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    name: str | None = None,
) -> DecodedImage:
    """Decode ``source`` (bytes, a path or a binary file object) into a 2-D float32 grey image.

    Args:
        source: encoded image bytes, a filesystem path, or an object with ``read()``.
        page: page of a multi-page TIFF (default: the first, with a warning when there are several).
        limits: size limits, see :class:`DecodeLimits`.
        name: how to call the image in error messages (default: the file name, or "image").

    Returns:
        :class:`DecodedImage` with float32 pixels and an :class:`ImageInfo`.

    Raises:
        EmptyImageError, TooManyBytesError, NotAnImageError, UnsupportedFormatError,
        CorruptImageError, TooManyPixelsError, ImageTooSmallError, TooManyChannelsError,
        InvalidPixelValuesError, ImageError (missing file, page out of range).
    """
    data, label = _read_source(source, limits, name)
    if not data:
        raise EmptyImageError(f"{label}: the file is empty (0 bytes); expected a {ACCEPTED} image")
    fmt = sniff_format(data)
    if fmt is None:
        raise NotAnImageError(f"{label}: not an image (unrecognised content); expected a {ACCEPTED} image")
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedFormatError(f"{label}: {fmt} is not supported; expected a {ACCEPTED} image")
    if fmt == "tiff":
        pixels, info = _decode_tiff(data, page, limits, label)
    else:
        if page not in (None, 0):
            raise ImageError(f"{label}: a {fmt.upper()} image has a single page; got page={page}")
        pixels, info = _decode_pillow_header_first(data, fmt, limits, label)
    info.n_bytes = len(data)
    if not np.isfinite(pixels).all():
        raise InvalidPixelValuesError(f"{label}: the image contains NaN or infinite values; finite intensities only")
    return DecodedImage(np.ascontiguousarray(pixels, dtype=np.float32), info)


def sniff_format(data: bytes) -> str | None:
    """Name the format of ``data`` from its first bytes: a key of :data:`SUPPORTED_FORMATS`, the name
    of a recognised unsupported format (e.g. "GIF", "SVG"), or None when it is not a known image."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand.startswith(b"avi"):
            return "AVIF"
        return "HEIC/HEIF" if brand.startswith((b"hei", b"mif")) else "MP4/QuickTime"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<"):
        if b"<svg" in head:
            return "SVG"
        if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
            return "HTML"
        return "XML"
    return None


# --------------------------------------------------------------------------------------------------
# reading the source


def _read_source(source: Source, limits: DecodeLimits, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        label = name or "image"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or path.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file: {path}") from None
        if path.is_dir():
            raise NotAnImageError(f"{label}: is a directory, not an image file")
        if size > limits.max_bytes:
            raise TooManyBytesError(_too_many_bytes(label, size, limits))
        with open(path, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)
    elif hasattr(source, "read"):
        label = name or Path(str(getattr(source, "name", "image"))).name
        data = source.read(limits.max_bytes + 1)
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("decode_image needs a binary file object (opened with 'rb')")
        data = bytes(data)
    else:
        raise TypeError(f"decode_image takes bytes, a path or a binary file object, not {type(source).__name__}")
    if len(data) > limits.max_bytes:
        raise TooManyBytesError(_too_many_bytes(label, len(data), limits))
    return data, label


def _too_many_bytes(label: str, size: int, limits: DecodeLimits) -> str:
    return (f"{label}: the file is larger than the limit of {_mb(limits.max_bytes)} ({size} bytes or more); "
            "single-cell crops are a few kB")


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def _check_geometry(label: str, height: int, width: int, channels: int, limits: DecodeLimits) -> None:
    """Header checks, run before any pixel is decoded."""
    if channels > limits.max_channels:
        raise TooManyChannelsError(
            f"{label}: {channels} channels per pixel; at most {limits.max_channels} are accepted "
            "(grey, grey+alpha, RGB, RGBA or CMYK); export the brightfield channel alone")
    if height * width > limits.max_pixels:
        raise TooManyPixelsError(
            f"{label}: {width}x{height} (width x height) = {height * width:,} pixels, more than the limit of "
            f"{limits.max_pixels:,} ({limits.max_pixels / 1e6:g} megapixels); crop single cells first")
    if min(height, width) < limits.min_side:
        raise ImageTooSmallError(
            f"{label}: {width}x{height} pixels (width x height) is too small to hold a cell; "
            f"each side must be at least {limits.min_side} px")


# --------------------------------------------------------------------------------------------------
# PNG, JPEG, BMP


def _decode_pillow_header_first(data: bytes, fmt: str, limits: DecodeLimits,
                                label: str) -> tuple[np.ndarray, ImageInfo]:
    from PIL import Image, ImageOps

    pil_format = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}[fmt]
    try:
        im = Image.open(io.BytesIO(data), formats=[pil_format])  # reads the header only
    except Image.DecompressionBombError as exc:
        raise TooManyPixelsError(f"{label}: {exc}; crop single cells first") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on a file with valid magic is corruption
        raise CorruptImageError(f"{label}: corrupt or unreadable {fmt.upper()} header ({exc})") from None
    width, height = im.size
    channels = len(im.getbands())
    _check_geometry(label, height, width, channels, limits)
    shape = (height, width) if channels == 1 else (height, width, channels)
    info = ImageInfo(format=fmt, dtype="uint8", bit_depth=8, original_shape=shape, channels=channels)
    try:
        if fmt == "png":
            # Pillow's integrity check walks the chunks and CRCs without inflating the pixels; OpenCV
            # then decodes, keeping 16-bit colour.
            im.verify()
            pixels = _decode_png_pixels(data)
        else:
            im.load()
            if fmt == "jpeg":
                orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
                if orientation not in (1, None):
                    im = ImageOps.exif_transpose(im)
                    info.warnings.append(f"EXIF orientation {orientation} applied")
            pixels = _pillow_to_array(im)
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CorruptImageError(f"{label}: truncated or corrupt {fmt.upper()} data ({exc})") from None
    if fmt == "jpeg" and im.mode == "CMYK":
        info.warnings.append("CMYK JPEG converted to RGB")
    info.dtype = str(pixels.dtype)
    info.bit_depth = 1 if im.mode == "1" else pixels.dtype.itemsize * 8
    return _to_grey(pixels, info, lossy=fmt == "jpeg", label=label), info


def _decode_png_pixels(data: bytes) -> np.ndarray:
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise CorruptImageError("the PNG pixel data could not be decoded")
    if arr.ndim == 3:  # OpenCV orders colour as BGR(A)
        arr = arr[:, :, [2, 1, 0, 3][: arr.shape[2]]]
    return arr


def _pillow_to_array(im) -> np.ndarray:
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.dtype.byteorder == ">":  # e.g. Pillow's "I;16B"
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


# --------------------------------------------------------------------------------------------------
# TIFF


def _decode_tiff(data: bytes, page: int | None, limits: DecodeLimits, label: str) -> tuple[np.ndarray, ImageInfo]:
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise CorruptImageError(f"{label}: corrupt or unreadable TIFF header ({exc})") from None
    with tif:
        try:
            n_pages = len(tif.pages)
        except Exception as exc:  # noqa: BLE001
            raise CorruptImageError(f"{label}: corrupt TIFF page directory ({exc})") from None
        if n_pages == 0:
            raise CorruptImageError(f"{label}: the TIFF file has no pages")
        if n_pages > limits.max_pages:
            raise TooManyPixelsError(f"{label}: {n_pages} pages exceeds the limit of {limits.max_pages} pages")
        warnings: list[str] = []
        if page is None:
            page = 0
            if n_pages > 1:
                warnings.append(f"multi-page TIFF ({n_pages} pages): only the first page was read")
        if not 0 <= page < n_pages:
            raise ImageError(f"{label}: page {page} does not exist; the TIFF has {n_pages} page(s) (0..{n_pages - 1})")
        try:
            tpage = tif.pages[page]
            axes, shape = tpage.axes, tuple(int(s) for s in tpage.shape)
            dtype = np.dtype(tpage.dtype) if tpage.dtype is not None else None
        except Exception as exc:  # noqa: BLE001
            raise CorruptImageError(f"{label}: corrupt TIFF page {page} ({exc})") from None
        if dtype is None or dtype.kind not in "buif":
            raise UnsupportedFormatError(f"{label}: TIFF sample format {tpage.dtype} is not supported; "
                                         "expected 1/8/16/32-bit integer or 16/32/64-bit float samples")
        if set(axes) - set("YXS"):
            raise UnsupportedFormatError(f"{label}: TIFF page with axes {axes!r} {shape} is not a 2-D image")
        height, width = shape[axes.index("Y")], shape[axes.index("X")]
        channels = shape[axes.index("S")] if "S" in axes else 1
        _check_geometry(label, height, width, channels, limits)
        try:
            arr = tpage.asarray()
        except Exception as exc:  # noqa: BLE001
            raise CorruptImageError(f"{label}: truncated or corrupt TIFF data ({exc})") from None
        if arr.shape != shape:
            raise CorruptImageError(f"{label}: TIFF page decoded to shape {arr.shape}, header says {shape}")
        if axes == "SYX":
            arr = np.moveaxis(arr, 0, -1)
        try:  # tags of the wrong type (e.g. an ASCII Photometric) fail only when read
            photometric = int(tpage.photometric)
            colormap = tpage.colormap
            bit_depth, ome = int(tpage.bitspersample), bool(tif.is_ome)
            extras = tuple(int(e) for e in (tpage.extrasamples or ()))
        except Exception as exc:  # noqa: BLE001
            raise CorruptImageError(f"{label}: corrupt TIFF tags on page {page} ({exc})") from None
        info = ImageInfo(format="tiff", dtype=str(dtype), bit_depth=bit_depth, original_shape=shape,
                         pages=n_pages, page=page, channels=channels, ome=ome, warnings=warnings)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.ndim == 3 and extras and len(extras) < arr.shape[2]:
        # ExtraSamples says what the samples after the image's own are: 1 and 2 are transparency, 0 is
        # anything else (e.g. a marker channel stored beside the brightfield), which must not be blended
        # into the image as if it were alpha.
        base = arr.shape[2] - len(extras)
        alpha = [base + i for i, e in enumerate(extras) if e in (1, 2)][:1]
        if len(alpha) < len(extras):
            info.warnings.append(f"{len(extras) - len(alpha)} extra sample(s) per pixel that are not transparency "
                                 "(another channel?) ignored; the image is the first "
                                 + ("sample" if base == 1 else f"{base} samples"))
            arr = arr[:, :, [*range(base), *alpha]]
    if photometric == 0 and arr.ndim == 2:  # MINISWHITE: 0 is white; flip so bright stays bright
        arr = _invert(arr)
        info.warnings.append("min-is-white TIFF inverted")
    elif photometric == 3 and colormap is not None and arr.ndim == 2:  # palette
        arr = np.moveaxis(np.asarray(colormap)[:, arr], 0, -1).astype(np.uint16)
    elif photometric == 5 and arr.ndim == 3 and arr.shape[2] >= 4:  # SEPARATED (CMYK)
        arr = _cmyk_to_rgb(arr)
        info.warnings.append("CMYK TIFF converted to RGB")
    return _to_grey(arr, info, lossy=False, label=label), info


def _invert(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "ui":
        return (_integer_full_scale(arr) - arr.astype(np.int64)).astype(arr.dtype)
    if arr.dtype.kind == "b":
        return ~arr
    return arr.max() - arr


def _cmyk_to_rgb(arr: np.ndarray) -> np.ndarray:
    scaled = _scale(arr[:, :, :4])
    cmy, k = scaled[:, :, :3], scaled[:, :, 3:4]
    return (1.0 - cmy) * (1.0 - k)


# --------------------------------------------------------------------------------------------------
# samples -> one grey float32 plane


def _scale(arr: np.ndarray) -> np.ndarray:
    """Integers to float32 divided by :func:`_integer_full_scale`; floats unchanged; booleans to 0/1."""
    if arr.dtype.kind == "b":
        return arr.astype(np.float32)
    if arr.dtype.kind in "ui":
        return arr.astype(np.float32) / np.float32(_integer_full_scale(arr))
    return arr.astype(np.float32)


def _integer_full_scale(arr: np.ndarray) -> int:
    """What integer samples are divided by: their dtype's maximum, except that 32- and 64-bit samples
    whose values fit 16 bits are scaled as 16-bit ones (uint16's maximum, or int16's when negative).

    Cameras give at most 16 bits; some writers store them as 32-bit integers. Divided by 2**32 - 1, a
    12-bit image would span ~1e-6, where the model's normalisation (its epsilon) and the single-cell
    check's floors are no longer small: every cell came out as the same class at 0.998. Scaled as
    16-bit, the same pixels give the same floats whether stored as uint16 or uint32.
    """
    if arr.dtype.itemsize > 2 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if 0 <= lo and hi <= 65535:
            return 65535
        if -32768 <= lo and hi <= 32767:
            return 32767
    return int(np.iinfo(arr.dtype).max)


#: Largest channel difference, in units of the sample range, at which colour still counts as grey.
#: Lossless formats need exact equality up to float rounding; JPEG chroma rounding moves R, G, B of a
#: grey pixel apart by a level or two.
_GREY_TOLERANCE = {False: 1e-6, True: 2.5 / 255}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _to_grey(arr: np.ndarray, info: ImageInfo, *, lossy: bool, label: str) -> np.ndarray:
    x = _scale(arr)
    if x.ndim == 2:
        return x
    n = x.shape[2]
    alpha = None
    if n in (2, 4):
        alpha, x = x[:, :, -1], x[:, :, :-1]
    if x.shape[2] == 1:
        grey = x[:, :, 0]
    elif x.shape[2] == 3:
        spread = max(float(np.abs(x[:, :, 0] - x[:, :, 1]).max()), float(np.abs(x[:, :, 1] - x[:, :, 2]).max()))
        full_range = 1.0 if arr.dtype.kind in "uib" else max(float(np.abs(x).max()), 1e-12)
        if spread <= _GREY_TOLERANCE[lossy] * full_range:
            grey = x.mean(axis=2)
        else:
            grey = x @ _LUMA
            info.warnings.append("colour image converted to grey (BT.601 luma); brightfield is expected to be grey")
    else:  # pragma: no cover - guarded by max_channels and the branches above
        raise TooManyChannelsError(f"{label}: cannot interpret {n} channels")
    if alpha is not None:
        a_max = 1.0 if arr.dtype.kind in "uib" else max(float(alpha.max()), 1e-12)
        a = np.clip(alpha / a_max, 0.0, 1.0)
        if float(a.min()) < 1.0:
            opaque = a >= 0.5
            if not opaque.any():
                raise InvalidPixelValuesError(f"{label}: the image is (almost) fully transparent; nothing to classify")
            background = float(np.median(grey[opaque]))
            grey = a * grey + (1.0 - a) * background
            info.warnings.append("transparent pixels composited over the image's background grey")
    return grey.astype(np.float32, copy=False)
