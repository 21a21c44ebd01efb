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
from raybench.errors import RunFailed, UserError
from raybench.interleave import paired_comparison
from raybench.results import (
    PHASES,
    Comparison,
    Forecast,
    Interval,
    MeasuredWindow,
    PointSummary,
    RunRecord,
    RunResult,
    ScalingDoc,
    StartupPoint,
    TargetSummary,
    read_doc,
    write_doc,
)
from raybench.targets import mlperf_score

CSV_COLUMNS = ["backend", "mode", "workers", "repeat", "samples_per_sec",
               "samples_per_sec_per_worker", "speedup", "efficiency", "step_time_ms_p50",
               "step_time_ms_p90", "data_share", "compute_share", "sync_share", "optimizer_share",
               "batch_size_per_worker", "global_batch_size", "threads_per_worker",
               "measured_steps", "epoch_time_s", "time_to_first_step_s", "peak_rss_mib_max",
               "peak_gpu_mem_mib_max", "allreduce_ms_p50", "pss_over_dataset", "achieved_tflops",
               "mfu", "nodes", "wall_time_s"]


def run_record(backend: str, mode: str, repeat: int, result: RunResult,
               wall_time: float, ingest_only: bool = False,
               lr: float | None = None, chaos: str | None = None) -> RunRecord:
    """One measured run, flattened from the loop's result."""
    t, b = result.timing, result.timing.step_breakdown
    ranks = t.ranks
    rss = [r.peak_rss_mib for r in ranks]
    gpu = [r.peak_gpu_mem_mib for r in ranks if r.peak_gpu_mem_mib is not None]
    pss = [r.pss_mib for r in ranks if r.pss_mib is not None]
    pss_data = [r.pss_mib - r.pss_start_mib for r in ranks
                if r.pss_mib is not None and r.pss_start_mib is not None]
    counted = t.train_times[t.warmup_epochs:] or t.train_times
    comm = result.allreduce
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
        allreduce_ms_p50=comm.allreduce_ms_p50 if comm else None,
        allreduce_bytes=comm.bytes if comm else None,
        nodes=[r.node for r in ranks], node_ids=[r.node_id for r in ranks],
        dataset_mib=t.dataset_mib, pss_mib_sum=sum(pss) if pss else None,
        pss_over_dataset=sum(pss) / t.dataset_mib if pss and t.dataset_mib else None,
        pss_growth_over_dataset=(sum(pss_data) / t.dataset_mib
                                 if pss_data and t.dataset_mib else None),
        wall_time_s=wall_time, achieved_tflops=t.achieved_tflops, mfu=t.mfu, ingest=t.ingest,
        lr=lr, target=t.target, chaos=chaos, epochs=t.total_epochs,
        goodput_samples_per_sec=(t.total_epochs * t.steps_per_epoch * t.global_batch_size
                                 / wall_time if wall_time > 0 else None),
        failures=t.failures,
        recovery_s=[r.recovery_s for r in t.recoveries if r.recovery_s is not None],
        recovery_notes=[r.note for r in t.recoveries if r.restarted and r.recovery_s is None],
        recoveries=list(t.recoveries),
        final_train_loss=result.history[-1].train_loss if result.history else None,
        restore_s_total=sum(r.restore_s for r in t.restores),
        checkpoint_save_s_total=t.checkpoint_save_s_total, report_s_total=t.report_s_total,
        ingest_only=ingest_only, samples_per_sec_per_rank=[r.samples_per_sec for r in ranks],
        data_share_per_rank=[r.step_breakdown.data_share for r in ranks],
        first_batch_s_max=max((r.first_batch_s for r in ranks if r.first_batch_s is not None),
                              default=None),
        first_batch_at=max((r.first_batch_at for r in ranks if r.first_batch_at is not None),
                           default=None),
        object_store_peak_mib=t.object_store_peak_mib, spilled_mib=t.spilled_mib,
        work_ms_quantiles=t.work_ms_quantiles if t.num_workers == 1 else [],
        **ddp_timers_ms(result.ddp_logging))


def ddp_timers_ms(timers: dict[str, float] | None) -> dict[str, float | None]:
    """DDP's communication time per iteration and the part not hidden behind backward compute
    (its timers are nanoseconds)."""
    if not timers or "avg_backward_comm_time" not in timers:
        return {}
    comm = timers["avg_backward_comm_time"] / 1e6
    overlap = timers.get("avg_backward_compute_comm_overlap_time", 0.0) / 1e6
    return {"ddp_comm_ms": comm, "ddp_exposed_comm_ms": max(0.0, comm - overlap)}


