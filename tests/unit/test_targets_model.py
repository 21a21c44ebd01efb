"""Time-to-target scoring (MLPerf's rules) and the scaling model's arithmetic by hand."""

import dataclasses
import functools
import math
import types

import numpy as np
import pytest

from raybench import scaling_model as sm
from raybench.errors import UserError
from raybench.targets import mlperf_score, parse_target


def test_targets_parse_and_refuse_in_one_line():
    t = parse_target("val_r2>=0.90", "regression")
    assert (t.metric, t.op, t.value, t.key) == ("r2", ">=", 0.9, "val_r2")
    assert t.met(0.9) and not t.met(0.89) and not t.met(None) and not t.met(math.nan)
    loss = parse_target(" val_loss <= 5e-2 ")
    assert (loss.metric, loss.value) == ("val_loss", 0.05) and loss.met(0.01)
    for text, message in [("r2>0.9", "expected METRIC>=VALUE"), ("val_r2 >= high", "expected"),
                          ("val_foo>=1", "unknown metric 'val_foo'"),
                          ("val_r2<=0.9", "val_r2 improves with >=")]:
        with pytest.raises(UserError, match=message):
            parse_target(text, "regression")
    with pytest.raises(UserError, match="'auc' does not apply to regression"):
        parse_target("val_auc>=0.6", "regression")


def test_mlperf_drops_fastest_and_slowest_and_counts_a_miss_as_slowest():
    s = mlperf_score([10.0, 12.0, 11.0, 30.0, 9.0])
    assert s.valid and s.score_s == pytest.approx((10 + 11 + 12) / 3) and s.reached == 5
    one_miss = mlperf_score([10.0, None, 12.0, 11.0])
    assert one_miss.valid and one_miss.score_s == pytest.approx(11.5)  # drop 10 and the miss
    assert not mlperf_score([10.0, None, None, 11.0]).valid  # more than one miss
    assert mlperf_score([10.0, None, None, 11.0]).score_s is None
    three = mlperf_score([3.0, 1.0, 2.0])
    assert three.score_s == 2.0  # the median: one left after dropping two
    assert mlperf_score([4.0, 2.0]).score_s == 3.0 and "too few" in mlperf_score([4.0, 2.0]).note
    assert not mlperf_score([4.0, None]).valid


def test_ring_allreduce_fit_recovers_alpha_and_beta():
    alpha, beta = 50e-6, 1e-9  # 50 us per hop, 1 GB/s
    measured = {(n, m): 2 * (n - 1) * alpha + 2 * (n - 1) / n * m * beta
                for n in (2, 4) for m in (1_000, 1_000_000, 16_000_000)}
    comm = sm.CommModel.fit(measured)
    assert comm.alpha_s == pytest.approx(alpha) and comm.beta_s_per_byte == pytest.approx(beta)
    # a forecast for 64 workers: 126 hops of latency plus ~2x the message at 1 GB/s
    assert comm.allreduce(64, 4_000_000) == pytest.approx(126 * alpha + 126 / 64 * 4e6 * beta)
    assert comm.allreduce(2, 1_000) == measured[(2, 1_000)]  # measured wins over the model
    given = sm.CommModel.fit(measured, alpha_s=1e-3)
    assert given.alpha_s == 1e-3 and given.beta_s_per_byte >= 0


def test_step_prediction_and_the_smallest_batch_under_20_percent_sync():
    # one worker: 1 ms + 1 us per sample; all-reduce of the gradient: 2 ms at N=4
    profile = sm.StepProfile(batch=[100, 300], data_s=[0.0001, 0.0002],
                             compute_s=[0.0009, 0.0010], optimizer_s=[0.0001, 0.0001])
    assert profile.fit() == (pytest.approx(0.001), pytest.approx(1e-6))
    comm = sm.CommModel(measured={(4, 800): 0.002})
    p = sm.predict("raybench", profile, comm, workers=4, batch=100, grad_bytes=800, threads=1,
                   cores=2)
    assert p.slowdown == 2.0  # four single-thread workers on two cores
    # no distribution measured: every rank takes the mean, nobody waits
    assert p.step_ms == pytest.approx((2 * 0.0011 + 0.002) * 1e3) and p.wait_ms == 0
    assert p.predicted_samples_per_sec == pytest.approx(400 / (p.step_ms / 1e3))
    # sync < 20% of a step: 2 * (0.001 + 1e-6 b) > 4 * 0.002 -> b > 3000
    assert p.min_batch_sync_under_20pct == 3001
    measured = sm.with_measurement(p, p.predicted_samples_per_sec * 1.25)
    assert measured.error == pytest.approx(1 / 1.25 - 1)


