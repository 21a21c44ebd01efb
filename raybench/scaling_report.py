"""Scaling-report math and files: per-run records, per-point summaries (median, spread, 95%
interval), speed-up and efficiency, overhead ratios vs the raw and ddp baselines; JSON, CSV, PNG
and a printed table. Pure functions of run records, so merged reports are computed the same way.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from raybench import artifacts
from raybench.errors import UserError

BACKENDS = ("raybench", "ddp", "raw")
CSV_COLUMNS = ["backend", "mode", "workers", "repeat", "samples_per_sec",
               "samples_per_sec_per_worker", "speedup", "efficiency", "step_time_ms_p50",
               "step_time_ms_p90", "data_share", "compute_share", "sync_share", "optimizer_share",
               "batch_size_per_worker", "global_batch_size", "threads_per_worker",
               "epoch_time_sec", "time_to_first_step_sec", "peak_rss_mb_max", "peak_gpu_mem_mb_max",
               "allreduce_ms_p50", "pss_over_dataset", "nodes", "wall_time_sec"]
# Two-sided 95% Student t quantiles by degrees of freedom (no scipy needed for small n).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(df: int) -> float:
    if df in _T95:
        return _T95[df]
    larger = [k for k in _T95 if k >= df]
    return _T95[min(larger)] if larger else 1.96


def run_record(backend: str, mode: str, repeat: int, result: dict, wall_time: float) -> dict:
    """One measured run, flattened from the loop's result."""
    t = result["timing"]
    b = t.get("step_breakdown") or {}
    ranks = t.get("ranks") or []
    rss = [r["peak_rss_mb"] for r in ranks if r.get("peak_rss_mb") is not None]
    gpu = [r["peak_gpu_mem_mb"] for r in ranks if r.get("peak_gpu_mem_mb") is not None]
    pss = [r["pss_mb"] for r in ranks if r.get("pss_mb") is not None]
    pss_data = [r["pss_mb"] - r["pss_mb_start"] for r in ranks
                if r.get("pss_mb") is not None and r.get("pss_mb_start") is not None]
    counted = t["train_times"][t.get("warmup_epochs", 0):] or t["train_times"]
    return {
        "backend": backend,
        "mode": mode,
        "workers": t["num_workers"],
        "repeat": repeat,
        "samples_per_sec": t["samples_per_sec"],
        "samples_per_sec_per_worker": t["samples_per_sec_per_worker"],
        "step_time_ms_p50": b.get("step_time_ms_p50"),
        "step_time_ms_p90": b.get("step_time_ms_p90"),
        **{f"{p}_share": b.get(f"{p}_share") for p in ("data", "compute", "sync", "optimizer")},
        **{f"{p}_sec": b.get(f"{p}_sec") for p in ("data", "compute", "sync", "optimizer")},
        "batch_size_per_worker": t["batch_size_per_worker"],
        "global_batch_size": t["global_batch_size"],
        "threads_per_worker": t["threads_per_worker"],
        "steps_per_epoch": t["steps_per_epoch"],
        "epoch_time_sec": statistics.fmean(counted) if counted else None,
        "time_to_first_step_sec": t.get("time_to_first_step_sec"),
        "startup_sec": t.get("startup_sec"),
        "peak_rss_mb_max": max(rss) if rss else None,
        "peak_rss_mb_per_rank": rss,
        "peak_gpu_mem_mb_max": max(gpu) if gpu else None,
        "allreduce_ms_p50": (result.get("allreduce") or {}).get("allreduce_ms_p50"),
        "allreduce_bytes": (result.get("allreduce") or {}).get("bytes"),
        "nodes": [r.get("node") for r in ranks],
        "node_ids": [r.get("node_id") for r in ranks],
        "dataset_mb": t.get("dataset_mb"),
        "pss_mb_sum": sum(pss) if pss else None,
        # Sum of the workers' proportional set sizes over the dataset size: ~1 when the data
        # is held once per node and shared, >= N when every worker holds its own copy.
        "pss_over_dataset": (sum(pss) / t["dataset_mb"]) if pss and t.get("dataset_mb") else None,
        # The same, counting only what each worker's PSS grew by after it started training.
        "pss_growth_over_dataset": (sum(pss_data) / t["dataset_mb"])
        if pss_data and t.get("dataset_mb") else None,
        "wall_time_sec": wall_time,
    }