def use_windows(record: RunRecord, kept: list[MeasuredWindow], measured: int,
                flops_per_sample: float | None) -> None:
    """A resident launcher's throughput is its kept windows' pooled rate (samples over
    seconds); the windows' own rates stay beside it for their spread."""
    seconds = sum(w.seconds for w in kept)
    record.window_rates = [w.samples_per_sec for w in kept]
    record.excluded_windows = measured - len(kept)
    record.samples_per_sec = sum(w.samples for w in kept) / seconds if seconds else None
    record.samples_per_sec_per_worker = (record.samples_per_sec / record.workers
                                         if record.samples_per_sec else None)
    if flops_per_sample and record.samples_per_sec:
        record.achieved_tflops = flops_per_sample * record.samples_per_sec / 1e12
    if kept:  # the step's phases as the windows saw them, not the whole resident run's
        # (between windows a rank waits for the driver; a Ray Data rank's wait for its first
        # batch after the pipeline started is not a step's: measured, 70% "data" against 6%)
        phases = {p: statistics.fmean(w.phase_ms[p] for w in kept) for p in PHASES}
        step_ms = sum(phases.values())
        for p in PHASES:
            setattr(record, f"{p}_s", phases[p] / 1e3)
            setattr(record, f"{p}_share", phases[p] / step_ms if step_ms else None)
        p50s = [w.step_ms_p50 for w in kept if w.step_ms_p50 is not None]
        record.step_time_ms_p50 = statistics.median(p50s) if p50s else record.step_time_ms_p50
        ranks = [w.data_ms_per_rank for w in kept if w.data_ms_per_rank]
        if ranks and step_ms and all(len(r) == len(ranks[0]) for r in ranks):
            record.data_share_per_rank = [statistics.fmean(col) / step_ms
                                          for col in zip(*ranks, strict=True)]


def pooled(comparisons: list[Comparison], windows: list[MeasuredWindow],
           target: float | None) -> list[Comparison]:
    """Each repeat's comparisons, and where a point was repeated, one more over the pairs of
    every repeat (repeat None): the figure that includes the spread between starts."""
    out = list(comparisons)
    keys = {(c.numerator, c.denominator, c.workers) for c in comparisons}
    for num, den, n in sorted(keys, key=lambda k: (k[2], k[0], k[1])):
        repeats = [c for c in comparisons if (c.numerator, c.denominator, c.workers)
                   == (num, den, n)]
        if len(repeats) < 2:
            continue
        by_round: dict[tuple[int, int], dict[str, MeasuredWindow]] = defaultdict(dict)
        for w in windows:
            if w.workers == n and w.launcher in (num, den):
                by_round[(w.repeat, w.round)][w.launcher] = w
        pairs = [(r[num], r[den]) for r in by_round.values() if num in r and den in r
                 and not (r[num].excluded or r[den].excluded)]
        excluded = sum(c.excluded_pairs for c in repeats)
        out.append(paired_comparison(num, den, n, pairs, excluded, target))
    return out


def comparison_sentence(c: Comparison) -> str:
    """'raybench/raw N=1: 0.991 (95% CI 0.982-1.000, +-0.9%, 24 pairs): raybench is 0.9%
    slower than raw; the gap: compute +0.5 points, ...'."""
    head = f"{c.numerator}/{c.denominator} N={c.workers}"
    if c.ratio is None:
        return f"{head}: not measured ({c.note})"
    where = f"{c.pairs} pairs" + (f", {c.excluded_pairs} excluded" if c.excluded_pairs else "")
    if c.ci95 is None:
        return f"{head}: {c.ratio:.3f} ({where}, too few for an interval)"
    text = (f"{head}: {c.ratio:.3f} (95% CI {c.ci95[0]:.3f}–{c.ci95[1]:.3f}, "
            f"±{c.halfwidth:.1%}, {where})")
    low, high = c.ci95
    if low > 1 or high < 1:
        faster = c.ratio > 1
        text += (f": {c.numerator} is {abs(c.ratio - 1):.1%} {'faster' if faster else 'slower'}"
                 f" than {c.denominator}")
        gaps = [f"{phase} {g.share * 100:+.1f} pts" for phase, g in
                sorted(c.phases.items(), key=lambda kv: -abs(kv[1].share))
                if abs(g.share) >= 5e-4]
        if gaps:
            text += "; step-time gap by phase: " + ", ".join(gaps)
        if kernel := kernel_clause(c):
            text += "; " + kernel
    else:
        text += f": no difference beyond the noise (would detect {c.mde:.1%})" if c.mde else ""
    if not c.reached and c.note:
        text += f" [not precise: {c.note}]"
    noisy = [f"{k} {v:.0%}" for k, v in c.noise_iqr.items() if v > NOISY_IQR]
    if noisy:
        text += f" [noisy windows, IQR/median: {', '.join(noisy)}]"
    return text


