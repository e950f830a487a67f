"""Splitting an upload into server calls (client module).

``classify_cell_images`` refuses a whole call whose images add up to more than 128 MB (it raises, and no
file of the call is classified), so a call carries at most ``FILES_PER_CALL`` files and ``BYTES_PER_CALL``
bytes; the limits are the server's (server_code/uploads.py ``MAX_TOTAL_BYTES``). ``FILES_PER_CALL`` also
keeps each call well inside Anvil's 30 s server-call limit.
"""

FILES_PER_CALL = 16
BYTES_PER_CALL = 128 * 1024 * 1024


def upload_chunks(files, max_files=FILES_PER_CALL, max_bytes=BYTES_PER_CALL):
    """The files as ``(start, chunk)`` pairs in order: ``start`` is the index of the chunk's first file.

    A chunk holds at most ``max_files`` files whose lengths add up to at most ``max_bytes``; a file bigger
    than that goes alone (the server rejects it by itself, not the files sent with it).
    """
    out = []
    chunk, size, start = [], 0, 0
    for i, f in enumerate(files):
        length = getattr(f, "length", None) or 0
        if chunk and (len(chunk) >= max_files or size + length > max_bytes):
            out.append((start, chunk))
            chunk, size, start = [], 0, i
        chunk.append(f)
        size += length
    if chunk:
        out.append((start, chunk))
    return out
