"""The throughput benchmark's account of the cores: CPU per image and idle time, read from /proc/stat."""
import os

import pytest

from bench.serving_throughput import CoreUse, explain_ratio

TCK = os.sysconf("SC_CLK_TCK")


def _use(images, busy_s, idle_s):
    use = CoreUse()
    use.add((0, 0), (round(idle_s * TCK), round((busy_s + idle_s) * TCK)), images)
    return use


def test_a_round_counts_busy_and_idle_ticks_of_the_readings():
    use = CoreUse()
    use.add((100, 1000), (110, 1200), images=50)  # 200 ticks, 10 of them idle
    use.add((200, 2000), (230, 2100), images=50)
    assert (use.busy, use.idle, use.images) == (190 + 70, 10 + 30, 100)
    assert use.busy_ms == pytest.approx(1000 * 260 / TCK / 100)
    assert use.idle_share == pytest.approx(40 / 300)


def test_cap_and_idle_together_give_the_ratio_of_the_paths_rates():
    # two cores: the bare model does 1,000 images in 10 s with the cores 5% idle; REST does 1,000 images in
    # 12 s, its CPU per image 10% higher and the cores 8% idle
    bare = _use(1000, busy_s=2 * 10 * 0.95, idle_s=2 * 10 * 0.05)
    rest = _use(1000, busy_s=2 * 12 * 0.92, idle_s=2 * 12 * 0.08)
    cap, explained = explain_ratio(rest, bare)
    assert cap == pytest.approx(bare.busy_ms / rest.busy_ms)
    assert cap == pytest.approx(19.0 / 22.08, rel=1e-3)
    assert explained == pytest.approx((1000 / 12) / (1000 / 10), rel=1e-3)  # images/s over images/s


def test_equal_cpu_but_more_idle_caps_nothing_and_explains_the_loss():
    bare = _use(500, busy_s=9.0, idle_s=1.0)
    rest = _use(500, busy_s=9.0, idle_s=3.0)
    cap, explained = explain_ratio(rest, bare)
    assert cap == pytest.approx(1.0)
    assert explained == pytest.approx(10 / 12, rel=1e-3)


def test_idle_ticks_count_the_models_cores_and_io_wait(tmp_path):
    """The benchmark reads the ticks from /proc/stat for the cores the model runs on."""
    from bench.common import core_jiffies

    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 10 60 4 0 0 0 0 0\n"
                    "cpu0 10 0 5 20 1 0 0 0 0 0\n"
                    "cpu1 20 0 5 40 3 0 0 1 0 0\n"
                    "intr 12345 0 0\nctxt 999\n")
    assert core_jiffies(None, stat) == (21 + 43, 36 + 69)  # the per-core lines, not the "cpu" sum as well
    assert core_jiffies({0}, stat) == (21, 36)
    assert core_jiffies({1}, stat) == (43, 69)  # steal (the 8th field) counts in the total
