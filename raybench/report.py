"""`python -m raybench.report PATH... --out report.html|report.md`: one self-contained file that
compares run, scaling and sweep directories side by side, with their plots embedded."""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path
from typing import Any

import yaml

from raybench import artifacts, scaling_report
from raybench.cli import Parser
from raybench.errors import UserError, run_cli
from raybench.results import ScalingDoc, Timing, read_doc, read_json, read_status
from raybench.scaling_report import fmt_interval

EXAMPLE = """examples:
  python -m raybench.report outputs/run_20251105_143015 results/scale_x results/tune_y \\
      --out report.html
  python -m raybench.report outputs/run_* --out runs.md
  python -m raybench.report --compare results/before results/after --fail-if 'vs_ddp<0.95' \\
      --fail-if 'change_high<1'"""


def kind_of(path: Path) -> str:
    if (path / "scaling.json").is_file():
        return "scaling"
    if (path / "trials.json").is_file():
        return "sweep"
    if (path / "timing.json").is_file() and (path / "metrics_test.json").is_file():
        return "run"
    if (path / "status.json").is_file():  # a run directory whose run did not complete
        status = read_status(path)
        why = f": {status.error.strip().splitlines()[-1][:200]}" if status.error else ""
        raise Incomplete(f"{path}: that run did not complete (status {status.status}{why}); "
                         "nothing to report")
    raise UserError(f"{path}: not a raybench run, scaling or sweep directory (no timing.json + "
                    "metrics_test.json, scaling.json or trials.json)")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def run_section(path: Path) -> dict:
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    t: Timing = read_doc(path / "timing.json", Timing)
    test, valid = read_json(path / "metrics_test.json"), read_json(path / "metrics_valid.json")
    task = cfg["data"]["task"]
    keys = ("mse", "mae", "r2") if task == "regression" else ("accuracy", "auc", "f1")
    base = "baseline_persistence" if task == "regression" else "baseline_majority"
    row = {
        "run": path.name, "model": cfg["model"]["kind"], "task": task,
        "workers": t.num_workers, "batch/worker": t.batch_size_per_worker,
        "epochs": t.total_epochs, "best epoch": t.best_epoch,
        "samples/s": t.samples_per_sec, "first step (s)": t.time_to_first_step_s,
        **{f"val {k}": valid.get(k) for k in keys},
        **{f"test {k}": test.get(k) for k in keys},
        **{f"test {k} ({base.split('_')[1]})": test.get(base, {}).get(k) for k in keys},
    }
    plots = [p for p in ("curves.png", "confusion_matrix_valid.png", "confusion_matrix_test.png")
             if (path / p).is_file()]
    return {"kind": "run", "path": path, "row": row, "plots": plots}


def scaling_section(path: Path) -> dict:
    doc: ScalingDoc = read_doc(path / "scaling.json", ScalingDoc)
    rows = []
    for s in doc.summary:
        if s.samples_per_sec is None:
            continue
        rows.append({"backend": s.backend, "workers": s.workers, "mode": s.mode,
                     "samples/s": s.samples_per_sec.median, "min": s.samples_per_sec.min,
                     "max": s.samples_per_sec.max, "speed-up": s.speedup,
                     "efficiency": s.efficiency,
                     "step p50 ms [95% CI]": fmt_interval(s.step_time_ms_p50_ci),
                     "sync share": s.sync_share, "vs raw [95% CI]": fmt_interval(s.vs_raw_ci),
                     "vs ddp [95% CI]": fmt_interval(s.vs_ddp_ci)})
    return {"kind": "scaling", "path": path, "rows": rows,
            "plots": ["scaling.png"] if (path / "scaling.png").is_file() else []}


def sweep_section(path: Path) -> dict:
    doc = read_json(path / "trials.json")
    trials = sorted((t for t in doc["trials"] if t["best"] is not None), key=lambda t: t["best"],
                    reverse=doc["mode"] == "max")
    rows = [{"trial": t["trial_id"], "status": t["status"], "epochs": t["epochs_run"],
             f"best {doc['metric']}": t["best"], **t["config"]} for t in trials[:10]]
    stopped = sum(t["status"] == "stopped_early" for t in doc["trials"])
    note = (f"{len(doc['trials'])} trials, {stopped} stopped early by ASHA; metric "
            f"{doc['metric']} ({doc['mode']}); status {doc.get('status', 'completed')}")
    return {"kind": "sweep", "path": path, "rows": rows, "note": note,
            "plots": ["trials.png"] if (path / "trials.png").is_file() else []}


def _table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _table_md(rows: list[dict]) -> str:
    if not rows:
        return "(empty)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


class Incomplete(UserError):
    """A run directory whose run did not complete."""


