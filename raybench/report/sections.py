"""One section per directory given to `raybench.report`: its tables, its figures, the sentences
that say what they mean, and the findings that go to the top of the page. Everything is read
through results.py's typed records; nothing here computes a figure the run did not."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raybench import scaling_report
from raybench.errors import UserError
from raybench.report import format as f
from raybench.report import plots
from raybench.report.tables import Table
from raybench.results import (
    PHASES,
    NetworkProbe,
    PointSummary,
    ScalingDoc,
    Timing,
    TrialsDoc,
    read_doc,
    read_json,
    read_status,
)
from raybench.scaling_model import basis_warning, drifted_basis, moved_point, point_warning

# A point whose repeats or windows spread wider than this (IQR or range over the median) is
# too noisy to decide on: said in the findings.
NOISY = 0.10


class Incomplete(UserError):
    """A run directory whose run did not complete."""


@dataclass
class Section:
    title: str
    kind: str  # run | scaling | sweep
    sentences: list[str] = field(default_factory=list)  # under the title
    tables: list[Table] = field(default_factory=list)
    figures: list[plots.Figure] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # for the box at the top
    anchor: str = ""


def kind_of(path: Path) -> str:
    if (path / "scaling.json").is_file():
        return "scaling"
    if (path / "trials.json").is_file():
        return "sweep"
    if (path / "timing.json").is_file() and (path / "metrics_test.json").is_file():
        return "run"
    if (path / "status.json").is_file():  # a run directory whose run did not complete
        status = read_status(path)
        if status.completed:  # it says so, yet its results are not all there
            missing = [f for f in ("timing.json", "metrics_test.json") if not (path / f).is_file()]
            raise Incomplete(f"{path}: status says completed but {' and '.join(missing)} "
                             f"{'is' if len(missing) == 1 else 'are'} missing (a damaged or "
                             "partly copied run directory); nothing to report")
        why = f": {status.error.strip().splitlines()[-1][:200]}" if status.error else ""
        raise Incomplete(f"{path}: that run did not complete (status {status.status}{why}); "
                         "nothing to report")
    raise UserError(f"{path}: not a raybench run, scaling or sweep directory (no timing.json + "
                    "metrics_test.json, scaling.json or trials.json)")


def load(path: Path) -> Section:
    return {"run": run_section, "scaling": scaling_section,
            "sweep": sweep_section}[kind_of(path)](path)


# ------------------------------------------------------------------ a run


QUALITY = {"regression": (("mse", "lower"), ("mae", "lower"), ("r2", "higher")),
           "classification": (("accuracy", "higher"), ("auc", "higher"), ("f1", "higher"))}


def run_section(path: Path) -> Section:
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    t: Timing = read_doc(path / "timing.json", Timing)
    metrics = {s: read_json(path / f"metrics_{s}.json") for s in ("valid", "test")}
    task = cfg["data"]["task"]
    sec = Section(f"Run {path.name}", "run", anchor=f"run-{path.name}")
    sec.tables.append(Table(
        "The run", ["run", "model", "task", "workers", "batch per worker", "epochs (best)",
                    "samples/s", "time to first step", "wall time"],
        [[path.name, cfg["model"]["kind"], task, str(t.num_workers),
          str(t.batch_size_per_worker), f"{t.total_epochs} ({t.best_epoch})",
          f.rate(t.samples_per_sec), f.seconds(t.time_to_first_step_s),
          f.seconds(t.wall_time_s)]]))
    sec.sentences.append(startup_sentence(t))
    quality, verdict = quality_table(task, metrics)
    sec.tables.append(quality)
    sec.findings.append(f"{path.name}: {verdict}")
    sec.sentences.append(verdict[0].upper() + verdict[1:])
    for name in ("curves.png", "confusion_matrix_valid.png", "confusion_matrix_test.png"):
        if (path / name).is_file():
            alt = {"curves.png": "Training and validation loss and the early-stopping metric "
                                 "per epoch, best epoch marked"}.get(name, f"{name[:-4]}: "
                                                                       "the confusion matrix")
            sec.figures.append(plots.Figure(f"{path.name}_{name}", alt,
                                            (path / name).read_bytes()))
    return sec


def startup_sentence(t: Timing) -> str:
    """Where the time before the first step went (it dominates short runs)."""
    first, wall = t.time_to_first_step_s, t.wall_time_s
    if first is None:
        return "The time to the first step was not recorded (the run had no launch time)."
    marks = t.startup_s
    parts = [(label, getattr(marks, key)) for label, key in (
        ("the worker processes", "worker_entry_s"), ("the loop's entry", "loop_entry_s"),
        ("the model wrapped", "model_ready_s"), ("the first step", "first_step_s"))]
    steps = ", ".join(f"{label} at {f.seconds(v)}" for label, v in parts if v is not None)
    share = f" ({f.pct(first / wall)} of the {f.seconds(wall)} wall time)" if wall else ""
    return (f"{f.seconds(first)} passed before the first training step{share}: {steps}, "
            "counted from the command's start (Ray's start, the workers', the data's).")


def quality_table(task: str, metrics: dict[str, dict]) -> tuple[Table, str]:
    """Each metric beside the naive baseline, and the sentence that says which is better."""
    base_key = "baseline_persistence" if task == "regression" else "baseline_majority"
    base_name = "persistence" if task == "regression" else "majority class"
    rows, worse = [], []
    for split, m in metrics.items():
        base = m.get(base_key, {})
        for key, better in QUALITY[task]:
            mine, theirs = m.get(key), base.get(key)
            if mine is None:
                continue
            beats = None if theirs is None else (mine < theirs if better == "lower"
                                                 else mine > theirs)
            rows.append([f"{split} {key}", f.number(mine), f.number(theirs),
                         {True: "model better", False: "baseline better", None: f.DASH}[beats]])
            if beats is False and key == QUALITY[task][0][0]:
                worse.append((split, key, mine, theirs))
    table = Table(f"Quality against the naive baseline ({base_name})",
                  ["metric", "model", base_name, "better"], rows)
    if worse:
        split, key, mine, theirs = worse[-1]
        return table, (f"the model is worse than the naive baseline: {split} {key} "
                       f"{f.number(mine)} against {base_name} {f.number(theirs)}")
    return table, f"the model beats the naive baseline ({base_name}) on every split"


# ------------------------------------------------------------------ a scaling sweep


def scaling_section(path: Path) -> Section:
    doc: ScalingDoc = read_doc(path / "scaling.json", ScalingDoc)
    sec = Section(f"Scaling sweep {path.name}", "scaling", anchor=f"scaling-{path.name}")
    title = path.name
    if doc.status != "completed":
        how = "failed" if doc.status == "failed" else f"was {doc.status}"
        sec.findings.append(f"{title}: the sweep {how}; what it had measured is shown, the "
                            "rest is missing.")
    sec.sentences.append(mode_sentence(doc))
    sec.tables.append(throughput_table(doc.summary))
    sec.findings += [f"{title}: {line}" for line in doc.verdict or []]
    sec.findings += noise_findings(title, doc)
    sec.tables.append(comparisons_table(doc))
    for c in scaling_report.headline(doc.comparisons):
        sentence = scaling_report.comparison_sentence(c)
        sec.sentences.append(sentence)
        if c.ci95 and (c.ci95[0] > 1 or c.ci95[1] < 1):
            sec.findings.append(f"{title}: {sentence}")
    sec.tables += [forecasts_table(doc), target_table(doc), startup_table(doc),
                   faults_table(doc), ingest_table(doc), memory_table(doc), cost_table(doc),
                   environment_table(doc)]
    if doc.forecasts:
        # the N=1 row is repeat 1's own measurement, not a forecast: it is not counted
        ahead = [x for x in doc.forecasts if x.workers > 1 and not x.extrapolated]
        errors = [abs(x.error) for x in ahead if x.error is not None]
        same = [abs(x.error_same_speed) for x in ahead if x.error_same_speed is not None]
        if errors:
            sec.findings.append(f"{title}: the forecasts, made from N=1 before the other points "
                                f"ran, were within {f.pct(max(errors))} of what was measured"
                                + (f" ({f.pct(max(same))} at the speed the N=1 point ran at)"
                                   if same else ""))
    if doc.target and not any(p.target and p.target.reached for p in doc.summary):
        runs = [r for r in doc.runs if r.target is not None]
        sec.findings.append(f"{title}: 0 of {len(runs)} runs reached {doc.target}.")
    for fig in (plots.throughput(doc.summary, title), plots.phases(doc.summary, title),
                plots.time_to_target(doc.summary, doc.runs, title),
                plots.forecasts(doc.forecasts, title), plots.goodput(doc.summary, title)):
        if fig is not None:
            fig.name = f"{title}_{fig.name}"
            sec.figures.append(fig)
    sec.tables = [t for t in sec.tables if t is not None]
    return sec


def printed(doc: ScalingDoc) -> list[str]:
    """What `raybench.scale` (and `scale merge`) prints at the end: the same tables as the
    report, as text, then the sentences that say what they mean."""
    tables = [*network_tables(doc.network), throughput_table(doc.summary),
              comparisons_table(doc), ingest_table(doc), target_table(doc), faults_table(doc),
              forecasts_table(doc), cost_table(doc)]
    blocks = [t.text() for t in tables if t is not None and (t.rows or t.note)]
    sentences = [scaling_report.comparison_sentence(c)
                 for c in scaling_report.headline(doc.comparisons)]
    return blocks + ["\n".join(sentences + (doc.verdict or []))]


def mode_sentence(doc: ScalingDoc) -> str:
    points = sorted({(p.workers, p.global_batch_size, p.batch_size_per_worker)
                     for p in doc.summary})
    batches = "; ".join(f"N={n}: {g:,} ({b:,} per worker)" for n, g, b in points)
    protocol = ("resident launchers in interleaved windows" if doc.protocol == "resident"
                else "every launcher started for each repeat")
    return (f"{doc.mode.capitalize()} scaling, global batch {batches}; {doc.repeats or 1} "
            f"repeat(s), {protocol}; data {doc.data_source or f.DASH}.")


def _ratio_cell(p: PointSummary, key: str) -> str:
    ci = getattr(p, f"{key}_ci")
    return f.interval(ci, lambda x: f.ratio(x, 3), min_n=2) if ci else f.DASH


def throughput_table(summary: list[PointSummary]) -> Table:
    rows = []
    for p in summary:
        s = p.samples_per_sec
        rows.append([p.label, str(p.workers), f.rate(s.median if s else None), f.spread(s),
                     f.ratio(p.speedup), f.pct(p.efficiency), f.ms(p.step_time_ms_p50),
                     *(f.pct(getattr(p, f"{ph}_share")) for ph in PHASES),
                     _ratio_cell(p, "vs_raw"), _ratio_cell(p, "vs_ddp"), f.pct(p.cpu_mfu, 1)])
    return Table("Throughput per launcher and N",
                 ["launcher", "N", "samples/s (median)", "range", "speed-up", "efficiency",
                  "step p50 ms (median)", "data", "compute", "sync", "optimizer", "vs raw",
                  "vs ddp", "CPU MFU"], rows,
                 note="samples/s: the median window (resident) or repeat; range: the least and "
                      "most; speed-up and efficiency against the same launcher at N=1; vs raw "
                      "and vs ddp: throughput ratios from paired windows, with the 95% interval.")


def noise_findings(title: str, doc: ScalingDoc) -> list[str]:
    out = []
    # Interleaved windows: their IQR over median, one sentence for the sweep (the extremes of
    # hundreds of windows say little; the paired ratios cancel what drifts, single rates do not)
    iqr: dict[tuple[str, int], float] = {}
    for c in doc.comparisons:
        for launcher, value in c.noise_iqr.items():
            iqr[(launcher, c.workers)] = max(value, iqr.get((launcher, c.workers), 0.0))
    noisy = [v for v in iqr.values() if v > NOISY]
    if noisy:
        out.append(f"{title}: the windows of {len(noisy)} of {len(iqr)} launcher points spread "
                   f"more than {f.pct(NOISY)} (IQR over median, up to {f.pct(max(noisy))}): the "
                   "paired ratios cancel what drifts between windows, a single rate does not.")
    for p in doc.summary:  # whole-process repeats: their range
        s = p.samples_per_sec
        if (not p.windows and s and s.n >= 2 and s.median
                and (s.max - s.min) / s.median > 2 * NOISY):
            out.append(f"{title}: {p.label} N={p.workers} spread "
                       f"±{f.pct((s.max - s.min) / 2 / s.median)} across its repeats: read its "
                       "figures with care.")
    for c in scaling_report.headline(doc.comparisons):
        if not c.reached and c.halfwidth is not None and c.target_halfwidth:
            more = int((c.halfwidth / c.target_halfwidth) ** 2 * c.pairs) - c.pairs
            out.append(f"{title}: {c.numerator}/{c.denominator} N={c.workers} is known to "
                       f"±{f.pct(c.halfwidth, 1)}, not the ±{f.pct(c.target_halfwidth)} asked; "
                       f"about {max(more, 1)} more pairs would decide it ({c.note}).")
    return out


def comparisons_table(doc: ScalingDoc) -> Table | None:
    items = scaling_report.headline(doc.comparisons)
    if not items:
        return None
    rows = []
    for c in items:
        ci = f"{f.ratio(c.ci95[0], 3)}{f.DASH}{f.ratio(c.ci95[1], 3)}" if c.ci95 else f.DASH
        gaps = ", ".join(f"{p} {g.share * 100:+.1f}" for p, g in c.phases.items())
        kernel = [c.kernel_ms.get(side) for side in (c.numerator, c.denominator)]
        rows.append([f"{c.numerator} / {c.denominator}", str(c.workers), f.ratio(c.ratio, 3),
                     ci, f.pct(c.halfwidth, 1), f"{c.pairs} ({c.excluded_pairs})",
                     f.seconds(c.window_s) if c.pairs else f.DASH, f.pct(c.mde, 1), gaps,
                     " / ".join(f"{ms:.1f}" for ms in kernel) if None not in kernel else f.DASH])
    return Table("Paired comparisons", ["comparison", "N", "ratio", "95% CI", "±",
                                        "pairs (excluded)", "window", "smallest detectable",
                                        "gap by phase (points of a step)",
                                        "kernel ms a step, busiest rank"], rows,
                 note="Each ratio from windows measured in alternation; a round whose windows "
                      "saw the machine busy outside the run is excluded. Kernel ms: the system "
                      "CPU a step of each side's busiest rank, mostly page faults of memory "
                      "torch frees and takes back each step; a compute gap it matches is the "
                      "processes' memory, not the launcher's work.")


def network_tables(probe: NetworkProbe | None) -> list[Table]:
    """The largest point's probe, then the same probe among each smaller N of the sweep."""
    if probe is None:
        return []
    return [network_table(q) for q in (probe, *probe.at_other_n)]


