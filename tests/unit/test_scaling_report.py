import csv
import json
import math
import statistics

import numpy as np
import pytest

from raybench import scaling_report as sr
from raybench import stats
from raybench.config import Config
from raybench.errors import UserError
from raybench.plan import point_config
from raybench.results import SCHEMA_VERSION, RunRecord
from raybench.scale import main as scale_main


def rec(backend, workers, repeat, sps, sync=0.1, p50=1.0):
    return RunRecord(
        backend=backend, mode="strong", workers=workers, repeat=repeat, samples_per_sec=sps,
        samples_per_sec_per_worker=sps / workers, step_time_ms_p50=p50, step_time_ms_p90=2.0,
        data_share=0.01, compute_share=0.7, sync_share=sync, optimizer_share=0.19,
        data_s=1e-5, compute_s=7e-4, sync_s=1e-4, optimizer_s=2e-4,
        batch_size_per_worker=1024 // workers, global_batch_size=1024, threads_per_worker=1,
        steps_per_epoch=100, measured_steps=300, epoch_time_s=1.0, time_to_first_step_s=10.0,
        startup_s=None, peak_rss_mib_max=100.0, peak_rss_mib_per_rank=[100.0] * workers,
        peak_gpu_mem_mib_max=None, allreduce_ms_p50=None, allreduce_bytes=None,
        nodes=["127.0.0.1"] * workers, node_ids=["n"] * workers, dataset_mib=10.0,
        pss_mib_sum=None, pss_over_dataset=None, pss_growth_over_dataset=None,
        wall_time_s=20.0)


RUNS = ([rec("raybench", 1, r, v) for r, v in [(1, 100.0), (2, 110.0), (3, 90.0)]]
        + [rec("raybench", 2, r, v) for r, v in [(1, 150.0), (2, 160.0), (3, 170.0)]]
        + [rec("ddp", 1, r, 105.0) for r in (1, 2, 3)]
        + [rec("ddp", 2, r, 200.0) for r in (1, 2, 3)]
        + [rec("raw", 1, r, 125.0) for r in (1, 2, 3)])


def test_spread_and_interval():
    s = stats.spread([90.0, 100.0, 110.0])
    assert (s.median, s.min, s.max, s.mean) == (100.0, 90.0, 110.0, 100.0)
    half = 4.302652729911275 * 10.0 / 3 ** 0.5  # t(0.975, df=2) * sd / sqrt(n)
    assert s.ci95_low == pytest.approx(100 - half)
    assert s.ci95_high == pytest.approx(100 + half)
    assert stats.spread([1.0, 2.0]).ci95_low is not None  # two values: df = 1
    assert stats.spread([1.0]).ci95_low is None


def test_speedup_pairs_repeats_and_efficiency_divides_by_n():
    runs = sr.add_speedups(RUNS)
    r2 = {(r.backend, r.workers, r.repeat): r for r in runs}
    assert r2[("raybench", 2, 1)].speedup == pytest.approx(1.5)
    assert r2[("raybench", 2, 2)].speedup == pytest.approx(160 / 110)
    assert r2[("raybench", 2, 1)].efficiency == pytest.approx(0.75)
    assert r2[("raw", 1, 1)].speedup == 1.0


def test_summary_ratios_vs_raw_and_ddp():
    rows = {(r.backend, r.workers): r for r in sr.summarize(RUNS)}
    ray1, ray2 = rows[("raybench", 1)], rows[("raybench", 2)]
    assert ray1.samples_per_sec.median == 100.0
    assert ray2.speedup == pytest.approx(1.6) and ray2.efficiency == pytest.approx(0.8)
    assert ray1.vs_raw == pytest.approx(100 / 125)
    assert ray1.vs_ddp == pytest.approx(100 / 105)
    assert ray2.vs_ddp == pytest.approx(160 / 200)
    assert ray2.vs_raw is None  # raw is a one-worker ceiling only
    assert [k[0] for k in rows][:2] == ["raybench", "raybench"]
    # paired per-repeat ratios 100/125, 110/125, 90/125: their geometric mean with the
    # t-interval of their logs (over 3), as the resident windows' ratios
    ci = ray1.vs_raw_ci
    logs = [math.log(x) for x in (0.8, 0.88, 0.72)]
    mean, half = statistics.fmean(logs), 4.302652729911275 * statistics.stdev(logs) / 3 ** 0.5
    assert ci.n == 3 and ci.value == pytest.approx(math.exp(mean))
    assert (ci.low, ci.high) == (pytest.approx(math.exp(mean - half)),
                                 pytest.approx(math.exp(mean + half)))
    assert ray1.step_time_ms_p50_ci.value == 1.0 and ray1.step_time_ms_p50_ci.n == 3


