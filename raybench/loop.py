"""The per-worker training loop. It knows no CLI, no Tune and no launcher: a `Session` gives it
its rank, device, model wrapper, reporting and checkpoint to resume from."""

from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from raybench.config import Config
from raybench.data import ARRAY_FIELDS, Dataset
from raybench.metrics import evaluate_split
from raybench.models import build_model, count_parameters, loss_fn
from raybench.timing import StepTimes, epoch_stats, peak_rss_mb, pss_mb, throughput

CKPT_MODEL = "model.pt"
CKPT_STATE = "train_state.pt"
CKPT_BEST = "best_model.pt"


class Session(Protocol):
    """What a launcher provides to the loop."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None: ...

    def get_checkpoint_dir(self) -> str | None: ...

    def step_progress(self, info: dict[str, Any]) -> None: ...  # rank 0, within long epochs

    def node(self) -> dict[str, str]: ...  # {"ip": ..., "id": ...} of the machine it runs on


@dataclass
class LoopOptions:
    """How the launcher wants the loop run (not model or data settings: those are the Config)."""

    launch_time: float | None = None  # epoch seconds of the user's process start
    checkpoint: bool = True  # checkpoint every epoch (resume, fault tolerance, best weights)
    evaluate: bool = True  # validation every epoch, test at the end
    max_steps_per_epoch: int | None = None  # cap for benchmarks on huge data
    warmup_steps: int = 0  # steps excluded from throughput, on top of train.warmup_epochs
    progress_interval_sec: float | None = None  # rank 0 tells the session its step this often
    worker_entry_time: float | None = None  # when the launcher's worker function began


def worker_threads(cfg: Config) -> int:
    """Intra-op threads: the configured count, else the worker's whole-CPU share (at least 1).
    More threads than reserved cores made the MLP 5x slower here (oversubscription)."""
    if cfg.scaling.threads_per_worker:
        return cfg.scaling.threads_per_worker
    return max(1, math.floor(cfg.scaling.cpus_per_worker))


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Contiguous, nearly equal shards (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _as_tensor(a: np.ndarray) -> torch.Tensor:
    # Arrays from Ray's object store are read-only views of shared memory; we never write to
    # them, so share instead of copying and silence torch's non-writable warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class _SyncClock:
    """DDP comm hook that records when the last gradient bucket's all-reduce was launched;
    the time from there to the end of backward is communication the backward could not hide."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self.last_launch = 0.0

    # No annotations: DDP checks them literally, and postponed (string) annotations fail that.
    def hook(self, state, bucket):  # noqa: ANN001, ANN201
        self.last_launch = time.perf_counter()
        tensor = bucket.buffer().div_(self.world_size)
        fut = dist.all_reduce(tensor, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])


