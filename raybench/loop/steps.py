"""The named steps of the per-worker loop: set-up, resume, one training epoch, validation with
the early-stopping decision, checkpoint, and the result. `loop.worker.train_worker` calls them
in order; each is usable (and tested) on its own."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raybench import malloc, probes
from raybench.affinity import pin_cores
from raybench.config import Config, metric_mode
from raybench.data.ingest import Ingest
from raybench.loop.collector import MetricsCollector, SyncClock, mean_breakdown, startup_marks
from raybench.loop.session import Session
from raybench.metrics import (
    REGRESSION_SUMS,
    evaluate_split,
    regression_from_sums,
    regression_sums,
)
from raybench.models import build_model, count_parameters, loss_fn
from raybench.results import (
    EpochRow,
    RankFacts,
    Restore,
    RunResult,
    StepBreakdown,
    StepProgress,
    TargetResult,
    Timing,
)
from raybench.targets import Target


class Diverged(Exception):
    """The training loss became NaN or infinite: nothing after that point is a result."""


@dataclass
class EarlyStopper:
    """Tracks the best value of the watched metric; stops after `patience` epochs without
    improvement (0: never). Every rank sees the same gathered metrics, so all decide alike."""

    metric: str
    mode: str
    patience: int
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is a new best."""
        better = self.best is None or (value < self.best if self.mode == "min"
                                       else value > self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


@dataclass
class TrainState:
    """Everything one rank's training carries from epoch to epoch."""

    cfg: Config
    session: Session
    ingest: Ingest
    model: nn.Module  # as prepared by the session (DDP-wrapped when world > 1)
    step_model: nn.Module  # what training steps call: the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    sync: SyncClock
    stopper: EarlyStopper
    num_parameters: int
    steps_per_epoch: int
    first_epoch: int = 1
    resumed_from_epoch: int | None = None
    history: list[EpochRow] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)
    train_times: list[float] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    progress_every_s: float | None = None
    samples_seen: int = 0  # training samples this rank has processed
    target: TargetResult | None = None  # set when the run met its target
    restores: list[Restore] = field(default_factory=list)  # every restart, across incarnations
    launch_time: float | None = None  # epoch seconds the user's command started
    # Start-up marks (epoch seconds, slowest rank) of this launch's first incarnation: after Ray
    # restarts the workers, time to first step still means the job's start-up, not the restart's.
    first_marks: dict[str, float] | None = None
    bound: Any = None  # loop.hang.CollectiveBound: how long a collective waits on a stuck rank
    pause_clock: Any = None  # loop.hang.PauseClock: when this rank's process did not run

    @property
    def module(self) -> nn.Module:
        """The bare model: no DDP or compile wrapper, so state_dicts carry no prefixes."""
        return unwrap(self.model)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def worker_threads(cfg: Config) -> int:
    """Intra-op threads: the configured count, else the worker's whole-CPU share (at least 1).
    More threads than reserved cores made the MLP 5x slower here (oversubscription)."""
    if cfg.scaling.threads_per_worker:
        return cfg.scaling.threads_per_worker
    return max(1, math.floor(cfg.scaling.cpus_per_worker))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(cfg: Config, ingest: Ingest, session: Session, collector: MetricsCollector,
          max_steps_per_epoch: int | None = None) -> TrainState:
    """Threads, seeds, the model wrapped for data parallelism, optimizer and loss."""
    if cfg.scaling.pin_threads:
        collector.pinned = pin_cores(session.local_rank, worker_threads(cfg))
    if cfg.scaling.steady_malloc:  # before the model's first allocation
        collector.malloc = malloc.hold_steady()
    torch.set_num_threads(worker_threads(cfg))
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, ingest.n_features, ingest.window, ingest.task)
    n_params = count_parameters(model)
    model = session.prepare_model(model)
    sync = SyncClock(session.world_size, collector.clock)
    if isinstance(model, DistributedDataParallel):
        model.register_comm_hook(None, sync.hook)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    collector.mark("model_ready")
    ingest.prime()  # a streamed pipeline's start and first blocks: before any clock
    metric = cfg.early_stop(ingest.task)[0]
    steps = ingest.steps_per_epoch
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    state = TrainState(
        cfg=cfg, session=session, ingest=ingest, model=model,
        # The compiled wrapper only runs training steps; evaluation and state_dicts use the
        # module itself, so checkpoints carry no compile or DDP prefixes.
        step_model=torch.compile(model) if cfg.train.compile else model,
        optimizer=optimizer, criterion=loss_fn(ingest.task), sync=sync,
        stopper=EarlyStopper(metric, metric_mode(metric), cfg.train.early_stop_patience),
        num_parameters=n_params, steps_per_epoch=steps)
    state.best_state = copy.deepcopy(state.module.state_dict())
    return state


