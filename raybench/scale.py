"""`python -m raybench.scale`: measure 1 -> N workers with raybench (Ray Train), plain DDP and a
raw single process on the same loop, data and batch; write scaling.json, scaling.csv, scaling.png.

`python -m raybench.scale merge DIR_OR_JSON... --out DIR` combines separate results (for example
one per KubeRay RayJob) into one report.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

from raybench import environment, probes, scaling_report
from raybench.backends import NAMES, SINGLE_WORKER, Backend, LaunchContext, backend_class
from raybench.backends.ray_cluster import check_resources, connect
from raybench.backends.ray_train import startup_floor
from raybench.config import Config, add_config_args, config_from_args, resolve
from raybench.console import Console
from raybench.data import Dataset, build_dataset, check_batches, load_configured, synthetic
from raybench.errors import UserError, run_cli
from raybench.loop import LoopOptions, Window
from raybench.models import build_model, flops_per_sample
from raybench.results import RunRecord, StartupPoint

EXAMPLE = """examples:
  python -m raybench.scale --workers 1,2,4 --synthetic-samples 1000000 --repeats 3
  python -m raybench.scale --config configs/lstm_classification.yaml --workers 1,2 --mode weak \\
      --batch_size 256 --synthetic-samples 200000
  python -m raybench.scale merge results/n1 results/n2 results/n4 --out results/merged"""


def _workers_list(text: str) -> list[int]:
    parts = [v.strip() for v in text.split(",")]
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,4, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"worker count given twice in {text!r}")
    return sorted(values)


def _backends(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    bad = [v for v in values if v not in NAMES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"backends are {', '.join(NAMES)}; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raybench.scale", description=__doc__,
                                     epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=_workers_list, default=[1, 2, 4], metavar="N,N,...",
                        help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--mode", choices=("strong", "weak"), default="strong",
                        help="strong: a fixed global batch (--global-batch-size) split across "
                        "workers; weak: --batch_size per worker at every N (default strong)")
    parser.add_argument("--global-batch-size", type=int, metavar="B",
                        help="strong mode: the global batch at every N (default: --batch_size "
                        "times the smallest N)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (default 3)")
    parser.add_argument("--backends", type=_backends, default=list(NAMES),
                        help="raybench (Ray Train), ddp (torch.multiprocessing + DDP), raw "
                        "(one plain process, 1 worker only); default all three")
    parser.add_argument("--synthetic-samples", type=int, metavar="N",
                        help="train on N synthetic GBM windows instead of the configured data")
    window = parser.add_argument_group(
        "measured window", "each run warms up, then measures at least --min-steps steps and "
        "--min-seconds seconds (cycling over the data as needed)")
    window.add_argument("--warmup-steps", type=int, default=50, metavar="K",
                        help="steps excluded from throughput (default 50)")
    window.add_argument("--min-steps", type=int, default=300, metavar="K",
                        help="measured steps at least (default 300)")
    window.add_argument("--min-seconds", type=float, default=3.0, metavar="S",
                        help="measured seconds at least (default 3)")
    window.add_argument("--max-steps", type=int, default=0, metavar="K",
                        help="measured steps at most, even before --min-seconds (0: no cap)")
    parser.add_argument("--allreduce-iters", type=int, default=200,
                        help="iterations of the all-reduce micro-benchmark (0: skip)")
    parser.add_argument("--startup-floor", action="store_true",
                        help="also time Ray's own start-up floor (a TorchTrainer whose loop does "
                        "nothing) at each N, next to raybench's time to first step")
    parser.add_argument("--out", help="output directory (default results/scale_<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    add_config_args(parser, "scale")
    return parser


def check_args(args: argparse.Namespace) -> None:
    for name, low in (("repeats", 1), ("warmup_steps", 0), ("min_steps", 1), ("max_steps", 0),
                      ("allreduce_iters", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got "
                            f"{getattr(args, name)}")
    if args.min_seconds < 0:
        raise UserError(f"--min-seconds must be >= 0, got {args.min_seconds}")
    if args.global_batch_size is not None and args.mode != "strong":
        raise UserError("--global-batch-size sets strong scaling's fixed global batch; weak "
                        "scaling keeps --batch_size per worker")
    if args.synthetic_samples is not None and args.synthetic_samples < 2:
        raise UserError(f"--synthetic-samples must be at least 2, got {args.synthetic_samples}")


def global_batch(args: argparse.Namespace, base: Config) -> int | None:
    """Strong scaling's fixed global batch (None in weak mode)."""
    if args.mode != "strong":
        return None
    if args.global_batch_size is not None:
        if args.global_batch_size < 1:
            raise UserError(f"--global-batch-size must be positive, got {args.global_batch_size}")
        return args.global_batch_size
    return base.train.batch_size * min(args.workers)


