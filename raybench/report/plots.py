"""The report's figures, drawn from the typed records: throughput per N with its band and the
ideal line, the step's phases per N, time to target per N with start-up stacked in, forecasts
against measurements, goodput with and without faults. Every series has its own marker as well
as its colour, legends sit outside the data, axes use thousands separators."""

from __future__ import annotations

import io
from dataclasses import dataclass

from raybench.plots import pyplot
from raybench.results import PHASES, Forecast, PointSummary, RunRecord

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
HATCHES = ("", "//", "..", "xx")


@dataclass
class Figure:
    name: str  # file name when written beside a Markdown report
    alt: str  # what the figure shows, for screen readers and stripped images
    png: bytes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def _thousands(ax, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v:,.0f}" if abs(v) >= 10 else f"{v:g}")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _legend_outside(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)


def throughput(summary: list[PointSummary], title: str) -> Figure | None:
    rows = [r for r in summary if r.samples_per_sec and not r.chaos]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    for i, label in enumerate(dict.fromkeys(r.label for r in rows)):
        pts = sorted((r for r in rows if r.label == label), key=lambda r: r.workers)
        n = [r.workers for r in pts]
        med = [r.samples_per_sec.median for r in pts]
        ax.plot(n, med, marker=MARKERS[i % len(MARKERS)], label=label)
        ax.fill_between(n, [r.samples_per_sec.min for r in pts],
                        [r.samples_per_sec.max for r in pts], alpha=0.15)
        if label == "raybench" and 1 in n:
            one = med[n.index(1)]
            ax.plot(n, [one * k for k in n], "k--", linewidth=1, label="ideal (raybench x N)")
    ax.set_xlabel("workers (N)")
    ax.set_ylabel("samples/s (median; band: range)")
    ax.set_xticks(sorted({r.workers for r in rows}))
    _thousands(ax)
    ax.set_title(title, fontsize=9)
    _legend_outside(ax)
    return Figure("throughput.png", f"Samples per second against workers for {title}, "
                  "one line per launcher with its range as a band, and the ideal line.",
                  _png(fig))


def phases(summary: list[PointSummary], title: str) -> Figure | None:
    rows = [r for r in summary if r.samples_per_sec and r.data_share is not None
            and not r.chaos and not r.ingest_only]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    names = [f"{r.label} N={r.workers}" for r in rows]
    bottom = [0.0] * len(rows)
    for k, phase in enumerate(PHASES):
        shares = [(getattr(r, f"{phase}_share") or 0) * 100 for r in rows]
        ax.barh(names, shares, left=bottom, hatch=HATCHES[k % len(HATCHES)], label=phase,
                edgecolor="white")
        bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
    ax.set_xlabel("share of a step (%)")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    _legend_outside(ax)
    return Figure("phases.png", f"Where a training step's time goes per launcher and N for "
                  f"{title}: data, compute, sync and optimizer as shares of the step.", _png(fig))


def time_to_target(summary: list[PointSummary], runs: list[RunRecord],
                   title: str) -> Figure | None:
    rows = [r for r in summary if r.target is not None and r.target.reached]
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for i, r in enumerate(rows):
        mine = [x for x in runs if x.label == r.label and x.workers == r.workers and x.target
                and x.target.reached and x.target.time_from_first_step_s]
        start = [x.target.time_from_start_s - x.target.time_from_first_step_s for x in mine
                 if x.target.time_from_start_s]
        train = [x.target.time_from_first_step_s for x in mine]
        if not train:
            continue
        s = sorted(start)[len(start) // 2] if start else 0.0
        t = sorted(train)[len(train) // 2]
        name = f"{r.label} N={r.workers}"
        ax.barh(name, s, color="lightgrey", hatch="//", label="start-up" if i == 0 else None)
        ax.barh(name, t, left=s, color="tab:blue", label="training to target" if i == 0 else None)
        ax.plot([s + x for x in train], [name] * len(train), "k|", markersize=12,
                label="each repeat" if i == 0 else None)
    ax.set_xlabel("seconds from launch (median; ticks: each repeat)")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    _legend_outside(ax)
    return Figure("time_to_target.png", f"Time to {rows[0].target.target} per launcher and N for "
                  f"{title}: start-up, then training, from the launch.", _png(fig))


def forecasts(items: list[Forecast], title: str) -> Figure | None:
    measured = [f for f in items if f.measured_samples_per_sec and f.predicted_samples_per_sec]
    if not measured:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for i, backend in enumerate(dict.fromkeys(f.backend for f in measured)):
        pts = [f for f in measured if f.backend == backend]
        ax.plot([f.measured_samples_per_sec for f in pts],
                [f.predicted_samples_per_sec for f in pts], MARKERS[i % len(MARKERS)],
                label=backend, linestyle="none")
        for f in pts:
            ax.annotate(f"N={f.workers}", (f.measured_samples_per_sec,
                                           f.predicted_samples_per_sec), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    top = max(max(f.measured_samples_per_sec, f.predicted_samples_per_sec) for f in measured)
    ax.plot([0, top * 1.1], [0, top * 1.1], "k--", linewidth=1, label="exact")
    ax.set_xlabel("measured samples/s")
    ax.set_ylabel("forecast samples/s")
    _thousands(ax)
    _thousands(ax, "x")
    ax.set_title(title, fontsize=9)
    _legend_outside(ax)
    return Figure("forecasts.png", f"Forecast against measured samples per second for {title}; "
                  "on the dashed line a forecast was exact.", _png(fig))


def goodput(summary: list[PointSummary], title: str) -> Figure | None:
    rows = [r for r in summary if r.goodput_samples_per_sec]
    if not any(r.chaos for r in rows):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    names = [f"{r.label} N={r.workers}" for r in rows]
    ax.barh(names, [r.goodput_samples_per_sec for r in rows],
            hatch=None, color=["tab:red" if r.chaos else "tab:green" for r in rows])
    for name, r in zip(names, rows, strict=True):
        if r.chaos and r.recovery_s:
            ax.annotate(f"recovery {r.recovery_s:.1f} s", (r.goodput_samples_per_sec, name),
                        fontsize=7, xytext=(3, 0), textcoords="offset points", va="center")
    ax.set_xlabel("goodput: useful samples per second of wall time")
    _thousands(ax, "x")
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    return Figure("goodput.png", f"Goodput with and without the kill schedule for {title}.",
                  _png(fig))
