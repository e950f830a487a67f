"""decode_image: every supported format decodes to the right grey values; every bad input gets its
specific error."""

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from nscfate import errors
from nscfate.io import DEFAULT_LIMITS, DecodedImage, DecodeLimits, decode_image, sniff_format
from tests.imagegen import cell_array, cv2_png, expected_float, pil_bytes, skimage_data, tiff_bytes

GREY8 = cell_array()
GREY16 = cell_array(dtype=np.uint16, seed=1)


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.stack([grey] * 3, axis=-1)


def _colour(h=47, w=60, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(3)
    top = np.iinfo(dtype).max
    return rng.integers(0, top, (h, w, 3), endpoint=True).astype(dtype)


# ------------------------------------------------------------------------------------------------
# formats


@pytest.mark.parametrize(
    "data, fmt, bit_depth, channels",
    [
        (pil_bytes(GREY8, "PNG"), "png", 8, 1),
        (cv2_png(GREY16), "png", 16, 1),
        (cv2_png(_rgb(GREY8)), "png", 8, 3),
        (cv2_png(_rgb(GREY16)), "png", 16, 3),
        (pil_bytes(Image.fromarray(GREY8).convert("P"), "PNG"), "png", 8, 1),
        (pil_bytes(GREY8, "BMP"), "bmp", 8, 1),
        (pil_bytes(_rgb(GREY8), "BMP"), "bmp", 8, 3),  # the 24-bit grey .ome.bmp of IDEAS exports
        (tiff_bytes(GREY8), "tiff", 8, 1),
        (tiff_bytes(GREY16), "tiff", 16, 1),
        (tiff_bytes(_rgb(GREY16), photometric="rgb"), "tiff", 16, 3),
        (tiff_bytes(np.moveaxis(_rgb(GREY8), -1, 0), photometric="rgb", planarconfig="separate"), "tiff", 8, 3),
    ],
    ids=["png8", "png16", "png-rgb-grey", "png16-rgb-grey", "png-palette", "bmp8", "bmp24-grey", "tiff8",
         "tiff16", "tiff16-rgb-grey", "tiff-planar-rgb"],
)
def test_lossless_grey_decodes_exactly(data, fmt, bit_depth, channels):
    source = GREY16 if bit_depth == 16 else GREY8
    out = decode_image(data)
    assert isinstance(out, DecodedImage)
    assert out.pixels.dtype == np.float32 and out.pixels.shape == source.shape
    np.testing.assert_allclose(out.pixels, expected_float(source), atol=1e-6)
    assert out.info.format == fmt and out.info.bit_depth == bit_depth and out.info.channels == channels
    assert out.info.warnings == []  # R=G=B is grey, silently


@pytest.mark.parametrize("dtype", [np.uint32, np.int16, np.float32, np.float64])
def test_tiff_other_sample_types(dtype):
    if np.dtype(dtype).kind == "f":
        arr = (cell_array(dtype=np.float64) * 1000.0 - 20.0).astype(dtype)  # floats keep their values
    else:
        arr = cell_array(dtype=dtype)
    out = decode_image(tiff_bytes(arr))
    np.testing.assert_allclose(out.pixels, expected_float(arr), rtol=1e-6, atol=1e-6)
    assert out.info.dtype == np.dtype(dtype).name and out.info.bit_depth == np.dtype(dtype).itemsize * 8


def test_16_bit_values_stored_as_32_bit_integers_decode_as_16_bit_ones():
    """A 12-bit camera image written as uint32 or int32 gives the floats it gives as uint16: divided by
    2**32 - 1 it spanned ~1e-6, below the model's normalisation epsilon (every cell one class)."""
    twelve_bit = (cell_array(dtype=np.uint16) >> 4).astype(np.uint16)
    as16 = decode_image(tiff_bytes(twelve_bit)).pixels
    assert as16.max() > 0.01
    for dtype in (np.uint32, np.int32, np.uint64, np.int64):
        wide = decode_image(tiff_bytes(twelve_bit.astype(dtype)))
        np.testing.assert_array_equal(wide.pixels, as16)
        assert wide.info.bit_depth == np.dtype(dtype).itemsize * 8
    signed = (twelve_bit.astype(np.int32) - 2048)  # values of an int16
    np.testing.assert_array_equal(decode_image(tiff_bytes(signed)).pixels,
                                  decode_image(tiff_bytes(signed.astype(np.int16))).pixels)
    # min-is-white is inverted against the same 16-bit scale
    np.testing.assert_array_equal(decode_image(tiff_bytes(twelve_bit.astype(np.uint32), photometric="miniswhite")).pixels,
                                  decode_image(tiff_bytes(twelve_bit, photometric="miniswhite")).pixels)
    # values beyond 16 bits keep the dtype's scale
    big = twelve_bit.astype(np.uint32) << 16
    np.testing.assert_allclose(decode_image(tiff_bytes(big)).pixels, big / np.float32(2**32 - 1), rtol=1e-6)


def test_tiff_bilevel_and_min_is_white():
    mask = GREY8 > 100
    out = decode_image(tiff_bytes(mask, photometric="minisblack"))
    np.testing.assert_array_equal(out.pixels, mask.astype(np.float32))
    assert out.info.bit_depth == 1
    # tifffile's default for masks is min-is-white: a set bit is black
    np.testing.assert_array_equal(decode_image(tiff_bytes(mask)).pixels, (~mask).astype(np.float32))
    inverted = decode_image(tiff_bytes(255 - GREY8, photometric="miniswhite"))
    np.testing.assert_allclose(inverted.pixels, expected_float(GREY8), atol=1e-6)
    assert any("min-is-white" in w for w in inverted.info.warnings)


def test_multipage_tiff_page_choice():
    stack = np.stack([cell_array(seed=s) for s in range(3)])
    data = tiff_bytes(stack, photometric="minisblack")
    first = decode_image(data)
    assert first.info.pages == 3 and first.info.page == 0
    assert "multi-page TIFF (3 pages): only the first page was read" in first.info.warnings
    np.testing.assert_allclose(first.pixels, expected_float(stack[0]))
    third = decode_image(data, page=2)
    assert third.info.page == 2 and third.info.warnings == []
    np.testing.assert_allclose(third.pixels, expected_float(stack[2]))
    with pytest.raises(errors.ImageError, match="page 3 does not exist"):
        decode_image(data, page=3)
    with pytest.raises(errors.ImageError, match="single page"):
        decode_image(pil_bytes(GREY8, "PNG"), page=1)


def test_ome_tiff_channels_as_pages():
    # One OME-TIFF holding Ch1..Ch3 (CYX): page 0 is brightfield, the others markers.
    stack = np.stack([GREY16, GREY16 // 2, GREY16 // 3])
    data = tiff_bytes(stack, ome=True, metadata={"axes": "CYX"})
    out = decode_image(data, page=0)
    assert out.info.ome and out.info.pages == 3 and out.info.format == "tiff"
    np.testing.assert_allclose(out.pixels, expected_float(GREY16))
    np.testing.assert_allclose(decode_image(data, page=1).pixels, expected_float(GREY16 // 2))


def test_16bit_colour_png_keeps_precision_and_warns():
    rgb = _colour(dtype=np.uint16)
    out = decode_image(cv2_png(rgb))
    luma = (rgb.astype(np.float64) / 65535.0) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(out.pixels, luma, atol=1e-5)  # 8-bit reduction would be off by ~2e-3
    assert out.info.bit_depth == 16 and out.info.dtype == "uint16"
    assert any("colour image converted to grey" in w for w in out.info.warnings)


def test_rgba_png_opaque_and_transparent_frame():
    opaque = np.dstack([_rgb(GREY8), np.full(GREY8.shape, 255, np.uint8)])
    out = decode_image(pil_bytes(opaque, "PNG"))
    np.testing.assert_allclose(out.pixels, expected_float(GREY8), atol=1e-6)
    assert out.info.channels == 4 and out.info.warnings == []

    framed = opaque.copy()
    framed[:5, :, :3] = 0  # black but fully transparent rows must not show up as a black band
    framed[:5, :, 3] = 0
    out = decode_image(pil_bytes(framed, "PNG"))
    background = np.median(expected_float(GREY8)[5:])
    np.testing.assert_allclose(out.pixels[:5], background, atol=1e-6)
    np.testing.assert_allclose(out.pixels[5:], expected_float(GREY8)[5:], atol=1e-6)
    assert any("composited" in w for w in out.info.warnings)


def test_grey_alpha_png_and_palette_with_transparency():
    la = Image.fromarray(GREY8).convert("LA")
    out = decode_image(pil_bytes(la, "PNG"))
    assert out.info.channels == 2
    np.testing.assert_allclose(out.pixels, expected_float(GREY8), atol=1e-6)
    p = Image.fromarray(GREY8).convert("P")
    out = decode_image(pil_bytes(p, "PNG", transparency=int(np.asarray(p)[0, 0])))
    assert out.pixels.shape == GREY8.shape and np.isfinite(out.pixels).all()


def test_fully_transparent_is_refused():
    clear = np.dstack([_rgb(GREY8), np.zeros(GREY8.shape, np.uint8)])
    with pytest.raises(errors.InvalidPixelValuesError, match="transparent"):
        decode_image(pil_bytes(clear, "PNG"))


def test_jpeg_grey_rgb_and_cmyk():
    out = decode_image(pil_bytes(GREY8, "JPEG", quality=95))
    assert out.info.format == "jpeg" and out.info.channels == 1
    np.testing.assert_allclose(out.pixels, expected_float(GREY8), atol=0.06)
    rgb = decode_image(pil_bytes(_rgb(GREY8), "JPEG", quality=95))
    assert rgb.info.channels == 3 and rgb.info.warnings == []  # grey saved as RGB is still grey
    cmyk = decode_image(pil_bytes(Image.fromarray(_rgb(GREY8)).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.info.channels == 4 and any("CMYK" in w for w in cmyk.info.warnings)
    np.testing.assert_allclose(cmyk.pixels, expected_float(GREY8), atol=0.06)


def test_jpeg_exif_orientation_applied():
    arr = np.full((30, 50), 200, np.uint8)
    arr[:6, :6] = 0  # dark mark top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    out = decode_image(pil_bytes(arr, "JPEG", quality=95, exif=exif))
    assert out.pixels.shape == (50, 30)
    assert out.pixels[:6, -6:].mean() < 0.2 and out.pixels[:6, :6].mean() > 0.6  # mark moved top-right
    assert any("EXIF orientation 6" in w for w in out.info.warnings)
    assert out.info.original_shape == (30, 50)


def test_real_microscopy_image_from_scikit_image():
    path = skimage_data("cell.png")
    out = decode_image(path)
    reference = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    assert out.pixels.shape == (660, 550) == reference.shape
    np.testing.assert_array_equal(out.pixels, reference)
    assert out.info.format == "png" and out.info.n_bytes == path.stat().st_size


def test_real_multipage_tiff_from_scikit_image():
    out = decode_image(skimage_data("multipage.tif"), page=1)
    assert out.info.pages == 2 and out.info.page == 1 and out.pixels.ndim == 2


def test_sources_bytes_path_fileobj_agree(tmp_path):
    data = cv2_png(GREY16)
    path = tmp_path / "cell.png"
    path.write_bytes(data)
    results = [decode_image(data), decode_image(bytearray(data)), decode_image(memoryview(data)),
               decode_image(str(path)), decode_image(path), decode_image(io.BytesIO(data))]
    for r in results[1:]:
        np.testing.assert_array_equal(r.pixels, results[0].pixels)
    with path.open("rb") as fh:
        np.testing.assert_array_equal(decode_image(fh).pixels, results[0].pixels)


def test_info_to_dict_is_json_ready():
    import dataclasses
    import json

    info = decode_image(tiff_bytes(GREY16)).info
    d = info.to_dict()
    assert json.loads(json.dumps(d))["original_shape"] == [47, 60]
    assert d == {**dataclasses.asdict(info), "original_shape": [47, 60]}  # every field
    assert d["warnings"] is not info.warnings  # a copy: adding to a result's warnings leaves the info alone


# ------------------------------------------------------------------------------------------------
# bad input


def test_empty():
    with pytest.raises(errors.EmptyImageError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("data", [b"hello, this is a text file\n", bytes(range(256)) * 4, b'{"a": 1}'])
def test_not_an_image(data):
    with pytest.raises(errors.NotAnImageError, match="PNG, JPEG, BMP or TIFF"):
        decode_image(data)


@pytest.mark.parametrize(
    "data, name",
    [
        (pil_bytes(GREY8, "GIF"), "GIF"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "PDF"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10"/>', "SVG"),
        (b"<!DOCTYPE html><html><body>not a cell</body></html>", "HTML"),
        (pil_bytes(GREY8, "WEBP"), "WebP"),
    ],
)
def test_unsupported_formats_are_named(data, name):
    assert sniff_format(data) == name
    with pytest.raises(errors.UnsupportedFormatError, match=f"{name} is not supported; expected a PNG"):
        decode_image(data)


def test_real_gif_from_scikit_image():
    with pytest.raises(errors.UnsupportedFormatError):
        decode_image(skimage_data("no_time_for_that_tiny.gif"))


@pytest.mark.parametrize(
    "data",
    [pil_bytes(GREY8, "PNG"), cv2_png(GREY16), pil_bytes(cell_array(200, 200), "JPEG"), pil_bytes(GREY8, "BMP"),
     tiff_bytes(GREY16)],
    ids=["png", "png16", "jpeg", "bmp", "tiff"],
)
def test_truncated(data):
    with pytest.raises(errors.CorruptImageError):
        decode_image(data[: len(data) * 2 // 3])


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"II*\x00" + b"\xff" * 20, b"BM" + b"\x00" * 60])
def test_corrupt_header(data):
    with pytest.raises(errors.CorruptImageError):
        decode_image(data)


def test_corrupt_png_pixels_with_valid_structure():
    data = bytearray(pil_bytes(GREY8, "PNG"))
    start = data.index(b"IDAT") + 4
    data[start:start + 30] = b"\x00" * 30
    with pytest.raises(errors.CorruptImageError):  # Pillow's CRC check catches it before OpenCV
        decode_image(bytes(data))


def test_too_many_bytes_for_every_source(tmp_path):
    data = pil_bytes(GREY8, "PNG")
    limits = DecodeLimits(max_bytes=len(data) - 1)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for source in (data, path, io.BytesIO(data)):
        with pytest.raises(errors.TooManyBytesError, match="larger than the limit"):
            decode_image(source, limits=limits)
    assert decode_image(data, limits=DecodeLimits(max_bytes=len(data))).pixels.shape == GREY8.shape


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, followed by a scrap of pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100))


def test_pixel_limit_is_checked_from_the_header():
    # 6000 x 5000 = 30 Mpx: above our 25 Mpx limit, below Pillow's own bomb threshold. The data is
    # truncated, so reaching the pixel decoder would raise CorruptImageError instead.
    with pytest.raises(errors.TooManyPixelsError, match="30,000,000 pixels, more than the limit of 25,000,000"):
        decode_image(_png_header_only(6000, 5000))
    with pytest.raises(errors.TooManyPixelsError, match="25,010,001 pixels"):  # just over: not "25.0 exceeds 25"
        decode_image(_png_header_only(5001, 5001))
    with pytest.raises(errors.TooManyPixelsError):  # far beyond Pillow's threshold too
        decode_image(_png_header_only(100_000, 100_000))


@pytest.mark.parametrize("kind", ["png", "tiff"])
def test_decompression_bomb_does_not_allocate(kind):
    zeros = np.zeros((6000, 6000), np.uint8)  # 36 Mpx that compress to a few kB
    data = cv2_png(zeros) if kind == "png" else tiff_bytes(zeros, compression="zlib")
    del zeros
    assert len(data) < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(errors.TooManyPixelsError):
            decode_image(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000  # decoding the pixels would need 36 MB


def test_too_small():
    with pytest.raises(errors.ImageTooSmallError, match="at least 8 px"):
        decode_image(pil_bytes(cell_array(5, 60), "PNG"))
    assert decode_image(pil_bytes(cell_array(8, 8), "PNG")).pixels.shape == (8, 8)


def test_too_many_channels():
    six = np.dstack([GREY8] * 6)
    with pytest.raises(errors.TooManyChannelsError, match="6 channels"):
        decode_image(tiff_bytes(six, photometric="minisblack", planarconfig="contig"))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf(bad):
    arr = cell_array(dtype=np.float32)
    arr[10, 10] = bad
    with pytest.raises(errors.InvalidPixelValuesError, match="NaN or infinite"):
        decode_image(tiff_bytes(arr))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(errors.ImageError, match="no such file"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(errors.NotAnImageError, match="directory"):
        decode_image(tmp_path)


def test_errors_are_input_errors_with_codes():
    for exc_type in (errors.EmptyImageError, errors.NotAnImageError, errors.UnsupportedFormatError,
                     errors.CorruptImageError, errors.TooManyBytesError, errors.TooManyPixelsError,
                     errors.ImageTooSmallError, errors.TooManyChannelsError, errors.InvalidPixelValuesError):
        assert issubclass(exc_type, errors.InputError) and exc_type.code != errors.ImageError.code


def test_limits_are_documented_defaults():
    assert DEFAULT_LIMITS == DecodeLimits(max_bytes=20 * 1024 * 1024, max_pixels=25_000_000, min_side=8,
                                          max_channels=4, max_pages=256)
    with pytest.raises(ValueError):
        DecodeLimits(max_pixels=0)


def test_a_tiff_sample_that_is_not_transparency_is_not_blended_in():
    """Brightfield + another channel in one TIFF page (ExtraSamples: unspecified): the image is the first
    sample, and the other is left out with a warning, not composited as if it were alpha."""
    import tifffile

    marker = np.full(GREY8.shape, 200, np.uint8)
    for extrasamples, blended in (([0], False), ([2], True)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, np.dstack([GREY8, marker]), photometric="minisblack", planarconfig="contig",
                         extrasamples=extrasamples)
        out = decode_image(buf.getvalue())
        assert out.info.channels == 2
        if blended:  # 2 = unassociated alpha: real transparency, composited as before
            assert any("composited" in w for w in out.info.warnings)
        else:
            np.testing.assert_allclose(out.pixels, expected_float(GREY8), atol=1e-6)
            assert any("not transparency" in w for w in out.info.warnings)
