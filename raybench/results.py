"""Every result raybench writes, defined once: typed records, their keys and units, and the one
reader and writer of each JSON document.

Units are in the key names, one convention in every file: `_s` seconds (Ray's convention),
`_ms` milliseconds, `_mib` 2^20 bytes, `_per_sec` rates, `_share` fractions of a step. The seed's
timing keys (`total_time_sec`, `mean_time_per_epoch`, `std_time_per_epoch`, `epoch_times`) keep
their original names for compatibility.

Every JSON document carries `schema_version`; a reader refuses any other version with one line
instead of misreading it.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raybench import artifacts
from raybench.errors import UserError

SCHEMA_VERSION = 2
PHASES = ("data", "compute", "sync", "optimizer")


def metric_key(metric: str) -> str:
    """The history/report key of an early-stopping metric: `val_loss`, else `val_<metric>`."""
    return metric if metric == "val_loss" else f"val_{metric}"


# ------------------------------------------------------------------ records


@dataclass
class Interval:
    """A statistic with its 95% confidence interval (None where too few samples)."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int = 0


@dataclass
class StepBreakdown:
    """Where a training step's time goes, over the measured (post warm-up) steps of one rank,
    or the element-wise mean over ranks for a run."""

    data_s: float = 0.0  # waiting for the next batch, host-to-device copy
    compute_s: float = 0.0  # forward and backward up to the last bucket's all-reduce launch
    sync_s: float = 0.0  # from that launch to the end of backward: exposed communication
    optimizer_s: float = 0.0  # optimizer.step
    data_share: float = 0.0
    compute_share: float = 0.0
    sync_share: float = 0.0
    optimizer_share: float = 0.0
    step_time_ms_p50: float | None = None
    step_time_ms_p90: float | None = None
    # 95% interval of the p50 from the order statistics of the measured steps (distribution
    # free); adjacent steps are correlated, so read it as a lower bound on the uncertainty.
    step_time_ms_p50_ci: Interval | None = None
    steps: int = 0


@dataclass
class StartupMarks:
    """Seconds from the user's launch until the slowest rank passed each start-up mark."""

    worker_entry_s: float | None = None  # the launcher's worker function began
    loop_entry_s: float | None = None  # the per-worker loop began
    model_ready_s: float | None = None  # model wrapped (DDP) and optimizer built
    first_step_s: float | None = None  # the first training step began


@dataclass
class RankFacts:
    """One worker: where it ran, what it measured, what it ended with."""

    rank: int
    node: str
    node_id: str
    hostname: str
    pid: int
    threads: int
    device: str
    device_name: str | None  # the GPU's name as torch reports it (None on CPU)
    samples_per_sec: float | None
    peak_rss_mib: float
    # PSS splits shared pages (the object store's copy of the data) among the processes that
    # map them, so summed over workers it shows whether the data was held once.
    pss_mib: float | None
    pss_start_mib: float | None
    peak_gpu_mem_mib: float | None
    startup_epoch_s: dict[str, float | None]  # wall-clock (epoch seconds) of each start mark
    final_weights_sha256: str
    step_breakdown: StepBreakdown


@dataclass
class EpochRow:
    """One row of history.csv. Validation metrics are `val_<name>` (see metric_key)."""

    epoch: int
    world_size: int
    train_loss: float
    train_time_s: float
    epoch_time_s: float = 0.0
    val_loss: float | None = None
    val_metrics: dict[str, float] = field(default_factory=dict)
    new_best: bool = False

    def flat(self) -> dict[str, Any]:
        row = {k: v for k, v in dataclasses.asdict(self).items() if k != "val_metrics"}
        if self.val_loss is None:
            del row["val_loss"]
        row.update(self.val_metrics)
        return row

    def value(self, metric: str) -> float | None:
        key = metric_key(metric)
        return self.val_loss if key == "val_loss" else self.val_metrics.get(key)


@dataclass
class Timing:
    """timing.json: one run's clocks and throughput."""

    # The seed's keys.
    total_epochs: int
    best_epoch: int
    total_time_sec: float  # sum of epoch times (training + validation), start-up excluded
    mean_time_per_epoch: float
    std_time_per_epoch: float
    epoch_times: list[float]
    # raybench's.
    train_times: list[float]  # the training part of each epoch
    num_workers: int
    warmup_epochs: int
    warmup_steps: int
    samples_per_sec: float | None  # global, warm-up excluded; None: nothing was measured
    samples_per_sec_per_worker: float | None
    measured_steps: int
    time_to_first_step_s: float | None  # from the interpreter's start (see timing.start_time)
    startup_s: StartupMarks
    threads_per_worker: int
    dataset_mib: float
    batch_size_per_worker: int
    global_batch_size: int
    steps_per_epoch: int
    stopped_early: bool
    resumed_from_epoch: int | None
    step_breakdown: StepBreakdown
    ranks: list[RankFacts]
    wall_time_s: float | None = None  # interpreter start until the results were saved
    model_flops_per_sample: float | None = None  # forward + backward (FlopCounterMode)
    achieved_tflops: float | None = None  # model FLOPs x samples/s, all workers
    peak_tflops: float | None = None  # the GPUs' dense peak for the precision, all workers
    mfu: float | None = None  # achieved / peak (GPUs in probes.GPU_PEAK_TFLOPS only)


@dataclass
class RunResult:
    """What the loop returns on rank 0 (and a launcher hands to a command)."""

    task: str
    metric: str
    mode: str
    best: float | None
    num_parameters: int
    history: list[EpochRow]
    metrics_valid: dict
    metrics_test: dict
    timing: Timing
    # numpy arrays, not tensors: Ray refuses tensors in a train function's return value.
    best_state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    allreduce: dict | None = None  # the ddp launcher's all-reduce micro-benchmark


