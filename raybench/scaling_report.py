"""Scaling-report math and files: per-run records, per-point summaries (median, spread, 95%
intervals), speed-up and efficiency, overhead ratios vs the raw and ddp baselines; JSON, CSV, PNG
and a printed table. Pure functions of run records, so merged reports are computed the same way.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from raybench import artifacts, stats
from raybench.backends import NAMES
from raybench.errors import UserError
from raybench.results import (
    Interval,
    PointSummary,
    RunRecord,
    RunResult,
    ScalingDoc,
    StartupPoint,
    read_doc,
    write_doc,
)

CSV_COLUMNS = ["backend", "mode", "workers", "repeat", "samples_per_sec",
               "samples_per_sec_per_worker", "speedup", "efficiency", "step_time_ms_p50",
               "step_time_ms_p90", "data_share", "compute_share", "sync_share", "optimizer_share",
               "batch_size_per_worker", "global_batch_size", "threads_per_worker",
               "measured_steps", "epoch_time_s", "time_to_first_step_s", "peak_rss_mib_max",
               "peak_gpu_mem_mib_max", "allreduce_ms_p50", "pss_over_dataset", "achieved_tflops",
               "mfu", "nodes", "wall_time_s"]
PHASES = ("data", "compute", "sync", "optimizer")


def run_record(backend: str, mode: str, repeat: int, result: RunResult,
               wall_time: float) -> RunRecord:
    """One measured run, flattened from the loop's result."""
    t, b = result.timing, result.timing.step_breakdown
    ranks = t.ranks
    rss = [r.peak_rss_mib for r in ranks]
    gpu = [r.peak_gpu_mem_mib for r in ranks if r.peak_gpu_mem_mib is not None]
    pss = [r.pss_mib for r in ranks if r.pss_mib is not None]
    pss_data = [r.pss_mib - r.pss_start_mib for r in ranks
                if r.pss_mib is not None and r.pss_start_mib is not None]
    counted = t.train_times[t.warmup_epochs:] or t.train_times
    comm = result.allreduce or {}
    return RunRecord(
        backend=backend, mode=mode, workers=t.num_workers, repeat=repeat,
        samples_per_sec=t.samples_per_sec, samples_per_sec_per_worker=t.samples_per_sec_per_worker,
        step_time_ms_p50=b.step_time_ms_p50, step_time_ms_p90=b.step_time_ms_p90,
        **{f"{p}_share": getattr(b, f"{p}_share") if b.steps else None for p in PHASES},
        **{f"{p}_s": getattr(b, f"{p}_s") if b.steps else None for p in PHASES},
        batch_size_per_worker=t.batch_size_per_worker, global_batch_size=t.global_batch_size,
        threads_per_worker=t.threads_per_worker, steps_per_epoch=t.steps_per_epoch,
        measured_steps=t.measured_steps,
        epoch_time_s=statistics.fmean(counted) if counted else None,
        time_to_first_step_s=t.time_to_first_step_s, startup_s=t.startup_s,
        peak_rss_mib_max=max(rss) if rss else None, peak_rss_mib_per_rank=rss,
        peak_gpu_mem_mib_max=max(gpu) if gpu else None,
        allreduce_ms_p50=comm.get("allreduce_ms_p50"), allreduce_bytes=comm.get("bytes"),
        nodes=[r.node for r in ranks], node_ids=[r.node_id for r in ranks],
        dataset_mib=t.dataset_mib, pss_mib_sum=sum(pss) if pss else None,
        pss_over_dataset=sum(pss) / t.dataset_mib if pss and t.dataset_mib else None,
        pss_growth_over_dataset=(sum(pss_data) / t.dataset_mib
                                 if pss_data and t.dataset_mib else None),
        wall_time_s=wall_time, achieved_tflops=t.achieved_tflops, mfu=t.mfu)


def _median(rows: list[RunRecord], key: str) -> float | None:
    values = [getattr(r, key) for r in rows if getattr(r, key) is not None]
    return statistics.median(values) if values else None


def _rates(rows: list[RunRecord]) -> dict[int, float]:
    """samples/s by repeat, for runs that measured any."""
    return {r.repeat: r.samples_per_sec for r in rows if r.samples_per_sec}