def network_table(probe: NetworkProbe | None) -> Table | None:
    """The network probe as nccl-tests prints an all-reduce sweep, with the fitted ring."""
    if probe is None:
        return None
    rows = [[f"{r.bytes:,}", f"{r.time_s * 1e3:.3g}", f"{r.algbw_gbps:.3g}",
             f"{r.busbw_gbps:.3g}", str(r.iters)] for r in probe.rows]
    nodes = len(set(probe.nodes))
    where = (f"{probe.workers} ranks on {nodes} node(s) ({', '.join(probe.nodes)}), "
             f"{probe.placement_strategy}")
    fit = (f"fitted ring: {probe.latency_us:.0f} us a hop, bus bandwidth "
           f"{probe.bandwidth_gbps:.3g} Gbit/s" if probe.latency_us is not None
           and probe.bandwidth_gbps else "the ring could not be fitted")
    link = _link_sentence(probe.link)
    lone = (" All ranks ran on one node: this is loopback, not a link." if nodes == 1
            and probe.workers > 1 else "")
    if (w := probe.work) is not None:
        lone += (f" The model's step at batch {w.batch_size_per_worker} on these ranks: alone "
                 f"{', '.join(f'{a:.3g}' for a in w.alone_ms)} ms, all at once "
                 f"{', '.join(f'{x:.3g}' for x in w.loaded_ms)} ms ({w.slowdown:.2f}x).")
        if w.allreduce_after_step:
            lone += (" DDP's buckets all-reduced right after a step: " + ", ".join(
                f"{r.bytes / 2**20:.3g} MiB in {r.time_s * 1e3:.3g} ms (busbw "
                f"{r.busbw_gbps:.3g} Gbit/s)" for r in w.allreduce_after_step) + ".")
    return Table(f"Network: gloo all-reduce among {where}",
                 ["bytes", "time ms", "algbw Gbit/s", "busbw Gbit/s", "iterations"], rows,
                 note=f"busbw = algbw x 2(n-1)/n: what each link carried. {fit}.{link}{lone}")


