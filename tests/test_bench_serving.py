"""The serving benchmarks behind issue 8's targets run end to end (a tiny model, a few images): the whole
stack starts, every path is measured and the figures the docs quote are printed. Not a timing test: a
benchmark that no longer runs is what this catches (its figures come from runs on the real model).

Each runs in a process of its own, as it is used: the throughput benchmark connects to the hub as a
server uplink (which turns this process's ``anvil.tables`` into the uplink's), the latency benchmark sets
TensorFlow's thread counts (fixed in this process by now)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(script, *args):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_throughput_benchmark_runs_end_to_end(tiny_model, tmp_path):
    out = _bench("serving_throughput.py", "--model", tiny_model, "--images", 32, "--clients", 2,
                 "--files-per-request", 8, "--rounds", 1, "--work", tmp_path)
    assert "REST / bare per round:" in out and "Worker batches during the timed rounds:" in out
    assert "CPU per image (from /proc): host" in out and "bare model" in out
    assert "Cores: busy per image on the model's cores" in out and "caps REST / bare at" in out
    assert "Scratch filesystem: " in out and " ms of CPU to create and write there" in out


def test_latency_benchmark_runs_end_to_end(tiny_model, tmp_path):
    out = _bench("serving_latency.py", "--model", tiny_model, "--images", 3, "--warmup", 1, "--work", tmp_path)
    assert "REST / bare median ratio:" in out and "uplink / bare" in out
    assert "Scratch filesystem: " in out