def point_config(base: Config, workers: int, global_batch_size: int | None) -> Config:
    """The config of one point: N workers and the per-worker batch its mode asks for."""
    cfg = copy.deepcopy(base)
    cfg.scaling.workers = workers
    if global_batch_size is not None:
        if global_batch_size % workers:
            raise UserError(f"strong scaling splits the global batch {global_batch_size} across "
                            f"workers: it must be divisible by {workers}")
        cfg.train.batch_size = global_batch_size // workers
    return cfg


def load_data(cfg: Config, samples: int | None, out: Console) -> tuple[Dataset, str, Config]:
    """The data, where it came from, and the config resolved against it."""
    if samples:
        task = cfg.data.task or ("regression" if cfg.model.kind == "mlp" else "classification")
        t0 = time.perf_counter()
        arrays = synthetic(samples, cfg.data.window, task, cfg.train.seed, 0.2)
        out.log(f"Synthetic data: {samples:,} windows of {cfg.data.window} "
                f"({time.perf_counter() - t0:.1f}s)")
        source = f"synthetic:{samples}"
        data = build_dataset(arrays, cfg.data.task, cfg.data.valid_from_train, cfg.data.norm,
                             source)
        return data, source, resolve(cfg, task=data.task)
    data, npz_path = load_configured(cfg.data, cfg.model.kind, out.log)
    return data, str(npz_path), resolve(cfg, npz_path=npz_path, task=data.task)


def plan(args: argparse.Namespace, out: Console) -> tuple[Config, Dataset, str,
                                                          list[tuple[int, Config]]]:
    """Everything a sweep needs, checked before Ray starts."""
    check_args(args)
    base = config_from_args(args)
    base.train.early_stop_patience = 0  # a benchmark measures steps, it does not early-stop
    data, source, base = load_data(base, args.synthetic_samples, out)
    glob = global_batch(args, base)
    points = [(n, point_config(base, n, glob)) for n in args.workers]
    for n, cfg in points:
        check_batches(len(data.X_train), n, cfg.train.batch_size, source)
    return base, data, source, points


def run_sweep(args: argparse.Namespace) -> dict:
    out = Console(quiet=args.quiet)
    out_dir = Path(args.out or time.strftime("results/scale_%Y%m%d_%H%M%S"))
    if (out_dir / "scaling.json").exists():
        raise UserError(f"{out_dir} already holds a scaling report; pick another --out")
    base, data, source, points = plan(args, out)
    handle = None
    if "raybench" in args.backends:
        # Ray's own 2 s controller poll: faster polling cost steps 4-6% with all cores busy,
        # and a benchmark's runs report once, at the end.
        handle = connect(points[-1][1], verbose=args.verbose, report_poll_s=None)
        out.log(f"Ray: {handle.description}")
        check_resources(points[-1][1])
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.collect()
    scratch = Path(tempfile.mkdtemp(prefix="raybench-scale-"))
    context = LaunchContext(scratch_dir=scratch, storage_path=str((out_dir / "ray_train")
                                                                  .resolve()),
                            ray=handle, allreduce_iters=args.allreduce_iters)
    backends = {name: backend_class(name)(data, context) for name in args.backends}
    flops = flops_per_sample(build_model(base.model, data.n_features, data.window),
                             data.n_features, data.window)
    try:
        runs, startup = execute(args, points, backends, context, flops, out)
    finally:
        for backend in backends.values():
            backend.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return write(args, out_dir, env, base, source, runs, startup, out)