def _link_sentence(link: dict | None) -> str:
    if not link:
        return ""
    rates = sorted({n.get("link") or "unshaped" for n in link.get("nodes", [])})
    return (f" Emulated cluster {link.get('name')!r}: links set at {', '.join(rates)} (tbf, "
            "both directions).")


def forecasts_table(doc: ScalingDoc) -> Table | None:
    if not doc.forecasts:
        return None
    if any(x.link for x in doc.forecasts):
        return network_forecasts_table(doc)
    rows = [[x.backend, str(x.workers), str(x.batch_size_per_worker),
             f.rate(x.predicted_samples_per_sec),
             "forecast (not run)" if x.extrapolated else f.rate(x.measured_samples_per_sec),
             f.signed_pct(x.error), f.ratio(x.speed), f.signed_pct(x.error_same_speed),
             f.ms(x.work_ms), f.ms(x.wait_ms), f.ms(x.allreduce_ms),
             f.ratio(x.slowdown, 1)] for x in doc.forecasts]
    return Table("Forecasts, made from the N=1 point before any other ran",
                 ["launcher", "N", "batch per worker", "forecast samples/s", "measured",
                  "error", "machine speed vs N=1", "error at N=1's speed", "work ms",
                  "waiting ms", "all-reduce ms", "sharing the machine"],
                 rows,
                 note=forecast_note(doc))


