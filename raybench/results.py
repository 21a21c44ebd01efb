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
import os
import re
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
class Pause:
    """A stretch in which one rank's process did not run at all (stopped, frozen, starved),
    seen by its own clock thread (loop.hang.PauseClock); the other ranks waited for it."""

    rank: int
    node: str
    started_epoch_s: float
    seconds: float


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
    ingest: str = "memory"
    first_batch_s: float | None = None  # streamed ingest: asking for the first batch to having it
    first_batch_at: float | None = None  # epoch seconds the first batch was ready
    # This rank's own view of early stopping: identical on every rank, or the ranks disagreed.
    epochs_run: int = 0
    best_epoch: int = 0
    niceness: int | None = None  # the process's nice value (Ray starts workers at 15)
    pinned_cores: list[int] | None = None  # scaling.pin_threads: the training thread's cores
    malloc: dict[str, int] | None = None  # scaling.steady_malloc: glibc's settings, as applied
    pauses: list[Pause] = field(default_factory=list)  # this incarnation's, 2 s or longer


@dataclass
class EpochRow:
    """One row of history.csv. Validation metrics are `val_<name>` (see metric_key)."""

    epoch: int
    world_size: int
    train_loss: float
    train_time_s: float
    epoch_time_s: float = 0.0
    eval_time_s: float = 0.0  # the validation pass at the end of the epoch
    checkpoint_save_s: float = 0.0  # writing the checkpoint's files (rank 0)
    report_s: float = 0.0  # ray.train.report: the barrier and persisting the checkpoint
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
class Restore:
    """One restart of the worker group from a checkpoint (a failure, or an elastic resize)."""

    from_epoch: int  # the checkpoint's epoch
    world_size: int  # workers after the restart
    restore_s: float  # loading the checkpoint
    first_step_epoch_s: float | None = None  # wall clock of the first step after it
    failure_epoch_s: float | None = None  # when the failure was seen (controller or chaos)
    recovery_s: float | None = None  # failure -> first training step after the restart


@dataclass
class Recovery:
    """One fault the run survived: each failure Ray Train's controller saw, and each --chaos
    fault the run went on through without a restart. A recovery that could not be timed keeps
    its failure and says why in `note`, never vanishes."""

    failure_epoch_s: float  # the fault (--chaos's own clock) or when the controller saw it
    seen_by: str  # "chaos" (the fault's own clock) or "controller"
    first_step_epoch_s: float | None = None  # the first training step after it (rank 0)
    recovery_s: float | None = None  # failure -> that step
    resumed_from_epoch: int | None = None  # the checkpoint's epoch; None: started over
    note: str = ""  # why recovery_s is missing
    cause: str = ""  # what failed in one line: the fault carried out, Ray Train's error
    # The fault in words: "killed worker", "frozen node", "cut link", "slow node", "lost node"
    # (--chaos); for a failure nobody scheduled, "stall" (a hang) or "worker failure".
    fault: str = ""
    ranks: list[int] = field(default_factory=list)  # the ranks it hit, or a hang blamed
    node: str = ""  # where they ran (an address)
    restarted: bool = True  # False: the run went on through it (shorter than the hang bound)
    fault_s: float | None = None  # how long a --chaos fault lasted; None: to the run's end
    detected_epoch_s: float | None = None  # when Ray Train's controller saw the failure
    detect_s: float | None = None  # the run's last progress (or the fault, if later) -> then
    steps_lost: int | None = None  # steps trained past the checkpoint it resumed from