def window_options(args: argparse.Namespace) -> LoopOptions:
    return LoopOptions(checkpoint=False, evaluate=False, window=Window(
        warmup_steps=args.warmup_steps, min_steps=args.min_steps, min_seconds=args.min_seconds,
        max_steps=args.max_steps or None))


def execute(args: argparse.Namespace, points: list[tuple[int, Config]],
            backends: dict[str, Backend], context: LaunchContext, flops: float,
            out: Console) -> tuple[list[RunRecord], list[dict]]:
    """Every (repeat, point, backend) run. Backends and sizes are interleaved within each
    repeat so drift on a shared machine spreads over all points instead of biasing one."""
    runs, startup = [], []
    options = window_options(args)
    for repeat in range(1, args.repeats + 1):
        for n, cfg in points:
            if args.startup_floor and "raybench" in backends:
                floor = startup_floor(cfg, storage_path=context.storage_path,
                                      name=f"floor_n{n}_r{repeat}")
                startup.append({"workers": n, "repeat": repeat, "floor_s": floor})
                out.log(f"repeat {repeat} floor    N={n}: first line of an empty loop "
                        f"after {floor:.1f}s")
            for name, backend in backends.items():
                if name in SINGLE_WORKER and n != 1:
                    continue
                t0 = time.time()
                result = backend.run(cfg, dataclasses.replace(options, launch_time=t0),
                                     f"n{n}_r{repeat}_{int(t0)}")
                probes.annotate_flops(result.timing, flops, cfg.train.precision)
                record = scaling_report.run_record(name, args.mode, repeat, result,
                                                   time.time() - t0)
                runs.append(record)
                out.log(f"repeat {repeat} {name:<8} N={n}: {_fmt_rate(record)} samples/s, step "
                        f"p50 {record.step_time_ms_p50 or 0:.2f} ms, sync share "
                        f"{record.sync_share or 0:.0%}")
    return runs, startup


def _fmt_rate(record: RunRecord) -> str:
    return f"{record.samples_per_sec:>12,.0f}" if record.samples_per_sec else f"{'-':>12}"


def write(args: argparse.Namespace, out_dir: Path, env: dict, base: Config, source: str,
          runs: list[RunRecord], startup: list[dict], out: Console) -> dict:
    summary_startup: list[StartupPoint] | None = None
    if startup:
        summary_startup = scaling_report.startup_summary(startup, runs)
    doc = scaling_report.write_report(
        out_dir, environment=env, config=base.to_dict(), runs=runs, mode=args.mode,
        repeats=args.repeats, backends=args.backends, workers=args.workers, data_source=source,
        warmup={"steps": args.warmup_steps, "min_steps": args.min_steps,
                "min_seconds": args.min_seconds, "max_steps": args.max_steps or None},
        startup=startup or None, startup_summary=summary_startup)
    out.summary(scaling_report.table(doc.summary))
    for row in summary_startup or []:
        out.summary(f"start-up N={row.workers}: Ray floor {row.floor_s:.1f}s, raybench first "
                    f"step {row.raybench_first_step_s:.1f}s (ratio {row.ratio:.2f})")
    out.summary(f"Saved → {out_dir.resolve()}")
    return doc


def merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m raybench.scale merge",
                                     description="Merge scaling results into one report.")
    parser.add_argument("inputs", nargs="+", help="scaling.json files or directories")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    docs = scaling_report.load_docs(args.inputs)
    modes = {doc.mode for doc in docs}
    if len(modes) > 1:
        raise UserError(f"cannot merge strong and weak scaling runs ({', '.join(sorted(modes))})")
    doc = scaling_report.write_report(
        args.out, environment=[d.environment for d in docs], config=docs[0].config,
        runs=[r for d in docs for r in d.runs], mode=docs[0].mode,
        merged_from=[str(p) for p in args.inputs], configs=[d.config for d in docs])
    print(scaling_report.table(doc.summary))
    print(f"Saved → {Path(args.out).resolve()}")
    return 0


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