def kernel_clause(c: Comparison) -> str:
    """'kernel CPU a step on the busiest rank: raybench 49.9 ms (25.6k page faults), ddp-ray
    46.2 ms (23.8k)': what of a compute gap the kernel's page faults account for."""
    sides = [label for label in (c.numerator, c.denominator) if label in c.kernel_ms]
    if len(sides) < 2 or max(c.kernel_ms[label] for label in sides) < 0.05:
        return ""  # not measured, or nothing the kernel did shows at this precision
    parts = [f"{label} {c.kernel_ms[label]:.1f} ms ({c.faults_per_step[label] / 1e3:.1f}k"
             + (" page faults)" if i == 0 else ")") for i, label in enumerate(sides)]
    return "kernel CPU a step on the busiest rank: " + ", ".join(parts)


# Windows whose rates spread more than this (IQR over median) are flagged as noisy.
NOISY_IQR = 0.10


def headline(comparisons: list[Comparison]) -> list[Comparison]:
    """Per (numerator, denominator, N): the pooled comparison if there is one, else the only."""
    best: dict[tuple[str, str, int], Comparison] = {}
    for c in comparisons:
        key = (c.numerator, c.denominator, c.workers)
        if key not in best or c.repeat is None:
            best[key] = c
    return list(best.values())


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
            ones[r.label][r.repeat] = r.samples_per_sec
    out = []
    for r in runs:
        base = ones.get(r.label, {})
        ref = base.get(r.repeat, statistics.median(base.values()) if base else None)
        speedup = r.samples_per_sec / ref if ref and r.samples_per_sec else None
        out.append(dataclasses.replace(
            r, speedup=speedup, efficiency=speedup / r.workers if speedup is not None else None))
    return out


def _point(label: str, workers: int, rs: list[RunRecord],
           one: float | None) -> PointSummary:
    rates = [r.samples_per_sec for r in rs if r.samples_per_sec]
    sps = statistics.median(rates) if rates else None
    # Resident runs: the spread is over the windows (each a measurement of the warm launcher)
    spread_of = [x for r in rs for x in r.window_rates] or rates
    speedup = sps / one if one and sps else None
    p50s = [r.step_time_ms_p50 for r in rs if r.step_time_ms_p50 is not None]
    p50_ci = None
    if p50s:
        mean, low, high = stats.mean_interval(p50s)
        p50_ci = Interval(mean, low, high, len(p50s))
    medians = {k: _median(rs, k) for k in (
        "step_time_ms_p50", "step_time_ms_p90", "data_share", "compute_share", "sync_share",
        "optimizer_share", "epoch_time_s", "time_to_first_step_s", "peak_rss_mib_max",
        "peak_gpu_mem_mib_max", "allreduce_ms_p50", "pss_over_dataset", "achieved_tflops",
        "mfu", "cpu_mfu", "object_store_peak_mib", "spilled_mib")}
    shares = [r.data_share_per_rank for r in rs if r.data_share_per_rank]
    recoveries = [x for r in rs for x in r.recovery_s]
    for key in ("goodput_samples_per_sec", "restore_s_total", "checkpoint_save_s_total",
                "report_s_total", "failures"):
        medians[key] = _median(rs, key)
    medians["recovery_s"] = statistics.median(recoveries) if recoveries else None
    return PointSummary(
        chaos=rs[0].chaos,
        backend=rs[0].backend, label=label, workers=workers, mode=rs[0].mode, repeats=len(rs),
        ingest=rs[0].ingest, ingest_only=rs[0].ingest_only, target=target_summary(rs),
        data_share_min=statistics.median(min(s) for s in shares) if shares else None,
        data_share_max=statistics.median(max(s) for s in shares) if shares else None,
        first_batch_s=_median(rs, "first_batch_s_max"),
        samples_per_sec=stats.spread(spread_of) if rates else None,
        samples_per_sec_per_worker=sps / workers if sps else None,
        speedup=speedup, efficiency=speedup / workers if speedup is not None else None,
        batch_size_per_worker=rs[0].batch_size_per_worker,
        global_batch_size=rs[0].global_batch_size, threads_per_worker=rs[0].threads_per_worker,
        step_time_ms_p50_ci=p50_ci, windows=sum(r.windows for r in rs),
        excluded_windows=sum(r.excluded_windows for r in rs), **medians)