def add_speedups(runs: list[RunRecord]) -> list[RunRecord]:
    """speedup = samples/s at N over samples/s at 1 worker of the same backend (the same repeat
    where there is one, else the 1-worker median); efficiency = speedup / N."""
    ones: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        if r.workers == 1 and r.samples_per_sec:
            ones[r.backend][r.repeat] = r.samples_per_sec
    out = []
    for r in runs:
        base = ones.get(r.backend, {})
        ref = base.get(r.repeat, statistics.median(base.values()) if base else None)
        speedup = r.samples_per_sec / ref if ref and r.samples_per_sec else None
        out.append(dataclasses.replace(
            r, speedup=speedup, efficiency=speedup / r.workers if speedup is not None else None))
    return out


def _point(backend: str, workers: int, rs: list[RunRecord],
           one: float | None) -> PointSummary | None:
    rates = [r.samples_per_sec for r in rs if r.samples_per_sec]
    if not rates:
        return None
    sps = statistics.median(rates)
    speedup = sps / one if one else None
    p50s = [r.step_time_ms_p50 for r in rs if r.step_time_ms_p50 is not None]
    p50_ci = None
    if p50s:
        mean, low, high = stats.mean_interval(p50s)
        p50_ci = Interval(mean, low, high, len(p50s))
    medians = {k: _median(rs, k) for k in (
        "step_time_ms_p50", "step_time_ms_p90", "data_share", "compute_share", "sync_share",
        "optimizer_share", "epoch_time_s", "time_to_first_step_s", "peak_rss_mib_max",
        "peak_gpu_mem_mib_max", "allreduce_ms_p50", "pss_over_dataset", "achieved_tflops",
        "mfu")}
    return PointSummary(
        backend=backend, workers=workers, mode=rs[0].mode, repeats=len(rs),
        samples_per_sec=stats.spread(rates), samples_per_sec_per_worker=sps / workers,
        speedup=speedup, efficiency=speedup / workers if speedup is not None else None,
        batch_size_per_worker=rs[0].batch_size_per_worker,
        global_batch_size=rs[0].global_batch_size, threads_per_worker=rs[0].threads_per_worker,
        step_time_ms_p50_ci=p50_ci, **medians)


def summarize(runs: list[RunRecord]) -> list[PointSummary]:
    """One row per (backend, workers): throughput spread, speed-up, efficiency, breakdown, and
    raybench's ratio to raw (1 worker) and to ddp (same N)."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.backend, r.workers)].append(r)
    order = {b: i for i, b in enumerate(NAMES)}
    rows = []
    for (backend, workers), rs in sorted(groups.items(),
                                         key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        one = groups.get((backend, 1))
        one_median = statistics.median(_rates(one).values()) if one and _rates(one) else None
        row = _point(backend, workers, rs, one_median)
        if row is None:
            continue
        if backend == "raybench":
            for peer, key in (("raw", "vs_raw"), ("ddp", "vs_ddp")):
                others = groups.get((peer, workers)) if peer == "ddp" or workers == 1 else None
                if others and _rates(others):
                    peer_median = statistics.median(_rates(others).values())
                    setattr(row, key, row.samples_per_sec.median / peer_median)
                    setattr(row, f"{key}_ci", stats.paired_ratio(_rates(rs), _rates(others)))
        rows.append(row)
    return rows


def write_report(out_dir: str | Path, *, environment: Any, config: dict, runs: list[RunRecord],
                 mode: str, **extra: Any) -> ScalingDoc:
    """scaling.json, scaling.csv and scaling.png in out_dir; returns the document."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = add_speedups(runs)
    doc = ScalingDoc(environment=environment, config=config, mode=mode, runs=runs,
                     summary=summarize(runs), **extra)
    artifacts.write_csv(out_dir / "scaling.csv", [dataclasses.asdict(r) for r in runs],
                        CSV_COLUMNS)
    plot(doc.summary, out_dir / "scaling.png")
    write_doc(out_dir / "scaling.json", doc)  # last: its presence means complete
    return doc


