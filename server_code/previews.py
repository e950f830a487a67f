"""Previews of stored cell images that any browser can show.

Browsers show PNG, JPEG and BMP themselves, so those are sent as stored. TIFF (often 16-bit from
imaging flow cytometry) they cannot show: its first page becomes a PNG, contrast-stretched between the
0.5th and 99.5th percentiles when it is not 8-bit (16-bit and float images are mostly black when scaled
by their type's maximum), at most ``MAX_SIDE`` pixels on a side. A preview is for people only: the
prediction always used the full image through the worker's decoder.

The local host reads TIFF with tifffile (as the worker's decoder does); on Anvil, whose standard server
environment has numpy and Pillow but maybe not tifffile, Pillow reads the common layouts.
"""

import io

from . import errors

MAX_SIDE = 256
MAX_PIXELS = 25 * 1000 * 1000  # the worker's limit: larger images were never stored
BROWSER_TYPES = ("image/png", "image/jpeg", "image/bmp")


def _no_preview(reason):
    return errors.NotFound("No preview of this image (%s); the prediction used the full image" % reason,
                           code="no_preview")


def _mime(content_type):
    return (content_type or "").split(";")[0].strip().lower()


def browser_shows(content_type):
    """Whether a browser shows an image of this content type as it is; if not, it needs a preview."""
    return _mime(content_type) in BROWSER_TYPES


def shown_as_stored(media):
    """``browser_shows`` for a stored image (Media, or None when there is none)."""
    return media is not None and browser_shows(media.content_type)


def preview(media):
    """``(bytes, content_type)`` of a browser-displayable version of a stored image (Media).

    Raises:
        errors.NotFound: (code ``no_preview``) when the image cannot be turned into a preview.
    """
    content_type = _mime(media.content_type)
    data = media.get_bytes()
    if content_type in BROWSER_TYPES:
        return data, content_type
    try:
        import numpy as np
    except ImportError:
        raise _no_preview("this server has no numpy")
    pixels = _read_first_page(data, np)
    return _to_png(_display_pixels(pixels, np)), "image/png"


def _read_first_page(data, np):
    """The first page's pixels: tifffile where installed (it reads every TIFF layout faithfully),
    otherwise Pillow."""
    try:
        import tifffile
    except ImportError:
        tifffile = None
    try:
        if tifffile is not None:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages[0]
                if int(np.prod(page.shape[:2])) > MAX_PIXELS:
                    raise _no_preview("too many pixels")
                pixels = page.asarray()
                # The two layouts the worker's decoder turns round too, so the preview looks like what
                # the model saw: samples stored plane by plane, and 0 meaning white. A copy on purpose of
                # nscfate.io's handling (server code cannot import nscfate on Anvil): keep them in step.
                if page.axes == "SYX":
                    pixels = np.moveaxis(pixels, 0, -1)
                if int(page.photometric) == 0 and pixels.ndim == 2:  # MINISWHITE
                    if pixels.dtype.kind == "b":  # 1-bit
                        pixels = ~pixels
                    elif pixels.dtype.kind in "ui":
                        pixels = np.iinfo(pixels.dtype).max - pixels
                    else:
                        pixels = np.nanmax(pixels) - pixels
                return pixels
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise _no_preview("too many pixels")
            im.seek(0)
            return np.asarray(im)
    except errors.NotFound:
        raise
    except ImportError:
        raise _no_preview("this server has no TIFF reader")
    except Exception as e:
        raise _no_preview("the file cannot be read for display: %s" % type(e).__name__)


def _display_pixels(pixels, np):
    """8-bit grey or RGB pixels for display."""
    if pixels.ndim == 3 and pixels.shape[2] in (2, 4):  # grey + alpha, RGB + alpha: drop alpha
        pixels = pixels[:, :, :-1]
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise _no_preview("unusual pixel layout %s" % (pixels.shape,))
    if pixels.dtype.kind not in "biuf":
        raise _no_preview("pixels of type %s" % pixels.dtype)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    values = pixels.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise _no_preview("no finite pixel values")
    lo, hi = np.percentile(finite, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.nan_to_num((values - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def _to_png(pixels):
    from PIL import Image

    image = Image.fromarray(pixels)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