def target_summary(rs: list[RunRecord]) -> TargetSummary | None:
    """MLPerf's score of the repeats' times to target, in repeat order."""
    runs = sorted((r for r in rs if r.target is not None), key=lambda r: r.repeat)
    if not runs:
        return None
    times = [r.target.time_from_first_step_s if r.target.reached else None for r in runs]
    score = mlperf_score(times)
    reached = [r.target for r in runs if r.target.reached]
    shares = [t.eval_time_s / t.time_from_first_step_s for t in reached
              if t.eval_time_s is not None and t.time_from_first_step_s]
    return TargetSummary(
        target=runs[0].target.target, runs=score.runs, reached=score.reached, valid=score.valid,
        score_s=score.score_s, times_s=times, note=score.note,
        epochs_median=statistics.median(t.epochs for t in reached) if reached else None,
        samples_median=statistics.median(t.samples for t in reached) if reached else None,
        eval_share=statistics.median(shares) if shares else None)


def summarize(runs: list[RunRecord]) -> list[PointSummary]:
    """One row per (label, workers): throughput spread, speed-up, efficiency, breakdown, and
    raybench's ratios to raw (1 worker), to ddp (same N) and, for a streamed ingest, to the
    same launcher with the data in memory."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in runs:
        groups[(r.label, r.workers)].append(r)
    order = {b: i for i, b in enumerate(NAMES)}
    rows = []
    for (label, workers), rs in sorted(groups.items(), key=lambda kv: (
            order.get(kv[1][0].backend, 9), kv[0][0], kv[0][1])):
        one = groups.get((label, 1))
        one_median = statistics.median(_rates(one).values()) if one and _rates(one) else None
        row = _point(label, workers, rs, one_median)
        if row.chaos:
            clean = groups.get((label.removesuffix(" chaos"), workers), [])
            row.goodput_vs_clean = stats.paired_ratio(_goodput(rs), _goodput(clean))
        elif row.backend == "raybench" and not row.ingest_only and row.samples_per_sec:
            ddp = "ddp" if (("ddp", workers) in groups) else "ddp-ray"  # local, else placed by Ray
            peers = [("raw", "vs_raw"), (ddp, "vs_ddp")]
            if row.ingest != "memory":
                peers.append(("raybench", "vs_memory"))
            for peer, key in peers:
                _ratio(row, key, rs, groups.get((peer, workers))
                       if peer != "raw" or workers == 1 else None)
        rows.append(row)
    return rows


# Which PointSummary ratio a comparison fills, by its denominator.
RATIO_KEYS = {"raw": "vs_raw", "ddp": "vs_ddp", "ddp-ray": "vs_ddp", "raybench": "vs_memory"}


def apply_comparisons(summary: list[PointSummary], comparisons: list[Comparison]) -> None:
    """Resident measurements decide the ratios: vs_raw, vs_ddp and vs_memory become the paired
    windows' ratio and its interval (not the ratio of medians of separate starts)."""
    for c in headline(comparisons):
        key = RATIO_KEYS.get(c.denominator)
        row = next((r for r in summary if r.label == c.numerator and r.workers == c.workers),
                   None)
        if key is None or row is None or c.ratio is None:
            continue
        setattr(row, key, c.ratio)
        low, high = c.ci95 or (None, None)
        setattr(row, f"{key}_ci", Interval(c.ratio, low, high, c.pairs))


def _goodput(rows: list[RunRecord]) -> dict[int, float]:
    return {r.repeat: r.goodput_samples_per_sec for r in rows if r.goodput_samples_per_sec}


