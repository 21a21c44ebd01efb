"""`python -m raybench.scale`: measure 1 -> N workers with raybench (Ray Train), plain DDP and a
raw single process on the same loop, data and batch; write scaling.json, scaling.csv, scaling.png.

By default every launcher of a point is started once and measured in interleaved windows until
each ratio is as precise as asked (sweep.py, interleave.py); `--protocol restart` starts every
launcher again for every repeat, one window each (the only way for --target and --chaos).

`python -m raybench.scale merge DIR_OR_JSON... --out DIR` combines separate results (for example
one per KubeRay RayJob) into one report.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from raybench import scaling_report
from raybench.backends import DEFAULT, NAMES
from raybench.chaos import parse_chaos
from raybench.cli import Parser, worker_counts
from raybench.config import Config, add_config_args, config_from_args
from raybench.errors import UserError, run_cli
from raybench.interleave import Precision
from raybench.loop import Window
from raybench.plan import ScaleSpec
from raybench.ray_env import emulated_cluster
from raybench.report.sections import printed
from raybench.results import ScalingDoc
from raybench.sweep import run_sweep as run_spec

EXAMPLE = """examples:
  python -m raybench.scale --workers 1,2,4 --synthetic-samples 1000000 --repeats 3
  python -m raybench.scale --config configs/lstm_classification.yaml --workers 1,2 --mode weak \\
      --batch-size 256 --synthetic-samples 200000
  python -m raybench.scale merge results/n1 results/n2 results/n4 --out results/merged"""


def _ingests(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    bad = [v for v in values if v not in ("memory", "ray_data")]
    if bad or not values or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"ingest paths are memory, ray_data; got {text!r}")
    return values


def _backends(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    bad = [v for v in values if v not in NAMES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"backends are {', '.join(NAMES)}; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m raybench.scale", description=__doc__,
                    epilog=EXAMPLE)
    parser.add_argument("--workers", type=worker_counts, default=[1, 2, 4], metavar="N,N,...",
                        help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--mode", choices=("strong", "weak"), default="strong",
                        help="strong: a fixed global batch (--global-batch-size) split across "
                        "workers; weak: --batch_size per worker at every N (default strong)")
    parser.add_argument("--global-batch-size", type=int, metavar="B",
                        help="strong mode: the global batch at every N (default: --batch_size "
                        "times the smallest N)")
    parser.add_argument("--repeats", type=int, metavar="K",
                        help="whole-process repeats of every point: fresh launchers each time, "
                        "so they measure start-up and how far two starts disagree (default 1 "
                        "with the resident protocol, whose windows give the interval; 3 with "
                        "--protocol restart)")
    parser.add_argument("--backends", type=_backends, default=list(DEFAULT),
                        help="raybench (Ray Train), ddp (torch.multiprocessing + DDP on this "
                        "machine), raw (one plain process, 1 worker only), ddp-ray (plain DDP "
                        "in Ray actors: the DDP baseline on a multi-node cluster); default "
                        "raybench,ddp,raw")
    parser.add_argument("--synthetic-samples", type=int, metavar="N",
                        help="train on N synthetic GBM windows instead of the configured data")
    parser.add_argument("--ingest", type=_ingests, default=["memory"], metavar="PATHS",
                        help="memory and/or ray_data (streams --parquet_dir into the Ray Train "
                        "workers), side by side: e.g. memory,ray_data (default memory)")
    parser.add_argument("--ingest-ceiling", action="store_true",
                        help="also run each Ray Train point with the streamed ingest alone "
                        "(batches fetched, no training): the rate Ray Data can feed")
    parser.add_argument("--allreduce-iters", type=int, default=200,
                        help="iterations of the gradient-sized all-reduce each DDP rank times "
                        "after its windows, at most about 3 s of them (0: skip)")
    parser.add_argument("--startup-floor", action="store_true",
                        help="also time Ray's own start-up floor (a TorchTrainer whose loop does "
                        "nothing) at each N, next to raybench's time to first step")
    parser.add_argument("--out", help="output directory (default results/scale_<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    _precision_args(parser)
    _window_args(parser)
    _target_args(parser)
    _model_args(parser)
    add_config_args(parser, "scale")
    return parser


def _precision_args(parser: argparse.ArgumentParser) -> None:
    d = Precision()
    group = parser.add_argument_group(
        "precision (resident protocol)", "every launcher of a point starts once and warms up; "
        "then rounds of one window per launcher, in alternating order, until every ratio's 95% "
        "interval is within --ci-halfwidth of it or the budget would be exceeded")
    group.add_argument("--protocol", choices=("resident", "restart"), default="resident",
                       help="resident: interleaved windows of warm launchers (default); "
                       "restart: every repeat starts every launcher, one window each")
    group.add_argument("--ci-halfwidth", type=float, default=d.ci_halfwidth, metavar="F",
                       help=f"stop when each ratio is known to +-F (default {d.ci_halfwidth})")
    group.add_argument("--budget-s", type=float, default=d.budget_s, metavar="S",
                       help="seconds per point and repeat, start-up included; a ratio not yet "
                       f"precise then says so with the width reached (default {d.budget_s:g})")
    group.add_argument("--window-s", type=float, default=d.window_s, metavar="S",
                       help=f"length of one measured window (default {d.window_s:g})")
    group.add_argument("--min-pairs", type=int, default=d.min_pairs, metavar="K",
                       help=f"window pairs before any decision (default {d.min_pairs})")
    group.add_argument("--max-pairs", type=int, metavar="K",
                       help="stop after K kept pairs even if not precise (default: the budget)")
    group.add_argument("--ray-train-switches", action="store_true",
                       help="also measure Ray Train with each of its own helpers switched off "
                       "in turn (preemption watcher, print patch, structured logging), "
                       "interleaved with its defaults: what each default costs here")
    group.add_argument("--max-outside-load", type=float, default=d.max_outside_load,
                       metavar="F", help="exclude a round whose windows saw more than this "
                       "share of the machine's CPU used outside the run or stolen "
                       f"(default {d.max_outside_load})")


def _window_args(parser: argparse.ArgumentParser) -> None:
    window = parser.add_argument_group(
        "measured window", "warm-up before any measurement; with --protocol restart, each run "
        "then measures at least --min-steps steps and --min-seconds seconds (cycling over the "
        "data as needed)")
    window.add_argument("--warmup-steps", type=int, default=50, metavar="K",
                        help="steps excluded from throughput (default 50)")
    window.add_argument("--min-steps", type=int, default=300, metavar="K",
                        help="measured steps at least (default 300)")
    window.add_argument("--min-seconds", type=float, default=3.0, metavar="S",
                        help="measured seconds at least (default 3)")
    window.add_argument("--max-steps", type=int, default=0, metavar="K",
                        help="measured steps at most, even before --min-seconds (0: no cap)")


def _target_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "time to target", "with --target every run trains whole epochs with validation (on the "
        "clock) until the target is met or --epochs run out; repeats are scored as MLPerf does")
    group.add_argument("--target", metavar="EXPR",
                       help="a validation metric and threshold, e.g. 'val_r2>=0.90' or "
                       "'val_loss<=0.05'")
    group.add_argument("--lr-scaling", choices=("none", "linear", "sqrt"), default="none",
                       help="learning rate at N: lr x (global batch / the smallest N's global "
                       "batch) ^ (0, 1 or 1/2) (default none)")
    faults = parser.add_argument_group(
        "faults", "with --chaos every Ray Train point also runs under a fault schedule; both "
        "runs train --epochs whole epochs with a checkpoint each, and the report sets their "
        "goodput (useful samples per second of wall time) side by side; each fault is a record "
        "(recoveries: detection, recovery, steps lost)")
    faults.add_argument("--chaos", metavar="SPEC",
                        help="'kill-worker every 30s', 'kill-worker once at 20s', 'kill-worker "
                        "once after epoch 2'; on an emulated cluster also freeze-node, cut-link "
                        "(both with 'for 30s'), slow-node, kill-node; several separated by ';'")


def _model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "scaling model", "predicts every N from one-worker steps and all-reduce timings (needs "
        "N=1 among --workers and the data in memory)")
    group.add_argument("--predict", type=worker_counts, metavar="N,N,...",
                       help="also forecast these worker counts (each worker with its own cores)")
    group.add_argument("--alpha-us", type=float, metavar="US",
                       help="all-reduce latency per ring hop for forecasts (default: fitted here)")
    group.add_argument("--beta-gbps", type=float, metavar="GB/S",
                       help="all-reduce bandwidth for forecasts (default: fitted here)")
    group.add_argument("--no-model", action="store_true", help="skip the scaling model")
    group.add_argument("--link-gbps", type=float, metavar="GBIT/S",
                       help="forecast N nodes (one worker each) on a network that was not "
                       "measured: this link rate per node, the work terms from this machine's "
                       "N=1 points (the forecasts say which terms are assumed)")
    group.add_argument("--link-latency-us", type=float, metavar="US",
                       help="with --link-gbps: latency per ring hop (default: --probe-network's "
                       "measured one, else 50 us)")
    group.add_argument("--probe-network", action="store_true",
                       help="first measure the network between the largest point's ranks, "
                       "placed as its workers (gloo all-reduces of 4 KiB to 64 MiB, as "
                       "raybench.probe network): scaling.json's network")
    group.add_argument("--recalibrate", action="store_true",
                       help="measure this machine's matmul peak and memory bandwidth again "
                       "(cached per host; it gives each point's CPU MFU)")
    cost = parser.add_argument_group(
        "which N to pay for", "each N's cost per million samples and, with --target, to the "
        "target from launch (start-up included); the verdict names the fastest, the cheapest "
        "and the cheapest within --deadline-s")
    cost.add_argument("--worker-hour-cost", type=float, metavar="PRICE",
                      help="price of one worker for an hour (default: costs in worker-seconds)")
    cost.add_argument("--deadline-s", type=float, metavar="S",
                      help="with --target: the cheapest N that reaches it within S seconds")


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("warmup_steps", 0), ("min_steps", 1), ("max_steps", 0),
                      ("allreduce_iters", 0), ("min_pairs", 2)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got "
                            f"{getattr(args, name)}")
    for name in ("repeats", "max_pairs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got "
                            f"{getattr(args, name)}")
    if args.min_seconds < 0:
        raise UserError(f"--min-seconds must be >= 0, got {args.min_seconds}")
    for name in ("ci_halfwidth", "budget_s", "window_s", "max_outside_load"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.ci_halfwidth >= 1:
        raise UserError(f"--ci-halfwidth {args.ci_halfwidth:g} is +-{args.ci_halfwidth:.0%}: a "
                        "ratio known that loosely decides nothing; give a fraction below 1, "
                        "e.g. 0.02 for +-2%")
    if args.global_batch_size is not None and args.mode != "strong":
        raise UserError("--global-batch-size sets strong scaling's fixed global batch; weak "
                        "scaling keeps --batch_size per worker")
    if args.global_batch_size is not None and args.global_batch_size < 1:
        raise UserError(f"--global-batch-size must be positive, got {args.global_batch_size}")
    if args.synthetic_samples is not None and args.synthetic_samples < 2:
        raise UserError(f"--synthetic-samples must be at least 2, got {args.synthetic_samples}")
    for name in ("alpha_us", "beta_gbps", "worker_hour_cost", "deadline_s", "link_gbps",
                 "link_latency_us"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    _check_modes(args)


def _check_modes(args: argparse.Namespace) -> None:
    if args.predict and 1 not in args.workers:
        raise UserError("--predict forecasts from the N=1 point: include 1 in --workers")
    if args.link_latency_us is not None and args.link_gbps is None:
        raise UserError("--link-latency-us goes with --link-gbps (a link to forecast on)")
    if args.link_gbps is not None and (args.no_model or 1 not in args.workers):
        raise UserError("--link-gbps forecasts from the N=1 point: include 1 in --workers and "
                        "drop --no-model")
    if args.predict and (args.no_model or "raybench" not in args.backends):
        raise UserError("--predict forecasts raybench at worker counts not run from the "
                        "scaling model: include the raybench backend and drop --no-model")
    if args.deadline_s is not None and not args.target:
        raise UserError("--deadline-s picks the cheapest N that reaches --target in time: give "
                        "--target")
    if all(b == "raw" for b in args.backends) and 1 not in args.workers:
        raise UserError("the raw backend runs one worker: include 1 in --workers, or another "
                        "backend")
    resident = args.protocol == "resident" and not (args.target or args.chaos)
    if args.ray_train_switches and not resident:
        raise UserError("--ray-train-switches compares interleaved windows of warm launchers: "
                        "it needs the resident protocol (no --target, --chaos or "
                        "--protocol restart)")
    if args.ray_train_switches and "raybench" not in args.backends:
        raise UserError("--ray-train-switches measures Ray Train: include the raybench backend")
    if args.target and args.ingest_ceiling:
        raise UserError("--ingest-ceiling measures a throughput window; it has no target")
    if args.ingest_ceiling and "ray_data" not in args.ingest:
        raise UserError("--ingest-ceiling measures a streamed ingest's ceiling: add ray_data to "
                        "--ingest (e.g. --ingest memory,ray_data)")
    if args.chaos:
        schedule = parse_chaos(args.chaos)
        if schedule.on_nodes and not (emulated_cluster() or {}).get("control_socket"):
            raise UserError(f"--chaos {schedule}: node faults (freeze-node, cut-link, slow-node, "
                            "kill-node) need an emulated cluster: run this command through "
                            "python -m raybench.cluster local exec (or ray job submit to it)")
        if args.target or args.ingest_ceiling:
            raise UserError("--chaos runs whole epochs with checkpoints; it does not combine with "
                            "--target or --ingest-ceiling")
        if "raybench" not in args.backends:
            raise UserError("--chaos kills Ray Train workers: include the raybench backend")


def spec_from_args(args: argparse.Namespace) -> tuple[ScaleSpec, Config]:
    """The request, checked, and the base config from the config flags."""
    check_args(args)
    whole_epochs = bool(args.target or args.chaos)
    protocol = "restart" if whole_epochs else args.protocol
    repeats = args.repeats or (1 if protocol == "resident" else 3)
    spec = ScaleSpec(
        workers=args.workers, mode=args.mode, global_batch_size=args.global_batch_size,
        repeats=repeats, backends=args.backends, synthetic_samples=args.synthetic_samples,
        ingest=args.ingest, ingest_ceiling=args.ingest_ceiling,
        allreduce_iters=args.allreduce_iters, startup_floor=args.startup_floor, out=args.out,
        quiet=args.quiet, verbose=args.verbose, protocol=protocol,
        precision=Precision(window_s=args.window_s, ci_halfwidth=args.ci_halfwidth,
                            budget_s=args.budget_s, min_pairs=args.min_pairs,
                            max_pairs=args.max_pairs, max_outside_load=args.max_outside_load,
                            warmup_steps=args.warmup_steps),
        window=Window(warmup_steps=args.warmup_steps, min_steps=args.min_steps,
                      min_seconds=args.min_seconds, max_steps=args.max_steps or None),
        target=args.target, lr_scaling=args.lr_scaling, chaos=args.chaos,
        predict=args.predict or [], alpha_us=args.alpha_us, beta_gbps=args.beta_gbps,
        no_model=args.no_model, probe_network=args.probe_network, link_gbps=args.link_gbps,
        link_latency_us=args.link_latency_us,
        ray_train_switches=args.ray_train_switches,
        recalibrate=args.recalibrate, worker_hour_cost=args.worker_hour_cost,
        deadline_s=args.deadline_s)
    return spec, config_from_args(args)


def run_sweep(args: argparse.Namespace) -> ScalingDoc:
    """The sweep an argparse namespace asks for (tests and notebooks)."""
    return run_spec(*spec_from_args(args))


def merge(argv: list[str]) -> int:
    parser = Parser(prog="python -m raybench.scale merge",
                    description="Merge scaling results into one report.")
    parser.add_argument("inputs", nargs="+", help="scaling.json files or directories")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    check_merge(args.inputs, args.out)
    docs = scaling_report.load_docs(args.inputs)
    modes = {doc.mode for doc in docs}
    if len(modes) > 1:
        raise UserError(f"cannot merge strong and weak scaling runs ({', '.join(sorted(modes))})")
    doc = scaling_report.write_report(
        args.out, environment=[d.environment for d in docs], config=docs[0].config,
        runs=[r for d in docs for r in d.runs], mode=docs[0].mode,
        merged_from=[str(p) for p in args.inputs], configs=[d.config for d in docs],
        comparisons=[c for d in docs for c in d.comparisons],
        windows=[w for d in docs for w in d.windows])
    for text in printed(doc):
        print(text)
    print(f"Saved → {Path(args.out).resolve()}")
    return 0


def check_merge(inputs: list[str], out: str) -> None:
    """A merge never counts a report twice (that would narrow its interval) and never writes
    over one of its inputs."""
    def report_of(path: str) -> Path:
        p = Path(path)
        return (p / "scaling.json" if p.is_dir() or not p.suffix else p).resolve()

    seen: dict[Path, str] = {}
    for path in inputs:
        if report_of(path) in seen:
            raise UserError(f"scale merge: {path} and {seen[report_of(path)]} are the same "
                            "report; merging it twice would count its runs twice")
        seen[report_of(path)] = path
    if report_of(out) in seen:
        raise UserError(f"scale merge --out {out} is one of the inputs; give a new directory")
    if report_of(out).exists():
        raise UserError(f"scale merge --out {out} already holds a scaling report; give a new "
                        "directory")


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "merge":
        return merge(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    run_sweep(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
