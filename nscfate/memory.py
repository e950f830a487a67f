"""Keeping long-running processes' memory flat: training runs and the serving worker.

**Training.** glibc's ``malloc`` raises its mmap threshold every time a large mapped block is freed (up
to 32 MB). After that, blocks of that size (the model's working buffers) come from the heap, and in a
process whose tf.data threads allocate and free small blocks all the time between them the heap's free
space stays resident and keeps growing: ``nscfate train`` on 600,000 images rose by ~1-2 KB of RSS per
evaluated image while its live heap stayed flat (heaptrack), and ``malloc_trim`` gave the memory back.
Setting the threshold explicitly turns that adjustment off: large blocks are mapped and unmapped again
and RSS stays flat (docs/PERFORMANCE.md, training memory). A ``malloc_trim`` every few seconds instead
only halved the growth.

Training calls :func:`pin_malloc_thresholds`; the serving worker does not: mapping a large block afresh
on every operation cost batched ResNet50 inference 10-20% of its speed on this CPU, while training steps
showed no difference beyond the run-to-run noise.

**Serving.** OpenCV's own thread pool keeps ~0.9 KB for every thread that ever called one of its
parallel functions (``cv2.resize``, ``cv2.connectedComponentsWithStats``; per-thread state it frees only
at exit, opencv/opencv#9745 and #23912), and anvil-uplink runs every call on a new thread: the worker's
RSS grew ~0.8 KB per image, without bound (heaptrack: the unbounded part was cv2's, ~5 blocks per call).
The Predictor therefore calls :func:`serial_opencv`: a single-cell image is tens of pixels a side, so
OpenCV's pool never helped (preparation took the same time with it off) and the callers already run in
parallel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

#: glibc's own default; what matters is that it is fixed, not its value.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
_ENV_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def pin_malloc_thresholds(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (which also fixes its trim threshold) for the rest of the process.

    Returns whether it was set: False on a C library without ``mallopt`` (macOS, musl) and when the
    environment already sets glibc's thresholds (``MALLOC_MMAP_THRESHOLD_`` and friends), which win.
    """
    if any(name in os.environ for name in _ENV_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD, %d) was refused", threshold)
    return ok


def serial_opencv() -> bool:
    """Run OpenCV's functions on the calling thread (``cv2.setNumThreads(1)``) for the rest of the process,
    so that calling it from many short-lived threads keeps no memory per thread.

    Returns whether it was set: False when the environment chooses OpenCV's threads
    (``OPENCV_FOR_THREADS_NUM``), which wins.
    """
    if "OPENCV_FOR_THREADS_NUM" in os.environ:
        return False
    import cv2

    cv2.setNumThreads(1)
    return True
