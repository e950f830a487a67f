"""The scale-out benchmark's pieces: worker placement over the cores, and the CPU quota that gives each
worker a budget of its own (needs root and the cgroup cpu controller; skipped where there is none)."""

import os
import subprocess
import sys
import time

import pytest

from bench.scale_out import core_sets


def test_pinned_workers_get_disjoint_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert core_sets(2, 2) == [{0, 1}, {2, 3}]
    with pytest.raises(SystemExit, match="need 6 cores"):
        core_sets(3, 2)


def test_capped_workers_go_round_robin_while_they_fit(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert core_sets(3, 1, quota=0.3) == [{0}, {1}, {0}]
    assert len(core_sets(6, 1, quota=0.3)) == 6  # three per core: 0.9 of each
    with pytest.raises(SystemExit, match="7 workers at 0.3"):
        core_sets(7, 1, quota=0.3)


def _cgroup_or_skip():
    from bench.common import CpuQuota

    try:
        return CpuQuota(f"nscfate-test-{os.getpid()}", 0.2)
    except SystemExit as exc:
        pytest.skip(f"no CPU cgroup here: {exc}")


def test_a_cpu_quota_caps_a_busy_process():
    from bench.common import cpu_seconds

    quota = _cgroup_or_skip()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        quota.add(busy.pid)
        time.sleep(0.2)
        cpu0, t0 = cpu_seconds(busy.pid), time.monotonic()
        time.sleep(1.5)
        share = (cpu_seconds(busy.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        busy.kill()
        busy.wait()
        quota.close()
    assert share < 0.35, f"a process capped at 0.2 of a core used {share:.2f}"
    assert not quota.path.exists()  # removed once its process was gone


@pytest.mark.parametrize("v2", [False, True])
def test_the_quota_is_written_as_each_cgroup_version_reads_it(monkeypatch, tmp_path, v2):
    from bench import common

    monkeypatch.setattr(common, "_cpu_cgroup_root", lambda: (tmp_path, v2))  # a folder standing in for cgroupfs
    quota = common.CpuQuota("worker0", 0.3)
    if v2:
        assert (quota.path / "cpu.max").read_text() == "3000 10000"  # 3 ms of every 10 ms
    else:
        assert (quota.path / "cpu.cfs_period_us").read_text() == "10000"
        assert (quota.path / "cpu.cfs_quota_us").read_text() == "3000"


def test_a_quota_that_cannot_be_set_says_why(monkeypatch, tmp_path):
    from bench import common

    monkeypatch.setattr(common, "_cpu_cgroup_root", lambda: (tmp_path / "no-such-cgroup", False))
    with pytest.raises(SystemExit, match="needs root and the cgroup cpu controller"):
        common.CpuQuota("worker0", 0.3)


def test_the_scratch_folder_is_made_on_a_fresh_machine(tmp_path):
    """The serving benchmarks make their hosts under --work; on a machine without it they crashed (mkdtemp)."""
    import argparse

    from bench import common

    ap = argparse.ArgumentParser()
    common.add_model_arguments(ap)
    args = ap.parse_args(["--model", str(tmp_path / "some-model"), "--work", str(tmp_path / "new" / "perf")])
    assert common.chosen_model(args)[0] == tmp_path / "some-model"
    assert (tmp_path / "new" / "perf").is_dir()
