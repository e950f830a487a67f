"""Checks on uploaded cell images before anything is sent to the worker or stored.

The server only checks what it can without decoding (count, size, file type by its leading bytes);
decoding and the pixel limits are the worker's job (nscfate's decoder), and its per-image errors come
back as rejections too.
"""

import email.parser
import email.policy
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
# Other formats people send by mistake, named in the rejection (the worker's decoder, nscfate.io, knows
# the same signatures; server code cannot import it, since on Anvil nscfate lives with the worker only).
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x1f\x8b", "gzip archive"),
    (b"8BPS", "Photoshop PSD"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x93NUMPY", "NumPy .npy"),
    (b"\x89HDF", "HDF5"),
    (b"qoif", "QOI"),
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


# Per-file error codes that say "nothing was stored, send it again later" (the service, not the file).
RETRY_LATER_CODES = ("worker_unavailable", "storage_unavailable", "storage_full", "not_processed")


def rejection(index, filename, code, message):
    """A file that was not classified; ``retry_later``: not the file's fault, the same file may go through
    later (clients offer to send it again rather than calling it rejected)."""
    return {"index": index, "filename": filename, "ok": False,
            "error": {"code": code, "message": message, "retry_later": code in RETRY_LATER_CODES}}


def sniff_format(data):
    """(format, MIME type) from the leading bytes, or (None, None)."""
    for magic, fmt, mime in _SIGNATURES:
        if data.startswith(magic):
            return fmt, mime
    return None, None


def name_other_format(data):
    """The name of a recognised format that is not accepted (GIF, PDF, SVG, HTML, WebP, ...), or None."""
    for magic, name in _OTHER_SIGNATURES:
        if data.startswith(magic):
            return name
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
        return "HTML" if b"<html" in head or head.startswith(b"<!doctype html") else "XML"
    return None


def format_rejection(index, name, data):
    """The rejection for a file whose leading bytes are not an accepted image format."""
    other = name_other_format(data)
    if other is not None:
        return rejection(index, name, "unsupported_format",
                         "%s files are not supported; accepted: %s" % (other, ACCEPTED_TEXT))
    return rejection(index, name, "not_an_image", "Not an image (unrecognised content); accepted: %s" % ACCEPTED_TEXT)


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
                "The images in one request add up to more than %d MiB; send fewer at a time"
                % (MAX_TOTAL_BYTES // (1024 * 1024)), code="request_too_large")
        fmt, mime = sniff_format(data)
        if fmt is None:
            rejected.append(format_rejection(i, name, data))
            continue
        accepted.append(CheckedFile(i, name, data, fmt, mime))
    return accepted, rejected


def _too_big(n):
    # In MiB, as the limit is, with the bytes: "20.0 MB" over a limit of "20 MB" read as no excess at all.
    return "The file is %.2f MiB (%s bytes); the limit is %d MiB (%s bytes) per image" % (
        n / 1048576.0, format(n, ","), MAX_BYTES_PER_FILE // 1048576, format(MAX_BYTES_PER_FILE, ","))


def multipart_fields(content_type, data):
    """The fields of a ``multipart/form-data`` body: name -> text, or Media for a file part (a list when
    the name repeats). Anvil hands an HTTP endpoint such a body whole (its ``form_params`` are the
    url-encoded fields), so the REST API reads the parts itself: split at the boundary (no copy of the
    bytes through a parser: an upload may be 128 MB), each part's few header lines read by ``email``."""
    def bad(why):
        return errors.InvalidRequest("The multipart form data could not be read: %s" % why, code="bad_form")

    headers_of = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes
    head = headers_of(("Content-Type: %s\r\n\r\n" % (content_type or "")).encode("latin-1", "replace"))
    boundary = head.get_param("boundary")
    if not boundary:
        raise bad("no boundary in its Content-Type")
    pieces = data.split(b"--" + boundary.encode("latin-1", "replace"))
    if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
        raise bad("the body is cut short")
    fields = {}
    for piece in pieces[1:-1]:
        headers, sep, payload = piece.partition(b"\r\n\r\n")
        if not (sep and piece.startswith(b"\r\n") and payload.endswith(b"\r\n")):
            raise bad("a part is malformed")
        part = headers_of(headers[2:] + b"\r\n\r\n")
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = payload[:-2]
        if part.get_filename() is not None:
            value = anvil.BlobMedia(part.get_content_type(), payload, name=part.get_filename())
        else:
            value = payload.decode(part.get_content_charset() or "utf-8", "replace")
        previous = fields.get(name)
        fields[name] = value if name not in fields else (
            previous + [value] if isinstance(previous, list) else [previous, value])
    return fields
