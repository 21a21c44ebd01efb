"""Directories for raybench.report, written by the project's own writers: a real (raw) run,
and scaling and sweep documents built from records the way scale and tune build them."""

from __future__ import annotations

import dataclasses
import time

from raybench import data, plots, scaling_report
from raybench.config import Config, resolve
from raybench.interleave import paired_comparison
from raybench.loop import LoopOptions
from raybench.results import (
    Forecast,
    MeasuredWindow,
    TargetResult,
    TrialRow,
    TrialsDoc,
    write_doc,
)
from raybench.run import write_run
from tests.conftest import run_raw
from tests.unit.test_scaling_report import rec

ENV = {"date": "2026-11-28T09:00:00+0000", "hostname": "vm", "cpu_model": "Xeon",
       "cpu_count": 2, "python": "3.11.7", "torch": "2.13.0", "ray": "2.60.0",
       "raybench": "0.3.0", "git_commit": "abc1234"}


def a_run(tmp_path, npz, name="run_1", epochs=3):
    run = tmp_path / name
    run.mkdir()
    ds = data.build_dataset(data.load_npz(npz), None, 0.1, "zscore")
    cfg = resolve(Config(), npz_path=npz, task=ds.task)
    cfg.train.epochs = epochs
    result = run_raw(cfg, ds, LoopOptions(launch_time=time.time() - 5.0))
    result.timing.wall_time_s = 65.0
    write_run(run, cfg, ds.norm_stats, result)
    return run


def _window(label, n, rnd, rate, phases=(0.05, 0.6, 0.2, 0.15)):
    return MeasuredWindow(
        launcher=label, workers=n, repeat=1, round=rnd, slot=0, steps=100, samples=int(rate),
        seconds=1.0, samples_per_sec=rate, started_at=float(rnd),
        phase_ms=dict(zip(("data", "compute", "sync", "optimizer"), phases, strict=True)),
        step_ms_p50=1.0, cpu_s=1.0, nivcsw=3, steal_share=0.0, outside_share=0.01)


def throughput_sweep(tmp_path, name="scale"):
    """A resident throughput sweep at N=1, 2, 4 with comparisons, forecasts and costs."""
    rates = {("raybench", 1): 95_000.0, ("raw", 1): 100_000.0, ("ddp", 1): 99_000.0,
             ("raybench", 2): 60_000.0, ("ddp", 2): 61_000.0, ("raybench", 4): 45_000.0,
             ("ddp", 4): 46_000.0}
    runs, windows = [], []
    for (label, n), rate in rates.items():
        mine = [_window(label, n, r, rate * (1 + 0.01 * ((r % 3) - 1))) for r in range(8)]
        windows += mine
        r = rec(label, n, 1, rate)
        r.window_rates, r.windows = [w.samples_per_sec for w in mine], len(mine)
        runs.append(r)
    comps = []
    for num, den, n in (("raybench", "raw", 1), ("raybench", "ddp", 1), ("raybench", "ddp", 2),
                        ("raybench", "ddp", 4)):
        pairs = [(a, b) for a, b in zip([w for w in windows if (w.launcher, w.workers) == (num, n)],
                                        [w for w in windows if (w.launcher, w.workers) == (den, n)],
                                        strict=True)]
        c = paired_comparison(num, den, n, pairs, 1, 0.02)
        c.repeat = 1
        comps.append(c)
    forecasts = [Forecast("raybench", n, 1024 // n, p, rates[("raybench", n)] if n < 8 else None,
                          p / rates[("raybench", n)] - 1 if n < 8 else None, n == 8,
                          work_ms=1.0, wait_ms=0.2, allreduce_ms=0.4)
                 for n, p in ((1, 95_500.0), (2, 66_000.0), (4, 41_000.0), (8, 30_000.0))]
    scaling_report.write_report(tmp_path / name, environment=ENV, config={}, runs=runs,
                                mode="strong", protocol="resident", comparisons=comps,
                                windows=windows, forecasts=forecasts, repeats=1,
                                cost={"worker_hour_cost": 3.6, "unit": "per worker-hour"})
    return tmp_path / name


def target_sweep(tmp_path, name="ttt", reached=True):
    runs = []
    for n in (1, 2):
        for r in (1, 2, 3):
            x = rec("raybench", n, r, 1000.0 * n)
            x.target = TargetResult(target="val_r2>=0.9", reached=reached, epochs=3, samples=3000,
                                    time_from_first_step_s=10.0 / n + r,
                                    time_from_start_s=10.0 / n + r + 18.0, eval_time_s=1.0,
                                    value=0.91 if reached else 0.5)
            runs.append(x)
    scaling_report.write_report(tmp_path / name, environment=ENV, config={}, runs=runs,
                                mode="strong", target="val_r2>=0.9", repeats=3)
    return tmp_path / name


def chaos_sweep(tmp_path, name="chaos"):
    runs = []
    for r in (1, 2):
        clean = rec("raybench", 2, r, 1000.0)
        clean.goodput_samples_per_sec = 900.0
        hit = dataclasses.replace(rec("raybench", 2, r, 990.0), chaos="kill-worker every 30s",
                                  goodput_samples_per_sec=700.0, failures=2,
                                  recovery_s=[8.1, 7.9])
        runs += [clean, hit]
    scaling_report.write_report(tmp_path / name, environment=ENV, config={}, runs=runs,
                                mode="weak", chaos="kill-worker every 30s", repeats=2)
    return tmp_path / name


def streaming_sweep(tmp_path, name="stream"):
    runs = []
    for r in (1, 2, 3):
        runs.append(rec("raybench", 2, r, 1000.0))
        runs.append(dataclasses.replace(rec("raybench", 2, r, 950.0), ingest="ray_data",
                                        first_batch_s_max=3.2, object_store_peak_mib=300.0,
                                        spilled_mib=0.0, data_share_per_rank=[0.02, 0.05]))
    scaling_report.write_report(tmp_path / name, environment=ENV, config={}, runs=runs,
                                mode="weak", repeats=3)
    return tmp_path / name


def tune_sweep(tmp_path, name="sweep"):
    sweep = tmp_path / name
    sweep.mkdir()
    trials = [TrialRow("a", {"train.lr": 0.01}, "completed", 4, 0.56, 0.56, 4, 3.0, None,
                       [0.5, 0.52, 0.55, 0.56]),
              TrialRow("b", {"train.lr": 1e-5}, "stopped_early", 1, 0.5, 0.5, 1, 1.0, None,
                       [0.5]),
              TrialRow("c", {"train.lr": 1e-3}, "not_started", 0, None, None, None, None, None)]
    write_doc(sweep / "trials.json", TrialsDoc(status="completed", metric="auc", mode="max",
                                               trials=trials, baseline_valid=0.5))
    plots.trials_png(trials, "auc", sweep / "trials.png")
    return sweep
