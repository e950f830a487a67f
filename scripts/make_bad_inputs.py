"""Generate the corpus of bad and odd uploads that every entry point must handle.

    python scripts/make_bad_inputs.py OUT_DIR [--no-big]

writes one file per case into ``OUT_DIR`` and ``OUT_DIR/manifest.json``:

``cases``: one upload each, ``{"id", "kind", "file" (name on disk), "upload_name" (the filename the
client sends: unicode, path traversal, ...), "content_type" (the MIME type the client claims), "expect":
"rejected" | "classified", "code" (the error code for a rejected file), "stored_name" (the filename a
classified one must be stored under), "warning" (a substring of a warning a classified one must
carry, if any)}``. The codes are the ``nscfate.errors`` codes; the server's own checks (size, leading
bytes) answer with the same codes as the decoder behind the worker, so one code holds for every path.

``requests``: whole-request cases for the REST API (too many files at once, a full batch, no file, ...)
with the status they must get.

Everything is generated with the real encoders (Pillow, OpenCV, tifffile); nothing is downloaded. The
tests in ``tests/test_bad_inputs.py`` send the corpus through the REST API (HTTP Basic and the browser's
session + CSRF path), through the worker directly and through ``nscfate predict``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from nscfate.testing import cell_image, cv2_png, pil_bytes, tiff_bytes

log = logging.getLogger("make_bad_inputs")

MANIFEST = "manifest.json"
#: The byte limit of an upload (server and decoder alike): nscfate's DecodeLimits.max_bytes.
MAX_BYTES = 20 * 1024 * 1024
#: Most files in one classify request (server_code.uploads.MAX_FILES_PER_CALL).
MAX_FILES = 64


@dataclass(frozen=True)
class Case:
    """One upload and what must happen to it."""

    id: str
    kind: str
    file: str
    upload_name: str
    content_type: str
    expect: str  # "rejected" or "classified"
    code: str | None = None
    stored_name: str | None = None
    warning: str | None = None


# --------------------------------------------------------------------------------------------------
# encoders


def _cell(h: int = 47, w: int = 60, seed: int = 0) -> np.ndarray:
    return cell_image(np.random.default_rng(seed), (h, w))


def _u8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def _u16(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 65535).astype(np.uint16)








def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG start that declares ``width`` x ``height`` with a scrap of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def _jpeg_with_size(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    data = bytearray(pil_bytes(_u8(_cell()), "JPEG", quality=90))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _exif_rotated_jpeg() -> bytes:
    from PIL import Image

    im = Image.fromarray(_u8(_cell(40, 64)))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return pil_bytes(im, "JPEG", exif=exif.tobytes(), quality=92)


def _cmyk_jpeg() -> bytes:
    from PIL import Image

    return pil_bytes(Image.fromarray(_u8(_cell())).convert("CMYK"), "JPEG", quality=92)


def _animated_gif() -> bytes:
    from PIL import Image

    frames = [Image.fromarray(_u8(_cell(seed=s))) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


def _rgba_transparent_background() -> bytes:
    grey = _u8(_cell())
    h, w = grey.shape
    yy, xx = np.mgrid[:h, :w]
    alpha = np.where(np.hypot(yy - h / 2, xx - w / 2) < 15, 255, 0).astype(np.uint8)
    return cv2_png(np.dstack([grey, grey, grey, alpha]))


def _fully_transparent() -> bytes:
    grey = _u8(_cell())
    return cv2_png(np.dstack([grey, grey, grey, np.zeros_like(grey)]))


def _float_tiff(bad: float | None = None) -> bytes:
    arr = _cell().astype(np.float32)
    if bad is not None:
        arr[20, 30] = bad
    return tiff_bytes(arr)


def _zip() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cell.png", cv2_png(_u8(_cell())))
    return buf.getvalue()


def _over_byte_limit() -> bytes:
    """A real PNG padded after its end to one byte over the limit."""
    head = cv2_png(_u8(_cell()))
    return head + b"\x00" * (MAX_BYTES + 1 - len(head))


def _bad_crc_png() -> bytes:
    data = bytearray(cv2_png(_u8(_cell())))
    start = data.index(b"IDAT") + 4
    data[start + 4:start + 20] = bytes(16)  # pixel data changed, CRC not
    return bytes(data)


def _wrong_magic() -> bytes:
    data = bytearray(cv2_png(_u8(_cell())))
    data[0:4] = b"\x00\x00\x00\x00"
    return bytes(data)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


# --------------------------------------------------------------------------------------------------
# the corpus


def _specs(include_big: bool) -> list[tuple[str, str, Callable[[], bytes], str, str, str, str | None, dict]]:
    """(id, kind, make bytes, disk suffix, upload name, content type, expected code or None, extras)."""
    png8 = lambda: cv2_png(_u8(_cell()))  # noqa: E731
    specs: list = [
        # --- not images at all
        ("empty", "empty file (0 bytes)", lambda: b"", ".png", "empty.png", "image/png", "empty", {}),
        ("text-named-png", "text file named .png", lambda: b"cell 1: astrocyte\ncell 2: oligo\n", ".png",
         "notes.png", "image/png", "not_an_image", {}),
        ("json", "JSON document", lambda: b'{"cell": 1, "class": "astro"}', ".json", "cell.json",
         "application/json", "not_an_image", {}),
        ("random-bytes", "random binary data", lambda: np.random.default_rng(7).bytes(4096), ".bin", "cell.bin",
         "application/octet-stream", "not_an_image", {}),
        ("html", "HTML page named .png", lambda: b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
         ".html", "cell.png", "text/html", "unsupported_format", {}),
        ("svg", "SVG image", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="60" '
                                     b'height="47"><circle cx="30" cy="23" r="10"/><script>alert(1)</script></svg>',
         ".svg", "cell.svg", "image/svg+xml", "unsupported_format", {}),
        ("pdf", "PDF document", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n",
         ".pdf", "cell.pdf", "application/pdf", "unsupported_format", {}),
        ("zip", "ZIP archive holding a PNG", _zip, ".zip", "cells.zip", "application/zip", "unsupported_format", {}),
        ("gif-animated", "animated GIF (3 frames)", _animated_gif, ".gif", "cell.gif", "image/gif",
         "unsupported_format", {}),
        ("webp", "WebP image", lambda: pil_bytes(_u8(_cell()), "WEBP"), ".webp", "cell.webp", "image/webp",
         "unsupported_format", {}),
        ("heic-header", "HEIC header", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64),
         ".heic", "cell.heic", "image/heic", "unsupported_format", {}),
        ("wrong-magic", "PNG whose signature bytes are zeroed", _wrong_magic, ".png", "cell.png", "image/png",
         "not_an_image", {}),
        # --- broken images
        ("png-truncated", "truncated PNG", lambda: _truncated(png8()), ".png", "cell.png", "image/png", "corrupt", {}),
        ("jpeg-truncated", "truncated JPEG", lambda: _truncated(pil_bytes(_u8(_cell(200, 200)), "JPEG")), ".jpg",
         "cell.jpg", "image/jpeg", "corrupt", {}),
        ("tiff-truncated", "truncated TIFF", lambda: _truncated(tiff_bytes(_u16(_cell()))), ".tif", "cell.tif",
         "image/tiff", "corrupt", {}),
        ("bmp-truncated", "truncated BMP", lambda: _truncated(pil_bytes(_u8(_cell()), "BMP")), ".bmp", "cell.bmp",
         "image/bmp", "corrupt", {}),
        ("png-bad-crc", "PNG with pixel data that fails its CRC", _bad_crc_png, ".png", "cell.png", "image/png",
         "corrupt", {}),
        ("png-header-garbage", "PNG signature then garbage", lambda: b"\x89PNG\r\n\x1a\n" + bytes(40), ".png",
         "cell.png", "image/png", "corrupt", {}),
        ("tiff-complex", "TIFF with complex-valued samples", lambda: tiff_bytes(_cell().astype(np.complex64)), ".tif",
         "cell.tif", "image/tiff", "unsupported_format", {}),
        # --- images outside the limits
        ("png-1x1", "1x1 pixel PNG", lambda: cv2_png(np.array([[128]], np.uint8)), ".png", "dot.png", "image/png",
         "too_small", {}),
        ("png-thin-strip", "4x300 pixel strip", lambda: cv2_png(_u8(_cell(4, 300))), ".png", "strip.png", "image/png",
         "too_small", {}),
        ("png-bomb", "decompression bomb: 6000x6000 PNG in a few kB", lambda: cv2_png(np.zeros((6000, 6000), np.uint8)),
         ".png", "bomb.png", "image/png", "too_many_pixels", {}),
        ("png-bomb-header", "PNG header claiming 100000x100000 pixels", lambda: _png_header_only(100_000, 100_000),
         ".png", "bomb2.png", "image/png", "too_many_pixels", {}),
        ("tiff-bomb", "decompression bomb: 6000x6000 zlib TIFF",
         lambda: tiff_bytes(np.zeros((6000, 6000), np.uint8), compression="zlib"), ".tif", "bomb.tif", "image/tiff",
         "too_many_pixels", {}),
        ("jpeg-bomb-header", "JPEG frame header claiming 60000x60000 pixels", lambda: _jpeg_with_size(60000, 60000),
         ".jpg", "bomb.jpg", "image/jpeg", "too_many_pixels", {}),
        ("tiff-5-channel", "5-channel TIFF", lambda: tiff_bytes(np.dstack([_u8(_cell())] * 5), photometric="minisblack",
                                                           planarconfig="contig"),
         ".tif", "cell5.tif", "image/tiff", "too_many_channels", {}),
        ("tiff-nan", "float TIFF with a NaN pixel", lambda: _float_tiff(np.nan), ".tif", "nan.tif", "image/tiff",
         "invalid_values", {}),
        ("tiff-inf", "float TIFF with an infinite pixel", lambda: _float_tiff(np.inf), ".tif", "inf.tif",
         "image/tiff", "invalid_values", {}),
        ("png-fully-transparent", "RGBA PNG with every pixel transparent", _fully_transparent, ".png", "ghost.png",
         "image/png", "invalid_values", {}),
        # --- odd but valid: must be classified
        ("png-8bit", "plain 8-bit grey PNG (reference)", png8, ".png", "cell.png", "image/png", None, {}),
        ("png-16bit", "16-bit grey PNG", lambda: cv2_png(_u16(_cell())), ".png", "cell16.png", "image/png", None, {}),
        ("png-palette", "palette PNG", lambda: pil_bytes(_pil_image(_u8(_cell())).convert("P"), "PNG"), ".png",
         "palette.png", "image/png", None, {}),
        ("png-grey-alpha", "grey+alpha PNG, opaque", lambda: pil_bytes(_pil_image(_u8(_cell())).convert("LA"), "PNG"),
         ".png", "la.png", "image/png", None, {}),
        ("png-rgba-transparent-bg", "RGBA PNG with a transparent background", _rgba_transparent_background, ".png",
         "rgba.png", "image/png", None, {"warning": "transparent"}),
        ("tiff-16bit", "16-bit grey TIFF", lambda: tiff_bytes(_u16(_cell())), ".tif", "cell16.tif", "image/tiff", None, {}),
        ("tiff-float32", "32-bit float TIFF", lambda: _float_tiff(), ".tif", "float.tif", "image/tiff", None, {}),
        ("tiff-float64-scaled", "64-bit float TIFF in camera units (0..4000)",
         lambda: tiff_bytes(_cell().astype(np.float64) * 4000.0), ".tif", "float64.tif", "image/tiff", None, {}),
        ("tiff-int16-signed", "signed 16-bit TIFF", lambda: tiff_bytes((_cell() * 20000 - 5000).astype(np.int16)), ".tif",
         "signed.tif", "image/tiff", None, {}),
        ("tiff-1bit", "1-bit TIFF", lambda: tiff_bytes(_cell() > 0.4, photometric="minisblack"), ".tif", "mask.tif",
         "image/tiff", None, {}),
        ("tiff-multipage", "3-page TIFF", lambda: tiff_bytes(np.stack([_u16(_cell(seed=s)) for s in range(3)]), photometric="minisblack"),
         ".tif",
         "stack.tif", "image/tiff", None, {"warning": "multi-page"}),
        ("bigtiff", "BigTIFF", lambda: tiff_bytes(_u16(_cell()), bigtiff=True), ".tif", "big.tif", "image/tiff", None, {}),
        ("jpeg-cmyk", "CMYK JPEG", _cmyk_jpeg, ".jpg", "cmyk.jpg", "image/jpeg", None, {"warning": "CMYK"}),
        ("jpeg-exif-rotated", "EXIF-rotated JPEG (orientation 6)", _exif_rotated_jpeg, ".jpg", "rotated.jpg",
         "image/jpeg", None, {"warning": "EXIF orientation"}),
        ("bmp-24bit", "24-bit BMP", lambda: pil_bytes(np.dstack([_u8(_cell())] * 3), "BMP"), ".bmp", "cell.bmp",
         "image/bmp", None, {}),
        ("flat-image", "a flat image (one grey level)", lambda: cv2_png(np.full((47, 60), 120, np.uint8)), ".png",
         "flat.png", "image/png", None, {}),
        ("field-of-view", "a 1024x1024 field of view instead of a crop", lambda: cv2_png(_u8(_cell(1024, 1024))),
         ".png", "field.png", "image/png", None, {}),
        ("jpeg-named-png", "JPEG content named .png and sent as image/png",
         lambda: pil_bytes(_u8(_cell()), "JPEG", quality=92), ".png", "really-a-jpeg.png", "image/png", None, {}),
        ("wrong-content-type", "PNG sent as text/plain", png8, ".png", "cell.png", "text/plain", None, {}),
        ("no-content-type", "PNG sent as application/octet-stream", png8, ".png", "cell.png",
         "application/octet-stream", None, {}),
        # --- file names
        ("unicode-name", "unicode file name", png8, ".png", "Zelle_ünïcødé_细胞_🧫.png", "image/png", None,
         {"stored_name": "Zelle_ünïcødé_细胞_🧫.png"}),
        ("traversal-name", "path traversal file name", png8, ".png", "../../../../etc/passwd.png", "image/png", None,
         {"stored_name": "passwd.png"}),
        ("windows-traversal-name", "Windows path traversal file name", png8, ".png", "..\\..\\Windows\\cell.png",
         "image/png", None, {"stored_name": "cell.png"}),
        ("control-chars-name", "file name with control characters", png8, ".png", "ce\x07l\x1bl\t.png", "image/png",
         None, {"stored_name": "cell.png"}),
        ("long-name", "a 300-character file name", png8, ".png", "c" * 296 + ".png", "image/png", None,
         {"stored_name": "c" * 196 + ".png"}),
        ("empty-name", "no file name", png8, ".png", "", "image/png", None, {"stored_name": "image-1"}),
    ]
    if include_big:
        specs.append(("over-byte-limit", "20 MiB + 1 byte (one over the limit)", _over_byte_limit, ".png", "huge.png",
                      "image/png", "too_many_bytes", {}))
    return specs


def case_ids(*, include_big: bool = True) -> list[str]:
    """The ids of the upload cases, in manifest order (cheap: nothing is encoded)."""
    return [spec[0] for spec in _specs(include_big)]


def _pil_image(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr)


def build_corpus(out_dir: str | Path, *, include_big: bool = True) -> dict:
    """Write every case into ``out_dir`` and return the manifest (also written to ``manifest.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []
    for n, (cid, kind, make, suffix, upload_name, content_type, code, extra) in enumerate(_specs(include_big)):
        file = f"{n:02d}-{cid}{suffix}"
        (out / file).write_bytes(make())
        expect = "rejected" if code else "classified"
        stored = extra.get("stored_name", upload_name) if expect == "classified" else None
        cases.append(Case(cid, kind, file, upload_name, content_type, expect, code, stored, extra.get("warning")))
    good = next(c.file for c in cases if c.id == "png-8bit")
    requests = [
        {"id": "too-many-files", "kind": f"{MAX_FILES + 1} files in one request", "file": good,
         "count": MAX_FILES + 1, "status": 400, "code": "too_many_files"},
        {"id": "full-batch", "kind": f"{MAX_FILES} files in one request (the most allowed)", "file": good,
         "count": MAX_FILES, "status": 200},
        {"id": "no-file", "kind": "a form with no file field", "status": 400, "code": "no_files"},
        {"id": "text-field-as-file", "kind": "field 'file' sent as text, not as a file", "status": 422,
         "code": "not_a_file"},
        {"id": "broken-multipart", "kind": "multipart body with a broken boundary", "status": 400, "code": "bad_form"},
        {"id": "raw-body", "kind": "the image as the raw request body", "file": good, "status": 200},
        {"id": "declared-too-large", "kind": "Content-Length of 1 GB declared", "status": 413,
         "code": "request_too_large"},
        {"id": "every-case-at-once", "kind": "every case in one request (mixed batch)", "status": 200},
    ]
    manifest = {"version": 1, "generated_by": "scripts/make_bad_inputs.py",
                "cases": [asdict(c) for c in cases], "requests": requests}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the files and manifest.json into")
    parser.add_argument("--no-big", action="store_true", help="leave out the 20 MiB over-the-limit file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_corpus(args.out_dir, include_big=not args.no_big)
    cases = manifest["cases"]
    n_bad = sum(c["expect"] == "rejected" for c in cases)
    log.info("wrote %d cases (%d to reject, %d to classify) and %d request cases to %s",
             len(cases), n_bad, len(cases) - n_bad, len(manifest["requests"]), args.out_dir / MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