def test_the_slowest_of_n_ranks_from_order_statistics():
    uniform = [(i + 0.5) / 100 for i in range(100)]  # U(0, 1): E[max of n] = n / (n + 1)
    assert sm.expected_max(uniform, 1) == pytest.approx(0.5)
    for n in (2, 4, 8):
        assert sm.expected_max(uniform, n) == pytest.approx(n / (n + 1), abs=2e-3)
    # half the steps take 1 ms, half 3 ms: two ranks wait for a 3 ms one 3/4 of the time
    two_point = [1.0] * 50 + [3.0] * 50
    assert sm.expected_max(two_point, 2) == pytest.approx(0.25 * 1 + 0.75 * 3)
    # the quantiles stand for equal bins: one hiccup of 100x does not move them
    steps = np.concatenate([np.full(9999, 1.0), [100.0]])
    assert sm.expected_max(sm.quantiles_of(steps), 1) == pytest.approx(1.0)
    # the model: the step is the slowest rank's work plus the all-reduce under load
    profile = sm.StepProfile(batch=[64], data_s=[0.0], compute_s=[0.002], optimizer_s=[0.0],
                             work_quantiles=[[x / 1000 for x in two_point]])
    comm = sm.CommModel(measured={(2, 400): 0.0005})
    f = sm.predict("ddp", profile, comm, workers=2, batch=64, grad_bytes=400, threads=1,
                   cores=2)
    # E[max] = 2.5 ms against a mean of 2 ms: half a millisecond of waiting per step
    assert f.work_ms == pytest.approx(2.0, abs=0.01) and f.wait_ms == pytest.approx(0.5, abs=0.03)
    assert f.step_ms == pytest.approx(2.5 + 0.5, abs=0.03)
    assert f.sync_share == pytest.approx((0.5 + 0.5) / 3.0, abs=0.01)
    # a batch never profiled takes the nearest shape, scaled to the fitted mean, and never
    # less than the calibrated floor of this machine
    floored = dataclasses.replace(profile, floor_s_per_sample=1e-4)
    assert floored.at(64) == pytest.approx(0.002) and floored.at(128) == pytest.approx(0.0128)


def test_what_each_n_costs_and_which_to_pay_for():
    from raybench.scaling_report import add_costs, cost_verdict, summarize

    runs = [run_with_target(n, t, rate) for n, t, rate in ((1, 100.0, 1000.0),
                                                          (2, 60.0, 1500.0),
                                                          (4, 40.0, 1600.0))]
    rows = summarize(runs)
    add_costs(rows, runs, {"worker_hour_cost": 3.6, "deadline_s": 50})
    # 3.6 per worker-hour = 0.001 per worker-second
    assert rows[0].cost_per_million_samples == pytest.approx(0.001 * 1 * 1e6 / 1000)
    assert rows[2].cost_per_million_samples == pytest.approx(0.001 * 4 * 1e6 / 1600)
    assert [r.cost_to_target for r in rows] == pytest.approx([0.1, 0.12, 0.16])
    (line,) = cost_verdict(rows, {"worker_hour_cost": 3.6, "deadline_s": 50})
    assert "N=4 reached the target fastest (40.0s" in line and "N=1 cheapest" in line
    assert "within 50s, N=4" in line
    add_costs(rows, [], None)  # no price: worker-seconds
    assert rows[1].cost_per_million_samples == pytest.approx(2 * 1e6 / 1500)


def run_with_target(workers, seconds, rate):
    from raybench.results import TargetResult
    from tests.unit.test_scaling_report import rec

    r = rec("raybench", workers, 1, rate)
    r.target = TargetResult(target="val_r2>=0.9", reached=True, epochs=3,
                            time_from_first_step_s=seconds - 10, time_from_start_s=seconds)
    return r


