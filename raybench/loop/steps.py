"""The named steps of the per-worker loop: set-up, resume, one training epoch, validation with
the early-stopping decision, checkpoint, and the result. `loop.worker.train_worker` calls them
in order; each is usable (and tested) on its own."""

from __future__ import annotations

import copy
import math
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raybench.config import Config, metric_mode
from raybench.data.ingest import Ingest
from raybench.loop.collector import MetricsCollector, SyncClock, mean_breakdown, startup_marks
from raybench.loop.session import Session
from raybench.metrics import evaluate_split
from raybench.models import build_model, count_parameters, loss_fn
from raybench.results import EpochRow, RankFacts, RunResult, Timing

CKPT_MODEL = "model.pt"
CKPT_STATE = "train_state.pt"
CKPT_BEST = "best_model.pt"


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
    torch.set_num_threads(worker_threads(cfg))
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, ingest.n_features, ingest.window)
    n_params = count_parameters(model)
    model = session.prepare_model(model)
    sync = SyncClock(session.world_size, collector.clock)
    if isinstance(model, DistributedDataParallel):
        model.register_comm_hook(None, sync.hook)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    collector.mark("model_ready")
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


# ------------------------------------------------------------------ checkpoints


def rng_state() -> dict:
    # Plain tensors, lists and numbers only, so checkpoints load with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(saved["python"])


def save_checkpoint(state: TrainState, epoch: int, directory: str) -> None:
    """Weights, best weights, optimizer, early-stopping counters, history and RNG states: all a
    restarted worker needs to continue as if nothing happened."""
    torch.save(state.module.state_dict(), os.path.join(directory, CKPT_MODEL))
    torch.save(state.best_state, os.path.join(directory, CKPT_BEST))
    s = state.stopper
    torch.save({"optimizer": state.optimizer.state_dict(), "epoch": epoch, "best": s.best,
                "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
                "history": [row.__dict__ for row in state.history],
                "epoch_times": state.epoch_times, "train_times": state.train_times,
                "rng": rng_state()}, os.path.join(directory, CKPT_STATE))