def test_a_ratio_of_repeats_never_has_a_bound_at_or_below_zero():
    """Three restarts of 0.3, 0.6 and 0.9: the arithmetic t-interval reached below zero."""
    ci = stats.paired_ratio({1: 30.0, 2: 60.0, 3: 90.0}, {1: 100.0, 2: 100.0, 3: 100.0})
    assert 0 < ci.low < ci.value < ci.high


def test_report_files_and_merge(tmp_path, capsys):
    a = tmp_path / "a"
    b = tmp_path / "b"
    sr.write_report(a, environment={"host": "x"}, config={"k": 1}, mode="strong",
                    runs=[r for r in RUNS if r.workers == 1])
    sr.write_report(b, environment={"host": "y"}, config={"k": 1}, mode="strong",
                    runs=[r for r in RUNS if r.workers == 2])
    for d in (a, b):
        assert {p.name for p in d.iterdir()} == {"scaling.json", "scaling.csv", "scaling.png"}
    rows = list(csv.DictReader((a / "scaling.csv").open()))
    assert set(sr.CSV_COLUMNS) <= rows[0].keys()
    assert {"backend", "mode", "workers", "repeat", "samples_per_sec", "speedup",
            "efficiency", "sync_share"} <= rows[0].keys()
    assert scale_main(["merge", str(a), str(b / "scaling.json"), "--out",
                       str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "scaling.json").read_text())
    assert merged["schema_version"] == SCHEMA_VERSION
    assert len(merged["runs"]) == len(RUNS)
    assert merged["environment"] == [{"host": "x"}, {"host": "y"}]
    ray2 = [r for r in merged["summary"] if r["backend"] == "raybench" and r["workers"] == 2][0]
    assert ray2["speedup"] == pytest.approx(1.6)  # computed across the merged inputs
    assert "raybench" in capsys.readouterr().out


def test_merge_refuses_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no scaling.json"):
        scale_main(["merge", str(tmp_path), "--out", str(tmp_path / "m")])
    (tmp_path / "scaling.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION}))
    with pytest.raises(UserError, match="not a complete ScalingDoc"):
        scale_main(["merge", str(tmp_path), "--out", str(tmp_path / "m")])
    # a result written by raybench 0.1 (no schema_version) is refused, not misread
    (tmp_path / "scaling.json").write_text(json.dumps({"runs": [], "summary": []}))
    with pytest.raises(UserError, match="schema_version 1, but this raybench reads version 2"):
        scale_main(["merge", str(tmp_path), "--out", str(tmp_path / "m")])


def test_strong_and_weak_batches():
    base = Config()
    base.train.batch_size = 1024
    assert point_config(base, 4, 1024).train.batch_size == 256
    assert point_config(base, 4, None).train.batch_size == 1024  # weak: per worker
    assert point_config(base, 4, 1024).scaling.workers == 4
    with pytest.raises(UserError, match="divisible by 3"):
        point_config(base, 3, 1024)


def test_table_lists_every_point():
    from raybench.report.sections import throughput_table

    table = throughput_table(sr.summarize(RUNS))
    assert len(table.rows) == 5
    assert len(table.text().splitlines()) == 3 + 5 + 1  # caption, head, rule, rows, note


def test_exact_quantiles_against_scipy():
    from scipy import stats as sps

    for df in (1, 2, 11, 17, 29, 45, 200):  # the old table skipped 11-29 and rounded beyond 30
        assert stats.t95(df) == pytest.approx(sps.t.ppf(0.975, df), rel=1e-12)
    for n in (6, 7, 50, 333, 1000):
        assert stats.binomial_lower_quantile(n) == int(sps.binom.ppf(0.025, n, 0.5))
    for n in (1001, 5000, 20000):
        assert abs(stats.binomial_lower_quantile(n) - sps.binom.ppf(0.025, n, 0.5)) <= 1


def test_median_interval_covers_the_median_with_order_statistics():
    x = np.arange(1.0, 101.0)  # 1..100
    ci = stats.median_interval(x)
    lo = int(__import__("scipy").stats.binom.ppf(0.025, 100, 0.5))
    assert ci.value == 50.5 and (ci.low, ci.high) == (float(lo), float(100 - lo + 1))
    assert stats.median_interval(x[:5]).low is None  # too few samples for 95%