def network_forecasts_table(doc: ScalingDoc) -> Table:
    """Forecasts for N nodes on a link: every term of each, so a miss can be traced."""
    rows = [[x.backend, str(x.workers), str(x.batch_size_per_worker),
             f.rate(x.predicted_samples_per_sec),
             "forecast (not run)" if x.extrapolated else f.rate(x.measured_samples_per_sec),
             f.signed_pct(x.error), f.ratio(x.slowdown), f.ms(x.work_ms),
             f.ms(x.measured_work_ms), f.ms(x.wait_ms), f.ms(x.backward_ms),
             f.ms(x.allreduce_ms), f.ms(x.exposed_ms), f.ms(x.measured_sync_ms),
             f.ratio(x.cpu_per_step), x.link or f.DASH]
            for x in doc.forecasts]
    model = doc.model
    note = ("N nodes, one worker each. Each forecast's two parts stand beside what the point "
            "measured (median windows): work against the step outside sync, waiting + exposed "
            "against sync; a miss shows in the part that moved. CPU a step vs N=1: the ranks' "
            "CPU for one step there over the N=1 point's (the same work at every N: well above "
            "1 where sync costs little CPU, the machine ran slower than when the forecast was "
            "made; gloo's all-reduce spends CPU too). nodes at once: one node's "
            "step with all N computing "
            "at once over alone, measured on the probe's ranks (1 where not measured: nodes of "
            "their own); work: the launcher's own one-worker step at that batch (measured at "
            "N=1; the raw profile for another batch) times that; waiting: the slowest of N "
            "(order statistics); backward: its share of the step, timed from the model's "
            "forward/backward split here; all-reduce: DDP's buckets (1 MiB, then 25 MiB) each "
            "a ring over the link; exposed: what backward did not hide. The link's terms are "
            "measured (the network probe) or assumed (given), as the last column says; the work "
            "terms are this machine's.")
    if model and model.link_note:
        note += f" Here {model.link_note}."
    return Table("Forecasts on the network, made from the N=1 point before any other ran",
                 ["launcher", "N", "batch per worker", "forecast samples/s", "measured",
                  "error", "nodes at once", "work ms", "measured outside sync ms",
                  "waiting ms", "backward ms",
                  "all-reduce ms", "exposed ms", "measured sync ms",
                  "CPU a step vs N=1", "link"], rows, note=note)