# ------------------------------------------------------------------ training


def train_epoch(state: TrainState, epoch: int, collector: MetricsCollector) -> EpochRow:
    """One pass over this rank's shard (or the benchmark window's share of it). The step is
    timed at its phase boundaries; the epoch's loss is the mean over every rank's samples."""
    t_epoch = time.perf_counter()
    state.model.train()
    collector.start_epoch(epoch)
    step = Stepper(state, collector)
    progress = Progress(state, epoch)
    t0 = collector.clock()
    for xb, yb in islice(state.ingest.train_batches(epoch), state.steps_per_epoch):
        t0, done = step(xb, yb, t0)
        progress.tick(len(step.sizes))
        if done:
            break
    collector.end_epoch()
    state.samples_seen += sum(step.sizes)
    train_loss = global_mean_loss(step.losses, step.sizes, state.session)
    if not math.isfinite(train_loss):
        raise Diverged(f"training diverged in epoch {epoch}: the train loss is {train_loss}")
    return EpochRow(epoch=epoch, world_size=state.session.world_size, train_loss=train_loss,
                    train_time_s=time.perf_counter() - t_epoch)


class Stepper:
    """One training step, timed at its phase boundaries: batch ready, forward and backward
    (up to the last gradient bucket's all-reduce launch), exposed sync, optimizer. Keeps the
    losses and batch sizes of the steps it ran."""

    def __init__(self, state: TrainState, collector: MetricsCollector) -> None:
        self.state, self.collector = state, collector
        self.autocast = torch.autocast(state.session.device.type, dtype=torch.bfloat16,
                                       enabled=state.cfg.train.precision == "bf16")
        self.first = collector.marks["first_step"] is None
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, t0) -> tuple[Any, bool]:
        """Train on one batch whose wait began at t0; (the step's end, window complete)."""
        state, collector, sync = self.state, self.collector, self.state.sync
        t1 = collector.clock()
        if self.first:
            collector.mark("first_step")
            state.session.first_step(collector.marks["first_step"])
            self.first = False
        state.optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            loss = state.criterion(state.step_model(xb).float(), yb)
        sync.last_launch = None
        loss.backward()
        t2 = collector.clock()
        state.optimizer.step()
        t3 = collector.clock()
        self.losses.append(loss.detach())
        self.sizes.append(len(yb))
        return t3, collector.record(len(yb), t0, t1, sync.last_launch, t2, t3)


def drain_epoch(state: TrainState, epoch: int, collector: MetricsCollector) -> EpochRow:
    """The ingest alone: one epoch's batches fetched and dropped, no model work. Its samples/s
    is the ceiling the ingest puts on training."""
    t_epoch = time.perf_counter()
    collector.start_epoch(epoch)
    clock = collector.clock
    t0 = clock()
    for _, yb in islice(state.ingest.train_batches(epoch), state.steps_per_epoch):
        t1 = clock()
        if collector.record(len(yb), t0, t1, None, t1, t1):
            break
        t0 = t1
    collector.end_epoch()
    return EpochRow(epoch=epoch, world_size=state.session.world_size, train_loss=math.nan,
                    train_time_s=time.perf_counter() - t_epoch)