def test_a_forecast_from_the_loaded_step_probe_by_hand():
    """N=1 launcher: 2 ms a step. Alone the probe's step took 1 ms; in two processes training
    in lockstep each step took 1.5 ms (half 1 ms, half 2 ms: the cores are shared) and a rank
    spent 1.25 ms inside each all-reduce, of which the communication alone (the last rank to
    arrive) was 0.5 ms. Forecast at N=2: the launcher's work scales by 1.5/1 to 3 ms, plus
    1.25 ms in the all-reduce: 4.25 ms, 0.75 ms of it waiting."""
    from raybench.forecast import measured_forecast

    loaded = {2: {"work_s": [0.0015] * 100, "allreduce_s": 0.0005, "solo_s": [0.001] * 40,
                  "synced_work_s": [0.001] * 50 + [0.002] * 50,
                  "synced_allreduce_s": [0.001] * 50 + [0.0015] * 50}}
    own = (0.002, [1.0] * 100)
    f = measured_forecast("raybench", 2, 64, own, loaded)
    near = functools.partial(pytest.approx, rel=1e-9)
    assert f.work_ms == near(3.0) and f.wait_ms == near(0.75)
    assert f.allreduce_ms == near(0.5) and f.step_ms == near(4.25)
    assert f.predicted_samples_per_sec == near(2 * 64 / 0.00425)
    assert f.slowdown == near(1.5) and f.sync_share == near(1.25 / 4.25)
    one = measured_forecast("raybench", 1, 64, own, loaded)
    assert one.step_ms == near(2.0) and one.wait_ms == 0.0
    assert one.predicted_samples_per_sec == near(64 / 0.002)
    # the reference is rank 0 alone at the start of the probe (at the N=1 batch): at 0.8 ms
    # there the launcher's work scales by 1.5/0.8, to 3.75 ms
    loaded[2]["solo_s"] = [0.0008] * 40
    adjacent = measured_forecast("raybench", 2, 64, own, loaded)
    assert adjacent.work_ms == near(3.75) and adjacent.step_ms == near(5.0)
    assert adjacent.slowdown == near(1.5 / 0.8)


def test_a_forecast_is_also_checked_at_the_speed_it_was_made_at():
    """Raw's N=1 point: 1024 samples at 512,000 samples/s, 2 ms a step. In the N=2 point's
    rounds raw's same step took 2.5, 2.2 and 2.0 ms (median 2.2: the machine ran at 0.909 of
    its N=1 speed). raybench's N=2 forecast of 1,100 samples/s met 1,000 measured: +10% as
    made, 0% at the speed it was made at. The N=4 point had no reference: no speed."""
    from raybench.forecast import check
    from raybench.results import Forecast
    from tests.unit.test_scaling_report import rec

    raw = rec("raw", 1, 1, 512_000.0)
    raw.batch_size_per_worker = 1024
    runs = [raw, rec("raybench", 2, 1, 1000.0), rec("raybench", 4, 1, 1500.0)]
    two = Forecast("raybench", 2, 512, predicted_samples_per_sec=1100.0)
    four = Forecast("raybench", 4, 256, predicted_samples_per_sec=1500.0)
    check([two, four], runs, {2: [0.0025, 0.0022, 0.0020]})
    assert two.error == pytest.approx(0.1)
    assert two.speed == pytest.approx(0.002 / 0.0022)
    assert two.error_same_speed == pytest.approx(1100 * (0.002 / 0.0022) / 1000 - 1)
    assert abs(two.error_same_speed) < 1e-9
    assert four.error == pytest.approx(0.0) and four.speed is None
    assert four.error_same_speed is None
    check([four], [r for r in runs if r.backend != "raw"], {4: [0.002]})
    assert four.speed is None  # no raw N=1 point: nothing to compare the reference with


