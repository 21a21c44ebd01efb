"""`python -m raybench.report PATH... --out DIR|report.html|report.md`: what runs, scaling
sweeps and Tune sweeps measured, findings first, every figure they computed, in one file that
fits any screen. `python -m raybench.report compare BASE NEW [--fail-if EXPR]` (or
`--compare`) is the regression gate over two scaling reports.

  sections.py  one section per directory: tables, figures, sentences, findings
  tables.py    the one table renderer (HTML, Markdown, console text)
  format.py    numbers for people
  plots.py     the figures
  page.py      HTML and Markdown pages
"""

from __future__ import annotations

import argparse
from pathlib import Path

from raybench import artifacts, scaling_report
from raybench.cli import Parser
from raybench.errors import UserError
from raybench.report import page
from raybench.report.sections import Incomplete, Section, load

EXAMPLE = """examples:
  python -m raybench.report outputs/run_20251105_143015 results/scale_x results/tune_y \\
      --out report.html
  python -m raybench.report outputs/run_* --out runs.md
  python -m raybench.report compare results/before results/after --fail-if 'vs_ddp<0.95' \\
      --fail-if 'change_high<1'"""


def build_parser() -> Parser:
    parser = Parser(prog="python -m raybench.report", description=__doc__, epilog=EXAMPLE)
    parser.add_argument("paths", nargs="*", help="run, scaling (scale --out) or sweep "
                        "(tune --out) directories")
    parser.add_argument("--out", help="a directory (receives report.html, as --out of the other "
                        "commands is a directory), or report.html / report.md (figures beside a "
                        ".md)")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "NEW"),
                        help="two scaling reports: what changed point by point beyond the noise "
                        "(also: raybench.report compare BASE NEW)")
    parser.add_argument("--fail-if", action="append", default=[], metavar="EXPR",
                        help="with --compare: exit 1 when a point of NEW meets it beyond its "
                        "interval, e.g. 'vs_ddp<0.95' or 'change_high<1' (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # the subcommand form of --compare
        argv = ["--compare", *argv[1:3], *argv[3:]] if len(argv) >= 3 else ["--compare"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.fail_if and not args.compare:
        raise UserError("--fail-if gates a comparison: give --compare BASE NEW")
    if args.compare:
        return compare_command(args)
    if not args.paths or not args.out:
        parser.error("give run/scaling/sweep directories and --out, or compare BASE NEW")
    out = report_path(Path(args.out))
    fmt = {".html": "html", ".htm": "html", ".md": "md"}.get(out.suffix.lower())
    out.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_bytes(out, build(args.paths, fmt, out).encode())
    print(f"Saved → {out}")
    return 0


def report_path(out: Path) -> Path:
    """--out as given: a .html/.md file, else a directory (existing, or named with no suffix)
    that receives report.html."""
    if out.suffix.lower() in (".html", ".htm", ".md"):
        return out
    if out.is_dir() or not out.suffix:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: is a file; give a directory or a .html/.md file")
        return out / "report.html"
    raise UserError(f"--out {out}: expected a directory or a .html or .md file")


def sections(paths: list[str]) -> list[Section]:
    """A section per directory; an incomplete run is skipped with a warning (alone, refused)."""
    out = []
    for p in paths:
        path = Path(p)
        if not path.is_dir():
            raise UserError(f"not a directory: {path}")
        try:
            out.append(load(path))
        except Incomplete as exc:
            if len(paths) == 1:
                raise
            print(f"warning: skipped {exc}")
    if not out:
        raise UserError("nothing to report: every directory given was skipped")
    return out


def build(paths: list[str], fmt: str, out: Path | None = None) -> str:
    found = sections(paths)
    if fmt == "html":
        return page.html_page(found)
    return page.markdown_page(found, out or Path("report.md"))


def compare_command(args: argparse.Namespace) -> int:
    """The regression gate: a table of changes, then exit 1 if any --fail-if holds."""
    from raybench.report import compare

    if args.paths:
        raise UserError("--compare takes exactly two scaling reports; drop the other paths")
    conditions = [compare.parse_condition(c) for c in args.fail_if]
    a, b = (_scaling_json(p) for p in args.compare)
    if a == b:
        raise UserError(f"--compare {args.compare[0]} {args.compare[1]}: the same report twice; "
                        "a comparison needs two")
    base, new = (scaling_report.load_docs([p])[0] for p in args.compare)
    compare.check_same_workload(base, new)
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


__all__ = ["build", "build_parser", "main"]