@dataclass
class TargetResult:
    """How a run did against a target quality (raybench.scale --target)."""

    target: str  # e.g. val_r2>=0.9
    reached: bool
    epochs: int | None = None  # epochs trained when the target was met
    samples: int | None = None  # training samples processed by then, all workers
    time_from_first_step_s: float | None = None  # first step to the validation that met it
    time_from_start_s: float | None = None  # the command's start (launch) to the same point
    eval_time_s: float | None = None  # validation time in those, kept on the clock
    value: float | None = None  # the metric's value when it was met (best seen otherwise)


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
    time_to_first_step_s: float | None  # command start (raybench import) to the slowest rank's
    # first step; a run Ray restarted keeps its first incarnation's
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
    ingest: str = "memory"  # data.ingest: memory or ray_data
    target: TargetResult | None = None
    # The cost of fault tolerance: per epoch (rank 0) and in total, and every restart.
    checkpoint_save_s_total: float = 0.0
    report_s_total: float = 0.0
    restores: list[Restore] = field(default_factory=list)
    failures: int = 0  # failures the run survived (seen by Ray Train's controller)
    recoveries: list[Recovery] = field(default_factory=list)  # one per failure, timed
    # A rank that stops making progress (loop.hang): the bounds in force at the end, and every
    # pause of 2 s or more a rank's own clock saw in a run that went on.
    hang_health_check_s: float | None = None  # Ray Train's worker health check
    hang_collective_s: float | None = None  # the process group's timeout (None: one rank)
    pauses: list[Pause] = field(default_factory=list)
    # The rank the others wait for: its work per step (data + compute + optimizer) at least
    # STRAGGLER_RATIO times the median of the others' (None: no such rank, or one worker).
    straggler_rank: int | None = None
    object_store_peak_mib: float | None = None  # Ray's object store, summed over nodes
    spilled_mib: float | None = None  # bytes the object store spilled to disk during the run
    model_flops_per_sample: float | None = None  # forward + backward (FlopCounterMode)
    achieved_tflops: float | None = None  # model FLOPs x samples/s, all workers
    peak_tflops: float | None = None  # the GPUs' dense peak for the precision, all workers
    mfu: float | None = None  # achieved / peak (GPUs in probes.GPU_PEAK_TFLOPS only)
    # rank 0's work per measured step outside sync (data + compute + optimizer), percentiles
    # 0..100 in ms: the scaling model's one-worker distribution
    work_ms_quantiles: list[float] = field(default_factory=list)


@dataclass
class WindowOrder:
    """What the driver asks of a resident launcher's ranks: train exactly `steps` steps (all
    ranks alike, so DDP never waits on a rank that stopped), then report and wait again.
    Warm-up windows are not counted in the run's figures."""

    steps: int
    warmup: bool = False


@dataclass
class WindowReport:
    """One rank's measurement of one window: wall time from a common start (a barrier) to its
    last step, the phase sums of its steps, and what the rank's process used meanwhile."""

    rank: int
    steps: int
    samples: int
    seconds: float
    phase_s: dict[str, float]  # PHASES -> seconds summed over the window's steps
    step_ms_p50: float | None
    cpu_s: float  # this rank's process, user + system, over the window
    nivcsw: int  # involuntary context switches of the process over the window
    started_at: float = 0.0  # epoch seconds the window's clock started
    # Of cpu_s, the kernel's part, and the minor page faults behind most of it: on CPU, memory
    # torch frees and takes back each step is zeroed again by the kernel (buffers glibc mapped
    # on their own and unmapped, and heap it trimmed; --steady-malloc keeps them)
    sys_s: float = 0.0
    minflt: int = 0


@dataclass
class MeasuredWindow:
    """One window of one launcher, merged over its ranks, with the machine's state around it."""

    launcher: str  # the point's label for the launcher (RunRecord.label)
    workers: int
    repeat: int
    round: int  # windows of one round ran back to back, in alternating order
    slot: int  # position within its round
    steps: int
    samples: int  # all ranks
    seconds: float  # the slowest rank's
    samples_per_sec: float
    phase_ms: dict[str, float]  # per step, mean over ranks
    step_ms_p50: float | None
    cpu_s: float  # the launcher's ranks
    nivcsw: int
    started_at: float  # epoch seconds the window started (the earliest rank)
    steal_share: float | None  # of the machine's CPU time over the window (/proc/stat)
    outside_share: float | None  # CPU used by processes outside the run, share of the machine
    excluded: bool = False  # its pair was dropped: outside load crossed the threshold
    # CPU the rest of the run used meanwhile (the idle launchers, Ray's own processes, the
    # driver), share of the machine: how idle "idle" was
    rest_of_run_share: float | None = None
    data_ms_per_rank: list[float] = field(default_factory=list)  # per step, rank by rank
    kernel_ms_per_rank: list[float] = field(default_factory=list)  # kernel CPU per step, by rank
    faults_per_rank: list[float] = field(default_factory=list)  # minor page faults per step


