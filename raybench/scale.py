"""`python -m raybench.scale`: measure 1 -> N workers with raybench (Ray Train), plain DDP and a
raw single process on the same loop, data and batch; write scaling.json, scaling.csv, scaling.png.

`python -m raybench.scale merge DIR_OR_JSON... --out DIR` combines separate results (for example
one per KubeRay RayJob) into one report.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from raybench import environment, probes, scaling_report
from raybench.artifacts import Output
from raybench.backends import (
    DEFAULT,
    NAMES,
    SINGLE_WORKER,
    Backend,
    LaunchContext,
    backend_class,
)
from raybench.backends.ddp import allreduce_sweep
from raybench.backends.raw import RawBackend
from raybench.backends.ray_cluster import REPORT_POLL_S, connect, preflight
from raybench.backends.ray_train import startup_floor
from raybench.chaos import ChaosSpec, parse_chaos
from raybench.config import Config, add_config_args, config_from_args, resolve
from raybench.console import Console
from raybench.data import (
    Dataset,
    ParquetDataset,
    build_dataset,
    check_source_batches,
    default_task,
    load_source,
    synthetic,
)
from raybench.errors import UserError, install_sigterm, run_cli
from raybench.loop import LoopOptions, Window, worker_threads
from raybench.models import build_model, check_model, count_parameters, flops_per_sample
from raybench.results import (
    RunRecord,
    RunResult,
    ScalingDoc,
    ScalingModelReport,
    StartupPoint,
)
from raybench.scaling_model import CommModel, StepProfile, predict, with_measurement
from raybench.targets import Target, parse_target

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
                        help="also run each Ray Train point with the ingest alone (batches "
                        "fetched, no training): the rate the ingest can feed")
    parser.add_argument("--allreduce-iters", type=int, default=200,
                        help="iterations of the all-reduce micro-benchmark (0: skip)")
    parser.add_argument("--startup-floor", action="store_true",
                        help="also time Ray's own start-up floor (a TorchTrainer whose loop does "
                        "nothing) at each N, next to raybench's time to first step")
    parser.add_argument("--out", help="output directory (default results/scale_<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary table")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    _window_args(parser)
    _target_args(parser)
    _model_args(parser)
    add_config_args(parser, "scale")
    return parser


def _window_args(parser: argparse.ArgumentParser) -> None:
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
        "faults", "with --chaos every Ray Train point also runs under a kill schedule; both "
        "runs train --epochs whole epochs with a checkpoint each, and the report sets their "
        "goodput (useful samples per second of wall time) side by side")
    faults.add_argument("--chaos", metavar="SPEC",
                        help="'kill-worker every 30s' or 'kill-worker once at 20s'")


def _model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "scaling model", "predicts every N from one-worker steps and all-reduce timings (needs "
        "N=1 among --workers and the data in memory)")
    group.add_argument("--predict", type=_workers_list, metavar="N,N,...",
                       help="also forecast these worker counts (each worker with its own cores)")
    group.add_argument("--alpha-us", type=float, metavar="US",
                       help="all-reduce latency per ring hop for forecasts (default: fitted here)")
    group.add_argument("--beta-gbps", type=float, metavar="GB/S",
                       help="all-reduce bandwidth for forecasts (default: fitted here)")
    group.add_argument("--no-model", action="store_true", help="skip the scaling model")


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
    for name in ("alpha_us", "beta_gbps"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
    if args.target and args.ingest_ceiling:
        raise UserError("--ingest-ceiling measures a throughput window; it has no target")
    if args.chaos:
        parse_chaos(args.chaos)
        if args.target or args.ingest_ceiling:
            raise UserError("--chaos runs whole epochs with checkpoints; it does not combine with "
                            "--target or --ingest-ceiling")
        if "raybench" not in args.backends:
            raise UserError("--chaos kills Ray Train workers: include the raybench backend")


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


LR_POWER = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}


def scale_lr(points: list[tuple[int, Config]], rule: str) -> None:
    """lr at each point = base lr x (its global batch / the first point's) ^ power: the
    learning-rate scaling rule, an explicit and recorded choice."""
    reference = points[0][1].train.batch_size * points[0][0]
    for n, cfg in points:
        cfg.train.lr *= (cfg.train.batch_size * n / reference) ** LR_POWER[rule]


@dataclass
class Plan:
    """Everything a sweep runs, checked before Ray starts."""

    base: Config
    source: str  # where the data came from
    points: list[tuple[int, Config]]
    memory: Dataset | None  # the data in memory (memory ingest, ddp, raw)
    stream: ParquetDataset | None  # the Parquet dataset (ray_data ingest)
    model: nn.Module  # built once on the driver: checked, FLOPs and gradient size counted
    target: Target | None = None

    @property
    def features(self) -> int:
        return (self.memory if self.memory is not None else self.stream).n_features


def _synthetic(cfg: Config, samples: int, out: Console) -> tuple[Dataset, str, Config]:
    if cfg.data.parquet_dir:
        raise UserError("give --synthetic-samples or --parquet_dir, not both")
    task = cfg.data.task or default_task(cfg.model.kind)
    t0 = time.perf_counter()
    arrays = synthetic(samples, cfg.data.window, task, cfg.train.seed, 0.2)
    out.log(f"Synthetic data: {samples:,} windows of {cfg.data.window} "
            f"({time.perf_counter() - t0:.1f}s)")
    source = f"synthetic:{samples}"
    data = build_dataset(arrays, cfg.data.task, cfg.data.valid_from_train, cfg.data.norm, source)
    return data, source, resolve(cfg, task=data.task)


def _with_ingest(cfg: Config, ingest: str) -> Config:
    out = copy.deepcopy(cfg)
    out.data.ingest = ingest
    return out


def load_data(cfg: Config, args: argparse.Namespace,
              out: Console) -> tuple[Dataset | None, ParquetDataset | None, str, Config]:
    """The data each requested ingest needs, where it came from, the resolved config."""
    streamed = "ray_data" in args.ingest
    if streamed and not cfg.data.parquet_dir:
        raise UserError("--ingest ray_data streams a Parquet dataset: give --parquet_dir (write "
                        "one with python -m raybench.data prepare --format parquet)")
    if args.synthetic_samples:
        data, source, resolved = _synthetic(cfg, args.synthetic_samples, out)
        return data, None, source, resolved
    stream = memory = None
    if streamed:
        stream, source, resolved = load_source(_with_ingest(cfg, "ray_data"), out.log)
    if "memory" in args.ingest or set(args.backends) & {"ddp", "raw"}:
        memory, source, resolved = load_source(_with_ingest(cfg, "memory"), out.log)
    resolved.data.ingest = cfg.data.ingest
    return memory, stream, source, resolved


def plan(args: argparse.Namespace, out: Console) -> Plan:
    check_args(args)
    base = config_from_args(args)
    base.train.early_stop_patience = 0  # a benchmark measures steps, it does not early-stop
    memory, stream, source, base = load_data(base, args, out)
    features = (memory if memory is not None else stream).n_features
    model = build_model(base.model, features, base.data.window, base.data.task)
    check_model(model, features, base.data.window, base.model.kind)
    target = parse_target(args.target, base.data.task) if args.target else None
    if target:
        base.train.warmup_epochs = 0  # throughput from warm-up steps: the target may come first
    glob = global_batch(args, base)
    points = [(n, point_config(base, n, glob)) for n in args.workers]
    scale_lr(points, args.lr_scaling)
    for n, cfg in points:
        for data in (memory, stream):
            if data is not None:
                check_source_batches(data, n, cfg.train.batch_size, source)
    return Plan(base, source, points, memory, stream, model, target)


def run_sweep(args: argparse.Namespace) -> ScalingDoc:
    out = Console(quiet=args.quiet)
    output = Output(args.out or time.strftime("results/scale_%Y%m%d_%H%M%S"))
    if output.has("scaling.json"):
        raise UserError(f"{output.where} already holds a scaling report; pick another --out")
    p = plan(args, out)
    handle = None
    if "raybench" in args.backends:
        # A throughput window reports once, at its end: keep Ray's own 2 s controller poll
        # (faster polling cost steps 4-6% with all cores busy). Runs in whole epochs (--target,
        # --chaos) report every epoch and each report() waits for the next poll: up to 2 s an
        # epoch that would count as time to target and as lost goodput, so they poll fast.
        largest = p.points[-1][1]
        epochs = bool(args.target or args.chaos)
        handle = connect(largest, verbose=args.verbose,
                         report_poll_s=REPORT_POLL_S if epochs else None,
                         extra_cpus=1 if p.stream is not None else 0)
        install_sigterm()
        out.log(f"Ray: {handle.description}")
        preflight(largest, largest.scaling.wait_for_workers_s)
    output.local.mkdir(parents=True, exist_ok=True)
    env = environment.collect()
    scratch = Path(tempfile.mkdtemp(prefix="raybench-scale-"))
    context = LaunchContext(scratch_dir=scratch, storage_path=output.storage("ray_train"),
                            ray=handle, allreduce_iters=args.allreduce_iters)
    flops = flops_per_sample(p.model, p.features, p.base.data.window)
    measures = measurements(args, p, context)
    try:
        runs, startup = execute(args, p.points, measures, context, flops, p.target, out)
        model = fit_model(args, p, measures, runs, out)
    finally:
        for m in measures:
            m.backend.close()
        shutil.rmtree(scratch, ignore_errors=True)
    doc = write(args, output.local, env, p.base, p.source, runs, startup, model, out)
    out.summary(f"Saved → {output.publish()}")
    return doc


@dataclass
class Measure:
    """One kind of run every point takes: a launcher, its ingest, and what is measured."""

    name: str
    backend: Backend
    ingest: str = "memory"
    ingest_only: bool = False
    chaos: ChaosSpec | None = None


def measurements(args: argparse.Namespace, p: Plan, context: LaunchContext) -> list[Measure]:
    out = []
    for name in args.backends:
        if p.memory is not None and ("memory" in args.ingest or name != "raybench"):
            out.append(Measure(name, backend_class(name)(p.memory, context)))
    if p.stream is not None and "raybench" in args.backends:
        out.append(Measure("raybench", backend_class("raybench")(p.stream, context), "ray_data"))
    ray_runs = [m for m in out if m.name == "raybench"]
    if args.ingest_ceiling:
        out += [dataclasses.replace(m, ingest_only=True) for m in ray_runs]
    if args.chaos:
        out += [dataclasses.replace(m, chaos=parse_chaos(args.chaos)) for m in ray_runs]
    return out


def run_options(args: argparse.Namespace, target: Target | None,
                storage: str | None = None) -> LoopOptions:
    """Throughput: a measured window, no evaluation. Time to target: whole epochs, validation
    every epoch (on the clock), stop at the target. Chaos: whole epochs, a checkpoint each."""
    if target:
        return LoopOptions(checkpoint=False, evaluate=True, target=target,
                           warmup_steps=args.warmup_steps)
    if args.chaos:
        return LoopOptions(checkpoint=True, evaluate=False, warmup_steps=args.warmup_steps,
                           storage_dir=storage)
    return LoopOptions(checkpoint=False, evaluate=False, window=Window(
        warmup_steps=args.warmup_steps, min_steps=args.min_steps, min_seconds=args.min_seconds,
        max_steps=args.max_steps or None))


def execute(args: argparse.Namespace, points: list[tuple[int, Config]],
            measures: list[Measure], context: LaunchContext,
            flops: float, target: Target | None,
            out: Console) -> tuple[list[RunRecord], list[dict]]:
    """Every (repeat, point, measurement) run. Launchers and sizes are interleaved within each
    repeat so drift on a shared machine spreads over all points instead of biasing one."""
    runs, startup = [], []
    options = run_options(args, target, context.storage_path)
    for repeat in range(1, args.repeats + 1):
        for n, cfg in points:
            if args.startup_floor and any(m.name == "raybench" for m in measures):
                floor = startup_floor(cfg, storage_path=context.storage_path,
                                      name=f"floor_n{n}_r{repeat}")
                startup.append({"workers": n, "repeat": repeat, "floor_s": floor})
                out.log(f"repeat {repeat} floor    N={n}: first line of an empty loop "
                        f"after {floor:.1f}s")
            for m in measures:
                if m.name in SINGLE_WORKER and n != 1:
                    continue
                t0 = time.time()
                result = run_one(m, cfg, dataclasses.replace(options, launch_time=t0),
                                 f"n{n}_r{repeat}_{int(t0 * 1000)}")
                probes.annotate_flops(result.timing, flops, cfg.train.precision)
                record = scaling_report.run_record(m.name, args.mode, repeat, result,
                                                   time.time() - t0, m.ingest_only, cfg.train.lr,
                                                   str(m.chaos) if m.chaos else None)
                runs.append(record)
                out.log(f"repeat {repeat} {record.label:<8} N={n}: {_fmt_rate(record)} "
                        f"samples/s, step p50 {record.step_time_ms_p50 or 0:.2f} ms, data "
                        f"{record.data_share or 0:.0%}, sync {record.sync_share or 0:.0%}"
                        + _fmt_target(record))
    return runs, startup


def one_worker_profile(p: Plan, batches: list[int]) -> StepProfile:
    """One worker's phase times at each per-worker batch, from short raw-loop windows."""
    backend = RawBackend(p.memory, LaunchContext(scratch_dir=Path(tempfile.gettempdir())))
    options = LoopOptions(checkpoint=False, evaluate=False,
                          window=Window(warmup_steps=20, min_steps=200, min_seconds=1.0))
    rows = []
    for b in batches:
        cfg = point_config(p.base, 1, None)
        cfg.train.batch_size = b
        rows.append(backend.run(cfg, options).timing.step_breakdown)
    return StepProfile(batch=batches, data_s=[r.data_s for r in rows],
                       compute_s=[r.compute_s for r in rows],
                       optimizer_s=[r.optimizer_s for r in rows])


def fit_model(args: argparse.Namespace, p: Plan, measures: list[Measure],
              runs: list[RunRecord],
              out: Console) -> ScalingModelReport | None:
    """The scaling model, fitted on one-worker steps and all-reduce timings only: the N >= 2
    runs are compared with its predictions, never fed to it."""
    if args.no_model or 1 not in args.workers or p.memory is None or (
            len(args.workers) < 2 and not args.predict):
        return None
    grad_bytes = 4 * count_parameters(p.model)
    glob = global_batch(args, p.base)
    forecast = [n for n in (args.predict or []) if n not in args.workers]
    batches = sorted({cfg.train.batch_size for _, cfg in p.points}
                     | {glob // n if glob else p.base.train.batch_size for n in forecast
                        if not glob or glob % n == 0})
    out.log(f"Scaling model: one-worker profile at batch {', '.join(map(str, batches))}, "
            f"all-reduce timings at N={', '.join(str(n) for n in args.workers if n > 1)}")
    profile = one_worker_profile(p, batches)
    measured = {(r["workers"], r["bytes"]): r["seconds"] for n in args.workers if n > 1
                for r in allreduce_sweep(n, sorted({grad_bytes, 4 << 10, 256 << 10, 4 << 20}))}
    comm = CommModel.fit(measured, alpha_s=args.alpha_us * 1e-6 if args.alpha_us else None,
                         beta_s_per_byte=1 / (args.beta_gbps * 1e9) if args.beta_gbps else None)
    threads, cores = worker_threads(p.base), os.cpu_count() or 1
    predictions = []
    for backend in dict.fromkeys(m.name for m in measures if m.name != "raw"
                                 and m.ingest == "memory" and not m.chaos):
        launcher = _launcher_profile(profile, runs, backend)
        if launcher is None:
            continue
        for n, cfg in p.points:
            pred = predict(backend, launcher, comm, n, cfg.train.batch_size, grad_bytes,
                           threads, cores)
            predictions.append(with_measurement(pred, _median_rate(runs, backend, n)))
        for n in forecast if backend == "raybench" else []:
            b = glob // n if glob else p.base.train.batch_size
            predictions.append(predict(backend, launcher, comm, n, b, grad_bytes, threads,
                                       n * threads, forecast=True))
    return ScalingModelReport(
        cores=cores, threads=threads, gradient_bytes=grad_bytes, alpha_s=comm.alpha_s,
        beta_s_per_byte=comm.beta_s_per_byte, fitted=comm.fitted,
        allreduce=[{"workers": n, "bytes": m, "seconds": t} for (n, m), t in measured.items()],
        profile=dataclasses.asdict(profile), predictions=predictions)


def _launcher_profile(profile: StepProfile, runs: list[RunRecord],
                      backend: str) -> StepProfile | None:
    """The raw one-worker profile scaled by what the launcher itself costs at one worker (its
    measured N=1 step over the raw loop's at the same batch)."""
    ones = [r for r in runs if r.backend == backend and r.workers == 1 and r.label == backend
            and r.compute_s is not None]
    if not ones:
        return None
    step = statistics.median(r.data_s + r.compute_s + r.sync_s + r.optimizer_s for r in ones)
    k = step / profile.at(ones[0].batch_size_per_worker)
    return StepProfile(profile.batch, [x * k for x in profile.data_s],
                       [x * k for x in profile.compute_s], [x * k for x in profile.optimizer_s])


def _median_rate(runs: list[RunRecord], label: str, workers: int) -> float | None:
    rates = [r.samples_per_sec for r in runs
             if r.label == label and r.workers == workers and r.samples_per_sec]
    return statistics.median(rates) if rates else None


def run_one(m: Measure, cfg: Config, options: LoopOptions, run_name: str) -> RunResult:
    """One run of a measurement: a chaos run may restart without limit."""
    cfg = _with_ingest(cfg, m.ingest)
    if m.chaos is None:
        return m.backend.run(cfg, dataclasses.replace(options, ingest_only=m.ingest_only),
                             run_name)
    cfg.scaling.max_failures = -1
    return m.backend.run(cfg, options, run_name, chaos=m.chaos)


def _fmt_target(record: RunRecord) -> str:
    t = record.target
    if t is None:
        return ""
    if not t.reached:
        return f"; {t.target} not reached in {t.epochs} epoch(s)"
    return f"; {t.target} after {t.epochs} epoch(s), {t.time_from_first_step_s:.1f}s"


def _fmt_rate(record: RunRecord) -> str:
    return f"{record.samples_per_sec:>12,.0f}" if record.samples_per_sec else f"{'-':>12}"


def write(args: argparse.Namespace, out_dir: Path, env: dict, base: Config, source: str,
          runs: list[RunRecord], startup: list[dict], model: ScalingModelReport | None,
          out: Console) -> ScalingDoc:
    summary_startup: list[StartupPoint] | None = None
    if startup:
        summary_startup = scaling_report.startup_summary(startup, runs)
    doc = scaling_report.write_report(
        out_dir, environment=env, config=base.to_dict(), runs=runs, mode=args.mode,
        repeats=args.repeats, backends=args.backends, workers=args.workers, data_source=source,
        warmup={"steps": args.warmup_steps, "min_steps": args.min_steps,
                "min_seconds": args.min_seconds, "max_steps": args.max_steps or None},
        startup=startup or None, startup_summary=summary_startup, target=args.target,
        lr_scaling=args.lr_scaling, model=model, chaos=args.chaos)
    for text in (scaling_report.table(doc.summary), scaling_report.ingest_table(doc.summary),
                 scaling_report.target_table(doc.summary),
                 scaling_report.faults_table(doc.summary),
                 scaling_report.model_table(doc.model), "\n".join(doc.verdict or [])):
        if text:
            out.summary(text)
    for row in summary_startup or []:
        out.summary(f"start-up N={row.workers}: Ray floor {row.floor_s:.1f}s, raybench first "
                    f"step {row.raybench_first_step_s:.1f}s (ratio {row.ratio:.2f})")
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
