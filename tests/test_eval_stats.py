import pytest

from defi.eval.stats import summarise, wilson_interval


def test_wilson_interval_known_values():
    # reference values of the Wilson score interval at 95%
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)  # not a zero-width interval at 0/N
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_summarise_reports_lerobot_style_pc_success():
    s = summarise([True, False, True, True])
    assert s["pc_success"] == 75.0 and s["episodes"] == 4 and s["ci95_low"] < 0.75 < s["ci95_high"]