@dataclass
class PhaseGap:
    """A step phase's part of a comparison's gap: (phase of numerator - phase of denominator)
    over the denominator's step time, mean of the pairs and its 95% interval."""

    share: float
    low: float | None
    high: float | None


@dataclass
class Comparison:
    """Two launchers measured in interleaved windows at one point: the ratio of their
    throughputs from the paired per-window log-ratios (geometric mean, Student-t interval on
    the log scale, so the bounds stay positive)."""

    numerator: str
    denominator: str
    workers: int
    ingest: str
    ratio: float | None
    ci95: list[float] | None  # [low, high]
    pairs: int  # pairs kept
    excluded_pairs: int  # pairs dropped for outside load
    window_s: float  # the windows' median length
    halfwidth: float | None  # of the interval, relative to the ratio (0.02 = +-2%)
    target_halfwidth: float | None
    reached: bool  # halfwidth <= target_halfwidth
    note: str  # e.g. why the target was not reached
    mde: float | None = None  # smallest relative change these pairs detect (95%, power 0.8)
    noise_iqr: dict[str, float] = field(default_factory=dict)  # launcher -> IQR/median of rates
    phases: dict[str, PhaseGap] = field(default_factory=dict)
    startup_s: dict[str, dict[str, float | None]] = field(default_factory=dict)
    repeat: int | None = None  # None: pooled over every repeat
    # launcher -> the median window's kernel CPU per step on its busiest rank (the one in the
    # lockstep that page faults hold back most), ms, and that rank's minor page faults per step
    kernel_ms: dict[str, float] = field(default_factory=dict)
    faults_per_step: dict[str, float] = field(default_factory=dict)


# What a run's progress queue carries to the driver besides rank 0's epoch reports (dicts,
# as Ray Train reports them): one type per message, dispatched by type.


@dataclass
class StepProgress:
    """Rank 0 within an epoch: how far it is (a progress bar's input, and the run's last
    progress when a fault stops it)."""

    epoch: int
    step: int
    steps: int
    at: float = 0.0  # epoch seconds on the worker

    @property
    def global_step(self) -> int:
        return (self.epoch - 1) * self.steps + self.step


@dataclass
class FirstStep:
    """A worker group's rank 0 began its first training step: the end of a (re)start."""

    at: float  # epoch seconds


@dataclass
class WorkerUp:
    """A Ray Train worker of this incarnation: who --chaos may kill, and where."""

    rank: int
    pid: int
    node_id: str
    node_ip: str = ""


@dataclass
class WorkersFailed:
    """Ray Train's controller saw worker failures: the start of a recovery."""

    at: float  # epoch seconds
    ranks: list[int]
    cause: str = ""  # the first failed rank's error, one line (what a user asks first)
    stalled: list[int] = field(default_factory=list)  # a hang: the ranks that stopped (loop.hang)


@dataclass
class Registered:
    """The controller registered an epoch's report (and its checkpoint, if any)."""

    epoch: int
    checkpoint: bool


@dataclass
class AllreduceLatency:
    """All-reduces of one size timed in a process group: the floor under a step's sync."""

    numel: int  # float32 values
    bytes: int
    iters: int
    allreduce_ms_p50: float
    allreduce_ms_p90: float
    busy_s: float | None = None  # each rank computed this long between them (None: idle)


@dataclass
class AllreduceMeasure:
    """An all-reduce the scaling model was given: N processes, a size, its p50 seconds."""

    workers: int
    bytes: int
    seconds: float
    under: str  # what the ranks did between all-reduces: real steps | busy loop | idle


@dataclass
class NetworkRow:
    """One size of the network probe, as nccl-tests reports an all-reduce: the slowest rank's
    mean time, algorithm bandwidth (bytes / time) and bus bandwidth (algbw x 2(n-1)/n, what
    each link carried: compare it with the link's rate), in Gbit/s."""

    bytes: int
    time_s: float
    algbw_gbps: float
    busbw_gbps: float
    iters: int


