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

from raybench import environment, scaling_report
from raybench.config import Config, add_config_args, config_from_args
from raybench.console import Console
from raybench.data import build_dataset, check_batches, load_configured, save_dataset, synthetic
from raybench.errors import UserError, run_cli
from raybench.launch import (
    check_resources,
    connect,
    ray_startup_floor,
    run_ddp,
    run_raw,
    run_ray,
)
from raybench.loop import LoopOptions

EXAMPLE = """examples:
  python -m raybench.scale --workers 1,2,4 --synthetic-samples 1000000 --repeats 3
  python -m raybench.scale --config configs/lstm_classification.yaml --workers 1,2 --mode weak \\
      --batch_size 256 --synthetic-samples 200000
  python -m raybench.scale merge results/n1 results/n2 results/n4 --out results/merged"""


def _workers_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a list like 1,2,4, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"worker counts must be positive, got {text!r}")
    return values


def _backends(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in scaling_report.BACKENDS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"backends are raybench, ddp, raw; got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raybench.scale", description=__doc__,
                                     epilog=EXAMPLE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=_workers_list, default=[1, 2, 4], metavar="N,N,...",
                        help="worker counts to measure (default 1,2,4)")
    parser.add_argument("--mode", choices=("strong", "weak"), default="strong",
                        help="strong: --batch_size is the global batch, split across workers; "
                        "weak: --batch_size per worker (default strong)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point (default 3)")
    parser.add_argument("--backends", type=_backends, default=["raybench", "ddp", "raw"],
                        help="raybench (Ray Train), ddp (torch.multiprocessing + DDP), raw "
                        "(one plain process, 1 worker only); default all three")
    parser.add_argument("--synthetic-samples", type=int, metavar="N",
                        help="train on N synthetic GBM windows instead of the configured data")
    parser.add_argument("--warmup-steps", type=int, metavar="K",
                        help="exclude the first K steps from throughput instead of the first "
                        "epoch")
    parser.add_argument("--max-steps", type=int, default=500, metavar="K",
                        help="steps per epoch at most, so a point costs seconds whatever the "
                        "data size (default 500; 0: whole epochs)")
    parser.add_argument("--allreduce-iters", type=int, default=200,
                        help="iterations of the all-reduce micro-benchmark (0: skip)")
    parser.add_argument("--startup-floor", action="store_true",
                        help="also time Ray's own start-up floor (a TorchTrainer whose loop does "
                        "nothing) at each N, next to raybench's time to first step")
    parser.add_argument("--out", help="output directory (default results/scale_<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    add_config_args(parser, exclude=("workers",))
    return parser


def point_config(base: Config, mode: str, workers: int) -> Config:
    """The config of one point: N workers and the batch the scaling mode asks for."""
    cfg = copy.deepcopy(base)
    cfg.scaling.workers = workers
    if mode == "strong":
        if base.train.batch_size % workers:
            raise UserError(f"strong scaling splits the global batch {base.train.batch_size} "
                            f"across workers: it must be divisible by {workers}")
        cfg.train.batch_size = base.train.batch_size // workers
    return cfg


def _load_data(cfg: Config, samples: int | None, out: Console):
    if samples:
        task = cfg.data.task or ("regression" if cfg.model.kind == "mlp" else "classification")
        t0 = time.perf_counter()
        arrays = synthetic(samples, cfg.data.window, task, cfg.train.seed, 0.2)
        out.log(f"Synthetic data: {samples:,} windows of {cfg.data.window} "
                f"({time.perf_counter() - t0:.1f}s)")
        source = f"synthetic:{samples}"
        data = build_dataset(arrays, cfg.data.task, cfg.data.valid_from_train, cfg.data.norm,
                             source)
        cfg.data.task = data.task
        return data, source
    data = load_configured(cfg.data, cfg.model.kind, out.log)
    return data, cfg.data.npz_path


def run_sweep(args: argparse.Namespace) -> dict:
    out = Console(quiet=args.quiet)
    base = config_from_args(args)
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
    if getattr(args, "cfg:train.epochs:epochs") is None:
        base.train.epochs = 2  # a benchmark default: one warm-up epoch, one measured
    base.train.early_stop_patience = 0
    if args.warmup_steps is not None:
        base.train.warmup_epochs = 0
    elif base.train.warmup_epochs >= base.train.epochs:
        raise UserError(f"{base.train.epochs} epoch(s) with {base.train.warmup_epochs} warm-up "
                        "epoch(s) leave nothing to measure; raise --epochs or use --warmup-steps")
    out_dir = Path(args.out or time.strftime("results/scale_%Y%m%d_%H%M%S"))
    if (out_dir / "scaling.json").exists():
        raise UserError(f"{out_dir} already holds a scaling report; pick another --out")

    data, source = _load_data(base, args.synthetic_samples, out)
    points = [(n, point_config(base, args.mode, n)) for n in args.workers]
    for n, cfg in points:
        check_batches(len(data.X_train), n, cfg.train.batch_size, source)
    options = LoopOptions(checkpoint=False, evaluate=False, warmup_steps=args.warmup_steps or 0,
                          max_steps_per_epoch=args.max_steps or None)

    max_cfg = points[-1][1]
    import ray

    if "raybench" in args.backends:
        # Ray's own 2 s controller poll: faster polling cost steps 4-6% with all cores busy,
        # and a benchmark's two epochs can wait for their reports.
        out.log(f"Ray: {connect(max_cfg, verbose=args.verbose, report_poll_s=None)}")
        check_resources(max_cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = environment.collect()
    data_ref = ray.put(data) if "raybench" in args.backends else None
    scratch = Path(tempfile.mkdtemp(prefix="raybench-scale-"))
    try:
        data_dir = str(save_dataset(data, scratch / "data")) if "ddp" in args.backends else ""
        runs, startup = [], []
        for repeat in range(1, args.repeats + 1):
            # Interleave backends and sizes within each repeat so drift on a shared machine
            # spreads over all points instead of biasing one.
            for n, cfg in points:
                if args.startup_floor and "raybench" in args.backends:
                    floor = ray_startup_floor(cfg, storage_path=str(
                        (out_dir / "ray_train").resolve()), name=f"floor_n{n}_r{repeat}")
                    startup.append({"workers": n, "repeat": repeat, "floor_sec": floor})
                    out.log(f"repeat {repeat} floor    N={n}: first line of an empty loop "
                            f"after {floor:.1f}s")
                for backend in args.backends:
                    if backend == "raw" and n != 1:
                        continue
                    t0 = time.time()
                    opts = dataclasses.replace(options, launch_time=t0)
                    if backend == "raw":
                        result = run_raw(cfg, data, opts)
                    elif backend == "ddp":
                        result = run_ddp(cfg, data_dir, opts, allreduce_iters=args.allreduce_iters)
                    else:
                        result = run_ray(cfg, data_ref, opts, storage_path=str(
                            (out_dir / "ray_train").resolve()),
                            name=f"n{n}_r{repeat}_{int(t0)}").result
                    record = scaling_report.run_record(backend, args.mode, repeat, result,
                                                       time.time() - t0)
                    runs.append(record)
                    out.log(f"repeat {repeat} {backend:<8} N={n}: "
                            f"{record['samples_per_sec']:>12,.0f} samples/s, step p50 "
                            f"{record['step_time_ms_p50']:.2f} ms, sync share "
                            f"{record['sync_share']:.0%}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    cfg_doc = base.to_dict()
    extra = {"mode": args.mode, "repeats": args.repeats, "backends": args.backends,
             "workers": args.workers, "data_source": source,
             "warmup": ({"steps": args.warmup_steps} if args.warmup_steps is not None
                        else {"epochs": base.train.warmup_epochs})}
    if startup:
        extra["startup"] = startup
        extra["startup_summary"] = scaling_report.startup_summary(startup, runs)
    doc = scaling_report.write_report(out_dir, environment=env, config=cfg_doc, runs=runs,
                                      extra=extra)
    out.summary(scaling_report.table(doc["summary"]))
    for row in extra.get("startup_summary", []):
        out.summary(f"start-up N={row['workers']}: Ray floor {row['floor_sec']:.1f}s, raybench "
                    f"first step {row['raybench_first_step_sec']:.1f}s "
                    f"(ratio {row['ratio']:.2f})")
    out.summary(f"Saved → {out_dir}")
    return doc


def merge(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m raybench.scale merge",
                                     description="Merge scaling results into one report.")
    parser.add_argument("inputs", nargs="+", help="scaling.json files or directories")
    parser.add_argument("--out", required=True, help="output directory")
    args = parser.parse_args(argv)
    runs, envs, configs = scaling_report.load_runs(args.inputs)
    modes = {r["mode"] for r in runs}
    if len(modes) > 1:
        raise UserError(f"cannot merge strong and weak scaling runs ({', '.join(sorted(modes))})")
    doc = scaling_report.write_report(args.out, environment=envs, config=configs[0], runs=runs,
                                      extra={"merged_from": [str(p) for p in args.inputs],
                                             "configs": configs})
    print(scaling_report.table(doc["summary"]))
    print(f"Saved → {args.out}")
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
