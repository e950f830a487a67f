"""A reduced run of bench/load_test.py in CI: concurrent clients against the assembled host with two
workers; every upload answered, exactly one history row each, no errors. (The full 50 x 20 run, with
its latency and throughput figures, is the script: see docs/RELIABILITY.md.)"""

from __future__ import annotations

from bench import load_test
from tests.livehost import LiveHost

ANN = "ann@lab.org"


def test_concurrent_clients_each_get_exactly_one_row_per_upload(tmp_path):
    host = LiveHost(tmp_path / "host", key="load-test-key-" + "l" * 16,
                    users={ANN: ("correct horse battery", "researcher")}).start()
    try:
        host.start_fake_worker("w1")
        host.start_fake_worker("w2")
        host.wait_workers(2)
        figures = load_test.run_load(host.base, ANN, "correct horse battery", clients=12, uploads=4)
        basic = load_test.run_load(host.base, ANN, "correct horse battery", clients=4, uploads=2, auth="basic")
    finally:
        host.close()
    for f, n in ((figures, 48), (basic, 8)):
        assert f["requests"] == f["answered"] == f["ok"] == f["history_rows"] == n, f
        assert f["errors"] == 0 and f["duplicate_rows"] == 0 and f["missing_rows"] == 0 and f["rows_match_uploads"]
        assert f["statuses"] == {"200": n} and f["workers"] == 2
        assert 0 < f["latency_ms"]["p50"] <= f["latency_ms"]["p99"] <= f["latency_ms"]["max"]


def test_memory_sampler_reads_the_children_resident_memory():
    import os
    import subprocess
    import sys

    import pytest

    if not os.path.exists("/proc/self/statm"):
        pytest.skip("reads Linux /proc")
    # a child holding 64 MB it has written (so resident)
    child = subprocess.Popen([sys.executable, "-c", "import sys, time; b = bytearray(64 << 20); "
                              "sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(30)"],
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"ready\n"
        with load_test.MemorySampler(os.getpid(), interval=0.05) as memory:
            pass
        assert len(memory.workers) >= 2 and all(64 <= w < 1024 for w in memory.workers), memory.workers
        assert all(h > 10 for h in memory.host)  # this process: the interpreter and pytest at least
    finally:
        child.kill()
        child.wait()
    memory.workers = [800.0, 810.0, 820.0, 820.0, 821.0]
    f = memory.figures(images=2048)["workers"]
    assert (f["start"], f["middle"], f["end"], f["max"]) == (800.0, 820.0, 821.0, 821.0)
    assert f["growth_bytes_per_image"] == 1024  # 1 MB over the second half's 1,024 images
