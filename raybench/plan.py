"""What a `raybench.scale` request will measure, decided before Ray starts: the typed request
(ScaleSpec), the data, the model, the points with their batch sizes and learning rates
(Plan), and the kinds of run every point takes (Measure). sweep.py runs the plan;
forecast.py reads it for the N=1 forecasts."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

from torch import nn

from raybench.backends import Backend, LaunchContext, backend_class
from raybench.backends.ray_train import RAY_TRAIN_SWITCHES
from raybench.chaos import ChaosSchedule, parse_chaos
from raybench.config import Config, resolve
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
from raybench.errors import UserError
from raybench.interleave import Precision
from raybench.loop import Window
from raybench.models import build_checked
from raybench.results import run_label
from raybench.targets import Target, parse_target


@dataclass(frozen=True)
class ScaleSpec:
    """One `raybench.scale` request, parsed once from the command line (scale.py)."""

    workers: list[int]
    mode: str = "strong"  # strong: a fixed global batch; weak: batch_size per worker
    global_batch_size: int | None = None
    repeats: int = 1  # whole-process repeats
    backends: list[str] = field(default_factory=lambda: ["raybench", "ddp", "raw"])
    synthetic_samples: int | None = None
    ingest: list[str] = field(default_factory=lambda: ["memory"])
    ingest_ceiling: bool = False
    allreduce_iters: int = 200
    startup_floor: bool = False
    out: str | None = None
    quiet: bool = False
    verbose: bool = False
    protocol: str = "resident"
    precision: Precision = field(default_factory=Precision)
    window: Window = field(default_factory=Window)  # the restart protocol's one window
    target: str | None = None
    lr_scaling: str = "none"
    chaos: str | None = None
    predict: list[int] = field(default_factory=list)
    alpha_us: float | None = None
    beta_gbps: float | None = None
    no_model: bool = False
    probe_network: bool = False  # the links between the largest point's ranks, measured first
    link_gbps: float | None = None  # forecast on a link not measured (what-if), Gbit/s
    link_latency_us: float | None = None  # its latency per ring hop (default: the probe's)
    ray_train_switches: bool = False  # also each Ray Train helper switched off, in turn
    recalibrate: bool = False  # measure this machine's peak again (calibrate.py)
    worker_hour_cost: float | None = None  # None: costs in worker-seconds
    deadline_s: float | None = None  # the cheapest N that reaches the target within this

    @property
    def cost_per_worker_second(self) -> float:
        return self.worker_hour_cost / 3600 if self.worker_hour_cost is not None else 1.0

    @property
    def whole_epochs(self) -> bool:
        """Runs train whole epochs (time to target, faults), not throughput windows."""
        return bool(self.target or self.chaos)


def global_batch(spec: ScaleSpec, base: Config) -> int | None:
    """Strong scaling's fixed global batch (None in weak mode)."""
    if spec.mode != "strong":
        return None
    if spec.global_batch_size is not None:
        return spec.global_batch_size
    return base.train.batch_size * min(spec.workers)


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


def with_ingest(cfg: Config, ingest: str) -> Config:
    out = copy.deepcopy(cfg)
    out.data.ingest = ingest
    # --cache-train is the streamed launchers' flag: an in-memory launcher has no split to cache
    out.data.cache_train = cfg.data.cache_train and ingest == "ray_data"
    return out


def load_data(cfg: Config, spec: ScaleSpec,
              out: Console) -> tuple[Dataset | None, ParquetDataset | None, str, Config]:
    """The data each requested ingest needs, where it came from, the resolved config."""
    streamed = "ray_data" in spec.ingest
    if streamed and not cfg.data.parquet_dir:
        raise UserError("--ingest ray_data streams a Parquet dataset: give --parquet_dir (write "
                        "one with python -m raybench.data prepare --format parquet)")
    if cfg.data.cache_train and not streamed:
        raise UserError("--cache-train keeps the streamed launcher's train split in Ray's "
                        "object store: add ray_data to --ingest")
    if spec.synthetic_samples:
        data, source, resolved = _synthetic(cfg, spec.synthetic_samples, out)
        return data, None, source, resolved
    stream = memory = None
    if streamed:
        stream, source, resolved = load_source(with_ingest(cfg, "ray_data"), out.log)
    if "memory" in spec.ingest or set(spec.backends) & {"ddp", "raw"}:
        memory, source, resolved = load_source(with_ingest(cfg, "memory"), out.log)
    resolved.data.ingest, resolved.data.cache_train = cfg.data.ingest, cfg.data.cache_train
    return memory, stream, source, resolved


def plan(spec: ScaleSpec, base: Config, out: Console) -> Plan:
    base.train.early_stop_patience = 0  # a benchmark measures steps, it does not early-stop
    memory, stream, source, base = load_data(base, spec, out)
    if spec.predict and memory is None:
        raise UserError("--predict: the scaling model's probes train on the data in memory; "
                        "add memory to --ingest (e.g. --ingest memory,ray_data)")
    features = (memory if memory is not None else stream).n_features
    model = build_checked(base.model, features, base.data.window, base.data.task)
    target = parse_target(spec.target, base.data.task) if spec.target else None
    if target:
        base.train.warmup_epochs = 0  # throughput from warm-up steps: the target may come first
    glob = global_batch(spec, base)
    points = [(n, point_config(base, n, glob)) for n in spec.workers]
    split = [n for n in spec.predict if glob and glob % n]
    if split:
        raise UserError(f"--predict {','.join(map(str, split))}: strong scaling splits the "
                        f"global batch {glob} across the workers, and {split[0]} does not "
                        "divide it; predict counts that divide it, or use --mode weak")
    scale_lr(points, spec.lr_scaling)
    for n, cfg in points:
        for data in (memory, stream):
            if data is not None:
                check_source_batches(data, n, cfg.train.batch_size, source)
    return Plan(base, source, points, memory, stream, model, target)


@dataclass
class Measure:
    """One kind of run every point takes: a launcher, its ingest, and what is measured."""

    name: str
    backend: Backend
    ingest: str = "memory"
    ingest_only: bool = False
    chaos: ChaosSchedule | None = None
    without: str | None = None  # a Ray Train helper switched off (RAY_TRAIN_SWITCHES)

    @property
    def label(self) -> str:  # as RunRecord.label
        return run_label(self.name, self.ingest, self.ingest_only, self.chaos, self.without)

    @property
    def env(self) -> dict[str, str]:
        return {RAY_TRAIN_SWITCHES[self.without]: "0"} if self.without else {}


def measurements(spec: ScaleSpec, p: Plan, context: LaunchContext) -> list[Measure]:
    out = []
    for name in spec.backends:
        if p.memory is not None and ("memory" in spec.ingest or name != "raybench"):
            out.append(Measure(name, backend_class(name)(p.memory, context)))
    if p.stream is not None and "raybench" in spec.backends:
        out.append(Measure("raybench", backend_class("raybench")(p.stream, context), "ray_data"))
    ray_runs = [m for m in out if m.name == "raybench"]
    if spec.ingest_ceiling:  # a streamed ingest's: slicing arrays in memory has no ceiling
        # worth a budget (measured: 10^8 samples/s, noise around a microsecond a step)
        out += [dataclasses.replace(m, ingest_only=True) for m in ray_runs
                if m.ingest != "memory"]
    if spec.chaos:
        out += [dataclasses.replace(m, chaos=parse_chaos(spec.chaos)) for m in ray_runs]
    if spec.ray_train_switches:
        out += [dataclasses.replace(m, without=name) for m in ray_runs if m.ingest == "memory"
                for name in RAY_TRAIN_SWITCHES]
    return out