def spread(values: list[float]) -> dict[str, float | None]:
    """Median, min, max; mean and a Student-t 95% interval of the mean when n >= 3."""
    out: dict[str, float | None] = {"n": len(values), "median": statistics.median(values),
                                    "min": min(values), "max": max(values)}
    if len(values) >= 3:
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        half = t95(len(values) - 1) * sd / math.sqrt(len(values))
        out.update(mean=mean, ci95_low=mean - half, ci95_high=mean + half)
    else:
        out.update(mean=statistics.fmean(values), ci95_low=None, ci95_high=None)
    return out


def _median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def add_speedups(runs: list[dict]) -> list[dict]:
    """speedup = samples/s at N over samples/s at 1 worker of the same backend (the same repeat
    where there is one, else the 1-worker median); efficiency = speedup / N."""
    base: dict[tuple[str, int], float] = {}
    base_median: dict[str, float] = {}
    for backend in {r["backend"] for r in runs}:
        ones = [r for r in runs if r["backend"] == backend and r["workers"] == 1]
        for r in ones:
            base[(backend, r["repeat"])] = r["samples_per_sec"]
        if ones:
            base_median[backend] = statistics.median(r["samples_per_sec"] for r in ones)
    out = []
    for r in runs:
        ref = base.get((r["backend"], r["repeat"]), base_median.get(r["backend"]))
        speedup = r["samples_per_sec"] / ref if ref else None
        out.append({**r, "speedup": speedup,
                    "efficiency": speedup / r["workers"] if speedup is not None else None})
    return out


def summarize(runs: list[dict]) -> list[dict]:
    """One row per (backend, workers): throughput spread, speed-up, efficiency, breakdown, and
    raybench's ratio to raw (1 worker) and to ddp (same N)."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["backend"], r["workers"])].append(r)
    medians = {k: statistics.median(r["samples_per_sec"] for r in v) for k, v in groups.items()}
    rows = []
    order = {b: i for i, b in enumerate(BACKENDS)}
    for (backend, workers), rs in sorted(groups.items(),
                                         key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
        sps = medians[(backend, workers)]
        one = medians.get((backend, 1))
        speedup = sps / one if one else None
        row: dict[str, Any] = {
            "backend": backend, "workers": workers, "mode": rs[0]["mode"],
            "repeats": len(rs),
            "samples_per_sec": spread([r["samples_per_sec"] for r in rs]),
            "samples_per_sec_per_worker": sps / workers,
            "speedup": speedup,
            "efficiency": speedup / workers if speedup is not None else None,
            "batch_size_per_worker": rs[0]["batch_size_per_worker"],
            "global_batch_size": rs[0]["global_batch_size"],
            "threads_per_worker": rs[0]["threads_per_worker"],
        }
        for key in ("step_time_ms_p50", "step_time_ms_p90", "data_share", "compute_share",
                    "sync_share", "optimizer_share", "epoch_time_sec", "time_to_first_step_sec",
                    "peak_rss_mb_max", "peak_gpu_mem_mb_max", "allreduce_ms_p50",
                    "pss_over_dataset"):
            row[key] = _median(rs, key)
        if backend == "raybench":
            raw = medians.get(("raw", 1)) if workers == 1 else None
            ddp = medians.get(("ddp", workers))
            row["vs_raw"] = sps / raw if raw else None
            row["vs_ddp"] = sps / ddp if ddp else None
        rows.append(row)
    return rows


def write_report(out_dir: str | Path, *, environment: Any, config: dict, runs: list[dict],
                 extra: dict | None = None) -> dict:
    """scaling.json, scaling.csv and scaling.png in out_dir; returns the JSON document."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = add_speedups(runs)
    doc = {"environment": environment, "config": config, **(extra or {}), "runs": runs,
           "summary": summarize(runs)}
    artifacts.write_csv(out_dir / "scaling.csv", runs, CSV_COLUMNS)
    plot(doc["summary"], out_dir / "scaling.png")
    artifacts.write_json(out_dir / "scaling.json", doc)  # last: its presence means complete
    return doc


