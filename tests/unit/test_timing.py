import pytest

from raybench.timing import StepTimes, epoch_stats, throughput


def test_step_summary_shares_and_percentiles():
    t = StepTimes()
    for _ in range(9):
        t.add(0.001, 0.006, 0.002, 0.001)
    t.add(0.001, 0.096, 0.002, 0.001)
    s = t.summary()
    assert s["steps"] == 10
    assert s["compute_sec"] == pytest.approx(0.015)
    shares = [s[f"{p}_share"] for p in ("data", "compute", "sync", "optimizer")]
    assert sum(shares) == pytest.approx(1)
    assert s["step_time_ms_p50"] == pytest.approx(10.0)
    assert s["step_time_ms_p90"] == pytest.approx(19.0)


def test_throughput_and_epoch_stats():
    assert throughput(1000, 0.5) == 2000
    assert throughput(10, 0) == 0
    assert epoch_stats([1.0, 3.0]) == {"mean_time_per_epoch": 2.0, "std_time_per_epoch": 1.0}