def plot(summary: list[PointSummary], path: str | Path) -> Path:
    from raybench.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
    for backend in NAMES:
        rows = [r for r in summary if r.backend == backend]
        if not rows:
            continue
        n = [r.workers for r in rows]
        med = [r.samples_per_sec.median for r in rows]
        lo = [m - r.samples_per_sec.min for m, r in zip(med, rows, strict=True)]
        hi = [r.samples_per_sec.max - m for m, r in zip(med, rows, strict=True)]
        style = "o" if len(rows) == 1 else "o-"
        ax_t.errorbar(n, med, yerr=[lo, hi], fmt=style, capsize=3, label=backend)
        if backend == "raybench" and 1 in n:
            one = med[n.index(1)]
            ax_t.plot(n, [one * k for k in n], "k--", linewidth=1, label="ideal (raybench)")
        if len(rows) > 1:
            ax_e.plot(n, [r.efficiency for r in rows], style, label=backend)
    ax_t.set_xlabel("workers")
    ax_t.set_ylabel("samples/s (median, min-max)")
    ax_t.legend()
    ax_e.axhline(1.0, color="k", linestyle="--", linewidth=1)
    ax_e.set_xlabel("workers")
    ax_e.set_ylabel("efficiency (speed-up / N)")
    ax_e.set_ylim(bottom=0)
    if ax_e.get_legend_handles_labels()[0]:
        ax_e.legend()
    for ax in (ax_t, ax_e):
        ax.set_xticks(sorted({r.workers for r in summary}))
    return save_figure(fig, path)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fmt_interval(ci: Interval | None, spec: str = ".3f") -> str:
    """'0.951 [0.93-0.97] n=3', or the bare value without an interval."""
    if ci is None:
        return "-"
    if ci.low is None:
        return f"{ci.value:{spec}} n={ci.n}"
    return f"{ci.value:{spec}} [{ci.low:{spec}}-{ci.high:{spec}}] n={ci.n}"


def table(summary: list[PointSummary]) -> str:
    head = (f"{'backend':<9}{'N':>3} {'samples/s':>11} {'[min-max]':>23} {'speed-up':>9} "
            f"{'eff':>5} {'step p50 ms [95% CI]':>22} {'data':>5} {'comp':>5} {'sync':>5} "
            f"{'opt':>5}  {'vs raw [95% CI]':<26} {'vs ddp [95% CI]':<26}")
    lines = [head, "-" * len(head)]
    for r in summary:
        s = r.samples_per_sec
        lines.append(
            f"{r.backend:<9}{r.workers:>3} {s.median:>11,.0f} "
            f"{'[' + format(s.min, ',.0f') + '-' + format(s.max, ',.0f') + ']':>23} "
            f"{_fmt(r.speedup, '.2f'):>9} {_fmt(r.efficiency, '.2f'):>5} "
            f"{fmt_interval(r.step_time_ms_p50_ci, '.3f'):>22} "
            + " ".join(f"{_fmt(getattr(r, k), '.0%'):>5}" for k in (
                "data_share", "compute_share", "sync_share", "optimizer_share"))
            + f"  {fmt_interval(r.vs_raw_ci):<26} {fmt_interval(r.vs_ddp_ci):<26}")
    return "\n".join(lines)


def load_docs(paths: list[str]) -> list[ScalingDoc]:
    """Scaling documents from scaling.json files or directories holding one."""
    docs = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "scaling.json"
        if not path.is_file():
            raise UserError(f"no scaling.json at {p}")
        docs.append(read_doc(path, ScalingDoc))
    if not any(d.runs for d in docs):
        raise UserError("nothing to merge: no runs in the given files")
    return docs


def startup_summary(startup: list[dict], runs: list[RunRecord]) -> list[StartupPoint]:
    """Per N: Ray's own start-up floor (an empty TorchTrainer loop reaching its first line) next
    to raybench's time to its first training step, both from the launch call, medians."""
    rows = []
    for n in sorted({s["workers"] for s in startup}):
        floor = statistics.median(s["floor_s"] for s in startup if s["workers"] == n)
        mine = [r for r in runs if r.backend == "raybench" and r.workers == n]
        ours = _median(mine, "time_to_first_step_s")
        marks = [dataclasses.asdict(r.startup_s) for r in mine if r.startup_s]
        breakdown = {k: statistics.median(m[k] for m in marks if m.get(k) is not None)
                     for k in ("worker_entry_s", "loop_entry_s", "model_ready_s", "first_step_s")
                     if any(m.get(k) is not None for m in marks)}
        rows.append(StartupPoint(workers=n, floor_s=floor, raybench_first_step_s=ours,
                                 ratio=ours / floor if ours and floor else None,
                                 raybench_marks_s=breakdown))
    return rows
