"""The paired statistics of interleaved windows, against values computed by hand."""

import math

import pytest

from raybench import stats
from raybench.interleave import paired_comparison, phase_gaps, planned_pairs
from raybench.results import Comparison, MeasuredWindow
from raybench.scaling_report import apply_comparisons, comparison_sentence, pooled

T975_3 = 3.182446305284263  # Student-t, 97.5%, 3 degrees of freedom
T80_3 = 0.9784723123633042


def window(label, rate, *, phases=(0.1, 0.6, 0.2, 0.1), round_no=0, repeat=1, excluded=False):
    return MeasuredWindow(
        launcher=label, workers=1, repeat=repeat, round=round_no, slot=0, steps=100,
        started_at=float(round_no),
        samples=int(rate), seconds=1.0, samples_per_sec=rate,
        phase_ms=dict(zip(("data", "compute", "sync", "optimizer"), phases, strict=True)),
        step_ms_p50=sum(phases), cpu_s=1.0, nivcsw=0, steal_share=0.0, outside_share=0.0,
        excluded=excluded)


def test_geometric_mean_and_log_interval_by_hand():
    ratios = [1.02, 0.98, 1.01, 0.99]
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    half = T975_3 * sd / 2
    value, low, high = stats.log_mean_interval(ratios)
    assert value == pytest.approx(math.exp(mean))
    assert low == pytest.approx(math.exp(mean - half))
    assert high == pytest.approx(math.exp(mean + half))
    assert low > 0  # a ratio's bound never goes negative, however few the pairs
    assert stats.relative_halfwidth(value, low, high) == pytest.approx(
        (math.exp(mean + half) - math.exp(mean - half)) / 2 / math.exp(mean))


def test_minimum_detectable_effect_by_hand():
    sd, n = 0.02, 4
    expected = math.exp((T975_3 + T80_3) * sd / math.sqrt(n)) - 1
    assert stats.min_detectable_effect(sd, n) == pytest.approx(expected, rel=1e-6)
    assert stats.min_detectable_effect(sd, 1) is None


def test_a_paired_comparison_its_interval_and_where_the_gap_sits():
    # raybench's windows 2% slower than raw's, the extra time all in sync
    rates_raw = [1000.0, 1100.0, 950.0, 1050.0, 1000.0]
    pairs = [(window("raybench", r / 1.02, phases=(0.1, 0.6, 0.22, 0.1), round_no=i),
              window("raw", r, round_no=i)) for i, r in enumerate(rates_raw)]
    c = paired_comparison("raybench", "raw", 1, pairs, excluded=1, target=0.02)
    assert c.ratio == pytest.approx(1 / 1.02)
    assert c.ci95[0] == pytest.approx(1 / 1.02) and c.ci95[1] == pytest.approx(1 / 1.02)
    assert c.pairs == 5 and c.excluded_pairs == 1 and c.reached
    assert c.phases["sync"].share == pytest.approx(0.02)  # 0.02 ms of a 1.0 ms step
    assert c.phases["compute"].share == pytest.approx(0.0)
    assert c.ingest == "memory" and c.window_s == 1.0
    assert "2.0% slower than raw" in comparison_sentence(c)
    assert "sync +2.0 pts" in comparison_sentence(c)


def test_phase_gaps_sum_to_the_step_time_gap():
    pairs = [(window("a", 1, phases=(0.2, 0.7, 0.3, 0.1)), window("b", 1))]
    gaps = phase_gaps(pairs)
    step_gap = (1.3 - 1.0) / 1.0
    assert sum(g.share for g in gaps.values()) == pytest.approx(step_gap)


def test_which_ratios_a_point_decides():
    assert planned_pairs(["raybench", "ddp", "raw"]) == [("raybench", "raw"),
                                                         ("raybench", "ddp")]
    assert planned_pairs(["raybench", "raybench+ray_data", "raybench ingest-only"]) == [
        ("raybench+ray_data", "raybench")]
    assert planned_pairs(["ddp", "raw"]) == [("ddp", "raw")]
    assert planned_pairs(["raybench"]) == []


def test_repeats_are_pooled_into_one_more_comparison():
    windows, per_repeat = [], []
    for repeat, k in ((1, 1.0), (2, 1.1)):
        pairs = [(window("raybench", 990 * k, round_no=i, repeat=repeat),
                  window("raw", 1000 * k + i, round_no=i, repeat=repeat)) for i in range(3)]
        windows += [w for p in pairs for w in p]
        c = paired_comparison("raybench", "raw", 1, pairs, 0, 0.02)
        c.repeat = repeat
        per_repeat.append(c)
    out = pooled(per_repeat, windows, 0.02)
    assert len(out) == 3 and out[-1].repeat is None and out[-1].pairs == 6


