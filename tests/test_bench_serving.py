"""The serving benchmarks behind issue 8's targets run end to end (a tiny model, a few images): the whole
stack starts, every path is measured and the figures the docs quote are printed. Not a timing test: a
benchmark that no longer runs is what this catches (its figures come from runs on the real model)."""
import subprocess
import sys
from pathlib import Path

from bench import serving_throughput

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_runs_end_to_end(tiny_model, tmp_path, capsys):
    assert serving_throughput.main(["--model", str(tiny_model), "--images", "32", "--clients", "2",
                                    "--files-per-request", "8", "--rounds", "1", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "REST / bare per round:" in out and "Worker batches during the timed rounds:" in out
    assert "CPU time per image in the REST rounds: host" in out and "caps REST / bare at" in out


def test_latency_benchmark_runs_end_to_end(tiny_model, tmp_path):
    # a process of its own: it sets TensorFlow's thread counts, which this one has fixed by now
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "serving_latency.py"), "--model", str(tiny_model),
                          "--images", "3", "--warmup", "1", "--work", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "REST / bare median ratio:" in run.stdout and "uplink / bare" in run.stdout