@dataclass
class NodeWork:
    """The model's training step on each rank of a network probe (no sync), each rank alone
    in turn and then every rank at once: how much slower a node computes while the others
    compute too (hosts or cores they share, the kernel's and Ray's own work). On an emulated
    cluster the nodes share this machine's cores; on nodes of their own it stays near 1."""

    batch_size_per_worker: int
    alone_ms: list[float]  # each rank's mean step alone (the others in a barrier), rank order
    loaded_ms: list[float]  # each rank's mean step with every rank stepping at once
    slowdown: float  # geometric mean over ranks of loaded / alone
    # DDP's bucket sizes all-reduced right after each rank's step (as its last bucket runs):
    # the ring as it runs on nodes busy training
    allreduce_after_step: list[NetworkRow] = field(default_factory=list)


@dataclass
class NetworkProbe:
    """Gloo all-reduces between ranks placed as a run's workers (`raybench.probe network`,
    `raybench.scale --probe-network`), and the ring t = 2(n-1) latency + 2(n-1)/n bytes /
    bandwidth fitted to them (relative errors, so the small sizes set the latency)."""

    rows: list[NetworkRow]
    workers: int
    latency_us: float | None  # per ring hop
    bandwidth_gbps: float | None  # the fitted bus bandwidth, Gbit/s
    nodes: list[str] = field(default_factory=list)  # each rank's node address, rank order
    placement_strategy: str = "STRICT_SPREAD"
    # the emulated cluster's settings when the probe ran on one (raybench.cluster local)
    link: dict | None = None
    # scale --probe-network: the same probe among each smaller N >= 2 of the sweep, sizes up
    # to the model's largest DDP bucket (what the forecast at that N all-reduces)
    at_other_n: list[NetworkProbe] = field(default_factory=list)
    # scale --probe-network: the step's work alone and with every rank computing at once
    work: NodeWork | None = None


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
    allreduce: AllreduceLatency | None = None  # the launchers' all-reduce micro-benchmark
    # DDP's own timers (gloo or nccl; ns averaged over sampled iterations), rank 0
    ddp_logging: dict[str, float] | None = None


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
    ingest: str = "memory"  # data.ingest of the run
    ingest_only: bool = False  # batches fetched without training: the ingest's ceiling
    lr: float | None = None  # the learning rate the run used (after --lr-scaling)
    target: TargetResult | None = None
    chaos: str | None = None  # the kill schedule the run trained under
    epochs: int = 0  # epochs completed (each counted once, however often restarted)
    goodput_samples_per_sec: float | None = None  # epochs x samples per epoch / wall time
    failures: int = 0
    recovery_s: list[float] = field(default_factory=list)  # per failure: failure -> next step
    recovery_notes: list[str] = field(default_factory=list)  # failures whose recovery is untimed
    recoveries: list[Recovery] = field(default_factory=list)  # each fault: timing.json's own
    final_train_loss: float | None = None  # the last epoch's: a run with faults ends where?
    restore_s_total: float = 0.0
    checkpoint_save_s_total: float = 0.0
    report_s_total: float = 0.0
    # Per rank, so that a straggler shows: throughput, exposed data wait, first batch.
    samples_per_sec_per_rank: list[float | None] = field(default_factory=list)
    data_share_per_rank: list[float] = field(default_factory=list)
    first_batch_s_max: float | None = None
    first_batch_at: float | None = None  # epoch seconds the slowest rank's first batch was ready
    object_store_peak_mib: float | None = None
    spilled_mib: float | None = None
    speedup: float | None = None
    efficiency: float | None = None
    # Resident launchers: the samples/s of each kept window (samples_per_sec is their pooled
    # rate), and how many windows were measured and dropped for outside load.
    window_rates: list[float] = field(default_factory=list)
    windows: int = 0
    excluded_windows: int = 0
    # DDP's own timers (rank 0, ms per sampled iteration): its backward communication, and the
    # part of it not overlapped with backward compute, a cross-check of sync_s
    ddp_comm_ms: float | None = None
    ddp_exposed_comm_ms: float | None = None
    # A Ray Train helper switched off (--ray-train-switches), e.g. preemption_watcher
    without: str | None = None
    work_ms_quantiles: list[float] = field(default_factory=list)  # as Timing's (N=1 runs)
    cpu_mfu: float | None = None  # achieved FLOP/s over this machine's calibrated peak

    @property
    def label(self) -> str:
        """What a point measures: the launcher, its ingest when not in memory, ingest-only,
        under chaos, without one of Ray Train's helpers."""
        return run_label(self.backend, self.ingest, self.ingest_only, self.chaos, self.without)


