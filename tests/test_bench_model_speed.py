"""Model-side benchmarks: bench/model_speed.py's sweeps (their order, environment and tables, with the
subprocesses faked) and bench/inference_engines.py end to end on a tiny model."""
import subprocess
import sys
from pathlib import Path

from bench import model_speed

ROOT = Path(__file__).resolve().parents[1]


def test_onednn_pairs_alternate_and_set_the_environment(monkeypatch):
    calls = []

    def fake_rate(batch, repeats, env=None, *args):
        calls.append((env[model_speed.ONEDNN_ENV], batch))
        return (100.0 if env[model_speed.ONEDNN_ENV] == "1" else 120.0) / (2 if batch == 1 else 1)

    monkeypatch.setattr(model_speed, "resnet50_rate", fake_rate)
    pairs = model_speed.onednn_pairs(2, 32, 5)
    # on first in the first pair, off first in the second; each setting at the batch size and at 1
    assert calls == [("1", 32), ("1", 1), ("0", 32), ("0", 1), ("0", 32), ("0", 1), ("1", 32), ("1", 1)]
    assert pairs[0] == {(True, 32): 100.0, (True, 1): 50.0, (False, 32): 120.0, (False, 1): 60.0}
    table = model_speed.onednn_table(pairs, 32)
    assert "| 1 | 100.0 | 120.0 | 1.20 | 50.0 | 60.0 | 1.20 |" in table
    assert "**oneDNN off / on: 1.20x at batch 32, 1.20x at batch 1**" in table


def test_onednn_table_takes_the_median_of_the_pairs_ratios():
    pairs = [{(True, 8): on, (False, 8): off, (True, 1): 10.0, (False, 1): 10.0 * r1}
             for on, off, r1 in ((100.0, 110.0, 0.9), (50.0, 100.0, 1.5), (80.0, 80.0, 1.1))]
    assert "1.10x at batch 8, 1.10x at batch 1" in model_speed.onednn_table(pairs, 8)


def test_onednn_is_on_reads_tensorflows_variable():
    assert model_speed.onednn_is_on({})
    assert model_speed.onednn_is_on({"TF_ENABLE_ONEDNN_OPTS": "1"})
    assert not model_speed.onednn_is_on({"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert not model_speed.onednn_is_on({"TF_ENABLE_ONEDNN_OPTS": "False"})


def test_thread_sweep_rotates_the_settings_each_round(monkeypatch):
    calls = []

    def fake_rate(batch, repeats, env=None, *args):
        calls.append((int(args[1]), int(args[3])))
        return float(len(calls))

    monkeypatch.setattr(model_speed, "resnet50_rate", fake_rate)
    settings = [(1, 1), (2, 1), (2, 2)]
    rates = model_speed.thread_sweep(settings, 32, 5, rounds=3)
    assert calls == [(1, 1), (2, 1), (2, 2), (2, 1), (2, 2), (1, 1), (2, 2), (1, 1), (2, 1)]
    assert rates == {(1, 1): [1.0, 6.0, 8.0], (2, 1): [2.0, 4.0, 9.0], (2, 2): [3.0, 5.0, 7.0]}


def test_inference_engines_benchmark_runs_end_to_end(tiny_model, tmp_path):
    """XLA and TensorFlow Lite run the tiny model and give the tf.function's outputs (to float round-off)."""
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "inference_engines.py"), "--model", str(tiny_model),
                          "--batch", "4", "--calls", "1", "--calls-one", "2", "--rounds", "1", "--work", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    rows = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ")}
    assert {"tf.function", "XLA", "TFLite"} <= set(rows)
    for name in ("XLA", "TFLite"):
        assert float(rows[name][6]) < 1e-4, rows[name]  # the largest output difference from the tf.function
        assert " s, +" in rows[name][7]  # its setup time and RSS