def resume(state: TrainState, directory: str) -> None:
    """Continue from a checkpoint written by save_checkpoint (any world size)."""
    device = state.session.device
    state.module.load_state_dict(torch.load(os.path.join(directory, CKPT_MODEL),
                                            map_location=device, weights_only=True))
    state.best_state = torch.load(os.path.join(directory, CKPT_BEST), map_location=device,
                                  weights_only=True)
    saved = torch.load(os.path.join(directory, CKPT_STATE), weights_only=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.first_epoch = saved["epoch"] + 1
    state.resumed_from_epoch = saved["epoch"]
    s = state.stopper
    s.best, s.best_epoch, s.bad_epochs = saved["best"], saved["best_epoch"], saved["bad_epochs"]
    state.history = [EpochRow(**row) for row in saved["history"]]
    state.epoch_times, state.train_times = saved["epoch_times"], saved["train_times"]
    set_rng_state(saved["rng"])


# ------------------------------------------------------------------ training


def train_epoch(state: TrainState, epoch: int, collector: MetricsCollector) -> EpochRow:
    """One pass over this rank's shard (or the benchmark window's share of it). The step is
    timed at its phase boundaries; the epoch's loss is the mean over every rank's samples."""
    t_epoch = time.perf_counter()
    state.model.train()
    collector.start_epoch(epoch)
    clock, sync, optimizer, step_model = collector.clock, state.sync, state.optimizer, \
        state.step_model
    autocast = torch.autocast(state.session.device.type, dtype=torch.bfloat16,
                              enabled=state.cfg.train.precision == "bf16")
    losses, sizes = [], []
    first = collector.marks["first_step"] is None
    progress = Progress(state, epoch)
    t0 = clock()
    for xb, yb in islice(state.ingest.train_batches(epoch), state.steps_per_epoch):
        t1 = clock()
        if first:
            collector.mark("first_step")
            first = False
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = state.criterion(step_model(xb).float(), yb)
        sync.last_launch = None
        loss.backward()
        t2 = clock()
        optimizer.step()
        t3 = clock()
        losses.append(loss.detach())
        sizes.append(len(yb))
        done = collector.record(len(yb), t0, t1, sync.last_launch, t2, t3)
        progress.tick(len(sizes))
        if done:
            break
        t0 = t3
    collector.end_epoch()
    train_loss = global_mean_loss(losses, sizes, state.session)
    if not math.isfinite(train_loss):
        raise Diverged(f"training diverged in epoch {epoch}: the train loss is {train_loss}")
    return EpochRow(epoch=epoch, world_size=state.session.world_size, train_loss=train_loss,
                    train_time_s=time.perf_counter() - t_epoch)


class Progress:
    """Rank 0 tells its session how far a long epoch is, at most every progress_every_s."""

    def __init__(self, state: TrainState, epoch: int) -> None:
        self.every = state.progress_every_s if state.session.rank == 0 else None
        self.next = time.perf_counter() + self.every if self.every else math.inf
        self.session, self.epoch, self.steps = state.session, epoch, state.steps_per_epoch

    def tick(self, step: int) -> None:
        if self.every and time.perf_counter() >= self.next:
            self.session.step_progress({"epoch": self.epoch, "step": step, "steps": self.steps})
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
    module predicts: no DDP collective depends on how many eval batches a rank has."""
    model = state.module
    model.eval()
    rows = [torch.stack([model(x).float().cpu(), y.float(), b.float()], dim=1)
            for x, y, b in state.ingest.eval_batches(split)]
    local = torch.cat(rows) if rows else torch.zeros((0, 3))
    out, y, base = gather_rows(local, state.session).numpy().T
    task = state.ingest.task
    loss = float(loss_fn(task)(torch.from_numpy(out), torch.from_numpy(y)))
    return evaluate_split(task, out, y, base, loss, state.cfg.eval.threshold)


def validate_and_decide(state: TrainState, row: EpochRow) -> None:
    """Validation metrics into the epoch's row; the early-stopping decision; best weights."""
    val = evaluate(state, "valid")
    row.val_loss = val["loss"]
    row.val_metrics = {f"val_{k}": v for k, v in val.items()
                       if isinstance(v, float) and k != "loss"}
    row.new_best = state.stopper.update(row.value(state.stopper.metric), row.epoch)
    if row.new_best:
        state.best_state = copy.deepcopy(state.module.state_dict())


def report_epoch(state: TrainState, row: EpochRow, checkpoint: bool) -> None:
    """End of an epoch on every rank: rank 0 attaches a checkpoint when asked."""
    metrics = {k: v for k, v in row.flat().items() if isinstance(v, (int, float))}
    s = state.stopper
    metrics.update(metric=s.metric, best=s.best, best_epoch=s.best_epoch, pid=os.getpid())
    if not (checkpoint and state.session.rank == 0):
        state.session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="raybench-ckpt-") as directory:
        save_checkpoint(state, row.epoch, directory)
        state.session.report(metrics, directory)


def close_epoch(state: TrainState, row: EpochRow, started: float) -> None:
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
    facts = collector.rank_facts(state.session.rank, state.session.node(), state.module)
    ranks = gather_objects(facts, state.session)
    if state.session.rank != 0:
        return None
    s = state.stopper
    return RunResult(
        task=state.ingest.task, metric=s.metric, mode=s.mode, best=s.best,
        num_parameters=state.num_parameters, history=state.history, metrics_valid=valid,
        metrics_test=test, timing=build_timing(state, collector, ranks, launch_time),
        best_state={k: v.cpu().numpy() for k, v in state.best_state.items()})


def build_timing(state: TrainState, collector: MetricsCollector, ranks: list[RankFacts],
                 launch_time: float | None) -> Timing:
    """timing.json: epoch clocks, throughput over the ranks, start-up, the step breakdown."""
    world, batch = state.session.world_size, state.cfg.train.batch_size
    rates = [r.samples_per_sec for r in ranks]
    total = sum(rates) if all(rate is not None for rate in rates) else None
    epochs = np.asarray(state.epoch_times, dtype=np.float64)
    marks = startup_marks(ranks, launch_time)
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
        step_breakdown=mean_breakdown([r.step_breakdown for r in ranks]), ranks=ranks)