def test_forecasts_warn_when_the_machine_changed_speed_between_the_n1_point_and_the_probe():
    """The raw loop's N=1 step just before and after each probe against the probe's bare step
    alone: 1.71x at N=2 (a slow spell met one of them) puts a warning under the forecasts
    naming that probe; 1.14x (the loop's own data fetch and clocks) does not. The N=1 point's
    raw step against raw's beside the probes: 1.5x (the point met a slow spell) warns that the
    forecasts and efficiencies carry a change of speed; 1.05x does not."""
    from types import SimpleNamespace

    from raybench.forecast import basis_ratios, point_drift
    from raybench.report.sections import forecast_note

    loaded = {2: {"work_s": [0.003] * 10, "solo_s": [0.001] * 5, "raw_s": [0.00171] * 4},
              4: {"work_s": [0.006] * 10, "solo_s": [0.0015] * 5,
                  "raw_s": [0.0016, 0.0018, 0.0017, 0.00174]}}
    ratios = basis_ratios(loaded)
    assert ratios == pytest.approx({"2": 1.71, "4": 1.14})
    assert basis_ratios({2: {"solo_s": [0.001]}}) == {}  # no raw beside: nothing to check
    drift = point_drift((0.00171 * 1.5, [1.0]), loaded)
    assert drift == pytest.approx({"2": 1.5, "4": 1.5})
    assert point_drift(None, loaded) == {}
    model = SimpleNamespace(basis_ratios=ratios, point_drift={})
    steady = SimpleNamespace(basis_ratios={"2": 1.14, "4": 1.06}, point_drift={"2": 1.05})
    note = forecast_note(SimpleNamespace(model=model))
    assert "Warning: the raw loop's N=1 step beside the probe over the probe's bare step was " \
           "1.71x in the N=2 probe" in note
    assert "N=4 probe" not in note
    assert "Warning" not in forecast_note(SimpleNamespace(model=steady))
    assert "Warning" not in forecast_note(SimpleNamespace(model=None))
    moved = SimpleNamespace(basis_ratios={"2": 1.1}, point_drift=drift)
    assert "the N=1 point's raw step was 1.50x its step beside the N=2 probe" in \
        forecast_note(SimpleNamespace(model=moved))


def test_a_network_forecast_stands_beside_its_measured_parts_and_the_ranks_cpu():
    """The 08:18 sweep of 2026-12-03 in miniature. At N=4 the forecast's work was 162 ms and
    its sync 36 (22.8 waiting + 13.2 exposed); the point measured 188 ms outside sync (0.1 data
    + 187 compute + 1.2 optimizer, median window) and 36 in sync: the miss is in the work.
    At N=1 a rank spent 60 ms of CPU a step, at N=4 four ranks 288 ms together (72 each):
    1.2x. Excluded windows do not count; an N whose windows carry no CPU, or an extrapolated
    N, gets None."""
    from raybench.forecast import check
    from raybench.report.sections import network_forecasts_table
    from raybench.results import Forecast, MeasuredWindow
    from tests.unit.test_scaling_report import rec

    def window(workers, cpu_s, compute=187.0, excluded=False):
        return MeasuredWindow(
            launcher="raybench", workers=workers, repeat=1, round=0, slot=0, steps=10,
            samples=2560 * workers, seconds=2.0, samples_per_sec=1280.0 * workers,
            phase_ms={"data": 0.1, "compute": compute, "sync": 36.0 if workers > 1 else 0.0,
                      "optimizer": 1.2},
            step_ms_p50=200.0, cpu_s=cpu_s, nivcsw=0, started_at=0.0, steal_share=0.0,
            outside_share=0.0, excluded=excluded)

    windows = [window(1, 0.58, 150), window(1, 0.60, 155), window(1, 0.62, 160),
               window(1, 5.0, excluded=True), window(4, 2.80, 180), window(4, 2.88),
               window(4, 2.96, 190), window(4, 9.0, 400, excluded=True), window(2, 0.0)]
    runs = [rec("raybench", 4, 1, 4157.0), rec("raybench", 2, 1, 2576.0)]
    four = Forecast("raybench", 4, 256, predicted_samples_per_sec=5163.0, work_ms=162.3,
                    wait_ms=22.8, exposed_ms=13.2, link="1 Gbit/s")
    two = Forecast("raybench", 2, 256, predicted_samples_per_sec=2814.0, link="1 Gbit/s")
    eight = Forecast("raybench", 8, 256, predicted_samples_per_sec=9000.0, extrapolated=True)
    check([four, two, eight], runs, None, windows)
    assert four.measured_work_ms == pytest.approx(0.1 + 187 + 1.2)
    assert four.measured_sync_ms == pytest.approx(36.0)
    assert four.cpu_per_step == pytest.approx(0.072 / 0.060)
    assert two.cpu_per_step is None and two.measured_sync_ms == pytest.approx(36.0)
    assert eight.cpu_per_step is None and eight.measured_work_ms is None
    table = network_forecasts_table(types.SimpleNamespace(forecasts=[four], model=None))
    row = dict(zip(table.columns, table.rows[0], strict=True))
    assert (row["work ms"], row["measured outside sync ms"]) == ("162.3", "188.3")
    assert row["measured sync ms"] == "36.0" and row["CPU a step vs N=1"] == "1.20"
