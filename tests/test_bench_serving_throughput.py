"""The throughput benchmark's CPU ceiling: what REST / bare could be if no core sat idle."""
import pytest

from bench.serving_throughput import ratio_ceiling

CPU_MS = {"host": 2.0, "worker": 25.0, "clients": 1.0}


def test_shared_cores_count_every_process():
    # host, worker and clients all run on the cores the bare model had to itself
    assert ratio_ceiling(CPU_MS, bare_ms=22.4, shared=True) == pytest.approx(22.4 / 28.0)


def test_own_cores_count_the_worker_alone():
    # host and clients run elsewhere: only the worker's extra work (decode, prepare, uplink) costs model time
    assert ratio_ceiling(CPU_MS, bare_ms=22.4, shared=False) == pytest.approx(22.4 / 25.0)


def test_idle_ticks_count_the_models_cores_and_io_wait(tmp_path):
    """The rest of the gap between the ratio and its CPU cap is cores sitting idle; the benchmark reads it
    from /proc/stat for the cores the model runs on."""
    from bench.common import core_jiffies

    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 10 60 4 0 0 0 0 0\n"
                    "cpu0 10 0 5 20 1 0 0 0 0 0\n"
                    "cpu1 20 0 5 40 3 0 0 1 0 0\n"
                    "intr 12345 0 0\nctxt 999\n")
    assert core_jiffies(None, stat) == (21 + 43, 36 + 69)  # the per-core lines, not the "cpu" sum as well
    assert core_jiffies({0}, stat) == (21, 36)
    assert core_jiffies({1}, stat) == (43, 69)  # steal (the 8th field) counts in the total