@dataclass
class RunRecord:
    """One measured run of a scaling sweep (a row of scaling.csv)."""

    backend: str
    mode: str
    workers: int
    repeat: int
    samples_per_sec: float | None
    samples_per_sec_per_worker: float | None
    step_time_ms_p50: float | None
    step_time_ms_p90: float | None
    data_share: float | None
    compute_share: float | None
    sync_share: float | None
    optimizer_share: float | None
    data_s: float | None
    compute_s: float | None
    sync_s: float | None
    optimizer_s: float | None
    batch_size_per_worker: int
    global_batch_size: int
    threads_per_worker: int
    steps_per_epoch: int
    measured_steps: int
    epoch_time_s: float | None
    time_to_first_step_s: float | None
    startup_s: StartupMarks | None
    peak_rss_mib_max: float | None
    peak_rss_mib_per_rank: list[float]
    peak_gpu_mem_mib_max: float | None
    allreduce_ms_p50: float | None
    allreduce_bytes: int | None
    nodes: list[str]
    node_ids: list[str]
    dataset_mib: float | None
    pss_mib_sum: float | None
    # Workers' summed proportional set size over the dataset size: ~1 when the data is held
    # once per node and shared, >= N when every worker holds its own copy.
    pss_over_dataset: float | None
    # The same, counting only what each worker's PSS grew by after it started.
    pss_growth_over_dataset: float | None
    wall_time_s: float
    achieved_tflops: float | None = None
    mfu: float | None = None
    speedup: float | None = None
    efficiency: float | None = None


@dataclass
class Spread:
    """Several repeats of one figure: median, range, mean with its Student-t 95% interval."""

    n: int
    median: float
    min: float
    max: float
    mean: float
    ci95_low: float | None = None
    ci95_high: float | None = None


@dataclass
class PointSummary:
    """One (backend, workers) point of a scaling report, over its repeats."""

    backend: str
    workers: int
    mode: str
    repeats: int
    samples_per_sec: Spread
    samples_per_sec_per_worker: float
    speedup: float | None
    efficiency: float | None
    batch_size_per_worker: int
    global_batch_size: int
    threads_per_worker: int
    step_time_ms_p50: float | None
    # Mean of the repeats' step-time p50 with its Student-t 95% interval.
    step_time_ms_p50_ci: Interval | None
    step_time_ms_p90: float | None
    data_share: float | None
    compute_share: float | None
    sync_share: float | None
    optimizer_share: float | None
    epoch_time_s: float | None
    time_to_first_step_s: float | None
    peak_rss_mib_max: float | None
    peak_gpu_mem_mib_max: float | None
    allreduce_ms_p50: float | None
    pss_over_dataset: float | None
    achieved_tflops: float | None
    mfu: float | None
    # raybench only: its throughput over raw's (1 worker) and ddp's (same N) as the ratio of
    # medians, and as the mean of per-repeat ratios with its 95% interval (repeats pair up:
    # backends are interleaved within each repeat).
    vs_raw: float | None = None
    vs_ddp: float | None = None
    vs_raw_ci: Interval | None = None
    vs_ddp_ci: Interval | None = None


@dataclass
class StartupPoint:
    """Ray's own start-up floor next to raybench's time to its first step, one N."""

    workers: int
    floor_s: float
    raybench_first_step_s: float | None
    ratio: float | None
    raybench_marks_s: dict[str, float]


@dataclass
class ScalingDoc:
    """scaling.json."""

    environment: Any
    config: dict
    mode: str
    runs: list[RunRecord]
    summary: list[PointSummary]
    repeats: int | None = None
    backends: list[str] | None = None
    workers: list[int] | None = None
    data_source: str | None = None
    warmup: dict | None = None
    startup: list[dict] | None = None
    startup_summary: list[StartupPoint] | None = None
    merged_from: list[str] | None = None
    configs: list[dict] | None = None


# ------------------------------------------------------------------ (de)serialisation


def to_dict(record: Any) -> dict[str, Any]:
    """A record as plain JSON-able data (numpy scalars become numbers)."""
    return artifacts.jsonable(dataclasses.asdict(record))


def _build(annotation: Any, value: Any, where: str) -> Any:
    """Rebuild a value of the given annotation from JSON data (dataclasses recursively)."""
    if value is None:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [from_dict(args[0], v, where) for v in value]
    return value


def from_dict(cls: type, data: Any, where: str = "result") -> Any:
    """Rebuild a record; unknown keys mean another schema and are refused."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a {cls.__name__} mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names - {"schema_version"})
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r} for {cls.__name__} (written by "
                        "another raybench version?)")
    try:
        return cls(**{k: _build(hints[k], v, where) for k, v in data.items() if k in names})
    except TypeError as exc:  # a required key is missing
        raise UserError(f"{where}: not a complete {cls.__name__} ({exc})") from None


def write_doc(path: str | Path, obj: Any) -> Path:
    """Write a JSON document (a record or a mapping) atomically, with schema_version first."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else artifacts.jsonable(obj)
    return artifacts.write_json(path, {"schema_version": SCHEMA_VERSION, **data})


def read_json(path: str | Path) -> dict:
    """A raybench JSON document after checking its schema_version."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object")
    version = doc.get("schema_version", 1)
    if version != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {version}, but this raybench reads version "
                        f"{SCHEMA_VERSION} only; re-run it with this version")
    return doc


def read_doc(path: str | Path, cls: type) -> Any:
    """A typed record from a raybench JSON document."""
    return from_dict(cls, read_json(path), str(path))
