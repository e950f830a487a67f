"""nscfate.memory: glibc's mmap threshold stays fixed, so large freed blocks leave the process."""

import os
import subprocess
import sys
import textwrap

import pytest

from nscfate.memory import pin_malloc_thresholds

# Run in a fresh interpreter: the threshold is process-wide and only moves the first time a large
# block is freed. Reports whether a 512 KiB block is its own mapping (mallinfo2's hblks) after a
# 4 MiB mapped block was freed - glibc's dynamic threshold would have risen to 4 MiB by then.
PROBE = textwrap.dedent("""
    import ctypes, sys
    from nscfate.memory import pin_malloc_thresholds
    libc = ctypes.CDLL("libc.so.6")
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    pinned = pin_malloc_thresholds() if sys.argv[1] == "pin" else False
    libc.free(libc.malloc(4 << 20))
    before = libc.mallinfo2().hblks
    block = libc.malloc(512 << 10)
    print(pinned, libc.mallinfo2().hblks - before)
    libc.free(block)
""")


def _probe(mode: str, env: dict | None = None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}, cwd=os.path.dirname(os.path.dirname(__file__)))
    pinned, mapped = out.stdout.split()
    return pinned, int(mapped)


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
