"""The benchmarks refuse counts that cannot be measured (``--rounds 0``) with a usage message, before
they start a host or load a model."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import NON_NEGATIVE, POSITIVE, float_at_least, positive_list

ROOT = Path(__file__).resolve().parent.parent


def test_counts_accept_their_range_and_refuse_the_rest():
    assert POSITIVE("1") == 1 and NON_NEGATIVE("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1, got 0"):
        POSITIVE("0")
    with pytest.raises(argparse.ArgumentTypeError, match="at least 0, got -2"):
        NON_NEGATIVE("-2")
    with pytest.raises(ValueError):  # argparse words it as "invalid int value"
        POSITIVE("2.5")


def test_floats_refuse_the_bound_when_exclusive_and_nan():
    assert float_at_least(0)("0") == 0.0
    assert float_at_least(0, exclusive=True)("0.3") == 0.3
    for text in ("0", "-1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
            float_at_least(0, exclusive=True)(text)


def test_lists_of_counts():
    assert positive_list("1,2,3") == [1, 2, 3]
    for text in ("1,0", "1,,2", "a", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            positive_list(text)


@pytest.mark.parametrize("script, option, value, message", [
    ("inference_engines.py", "--rounds", "0", "argument --rounds: must be at least 1, got 0"),
    ("history_scale.py", "--rows", "1000,0", "argument --rows: must be at least 1, got 0"),
    ("gpu_training.py", "--skip-steps", "-1", "argument --skip-steps: must be at least 0, got -1"),
])
def test_a_script_stops_with_a_usage_message(script, option, value, message):
    # These three parse their options before importing TensorFlow or starting anything.
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), option, value],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