class Progress:
    """Rank 0 tells its session how far a long epoch is, at most every progress_every_s."""

    def __init__(self, state: TrainState, epoch: int) -> None:
        self.every = state.progress_every_s if state.session.rank == 0 else None
        self.next = time.perf_counter() + self.every if self.every else math.inf
        self.session, self.epoch, self.steps = state.session, epoch, state.steps_per_epoch

    def tick(self, step: int) -> None:
        if self.every and time.perf_counter() >= self.next:
            self.session.step_progress(StepProgress(self.epoch, step, self.steps, time.time()))
            self.next = time.perf_counter() + self.every


def global_mean_loss(losses: list[torch.Tensor], sizes: list[int], session: Session) -> float:
    """Sample-weighted mean loss of the epoch over all ranks (one all-reduce)."""
    device = session.device
    if losses:
        weights = torch.tensor(sizes, dtype=torch.float32, device=device)
        total = torch.stack([torch.stack(losses).float() @ weights, weights.sum()])
    else:
        total = torch.zeros(2, device=device)
    if session.world_size > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


# ------------------------------------------------------------------ evaluation


def gather_rows(local: torch.Tensor, session: Session) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (shards may differ in length)."""
    if session.world_size == 1:
        return local
    local = local.to(session.device)
    sizes = [torch.zeros(1, dtype=torch.long, device=session.device)
             for _ in range(session.world_size)]
    dist.all_gather(sizes, torch.tensor([len(local)], device=session.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=session.device)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(s.item())] for p, s in zip(parts, sizes, strict=True)]).cpu()


@torch.no_grad()
def evaluate(state: TrainState, split: str) -> dict[str, Any]:
    """Every rank predicts its shard of the split; all ranks get the same full metrics. The bare
    module predicts: no DDP collective depends on how many eval batches a rank has. A
    regression split is reduced to a few totals per rank (one all-reduce): no rank ever holds
    the whole split, which on data larger than memory took hundreds of MiB per worker.
    Classification's AUC needs every score: ranks gather (logit, label) pairs, 8 bytes each."""
    model, task = state.module, state.ingest.task
    model.eval()
    if task == "regression":
        sums = np.zeros(len(REGRESSION_SUMS))
        for x, y, b, _ in state.ingest.eval_batches(split):
            sums += regression_sums(model(x).float().cpu().numpy(), y.numpy(), b.numpy())
        totals = torch.from_numpy(sums).to(state.session.device)
        if state.session.world_size > 1:
            dist.all_reduce(totals)
        return regression_from_sums(totals.cpu().numpy())
    rows, majority = [], 0.0
    for x, y, b, _ in state.ingest.eval_batches(split):
        rows.append(torch.stack([model(x).float().cpu(), y.float()], dim=1))
        majority = float(b[0]) if len(b) else majority
    local = torch.cat(rows) if rows else torch.zeros((0, 2))
    gathered = gather_rows(local, state.session)
    if state.session.world_size > 1:  # every rank's majority is the train split's
        majority = max(gather_objects(majority, state.session))
    out, y = gathered.numpy().T
    loss = float(loss_fn(task)(torch.from_numpy(out), torch.from_numpy(y)))
    return evaluate_split(task, out, y, np.full(len(y), majority, dtype=np.float32), loss,
                          state.cfg.eval.threshold)


def validate_and_decide(state: TrainState, row: EpochRow) -> None:
    """Validation metrics into the epoch's row; the early-stopping decision; best weights."""
    started = time.perf_counter()
    val = evaluate(state, "valid")
    row.eval_time_s = time.perf_counter() - started
    row.val_loss = val["loss"]
    row.val_metrics = {f"val_{k}": v for k, v in val.items()
                       if isinstance(v, float) and k != "loss"}
    row.new_best = state.stopper.update(row.value(state.stopper.metric), row.epoch)
    if row.new_best:
        state.best_state = copy.deepcopy(state.module.state_dict())


