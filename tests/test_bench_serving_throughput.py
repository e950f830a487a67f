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