def _gather(local: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Concatenate every rank's contiguous shard of an n-row result, in rank order."""
    if world == 1:
        return local
    width = -(-n // world)
    padded = torch.zeros(width, dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    sizes = [b - a for a, b in (shard_bounds(n, world, r) for r in range(world))]
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])


@torch.no_grad()
def _predict(model: nn.Module, X: np.ndarray, session: Session, batch: int) -> np.ndarray:
    """Every rank predicts its shard; all ranks end with the full, identical output."""
    start, stop = shard_bounds(len(X), session.world_size, session.rank)
    model.eval()
    xs = _as_tensor(X[start:stop])
    outs = [model(xs[i:i + batch].to(session.device)) for i in range(0, len(xs), batch)]
    local = torch.cat(outs) if outs else torch.empty(0, device=session.device)
    return _gather(local.float(), len(X), session.world_size).cpu().numpy()


def _evaluate(model: nn.Module, X: np.ndarray, y: np.ndarray, baseline: np.ndarray,
              task: str, cfg: Config, session: Session) -> dict:
    out = _predict(model, X, session, max(cfg.train.batch_size, 4096))
    loss = float(loss_fn(task)(torch.from_numpy(out), torch.from_numpy(y)))
    return evaluate_split(task, out, y, baseline, loss, cfg.eval.threshold)


def _weights_digest(model: nn.Module) -> str:
    """Fingerprint of the trained weights: DDP ranks must agree bit for bit."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    # Plain tensors, lists and numbers only, so checkpoints load with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


def _improved(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _startup(ranks: list[dict], launch_time: float | None) -> dict[str, float] | None:
    """Seconds from launch until the slowest rank passed each start-up mark."""
    if launch_time is None:
        return None
    out = {}
    for mark in ("worker_entry", "loop_entry", "model_ready", "first_step"):
        times = [r["startup_marks"][mark] for r in ranks if r["startup_marks"].get(mark)]
        if times:
            out[mark] = max(times) - launch_time
    return out


def train_worker(cfg: Config, data: Dataset, session: Session,
                 options: LoopOptions | None = None) -> dict | None:
    """Train on this rank's shard; returns the run's result on rank 0, None elsewhere."""
    options = options or LoopOptions()
    loop_entry = time.time()
    rank, world, device = session.rank, session.world_size, session.device
    pss_start = pss_mb()  # before this worker touches the data
    torch.set_num_threads(worker_threads(cfg))
    _seed_everything(cfg.train.seed)
    task = data.task
    metric_name, mode = cfg.early_stop(task)

    start, stop = shard_bounds(len(data.X_train), world, rank)
    # Equal shard sizes on every rank, so every rank runs the same number of steps (DDP hangs
    # on uneven step counts); at most world-1 samples are left out.
    n_local = len(data.X_train) // world
    X_shard = _as_tensor(data.X_train[start:start + n_local])
    y_shard = _as_tensor(data.y_train[start:start + n_local])
    on_gpu = device.type == "cuda"
    if on_gpu:
        X_shard, y_shard = X_shard.pin_memory(), y_shard.pin_memory()
    batch = cfg.train.batch_size
    steps = math.ceil(n_local / batch)
    if options.max_steps_per_epoch:
        steps = min(steps, options.max_steps_per_epoch)

    model = build_model(cfg.model, data.n_features, data.window)
    n_params = count_parameters(model)
    model = session.prepare_model(model)
    clock = _SyncClock(world)
    if isinstance(model, DistributedDataParallel):
        model.register_comm_hook(None, clock.hook)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr,
                                 weight_decay=cfg.train.weight_decay)
    model_ready = time.time()
    # The compiled wrapper only runs training steps; evaluation and state_dicts use the module
    # itself, so checkpoints carry no compile or DDP prefixes.
    step_model = torch.compile(model) if cfg.train.compile else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                              enabled=cfg.train.precision == "bf16")
    criterion = loss_fn(task)

    first_epoch, best, best_epoch, bad_epochs = 1, None, 0, 0
    history: list[dict] = []
    epoch_times: list[float] = []
    train_times: list[float] = []
    best_state = copy.deepcopy(_unwrap(model).state_dict())
    resumed_from = session.get_checkpoint_dir()
    if resumed_from:
        _unwrap(model).load_state_dict(torch.load(os.path.join(resumed_from, CKPT_MODEL),
                                                  map_location=device, weights_only=True))
        best_state = torch.load(os.path.join(resumed_from, CKPT_BEST), map_location=device,
                                weights_only=True)
        state = torch.load(os.path.join(resumed_from, CKPT_STATE), weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        first_epoch = state["epoch"] + 1
        best, best_epoch, bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        history, epoch_times = state["history"], state["epoch_times"]
        train_times = state["train_times"]
        _set_rng_state(state["rng"])

    times = StepTimes()
    # Throughput counts the steps themselves (data, compute, sync, optimizer) after warm-up;
    # evaluation and reporting between epochs are not training throughput.
    counted_samples, counted_seconds, global_step = 0, 0.0, 0
    first_step_time: float | None = None
    shuffle_gen = torch.Generator().manual_seed(cfg.train.seed * 1000 + rank)
    if cfg.data.shuffle_train:
        # Each rank's shuffle stream is a function of seed, rank and epoch: replay the epochs
        # a resumed run already did instead of storing every rank's generator.
        for _ in range(first_epoch - 1):
            torch.randperm(n_local, generator=shuffle_gen)
    stopped_early = False
    every = options.progress_interval_sec if rank == 0 else None
    next_progress = time.perf_counter() + every if every else math.inf

    for epoch in range(first_epoch, cfg.train.epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        past_warmup_epochs = epoch > cfg.train.warmup_epochs
        order = torch.randperm(n_local, generator=shuffle_gen) if cfg.data.shuffle_train else None
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for step in range(steps):
            t0 = time.perf_counter()
            lo, hi = step * batch, min((step + 1) * batch, n_local)
            if order is None:
                xb, yb = X_shard[lo:hi], y_shard[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = X_shard[idx], y_shard[idx]
            if on_gpu:
                xb = xb.to(device, non_blocking=True)
                yb = yb.to(device, non_blocking=True)
                torch.cuda.synchronize(device)
            t1 = time.perf_counter()
            if first_step_time is None:
                first_step_time = time.time()
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = criterion(step_model(xb).float(), yb)
            clock.last_launch = 0.0
            loss.backward()
            if on_gpu:
                torch.cuda.synchronize(device)
            t2 = time.perf_counter()
            optimizer.step()
            if on_gpu:
                torch.cuda.synchronize(device)
            t3 = time.perf_counter()
            loss_sum += loss.detach() * (hi - lo)
            seen += hi - lo
            global_step += 1
            if past_warmup_epochs and global_step > options.warmup_steps:
                launch = clock.last_launch if clock.last_launch else t2
                times.add(t1 - t0, launch - t1, t2 - launch, t3 - t2)
                counted_samples += hi - lo
                counted_seconds += t3 - t0
            if t3 >= next_progress:
                session.step_progress({"epoch": epoch, "step": step + 1, "steps": steps})
                next_progress = t3 + every
        train_time = time.perf_counter() - t_epoch
        train_loss = float(loss_sum) / max(seen, 1)

        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss,
                               "train_time_sec": train_time}
        improved = False
        if options.evaluate:
            val = _evaluate(model, data.X_valid, data.y_valid, data.baseline_valid, task, cfg,
                            session)
            value = val["loss"] if metric_name == "val_loss" else val[metric_name]
            row["val_loss"] = val["loss"]
            row.update({f"val_{k}": v for k, v in val.items()
                        if isinstance(v, float) and k != "loss"})
            improved = _improved(value, best, mode)
            if improved:
                best, best_epoch, bad_epochs = value, epoch, 0
                best_state = copy.deepcopy(_unwrap(model).state_dict())
            else:
                bad_epochs += 1
        epoch_time = time.perf_counter() - t_epoch
        row["epoch_time_sec"] = epoch_time
        row["new_best"] = improved
        history.append(row)
        epoch_times.append(epoch_time)
        train_times.append(train_time)
        stop_now = (options.evaluate and cfg.train.early_stop_patience > 0
                    and bad_epochs >= cfg.train.early_stop_patience)

        ckpt_dir = None
        tmp = None
        if options.checkpoint and rank == 0:
            tmp = tempfile.TemporaryDirectory(prefix="raybench-ckpt-")
            ckpt_dir = tmp.name
            torch.save(_unwrap(model).state_dict(), os.path.join(ckpt_dir, CKPT_MODEL))
            torch.save(best_state, os.path.join(ckpt_dir, CKPT_BEST))
            torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
                        "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                        "history": history, "epoch_times": epoch_times,
                        "train_times": train_times, "rng": _rng_state()},
                       os.path.join(ckpt_dir, CKPT_STATE))
        report = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        report.update(metric=metric_name, best=best, best_epoch=best_epoch, pid=os.getpid())
        session.report(report, ckpt_dir)
        if tmp is not None:
            tmp.cleanup()
        if stop_now:
            stopped_early = True
            break

    # Identical weights on every rank (DDP), so every rank restores the same best state.
    if options.evaluate:
        _unwrap(model).load_state_dict(best_state)
        metrics_valid = _evaluate(model, data.X_valid, data.y_valid, data.baseline_valid, task,
                                  cfg, session)
        metrics_test = _evaluate(model, data.X_test, data.y_test, data.baseline_test, task, cfg,
                                 session)
    else:
        metrics_valid = metrics_test = {}

    local_sps = throughput(counted_samples, counted_seconds)
    where = session.node()
    rank_info = {
        "rank": rank,
        "node": where["ip"],
        "node_id": where["id"],
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "samples_per_sec": local_sps,
        "peak_rss_mb": peak_rss_mb(),
        # PSS splits shared pages (the object store's copy of the data) among the processes
        # that map them, so summed over workers it shows whether the data was held once.
        "pss_mb": pss_mb(),
        "pss_mb_start": pss_start,
        "peak_gpu_mem_mb": (torch.cuda.max_memory_allocated(device) / 2**20) if on_gpu else None,
        "first_step_time": first_step_time,
        # Wall-clock marks of this rank's start-up: where the time before the first step goes.
        "startup_marks": {"worker_entry": options.worker_entry_time, "loop_entry": loop_entry,
                          "model_ready": model_ready, "first_step": first_step_time},
        "final_weights_sha256": _weights_digest(_unwrap(model)),
        "step_breakdown": times.summary(),
    }
    ranks = [rank_info]
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, rank_info)
    if rank != 0:
        return None

    total_time = sum(epoch_times)
    first_steps = [r["first_step_time"] for r in ranks if r["first_step_time"]]
    timing = {
        "total_epochs": len(epoch_times),
        "best_epoch": best_epoch,
        "total_time_sec": total_time,
        **epoch_stats(epoch_times),
        "epoch_times": epoch_times,
        "train_times": train_times,
        "num_workers": world,
        "warmup_epochs": cfg.train.warmup_epochs,
        # Every rank runs the same steps on equal shards; the global rate is the sum.
        "samples_per_sec": sum(r["samples_per_sec"] for r in ranks),
        "samples_per_sec_per_worker": sum(r["samples_per_sec"] for r in ranks) / world,
        "time_to_first_step_sec": (max(first_steps) - options.launch_time
                                   if first_steps and options.launch_time else None),
        "startup_sec": _startup(ranks, options.launch_time),
        "threads_per_worker": rank_info["threads"],
        "dataset_mb": sum(getattr(data, f).nbytes for f in ARRAY_FIELDS) / 2**20,
        "batch_size_per_worker": batch,
        "global_batch_size": batch * world,
        "steps_per_epoch": steps,
        "stopped_early": stopped_early,
        "resumed_from_epoch": first_epoch - 1 if resumed_from else None,
        "step_breakdown": times.summary(),
        "ranks": ranks,
    }
    return {
        "task": task,
        "metric": metric_name,
        "mode": mode,
        "best": best,
        "num_parameters": n_params,
        "history": history,
        "metrics_valid": metrics_valid,
        "metrics_test": metrics_test,
        "timing": timing,
        # numpy, not tensors: Ray refuses tensors in a train function's return value.
        "best_state": {k: v.cpu().numpy() for k, v in best_state.items()},
    }