def check_target(state: TrainState, row: EpochRow, target: Target,
                 collector: MetricsCollector, launch_time: float | None) -> bool:
    """Whether this epoch's validation met the target (every rank sees the same gathered
    metrics, so every rank stops together); records when and at what cost."""
    value = row.value(target.metric)
    if not target.met(value):
        return False
    now, first = time.time(), collector.marks["first_step"]
    state.target = TargetResult(
        target=str(target), reached=True, epochs=len(state.history),
        samples=state.samples_seen * state.session.world_size,
        time_from_first_step_s=now - first if first else None,
        time_from_start_s=now - launch_time if launch_time else None,
        eval_time_s=sum(r.eval_time_s for r in state.history), value=value)
    return True


def missed(state: TrainState, target: Target) -> TargetResult:
    values = [v for r in state.history if (v := r.value(target.metric)) is not None]
    best = (max if target.op == ">=" else min)(values) if values else None
    return TargetResult(target=str(target), reached=False, epochs=len(state.history),
                        samples=state.samples_seen * state.session.world_size,
                        eval_time_s=sum(r.eval_time_s for r in state.history), value=best)


def note_first_marks(state: TrainState, collector: MetricsCollector) -> None:
    """Keep the launch's start-up marks once every rank has passed them (after the first epoch
    of the first incarnation); one object gather per run."""
    if state.first_marks is None and state.resumed_from_epoch is None:
        marks = gather_objects(dict(collector.marks), state.session)
        state.first_marks = {k: max(m[k] for m in marks) for k in marks[0]
                             if all(m.get(k) for m in marks)}


def close_epoch(state: TrainState, row: EpochRow, started: float) -> None:
    if state.ingest.name == "ray_data":
        probes.release_free_memory()  # what the epoch's fetches and evaluation freed
    row.epoch_time_s = time.perf_counter() - started
    state.history.append(row)
    state.epoch_times.append(row.epoch_time_s)
    state.train_times.append(row.train_time_s)


# ------------------------------------------------------------------ result


def gather_objects(obj: Any, session: Session) -> list[Any]:
    if session.world_size == 1:
        return [obj]
    out = [None] * session.world_size
    dist.all_gather_object(out, obj)
    return out


def finish(state: TrainState, collector: MetricsCollector, evaluate_splits: bool,
           launch_time: float | None) -> RunResult | None:
    """Best weights back, final validation and test metrics, every rank's facts gathered; the
    run's result on rank 0 (None on the others)."""
    valid = test = {}
    if evaluate_splits:
        # Identical weights on every rank (DDP), so every rank restores the same best state.
        state.module.load_state_dict(state.best_state)
        valid, test = evaluate(state, "valid"), evaluate(state, "test")
        probes.release_free_memory()
    facts = collector.rank_facts(state.session.rank, state.session.node(), state.module,
                                 state.ingest.name, state.ingest.first_batch_s,
                                 getattr(state.ingest, "first_batch_at", None))
    facts.epochs_run, facts.best_epoch = len(state.history), state.stopper.best_epoch
    if state.pause_clock is not None:
        facts.pauses = [dataclasses.replace(p, node=facts.node) for p in state.pause_clock.stop()]
    ranks = gather_objects(facts, state.session)
    if state.session.rank != 0:
        return None
    s = state.stopper
    return RunResult(
        task=state.ingest.task, metric=s.metric, mode=s.mode, best=s.best,
        num_parameters=state.num_parameters, history=state.history, metrics_valid=valid,
        metrics_test=test, timing=build_timing(state, collector, ranks, launch_time),
        best_state={k: v.cpu().numpy() for k, v in state.best_state.items()},
        ddp_logging=ddp_timers(state.model))


