"""nscfate.memory: glibc's mmap threshold stays fixed, so large freed blocks leave the process; and
preparing images on many short-lived threads (one per uplink call) keeps no memory per thread."""

import os
import subprocess
import sys
import textwrap

import pytest

from nscfate.memory import pin_malloc_thresholds, serial_opencv

# Run in a fresh interpreter: the threshold is process-wide and only moves the first time a large
# block is freed. Reports whether a 512 KiB block is its own mapping (mallinfo2's hblks) after a
# 4 MiB mapped block was freed - glibc's dynamic threshold would have risen to 4 MiB by then.
MALLINFO = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL("libc.so.6")
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
""")
PROBE = MALLINFO + textwrap.dedent("""
    from nscfate.memory import pin_malloc_thresholds
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    pinned = pin_malloc_thresholds() if sys.argv[1] == "pin" else False
    libc.free(libc.malloc(4 << 20))
    before = libc.mallinfo2().hblks
    block = libc.malloc(512 << 10)
    print(pinned, libc.mallinfo2().hblks - before)
    libc.free(block)
""")


def _probe(mode: str, env: dict | None = None, code: str = PROBE) -> tuple[str, int]:
    """Run a probe in a fresh interpreter: (what the setting returned, the figure it printed)."""
    out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}, cwd=os.path.dirname(os.path.dirname(__file__)))
    returned, figure = out.stdout.split()
    return returned, int(figure)


def _has_glibc_mallinfo2() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallinfo2
        return True
    except (OSError, AttributeError):
        return False


needs_glibc = pytest.mark.skipif(not _has_glibc_mallinfo2(), reason="needs glibc >= 2.33 (mallopt, mallinfo2)")


@needs_glibc
def test_pinned_threshold_keeps_large_blocks_out_of_the_heap():
    assert _probe("pin") == ("True", 1)
    assert _probe("default") == ("False", 0)  # the glibc behaviour it turns off


@needs_glibc
def test_thresholds_from_the_environment_win(monkeypatch):
    env = {"MALLOC_MMAP_THRESHOLD_": str(8 << 20)}
    assert _probe("pin", env) == ("False", 0)  # 512 KiB is under the user's 8 MiB: from the heap
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert pin_malloc_thresholds() is False


# Bytes of the C heap still in use after preparing a synthetic cell on each of 2,000 short-lived threads,
# the way the worker serves anvil-uplink calls (decode, prepare_image, the single-cell check).
THREADS_PROBE = MALLINFO + textwrap.dedent("""
    import threading
    import numpy as np
    from nscfate.io import decode_image
    from nscfate.memory import serial_opencv
    from nscfate.predictor import single_cell_warnings
    from nscfate.preprocessing import prepare_image
    from nscfate.testing import cell_image, to_png_bytes
    png = to_png_bytes(cell_image(np.random.default_rng(0), (47, 60)))
    serial = serial_opencv() if sys.argv[1] == "serial" else False
    def serve():
        pixels = decode_image(png, name="cell.png").pixels
        prepare_image(pixels, (75, 75))
        single_cell_warnings(pixels)
    serve()
    before = libc.mallinfo2().uordblks
    for _ in range(2000):
        t = threading.Thread(target=serve)
        t.start()
        t.join()
    print(serial, libc.mallinfo2().uordblks - before)
""")


@needs_glibc
def test_serial_opencv_keeps_no_memory_per_calling_thread():
    serial, grown = _probe("serial", code=THREADS_PROBE)
    assert serial == "True"
    assert grown < 200_000, f"{grown} bytes kept after 2,000 threads"
    _, grown_by_default = _probe("default", code=THREADS_PROBE)
    if grown_by_default < 1_000_000:
        pytest.skip(f"this OpenCV keeps no memory per thread any more ({grown_by_default} bytes after 2,000 "
                    "threads): nscfate.memory.serial_opencv may be dropped")


def test_opencv_threads_from_the_environment_win(monkeypatch):
    monkeypatch.setenv("OPENCV_FOR_THREADS_NUM", "2")
    assert serial_opencv() is False


def test_a_predictor_makes_opencv_serial(tiny_model):
    import cv2

    from nscfate.predictor import Predictor

    threads = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        Predictor.from_directory(tiny_model)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(threads)