def forecast_note(doc: ScalingDoc) -> str:
    note = ("work: one rank's step outside sync, with N ranks training in DDP lockstep; "
            "waiting: a rank's sync beyond the communication (for the last rank, and to be "
            "scheduled again), measured; for an N not run, the slowest of N ranks (order "
            "statistics); all-reduce: the communication, the shortest sync of a lockstep step "
            "over the ranks; sharing: how much slower the one-worker step ran in N-rank "
            "lockstep than alone. Machine speed: raw's one-worker step at the N=1 point over "
            "the same step in a window of every round of the point (below 1: the machine ran "
            "slower then); the error at N=1's speed is the forecast's, that change taken out.")
    if (getattr(doc, "repeats", None) or 1) > 1:
        note += (f" Every forecast was made from repeat 1's N=1 point and is set against the "
                 f"median of the {doc.repeats} repeats; the N=1 row's error is how far repeat 1 "
                 "ran from that median.")
    drifted = drifted_basis(doc.model.basis_ratios) if doc.model else {}
    moved = moved_point(doc.model.point_drift) if doc.model else {}
    return (note + (f" Warning: {basis_warning(drifted)}." if drifted else "")
            + (f" Warning: {point_warning(moved)}." if moved else ""))


def target_table(doc: ScalingDoc) -> Table | None:
    points = [p for p in doc.summary if p.target is not None]
    if not points:
        return None
    rows = []
    for p in points:
        t = p.target
        each = ", ".join(f.DASH if x is None else f"{x:.1f}" for x in t.times_s)
        rows.append([p.label, str(p.workers), f"{t.reached} of {t.runs}",
                     f.seconds(t.score_s) if t.valid else "not valid",
                     f.seconds(p.time_to_target_from_launch_s), f.number(t.epochs_median),
                     f.pct(t.eval_share), each])
    reached = sum(p.target.reached for p in points)
    runs = sum(p.target.runs for p in points)
    return Table(f"Time to {points[0].target.target}",
                 ["launcher", "N", "reached", "from first step (MLPerf score)",
                  "from launch (median)", "epochs", "validation share", "each repeat (s)"],
                 rows if reached else [],
                 note=(f"{reached} of {runs} runs reached {points[0].target.target}."
                       if reached else f"0 of {runs} runs reached {points[0].target.target} "
                       "within their epochs: there is no time to target to show."))