STRAGGLER_RATIO = 1.3  # well past the spread of equal ranks here (within 10% of each other)


def work_s(b: StepBreakdown) -> float:
    """A rank's own work per step: everything but waiting for the others."""
    return b.data_s + b.compute_s + b.optimizer_s


def straggler(ranks: list[RankFacts]) -> int | None:
    """The rank whose own work per step is STRAGGLER_RATIO times the median of the others':
    the one a synchronous step waits for (a slow node, a CPU quota, a busy neighbour)."""
    if len(ranks) < 2:
        return None
    work = [work_s(r.step_breakdown) for r in ranks]
    slowest = max(range(len(ranks)), key=work.__getitem__)
    others = float(np.median([w for i, w in enumerate(work) if i != slowest]))
    return ranks[slowest].rank if others > 0 and work[slowest] >= STRAGGLER_RATIO * others \
        else None


# DDP's own per-iteration timers (nanoseconds, averaged over the iterations it samples).
DDP_TIMERS = ("avg_forward_compute_time", "avg_backward_compute_time", "avg_backward_comm_time",
              "avg_backward_compute_comm_overlap_time")


def ddp_timers(model: nn.Module) -> dict[str, float] | None:
    """What DistributedDataParallel measured of its own steps: a cross-check of the sync phase
    (exposed communication is comm minus its overlap with backward compute)."""
    if not isinstance(model, DistributedDataParallel):
        return None
    try:
        data = model._get_ddp_logging_data()
    except (AttributeError, RuntimeError):
        return None
    return {k: float(data[k]) for k in DDP_TIMERS if isinstance(data.get(k), (int, float))}


def build_timing(state: TrainState, collector: MetricsCollector, ranks: list[RankFacts],
                 launch_time: float | None) -> Timing:
    """timing.json: epoch clocks, throughput over the ranks, start-up, the step breakdown."""
    world, batch = state.session.world_size, state.cfg.train.batch_size
    rates = [r.samples_per_sec for r in ranks]
    total = sum(rates) if all(rate is not None for rate in rates) else None
    epochs = np.asarray(state.epoch_times, dtype=np.float64)
    marks = startup_marks([m.startup_epoch_s for m in ranks], launch_time)
    if state.first_marks and state.restores:
        marks = startup_marks([state.first_marks], launch_time)
    return Timing(
        total_epochs=len(state.epoch_times), best_epoch=state.stopper.best_epoch,
        total_time_sec=float(epochs.sum()),
        mean_time_per_epoch=float(epochs.mean()) if epochs.size else 0.0,
        std_time_per_epoch=float(epochs.std()) if epochs.size else 0.0,
        epoch_times=state.epoch_times, train_times=state.train_times, num_workers=world,
        warmup_epochs=collector.warmup_epochs, warmup_steps=collector.warmup_steps,
        samples_per_sec=total, samples_per_sec_per_worker=total / world if total else None,
        measured_steps=collector.measured_steps, time_to_first_step_s=marks.first_step_s,
        startup_s=marks, threads_per_worker=ranks[0].threads,
        dataset_mib=state.ingest.dataset_mib, batch_size_per_worker=batch,
        global_batch_size=batch * world, steps_per_epoch=state.steps_per_epoch,
        stopped_early=state.stopper.should_stop, resumed_from_epoch=state.resumed_from_epoch,
        step_breakdown=mean_breakdown([r.step_breakdown for r in ranks]), ranks=ranks,
        ingest=state.ingest.name, restores=state.restores,
        work_ms_quantiles=collector.work_quantiles_ms(),
        checkpoint_save_s_total=sum(r.checkpoint_save_s for r in state.history),
        report_s_total=sum(r.report_s for r in state.history),
        hang_collective_s=(state.bound.bound_s if state.bound is not None and state.bound.active
                           else None),
        pauses=sorted((p for r in ranks for p in r.pauses), key=lambda p: p.started_epoch_s),
        straggler_rank=straggler(ranks))