def test_the_summary_ratio_is_the_comparison():
    from raybench.results import PointSummary

    row = PointSummary(backend="raybench", label="raybench", workers=1, mode="strong",
                       repeats=1, samples_per_sec=None, samples_per_sec_per_worker=None,
                       speedup=None, efficiency=None, batch_size_per_worker=1,
                       global_batch_size=1, threads_per_worker=1, step_time_ms_p50=None,
                       step_time_ms_p50_ci=None, step_time_ms_p90=None, data_share=None,
                       compute_share=None, sync_share=None, optimizer_share=None,
                       epoch_time_s=None, time_to_first_step_s=None, peak_rss_mib_max=None,
                       peak_gpu_mem_mib_max=None, allreduce_ms_p50=None,
                       pss_over_dataset=None, achieved_tflops=None, mfu=None)
    c = Comparison(numerator="raybench", denominator="raw", workers=1, ingest="memory",
                   ratio=0.99, ci95=[0.98, 1.0], pairs=12, excluded_pairs=0, window_s=1.0,
                   halfwidth=0.01, target_halfwidth=0.02, reached=True, note="")
    apply_comparisons([row], [c])
    assert row.vs_raw == 0.99 and (row.vs_raw_ci.low, row.vs_raw_ci.high) == (0.98, 1.0)
    assert row.vs_raw_ci.n == 12


def test_a_resident_record_takes_its_phases_from_its_kept_windows():
    """Not from the whole resident run, where a Ray Data rank's wait for its pipeline before
    the first window read as 70% "data" against the windows' 6%."""
    from raybench.scaling_report import use_windows
    from tests.unit.test_scaling_report import rec

    record = rec("raybench", 2, 1, 1.0)
    record.data_share, record.data_share_per_rank = 0.7, [0.7, 0.7]
    kept = [window("raybench", 100.0, phases=(0.2, 2.6, 0.0, 0.7)),
            window("raybench", 120.0, phases=(0.2, 2.8, 0.0, 0.7))]
    kept[0].data_ms_per_rank, kept[1].data_ms_per_rank = [0.1, 0.3], [0.1, 0.3]
    use_windows(record, kept, measured=3, flops_per_sample=None)
    assert record.samples_per_sec == pytest.approx(220 / 2)  # pooled: samples over seconds
    assert record.excluded_windows == 1
    assert record.data_share == pytest.approx(0.2 / 3.6)
    assert record.compute_s == pytest.approx(2.7e-3)
    assert record.data_share_per_rank == pytest.approx([0.1 / 3.6, 0.3 / 3.6])
    assert record.step_time_ms_p50 == pytest.approx(3.6)  # the median window's p50


def test_the_pair_cap_counts_kept_pairs_not_excluded_rounds():
    """A round excluded for outside load is no pair: with --max-pairs 2 and one round of two
    excluded, the point goes on (the budget still bounds it). Counting rounds, a busy moment
    in CI ended a test's sweep with one pair and no comparison."""
    import time
    from types import SimpleNamespace

    from raybench.interleave import PointRun, Precision

    run = PointRun.__new__(PointRun)
    run.p = Precision(max_pairs=2, min_pairs=6, budget_s=300)
    run.started, run.pairs = time.monotonic(), []
    window = SimpleNamespace
    run.contenders = [SimpleNamespace(windows=[window(excluded=True), window(excluded=False)],
                                      label="raybench")]
    run._own_halfwidth = lambda c: None
    assert not run._done(0.1)
    run.contenders[0].windows.append(window(excluded=False))
    assert run._done(0.1)
    run.p = Precision(max_pairs=None, min_pairs=6, budget_s=1)
    assert run._done(5.0)  # the budget still ends it


def test_a_compute_gap_names_the_busiest_ranks_kernel_time_and_page_faults():
    """The step of a lockstep waits for its slowest rank; each side's figure is its busiest
    rank's kernel CPU per step (median over windows), beside that rank's page faults. Measured
    on the emulated cluster: the LSTM's ranks took 17k-26k minor faults a step, 35-50 ms of
    kernel time, differing from one process to the next whatever the launcher."""
    from raybench.interleave import kernel_load

    pairs = []
    for i, (mine, theirs) in enumerate([(50.0, 46.0), (52.0, 45.0), (49.0, 47.0)]):
        x = window("raybench", 90.0 + i, phases=(0.0, 80.0, 5.0, 1.0), round_no=i)
        y = window("ddp-ray", 100.0 + i, phases=(0.0, 72.0, 4.0, 1.0), round_no=i)
        # rank 1 is raybench's busiest rank, rank 0 ddp-ray's
        x.kernel_ms_per_rank, x.faults_per_rank = [40.0, mine], [20_000.0, mine * 500]
        y.kernel_ms_per_rank, y.faults_per_rank = [theirs, 30.0], [theirs * 500, 15_000.0]
        pairs.append((x, y))
    kernel, faults = kernel_load(pairs, ("raybench", "ddp-ray"))
    assert kernel == {"raybench": 50.0, "ddp-ray": 46.0}
    assert faults == {"raybench": 25_000.0, "ddp-ray": 23_000.0}

    c = paired_comparison("raybench", "ddp-ray", 2, pairs, 0, None)
    assert c.kernel_ms == kernel and c.faults_per_step == faults
    text = comparison_sentence(c)
    assert "slower" in text
    assert text.endswith("kernel CPU a step on the busiest rank: raybench 50.0 ms (25.0k page "
                         "faults), ddp-ray 46.0 ms (23.0k)")
    # a kernel that did nothing at this precision (the MLP: 0.0 ms): nothing to say
    c.kernel_ms = {"raybench": 0.01, "ddp-ray": 0.02}
    assert "kernel" not in comparison_sentence(c)
    # windows from before the kernel was measured (older scaling.json): nothing is claimed
    for x, y in pairs:
        x.kernel_ms_per_rank = y.kernel_ms_per_rank = []
    assert "kernel" not in comparison_sentence(paired_comparison("raybench", "ddp-ray", 2, pairs,
                                                                 0, None))