def run_label(backend: str, ingest: str = "memory", ingest_only: bool = False,
              chaos: str | None = None, without: str | None = None) -> str:
    return (backend + ("" if ingest == "memory" else f"+{ingest}")
            + (" ingest-only" if ingest_only else "") + (" chaos" if chaos else "")
            + (f" w/o {without}" if without else ""))


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
    """One (label, workers) point of a scaling report, over its repeats (see RunRecord.label)."""

    backend: str
    label: str
    workers: int
    mode: str
    repeats: int
    samples_per_sec: Spread | None  # None: no run measured any step (all warm-up)
    samples_per_sec_per_worker: float | None
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
    # A streamed ingest against the same launcher with the data in memory, same N.
    vs_memory: float | None = None
    vs_memory_ci: Interval | None = None
    ingest: str = "memory"
    ingest_only: bool = False
    target: TargetSummary | None = None
    chaos: str | None = None
    goodput_samples_per_sec: float | None = None  # median over repeats
    goodput_vs_clean: Interval | None = None  # against the same point without faults
    failures: float | None = None  # medians over repeats
    recovery_s: float | None = None
    restore_s_total: float | None = None
    checkpoint_save_s_total: float | None = None
    report_s_total: float | None = None
    predicted_samples_per_sec: float | None = None  # the kept forecast (no N >= 2 input)
    prediction_error: float | None = None  # predicted / measured - 1
    cpu_mfu: float | None = None  # achieved FLOP/s over the calibrated peak of the cores used
    # Costs (raybench.scale --worker-hour-cost; worker-seconds without it): per million
    # samples at the measured rate, and to the target from the launch, start-up included
    cost_per_million_samples: float | None = None
    cost_to_target: float | None = None
    time_to_target_from_launch_s: float | None = None  # median over repeats
    data_share_min: float | None = None  # the least and most data-bound rank (medians)
    data_share_max: float | None = None
    first_batch_s: float | None = None
    object_store_peak_mib: float | None = None
    spilled_mib: float | None = None
    windows: int = 0  # resident: windows measured over the repeats, and those excluded
    excluded_windows: int = 0


@dataclass
class StartupPoint:
    """Ray's own start-up floor next to raybench's time to its first step, one N."""

    workers: int
    floor_s: float
    raybench_first_step_s: float | None
    ratio: float | None
    raybench_marks_s: dict[str, float]
    # The per-repeat ratio (each repeat's first step over its own floor): geometric mean and
    # its 95% interval, what a target is decided on; `ratio` is the medians' ratio.
    ratio_ci: Interval | None = None