def build(paths: list[str], fmt: str) -> str:
    sections = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            raise UserError(f"not a directory: {path}")
        try:
            kind = kind_of(path)
        except Incomplete as exc:
            if len(paths) == 1:
                raise
            print(f"warning: skipped {exc}")  # one incomplete run never sinks the others
            continue
        sections.append({"run": run_section, "scaling": scaling_section,
                         "sweep": sweep_section}[kind](path))
    runs = [s for s in sections if s["kind"] == "run"]
    others = [s for s in sections if s["kind"] != "run"]
    if fmt == "html":
        parts = ["<!doctype html><html><head><meta charset='utf-8'><title>raybench report"
                 "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
                 "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "text-align:right}th{background:#f3f3f3}img{max-width:900px;display:block;"
                 "margin:.5em 0}</style></head><body><h1>raybench report</h1>"]
        if runs:
            parts.append("<h2>Runs</h2>" + _table_html([s["row"] for s in runs]))
            for s in runs:
                parts.append(f"<h3>{html.escape(s['row']['run'])}</h3>" + "".join(
                    f"<img alt='{p}' src='{_png(s['path'] / p)}'>" for p in s["plots"]))
        for s in others:
            title = "Scaling" if s["kind"] == "scaling" else "Sweep"
            parts.append(f"<h2>{title}: {html.escape(s['path'].name)}</h2>")
            if s.get("note"):
                parts.append(f"<p>{html.escape(s['note'])}</p>")
            parts.append(_table_html(s["rows"]))
            parts += [f"<img alt='{p}' src='{_png(s['path'] / p)}'>" for p in s["plots"]]
        parts.append("</body></html>")
        return "\n".join(parts)
    parts = ["# raybench report"]
    if runs:
        parts += ["## Runs", _table_md([s["row"] for s in runs])]
        for s in runs:
            parts.append(f"### {s['row']['run']}")
            parts += [f"![{p}]({_png(s['path'] / p)})" for p in s["plots"]]
    for s in others:
        parts.append(f"## {'Scaling' if s['kind'] == 'scaling' else 'Sweep'}: {s['path'].name}")
        if s.get("note"):
            parts.append(s["note"])
        parts.append(_table_md(s["rows"]))
        parts += [f"![{p}]({_png(s['path'] / p)})" for p in s["plots"]]
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fail_if and not args.compare:
        raise UserError("--fail-if gates a comparison: give --compare BASE NEW")
    if args.compare:
        return compare_command(args)
    if not args.paths or not args.out:
        parser.error("give run/scaling/sweep directories and --out, or --compare BASE NEW")
    out = Path(args.out)
    fmt = {".html": "html", ".htm": "html", ".md": "md"}.get(out.suffix.lower())
    if fmt is None:
        raise UserError(f"--out {out}: expected a .html or .md file")
    out.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_bytes(out, build(args.paths, fmt).encode())
    print(f"Saved → {out}")
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="python -m raybench.report", description=__doc__, epilog=EXAMPLE)
    parser.add_argument("paths", nargs="*", help="run, scaling (scale --out) or sweep "
                        "(tune --out) directories")
    parser.add_argument("--out", help="report.html or report.md (plots embedded)")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "NEW"),
                        help="two scaling reports: what changed point by point beyond the noise")
    parser.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                        help="with --compare: exit 1 when a point of NEW meets it, e.g. "
                        "'vs_ddp<0.95' or 'change_high<1' (repeatable)")
    return parser


def compare_command(args: argparse.Namespace) -> int:
    """The regression gate: a table of changes, then exit 1 if any --fail-if holds."""
    from raybench import compare

    if args.paths:
        raise UserError("--compare takes exactly two scaling reports; drop the other paths")
    conditions = [compare.parse_condition(c) for c in args.fail_if]
    a, b = (_scaling_json(p) for p in args.compare)
    if a == b:
        raise UserError(f"--compare {args.compare[0]} {args.compare[1]}: the same report twice; "
                        "a comparison needs two")
    base, new = (scaling_report.load_docs([p])[0] for p in args.compare)
    changes = compare.compare(base, new)
    print(compare.table(changes))
    failed = compare.failures(changes, conditions)
    for line in failed:
        print(line)
    if args.out:
        artifacts.write_bytes(Path(args.out), (compare.table(changes) + "\n" +
                                               "\n".join(failed) + "\n").encode())
    print(f"{len(failed)} condition(s) failed" if failed else
          f"passed: {len(conditions)} condition(s) over {len(changes)} point(s)")
    return 1 if failed else 0


def _scaling_json(path: str) -> Path:
    p = Path(path)
    return (p / "scaling.json" if p.is_dir() else p).resolve()


if __name__ == "__main__":
    run_cli(main)