def startup_table(doc: ScalingDoc) -> Table | None:
    if not doc.startup_summary:
        return None
    rows = [[str(s.workers), f.seconds(s.floor_s), f.seconds(s.raybench_first_step_s),
             f.ratio(s.ratio), f.interval(s.ratio_ci, min_n=2) if s.ratio_ci else f.DASH]
            for s in doc.startup_summary]
    return Table("Start-up against Ray's own floor", [
        "N", "Ray floor (empty loop, median)", "raybench first step (median)",
        "ratio of medians", "per-repeat ratio (95% CI)"], rows)


def faults_table(doc: ScalingDoc) -> Table | None:
    points = [p for p in doc.summary if p.chaos or p.goodput_vs_clean]
    if not points:
        return None
    rows = [[p.label, str(p.workers), f.rate(p.goodput_samples_per_sec),
             f.interval(p.goodput_vs_clean, min_n=2) if p.goodput_vs_clean else f.DASH,
             f.number(p.failures), f.seconds(p.recovery_s),
             f.seconds(p.checkpoint_save_s_total)] for p in doc.summary
            if p.goodput_samples_per_sec]
    return Table(f"The cost of faults ({doc.chaos})",
                 ["launcher", "N", "goodput (samples/s)", "against no faults", "failures",
                  "recovery", "checkpoint saving"], rows)