@dataclass
class Forecast:
    """The scaling model's throughput at one N (scaling_model.py), made from the N=1 data before
    any N >= 2 point ran and kept; the measurement is set beside it afterwards. `extrapolated`
    marks a worker count that was not run (on the hardware the model assumes)."""

    backend: str
    workers: int
    batch_size_per_worker: int
    predicted_samples_per_sec: float | None
    measured_samples_per_sec: float | None = None
    error: float | None = None  # predicted / measured - 1
    extrapolated: bool = False
    step_ms: float | None = None
    work_ms: float | None = None  # one rank's mean work per step, N ranks sharing the machine
    wait_ms: float | None = None  # in sync beyond the communication (measured; order
    # statistics of the slowest rank for an N not run)
    allreduce_ms: float | None = None  # the all-reduce measured under load (or the ring fit)
    slowdown: float = 1.0  # the one-worker step with N copies at once over alone (measured)
    sync_share: float | None = None  # (wait + all-reduce) / step
    min_batch_sync_under_20pct: int | None = None
    cost_per_million_samples: float | None = None  # with raybench.scale's cost settings
    # The machine's speed while the point ran over its speed at the N=1 point: raw's N=1 step
    # there over raw's N=1 step in a window of every round of the point (> 1: faster then).
    speed: float | None = None
    error_same_speed: float | None = None  # predicted x speed / measured - 1
    # What the point measured for the forecast's two parts (median kept windows, mean over
    # ranks): the step outside sync (data + compute + optimizer) against work_ms, and sync
    # against wait_ms + the exposed all-reduce; a miss is traced to the part that moved
    measured_work_ms: float | None = None
    measured_sync_ms: float | None = None
    # The launcher's CPU a step per rank at this point over its N=1 point's (median windows).
    # Each rank does the same work at every N in weak scaling, so where sync costs little CPU
    # (the LSTM: 1.02-1.16 where its forecasts held) a ratio well above 1 is a slower machine;
    # gloo's all-reduce spends CPU too (1.2-2.5 for the sync-bound wide MLP, forecasts held)
    cpu_per_step: float | None = None
    # On a network (network_forecast.py): backward's length, the part of DDP's bucketed
    # all-reduce it did not hide, the buckets, and the link's terms with their source
    backward_ms: float | None = None
    exposed_ms: float | None = None
    buckets: int | None = None
    link: str | None = None  # e.g. "0.0998 Gbit/s, 352 us a hop, measured"


@dataclass
class ScalingModelReport:
    """The scaling model of a sweep: what it was fitted on and what it predicts."""

    cores: int  # CPUs per node the slowdown assumed
    threads: int
    gradient_bytes: int
    alpha_s: float | None  # all-reduce latency per ring hop
    beta_s_per_byte: float | None  # all-reduce seconds per byte (1 / bandwidth)
    fitted: bool  # alpha and beta fitted to the measured all-reduces (else given)
    allreduce: list[AllreduceMeasure]  # measured under load
    profile: dict  # one-worker phase times and work quantiles per per-worker batch (raw loop)
    # Per launcher, its mean work per step at the N=1 point's batch (seconds, from its rate).
    launcher_factor: dict[str, float] = field(default_factory=dict)
    calibration: dict | None = None  # this machine's peak (calibrate.py)
    # Per N the sweep runs, the loaded-step probe's means in ms (forecast.probe_summary):
    # rank 0 alone at the N=1 batch, N at once, and the lockstep steps' work and sync.
    probe: dict[str, dict] = field(default_factory=dict)  # keyed by str(N), as JSON keys are
    # Per probe (str(N)), the raw loop's N=1 step just before and after it over the probe's
    # bare step alone (forecast.basis_ratios): far from 1.0-1.2 a spell met one of them.
    basis_ratios: dict[str, float] = field(default_factory=dict)
    # Per probe (str(N)), the raw loop's step at the N=1 point over the same step beside the
    # probe (forecast.point_drift): far from 1 the N=1 point ran at another machine speed.
    point_drift: dict[str, float] = field(default_factory=dict)
    # Per N >= 2 point (str(N)), raw's N=1 step in a window of each of the point's rounds (ms,
    # every repeat; the speed reference forecast.check compares with the N=1 point).
    reference_ms: dict[str, list[float]] = field(default_factory=dict)
    # On a network (network_forecast.py): the link's terms and their source, DDP's buckets
    # (bytes, in all-reduce order), backward's share of forward+backward by per-worker batch,
    # and a sentence where the CPUs rather than the link bound the all-reduce
    link: str | None = None
    buckets: list[int] = field(default_factory=list)
    backward_share: dict[str, float] = field(default_factory=dict)
    link_note: str | None = None


