"""Checks on uploaded cell images before anything is sent to the worker or stored.

The server only checks what it can without decoding (count, size, file type by its leading bytes);
decoding and the pixel limits are the worker's job (nscfate's decoder), and its per-image errors come
back as rejections too.
"""

import hashlib
import re

import anvil

from . import errors

MAX_FILES_PER_CALL = 64
MAX_BYTES_PER_FILE = 20 * 1024 * 1024  # the same as nscfate's DecodeLimits.max_bytes in the worker
MAX_TOTAL_BYTES = 128 * 1024 * 1024
MAX_FILENAME_CHARS = 200
MAX_EXPERIMENT_CHARS = 200
MAX_NOTES_CHARS = 2000
ACCEPTED_TEXT = "PNG, JPEG, TIFF (.tif/.tiff, including OME-TIFF) or BMP images"

# Leading bytes of each accepted format -> (format name, MIME type).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpeg", "image/jpeg"),
    (b"II*\x00", "tiff", "image/tiff"),
    (b"MM\x00*", "tiff", "image/tiff"),
    (b"II+\x00", "tiff", "image/tiff"),  # BigTIFF
    (b"MM\x00+", "tiff", "image/tiff"),
    (b"BM", "bmp", "image/bmp"),
)
_UNSAFE_NAME_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class CheckedFile(object):
    """An upload that passed the checks: its bytes, hash and a clean name and MIME type."""

    def __init__(self, index, filename, data, image_format, content_type):
        self.index = index
        self.filename = filename
        self.data = data
        self.format = image_format
        self.content_type = content_type
        self.sha256 = hashlib.sha256(data).hexdigest()

    def media(self):
        return anvil.BlobMedia(self.content_type, self.data, name=self.filename)


def clean_filename(name, index):
    """The base name without path or control characters, shortened; a placeholder if empty."""
    if not isinstance(name, str):
        name = ""
    name = _UNSAFE_NAME_CHARS.sub("", name.replace("\\", "/").split("/")[-1]).strip()
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = MAX_FILENAME_CHARS - len(ext) - 1
        name = (stem[:keep] + "." + ext) if dot and 0 < len(ext) < 10 and keep > 0 else name[:MAX_FILENAME_CHARS]
    return name or "image-%d" % (index + 1)


def clean_text(value, field, max_chars):
    """An optional free-text field: None or a stripped string no longer than ``max_chars``."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidRequest("%s must be text" % field, code="bad_" + field)
    value = value.strip()
    if len(value) > max_chars:
        raise errors.InvalidRequest(
            "%s is too long (%d characters; at most %d)" % (field, len(value), max_chars), code="bad_" + field)
    return value or None


def rejection(index, filename, code, message):
    return {"index": index, "filename": filename, "ok": False, "error": {"code": code, "message": message}}


def sniff_format(data):
    """(format, MIME type) from the leading bytes, or (None, None)."""
    for magic, fmt, mime in _SIGNATURES:
        if data.startswith(magic):
            return fmt, mime
    return None, None


def check_files(files):
    """Split uploads into accepted ``CheckedFile``s and rejection dicts, keeping the upload order.

    Raises InvalidRequest for problems with the request as a whole (no files, too many, too big).
    """
    if isinstance(files, anvil.Media):
        files = [files]
    if not isinstance(files, (list, tuple)) or not files:
        raise errors.InvalidRequest("No images were sent; choose one or more cell images (%s)" % ACCEPTED_TEXT,
                                    code="no_files")
    if len(files) > MAX_FILES_PER_CALL:
        raise errors.InvalidRequest(
            "Too many images in one request (%d); send at most %d at a time" % (len(files), MAX_FILES_PER_CALL),
            code="too_many_files")
    accepted, rejected, total = [], [], 0
    for i, f in enumerate(files):
        if not isinstance(f, anvil.Media):
            rejected.append(rejection(i, "image-%d" % (i + 1), "not_a_file", "This item is not an uploaded file"))
            continue
        name = clean_filename(f.name, i)
        length = f.length
        if length is not None and length > MAX_BYTES_PER_FILE:
            rejected.append(rejection(i, name, "too_many_bytes", _too_big(length)))
            continue
        data = f.get_bytes()
        if len(data) > MAX_BYTES_PER_FILE:
            rejected.append(rejection(i, name, "too_many_bytes", _too_big(len(data))))
            continue
        if not data:
            rejected.append(rejection(i, name, "empty", "The file is empty"))
            continue
        total += len(data)
        if total > MAX_TOTAL_BYTES:
            raise errors.InvalidRequest(
                "The images in one request add up to more than %d MB; send fewer at a time"
                % (MAX_TOTAL_BYTES // (1024 * 1024)), code="request_too_large")
        fmt, mime = sniff_format(data)
        if fmt is None:
            rejected.append(rejection(i, name, "unsupported_format",
                                      "Not a supported image file; accepted: %s" % ACCEPTED_TEXT))
            continue
        accepted.append(CheckedFile(i, name, data, fmt, mime))
    return accepted, rejected


def _too_big(n):
    return "The file is %.1f MB; the limit is %d MB per image" % (n / 1048576.0, MAX_BYTES_PER_FILE // 1048576)