def plot(summary: list[dict], path: str | Path) -> Path:
    from raybench.plots import pyplot, save_figure

    plt = pyplot()
    fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 3.8))
    for backend in BACKENDS:
        rows = [r for r in summary if r["backend"] == backend]
        if not rows:
            continue
        n = [r["workers"] for r in rows]
        med = [r["samples_per_sec"]["median"] for r in rows]
        lo = [m - r["samples_per_sec"]["min"] for m, r in zip(med, rows, strict=True)]
        hi = [r["samples_per_sec"]["max"] - m for m, r in zip(med, rows, strict=True)]
        style = "o" if len(rows) == 1 else "o-"
        ax_t.errorbar(n, med, yerr=[lo, hi], fmt=style, capsize=3, label=backend)
        if backend == "raybench" and 1 in n:
            one = med[n.index(1)]
            ax_t.plot(n, [one * k for k in n], "k--", linewidth=1, label="ideal (raybench)")
        if len(rows) > 1:
            ax_e.plot(n, [r["efficiency"] for r in rows], style, label=backend)
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
        ax.set_xticks(sorted({r["workers"] for r in summary}))
    return save_figure(fig, path)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(summary: list[dict]) -> str:
    head = (f"{'backend':<9}{'N':>3} {'samples/s':>11} {'[min-max]':>23} {'speed-up':>9} "
            f"{'eff':>5} {'step p50':>9} {'data':>5} {'comp':>5} {'sync':>5} {'opt':>5} "
            f"{'vs raw':>7} {'vs ddp':>7}")
    lines = [head, "-" * len(head)]
    for r in summary:
        s = r["samples_per_sec"]
        lines.append(
            f"{r['backend']:<9}{r['workers']:>3} {s['median']:>11,.0f} "
            f"{'[' + format(s['min'], ',.0f') + '-' + format(s['max'], ',.0f') + ']':>23} "
            f"{_fmt(r['speedup'], '.2f'):>9} {_fmt(r['efficiency'], '.2f'):>5} "
            f"{_fmt(r['step_time_ms_p50'], '.2f'):>7}ms "
            + " ".join(f"{_fmt(r[k], '.0%'):>5}" for k in ("data_share", "compute_share",
                                                          "sync_share", "optimizer_share"))
            + f" {_fmt(r.get('vs_raw'), '.3f'):>7} {_fmt(r.get('vs_ddp'), '.3f'):>7}")
    return "\n".join(lines)


def load_runs(paths: list[str]) -> tuple[list[dict], list[Any], list[dict]]:
    """Runs, environments and configs from scaling.json files or directories holding one."""
    runs, envs, configs = [], [], []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            path = path / "scaling.json"
        if not path.is_file():
            raise UserError(f"no scaling.json at {p}")
        try:
            doc = json.loads(path.read_text())
            runs.extend(doc["runs"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}: not a raybench scaling.json") from None
        envs.append(doc.get("environment"))
        configs.append(doc.get("config"))
    if not runs:
        raise UserError("nothing to merge: no runs in the given files")
    return runs, envs, configs


def startup_summary(startup: list[dict], runs: list[dict]) -> list[dict]:
    """Per N: Ray's own start-up floor (an empty TorchTrainer loop reaching its first line) next
    to raybench's time to its first training step, both from the launch call, medians."""
    rows = []
    for n in sorted({s["workers"] for s in startup}):
        floor = statistics.median(s["floor_sec"] for s in startup if s["workers"] == n)
        ours = _median([r for r in runs if r["backend"] == "raybench" and r["workers"] == n],
                       "time_to_first_step_sec")
        marks = [r["startup_sec"] for r in runs if r["backend"] == "raybench"
                 and r["workers"] == n and r.get("startup_sec")]
        breakdown = {k: statistics.median(m[k] for m in marks if k in m)
                     for k in ("worker_entry", "loop_entry", "model_ready", "first_step")
                     if any(k in m for m in marks)}
        rows.append({"workers": n, "floor_sec": floor, "raybench_first_step_sec": ours,
                     "ratio": ours / floor if ours and floor else None,
                     "raybench_marks_sec": breakdown})
    return rows