@dataclass
class TargetSummary:
    """Time to target of one point over its repeats, scored as MLPerf does."""

    target: str
    runs: int
    reached: int
    valid: bool
    score_s: float | None  # mean after dropping the fastest and the slowest
    times_s: list[float | None]  # per repeat, from the first step (None: not reached)
    epochs_median: float | None
    samples_median: float | None
    eval_share: float | None  # validation's share of the time to target (median)
    note: str = ""


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
    target: str | None = None
    lr_scaling: str | None = None
    chaos: str | None = None
    model: ScalingModelReport | None = None
    verdict: list[str] | None = None  # one sentence per backend: which N was fastest and why
    # Resident launchers measured in interleaved windows (the default protocol): every ratio
    # from paired windows, and the windows themselves.
    protocol: str | None = None  # "resident" or "restart" (every repeat starts every launcher)
    precision: dict | None = None  # window_s, ci_halfwidth, budget_s, min_pairs, max_outside_load
    comparisons: list[Comparison] = field(default_factory=list)
    windows: list[MeasuredWindow] = field(default_factory=list)
    forecasts: list[Forecast] = field(default_factory=list)
    cost: dict | None = None  # worker_hour_cost, unit, deadline_s
    network: NetworkProbe | None = None  # --probe-network: the links between the ranks
    # "completed"; "interrupted": a sweep stopped by Ctrl-C or SIGTERM keeps what it had
    # measured, marked so that nothing reads it as the whole sweep; "failed": a launcher died
    # (what was measured until then is kept), or nothing could be measured
    status: str = "completed"


@dataclass
class TrialRow:
    """One Tune trial of a sweep (a row of trials.csv)."""

    trial_id: str | None
    config: dict[str, Any]  # the sampled values, by dotted config key
    status: str  # completed | stopped_early | incomplete | not_started | error
    epochs_run: int
    final: float | None  # the sweep metric at its last epoch
    best: float | None
    best_epoch: int | None
    wall_time_sec: float | None
    checkpoint: str | None  # its best checkpoint's directory
    history: list[float | None] = field(default_factory=list)  # the metric per epoch
    error: str | None = None


@dataclass
class TrialsDoc:
    """trials.json: a Tune sweep and how it ended."""

    status: str  # completed | interrupted
    metric: str
    mode: str  # min | max
    trials: list[TrialRow]
    settings: dict = field(default_factory=dict)
    baseline_valid: float | None = None  # the naive baseline's value of the metric
    wall_time_sec: float | None = None
    environment: dict = field(default_factory=dict)
    best: TrialRow | None = None


@dataclass
class RunStatus:
    """status.json of a run directory: how the run stands or how it ended."""

    status: str  # running | completed | interrupted | failed | diverged
    error: str | None = None  # one line: why it did not complete
    log: str | None = None  # where the whole story is (the driver's log, a worker's)

    @property
    def completed(self) -> bool:
        return self.status == "completed"


# status.json is written padded to this size: on a full disk (no free block, no free inode) the
# next status still fits in place, in the blocks the file already has.
STATUS_BYTES = 4096
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def write_status(run_dir: str | Path, status: RunStatus) -> Path:
    """status.json, atomically when the disk allows; when it does not, rewritten in place over
    the padded file the run started with, so a failure is never recorded as 'running'."""
    path = Path(run_dir) / "status.json"
    if status.error:
        status = dataclasses.replace(status, error=ANSI.sub("", status.error))
    text = json.dumps({"schema_version": SCHEMA_VERSION, **to_dict(status)}, indent=2)
    data = text.encode().ljust(STATUS_BYTES) if len(text) < STATUS_BYTES else text.encode()
    try:
        return artifacts.write_bytes(path, data)
    except OSError:
        if not path.is_file() or path.stat().st_size < len(data):
            raise
        with open(path, "r+b") as fh:  # no new block, no new inode
            fh.write(data.ljust(path.stat().st_size))
            fh.flush()
            os.fsync(fh.fileno())
        return path


def read_status(run_dir: str | Path) -> RunStatus:
    return read_doc(Path(run_dir) / "status.json", RunStatus)


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
        return decode(annotation, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [decode(args[0], v, where) for v in value]
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return {k: decode(args[1], v, where) for k, v in value.items()}
    return value


def decode(cls: type, data: Any, where: str = "result") -> Any:
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
    return decode(cls, read_json(path), str(path))