def ingest_table(doc: ScalingDoc) -> Table | None:
    points = [p for p in doc.summary if p.ingest != "memory" or p.ingest_only]
    if not points:
        return None
    rows = [[p.label, str(p.workers), f.rate(p.samples_per_sec.median if p.samples_per_sec
                                             else None),
             f.span(p.data_share_min, p.data_share_max, f.pct), f.seconds(p.first_batch_s),
             f.mib(p.object_store_peak_mib), f.mib(p.spilled_mib),
             _ratio_cell(p, "vs_memory")] for p in points]
    return Table("Ingest", ["launcher", "N", "samples/s", "data wait (least–most ranks)",
                            "first batch", "object store peak", "spilled", "vs memory"], rows)


def memory_table(doc: ScalingDoc) -> Table | None:
    rows = [[p.label, str(p.workers), f.mib(p.peak_rss_mib_max), f.ratio(p.pss_over_dataset)]
            for p in doc.summary if p.peak_rss_mib_max]
    return Table("Memory", ["launcher", "N", "peak RSS (largest rank)",
                            "summed PSS / dataset"], rows) if rows else None


def cost_table(doc: ScalingDoc) -> Table | None:
    unit = (doc.cost or {}).get("unit", "worker-seconds")
    rows = [[p.label, str(p.workers), f.number(p.cost_per_million_samples),
             f.number(p.cost_to_target)] for p in doc.summary if p.cost_per_million_samples]
    return Table(f"What each N costs ({unit})", ["launcher", "N", "per million samples",
                                                 "to the target from launch"],
                 rows) if rows else None


def environment_table(doc: ScalingDoc) -> Table:
    envs = doc.environment if isinstance(doc.environment, list) else [doc.environment]
    rows = []
    for env in envs:
        for key in ("date", "hostname", "cpu_model", "cpu_count", "gpus", "python", "torch",
                    "ray", "raybench", "git_commit", "ray_nodes"):
            if env and env.get(key) not in (None, [], ""):
                rows.append([key, str(env[key])])
    return Table("Where it was measured", ["what", "value"], rows)


# ------------------------------------------------------------------ a Tune sweep


def sweep_section(path: Path) -> Section:
    doc: TrialsDoc = read_doc(path / "trials.json", TrialsDoc)
    sec = Section(f"Tune sweep {path.name}", "sweep", anchor=f"sweep-{path.name}")
    ran = [t for t in doc.trials if t.best is not None]
    ordered = sorted(ran, key=lambda t: t.best, reverse=doc.mode == "max")
    keys = sorted({k for t in ordered for k in t.config})
    rows = [[str(t.trial_id), f.label(t.status), str(t.epochs_run), f.number(t.best),
             *(f.number(t.config.get(k)) for k in keys)] for t in ordered[:10]]
    counts = {s: sum(t.status == s for t in doc.trials) for s in dict.fromkeys(
        t.status for t in doc.trials)}
    sec.tables.append(Table(f"Best trials by {doc.metric} ({doc.mode})",
                            ["trial", "status", "epochs", f"best {doc.metric}", *keys], rows,
                            note="" if rows else "no trial reported a metric"))
    summary = ", ".join(f"{n} {f.label(s)}" for s, n in counts.items())
    sec.sentences.append(f"{len(doc.trials)} trials: {summary}; the sweep {doc.status}.")
    if ordered and doc.baseline_valid is not None:
        best, baseline = ordered[0].best, doc.baseline_valid
        better = best < baseline if doc.mode == "min" else best > baseline
        sec.findings.append(
            f"{path.name}: the best trial's validation {doc.metric} is {f.number(best)} "
            f"against the naive baseline's {f.number(baseline)}: "
            + ("it beats it." if better else "it does not beat it."))
    if doc.status != "completed":
        sec.findings.append(f"{path.name}: the sweep was {doc.status}; its table is partial.")
    if (path / "trials.png").is_file():
        sec.figures.append(plots.Figure(f"{path.name}_trials.png", "The sweep metric per "
                                        "epoch for every trial, each labelled; dashed lines "
                                        "were stopped early", (path / "trials.png").read_bytes()))
    return sec