def _ratio(row: PointSummary, key: str, mine: list[RunRecord],
           peers: list[RunRecord] | None) -> None:
    """Set row.<key> (ratio of medians) and row.<key>_ci (paired per-repeat ratios)."""
    if peers and _rates(peers):
        setattr(row, key, row.samples_per_sec.median / statistics.median(_rates(peers).values()))
        setattr(row, f"{key}_ci", stats.paired_ratio(_rates(mine), _rates(peers)))


def write_report(out_dir: str | Path, *, environment: Any, config: dict, runs: list[RunRecord],
                 mode: str, **extra: Any) -> ScalingDoc:
    """scaling.json, scaling.csv and scaling.png in out_dir; returns the document."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = add_speedups(runs)
    summary = summarize(runs)
    apply_comparisons(summary, extra.get("comparisons") or [])
    attach_forecasts(summary, extra.get("forecasts") or [])
    add_costs(summary, runs, extra.get("cost"))
    doc = ScalingDoc(environment=environment, config=config, mode=mode, runs=runs,
                     summary=summary, verdict=verdict(summary)
                     + cost_verdict(summary, extra.get("cost")), **extra)
    try:
        artifacts.write_csv(out_dir / "scaling.csv", [dataclasses.asdict(r) for r in runs],
                            CSV_COLUMNS)
        plot(doc.summary, out_dir / "scaling.png")
        write_doc(out_dir / "scaling.json", doc)  # last: its presence means complete
    except OSError as exc:  # a full or read-only disk: no half a report that looks whole
        for name in ("scaling.csv", "scaling.png"):
            (out_dir / name).unlink(missing_ok=True)
        raise RunFailed(f"cannot write the scaling report in {out_dir}: "
                        f"{exc.strerror or exc}") from None
    return doc


def plot(summary: list[PointSummary], path: str | Path) -> Path:
    from raybench.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label in dict.fromkeys(r.label for r in summary):
        rows = [r for r in summary if r.label == label and r.samples_per_sec]
        if not rows:
            continue
        n = [r.workers for r in rows]
        med = [r.samples_per_sec.median for r in rows]
        lo = [m - r.samples_per_sec.min for m, r in zip(med, rows, strict=True)]
        hi = [r.samples_per_sec.max - m for m, r in zip(med, rows, strict=True)]
        style = "o" if len(rows) == 1 else "o-"
        ax_t.errorbar(n, med, yerr=[lo, hi], fmt=style, capsize=3, label=label)
        if label == "raybench" and 1 in n:
            one = med[n.index(1)]
            ax_t.plot(n, [one * k for k in n], "k--", linewidth=1, label="ideal (raybench)")
        if len(rows) > 1:
            ax_e.plot(n, [r.efficiency for r in rows], style, label=label)
    ax_t.set_xlabel("workers")
    ax_t.set_ylabel("samples/s (median, min-max)")
    if ax_t.get_legend_handles_labels()[0]:  # nothing measured: no legend, not a warning
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


def attach_forecasts(summary: list[PointSummary], forecasts: list[Forecast]) -> None:
    """The kept forecast beside each measured point it predicted, with the error."""
    for f in forecasts:
        for row in summary:
            if row.label == f.backend and row.workers == f.workers:
                row.predicted_samples_per_sec = f.predicted_samples_per_sec
                row.prediction_error = f.error


def add_costs(summary: list[PointSummary], runs: list[RunRecord], cost: dict | None) -> None:
    """Per point: what a million samples cost at its rate, and what reaching the target cost
    from the launch (start-up included): workers x seconds x the price of a worker-second."""
    price = (cost or {}).get("worker_hour_cost")
    per_worker_s = price / 3600 if price is not None else 1.0
    for row in summary:
        if row.samples_per_sec:
            row.cost_per_million_samples = (per_worker_s * row.workers * 1e6
                                            / row.samples_per_sec.median)
        times = [r.target.time_from_start_s for r in runs
                 if r.label == row.label and r.workers == row.workers and r.target
                 and r.target.reached and r.target.time_from_start_s]
        if times:
            row.time_to_target_from_launch_s = statistics.median(times)
            row.cost_to_target = per_worker_s * row.workers * row.time_to_target_from_launch_s


def cost_verdict(summary: list[PointSummary], cost: dict | None) -> list[str]:
    """Which N to pay for: fastest, cheapest, and cheapest within the deadline (to the target
    when there is one, else per million samples)."""
    cost = cost or {}
    unit = ("" if cost.get("worker_hour_cost") is None else " at "
            f"{cost['worker_hour_cost']:g} per worker-hour")
    out = []
    for label in dict.fromkeys(r.label for r in summary if not r.ingest_only and not r.chaos):
        rows = [r for r in summary if r.label == label]
        to_target = [r for r in rows if r.cost_to_target is not None]
        if to_target:
            fast = min(to_target, key=lambda r: r.time_to_target_from_launch_s)
            cheap = min(to_target, key=lambda r: r.cost_to_target)
            line = (f"{label}: from launch, N={fast.workers} reached the target fastest "
                    f"({fast.time_to_target_from_launch_s:.1f}s, start-up included) and "
                    f"N={cheap.workers} cheapest ({_cost(cheap.cost_to_target, cost)}{unit})")
            out.append(line + _within(to_target, cost.get("deadline_s")) + ".")
        elif len(rows) > 1 and all(r.cost_per_million_samples for r in rows):
            cheap = min(rows, key=lambda r: r.cost_per_million_samples)
            out.append(f"{label}: N={cheap.workers} is the cheapest per million samples "
                       f"({_cost(cheap.cost_per_million_samples, cost)}{unit}).")
    return out


def _within(rows: list[PointSummary], deadline: float | None) -> str:
    if not deadline:
        return ""
    within = [r for r in rows if r.time_to_target_from_launch_s <= deadline]
    if not within:
        return f"; no N reached it within {deadline:g}s"
    return f"; within {deadline:g}s, N={min(within, key=lambda r: r.cost_to_target).workers}"


def _cost(value: float, cost: dict) -> str:
    if cost.get("worker_hour_cost") is None:
        return f"{value:,.1f} worker-seconds"
    return f"{value:,.4g}"


def verdict(summary: list[PointSummary]) -> list[str]:
    """One sentence per launcher: which N was fastest (to the target, else in samples/s) and
    the part of the step breakdown that decided it."""
    out = []
    for label in dict.fromkeys(r.label for r in summary if not r.ingest_only):
        rows = [r for r in summary if r.label == label]
        if len(rows) < 2:
            continue
        scored = [r for r in rows if r.target and r.target.valid and r.target.score_s]
        if rows[0].target is not None:
            if not scored:
                out.append(f"{label}: no N reached {rows[0].target.target} validly.")
                continue
            best = min(scored, key=lambda r: r.target.score_s)
            out.append(f"{label}: N={best.workers} was fastest to {best.target.target} "
                       f"({best.target.score_s:.1f}s, MLPerf score) " + _why(best, rows))
            continue
        best = max((r for r in rows if r.samples_per_sec),
                   key=lambda r: r.samples_per_sec.median, default=None)
        if best is not None:
            out.append(f"{label}: N={best.workers} had the most samples/s "
                       f"({best.samples_per_sec.median:,.0f}) " + _why(best, rows))
    return out


def _why(best: PointSummary, rows: list[PointSummary]) -> str:
    """What decided it: epochs needed, or how much of a step synchronisation took."""
    others = [r for r in rows if r is not best]
    parts = []
    if best.target and best.target.epochs_median is not None:
        epochs = [r.target.epochs_median for r in others if r.target and r.target.epochs_median]
        if epochs:
            parts.append(f"needing {best.target.epochs_median:.0f} epoch(s) against "
                         f"{', '.join(f'{e:.0f}' for e in epochs)} at other N")
    worst = max(others, key=lambda r: r.sync_share or 0)
    if best.sync_share is not None and worst.sync_share is not None:
        parts.append(f"sync was {best.sync_share:.0%} of its step against "
                     f"{worst.sync_share:.0%} at N={worst.workers}")
    return "because " + "; ".join(parts) + "." if parts else "."


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
        floors = {s["repeat"]: s["floor_s"] for s in startup if s["workers"] == n}
        firsts = {r.repeat: r.time_to_first_step_s for r in mine if r.time_to_first_step_s}
        rows.append(StartupPoint(workers=n, floor_s=floor, raybench_first_step_s=ours,
                                 ratio=ours / floor if ours and floor else None,
                                 raybench_marks_s=breakdown,
                                 ratio_ci=stats.paired_ratio(firsts, floors)))
    return rows
