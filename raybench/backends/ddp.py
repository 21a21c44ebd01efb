"""`ddp`: the loop under plain torch DistributedDataParallel, N processes started with
torch.multiprocessing on this machine, gloo on CPU (nccl on GPU), no Ray: the peer a user would
otherwise pick. Its ranks also time an all-reduce of the gradient's size."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import queue as queue_mod
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from raybench import malloc, stats
from raybench.backends.base import LaunchContext
from raybench.backends.conductor import LocalConductor, PipeChannel, exit_text
from raybench.backends.local import LocalSession, train_rank, wants_gpu
from raybench.config import Config, from_dict
from raybench.data.dataset import Dataset, load_dataset
from raybench.loop import LoopOptions
from raybench.loop.steps import worker_threads
from raybench.models import build_model, loss_fn
from raybench.probes import allreduce_under_load
from raybench.results import AllreduceMeasure, RunResult, WindowOrder, WindowReport


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, results: Any, cfg_dict: dict, data_dir: str,
               options: LoopOptions, allreduce_iters: int, conn: Any = None,
               group: bool = True) -> None:
    """One DDP process: join the group, train, put rank 0's result on the queue. A resident
    rank (conn: its end of the driver's pipe) serves windows on order; the raw launcher's
    resident process is one rank with no group at all."""
    def body() -> None:
        cfg = from_dict(cfg_dict)
        gpu = wants_gpu(cfg)
        device = torch.device("cuda", rank) if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(device)
        channel = PipeChannel(conn) if conn is not None else None
        with _process_group(rank, world, port, "nccl" if gpu else "gloo", group):
            session = LocalSession(device, rank, world, channel=channel)
            result = train_rank(cfg, load_dataset(data_dir), session, options, allreduce_iters)
            if rank == 0:
                assert result is not None
                _deliver(results, result)

    _run_rank(body)


def _run_rank(body: Callable[[], None]) -> None:
    """Run a spawned rank's body, print what went wrong, and exit 0 or 1 without interpreter
    teardown: gloo's threads sometimes abort it ("terminate called without an active
    exception") after the work is done and the result delivered."""
    code = 1
    try:
        body()
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@contextlib.contextmanager
def _process_group(rank: int, world: int, port: int, backend: str,
                   group: bool = True) -> Iterator[None]:
    if not group:
        yield
        return
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _deliver(results: Any, value: Any) -> None:
    results.put(value)
    results.close()
    results.join_thread()  # flush the queue's feeder thread before os._exit


class DdpBackend:
    name = "ddp"

    def __init__(self, data: Dataset, context: LaunchContext) -> None:
        # Memory-mapped .npy files: the processes share the pages through the page cache.
        self.data_dir = context.local_copy(data)
        self.context = context

    def run(self, cfg: Config, options: LoopOptions, run_name: str = "ddp") -> RunResult:
        world = cfg.scaling.workers
        result, failed = _spawn(world, _rank_main, cfg.to_dict(), self.data_dir, options,
                                self.context.allreduce_iters)
        if failed or result is None:
            raise RuntimeError(f"DDP baseline with {world} processes failed (exit codes "
                               f"{failed})")
        return result

    def start(self, cfg: Config, options: LoopOptions, run_name: str = "ddp") -> LocalResident:
        return LocalResident(cfg, self.data_dir, options, self.context.allreduce_iters)

    def close(self) -> None:
        pass


class LocalResident:
    """Resident local ranks (spawned processes), each with a pipe to the driver: the DDP
    baseline's N ranks, or the raw launcher's single process (group=False)."""

    def __init__(self, cfg: Config, data_dir: str, options: LoopOptions, allreduce_iters: int,
                 group: bool = True) -> None:
        import torch.multiprocessing as mp

        world = cfg.scaling.workers
        pipes = [mp.get_context("spawn").Pipe() for _ in range(world)]
        options = dataclasses.replace(options, resident=True)
        self.procs, self.results = _start(
            world, _rank_main, [(cfg.to_dict(), data_dir, options, allreduce_iters, child,
                                 group) for _, child in pipes])
        self.conductor = LocalConductor([mine for mine, _ in pipes], dead=self._dead)

    def _dead(self) -> str | None:
        """The first rank that is gone, by rank, pid and how it ended."""
        for rank, proc in enumerate(self.procs):
            if proc.exitcode is not None:
                return f"rank {rank} (pid {proc.pid}) {exit_text(proc.exitcode)}"
        return None

    def measure(self, order: WindowOrder, timeout_s: float) -> list[WindowReport]:
        return self.conductor.measure(order, timeout_s)

    def stop(self) -> RunResult:
        self.conductor.stop()
        try:
            result = _collect(self.results, self.procs)
        finally:
            self.abort()
        failed = [p.exitcode for p in self.procs if p.exitcode != 0]
        if failed or result is None:
            raise RuntimeError(f"{len(self.procs)} local process(es) failed (exit codes "
                               f"{failed})")
        return result

    def abort(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()


def _start(world: int, target: Callable, rank_args: list[tuple]) -> tuple[list, Any]:
    """Start target(rank, world, port, results, *rank_args[rank]) in `world` spawned
    processes; the processes and the queue rank 0 delivers its result on."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, daemon=True,
                         args=(rank, world, port, results, *rank_args[rank]))
             for rank in range(world)]
    for proc in procs:
        proc.start()
    return procs, results


def _spawn(world: int, target: Callable, *args: Any) -> tuple[Any, list[int]]:
    """Run target(rank, world, port, results, *args) in `world` spawned processes: rank 0's
    result from the queue and the non-zero exit codes. Processes still alive are killed."""
    procs, results = _start(world, target, [args] * world)
    try:
        result = _collect(results, procs)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    return result, [p.exitcode for p in procs if p.exitcode != 0]


def _collect(results: Any, procs: list) -> RunResult | None:
    """Read rank 0's result while the processes run (a large result blocks its writer until it
    is read), then let them exit."""
    result = None
    while result is None:
        try:
            result = results.get(timeout=1.0)
        except queue_mod.Empty:
            if any(p.exitcode not in (None, 0) for p in procs) or all(
                    p.exitcode is not None for p in procs):
                break
    for proc in procs:
        proc.join(timeout=60)
    return result


BACKEND = DdpBackend


def _allreduce_rank(rank: int, world: int, port: int, results: Any, sizes: list[int],
                    iters: int, busy_s: float) -> None:
    def body() -> None:
        torch.set_num_threads(1)
        with _process_group(rank, world, port, "gloo"):
            rows = [allreduce_under_load(max(1, nbytes // 4), iters, busy_s) for nbytes in sizes]
            if rank == 0:
                _deliver(results, rows)

    _run_rank(body)


def allreduce_sweep(world: int, sizes: list[int], iters: int = 50,
                    busy_s: float = 0.0) -> list[AllreduceMeasure]:
    """p50 latency of all-reduces of each size (bytes of float32) among `world` gloo processes
    on this machine, each rank busy computing for busy_s between them (0: an idle machine): the
    communication the scaling model uses."""
    rows, _ = _spawn(world, _allreduce_rank, sizes, iters, busy_s)
    if rows is None:
        raise RuntimeError(f"all-reduce benchmark with {world} processes failed")
    return [AllreduceMeasure(workers=world, bytes=r.bytes, seconds=r.allreduce_ms_p50 / 1e3,
                             under="busy loop" if busy_s else "idle") for r in rows]


def loaded_step_probe(cfg_dict: dict, shape: tuple[int, int, str], batch: int,
                      seconds: float, solo_batch: int | None = None) -> dict:
    """One rank of loaded_step_sweep: its training steps' work (forward, backward, optimizer)
    while every other rank does the same, then data-parallel steps in lockstep, the model
    wrapped in DistributedDataParallel as the loop wraps it (the all-reduce launched from
    inside backward). Rank 0 gets every rank's times: its own steps at solo_batch alone, the
    others waiting, on both sides of the phase all at once (`solo_s`, with a process group
    only), the unsynchronised steps (`work_s`), the lockstep steps' work (`synced_work_s`:
    the step less its sync) and sync (`synced_allreduce_s`: from the last gradient bucket's
    launch to the end of backward, as the loop's SyncClock
    times it: the communication backward could not hide plus the wait for the last rank,
    scheduler wake-ups included), and per step the shortest sync any rank saw (`allreduce_s`:
    the communication alone). Outside a process group (N=1) only the work is timed."""
    cfg = from_dict(cfg_dict)
    features, window, task = shape
    model, criterion, step = _training_step(cfg, shape, batch)
    x, y = step.keywords["x"], step.keywords["y"]
    group = dist.is_available() and dist.is_initialized()
    for _ in range(20):
        step()
    out = {"work_s": [], "allreduce_s": None, "synced_work_s": [], "synced_allreduce_s": [],
           "solo_s": []}
    solo_x, solo_y = _fake_batch(solo_batch or batch, window, features, task)
    solo = functools.partial(step, x=solo_x, y=solo_y)
    if group:
        # rank 0 alone (the others blocked in a barrier), just before the phases it is the
        # reference of: the step's slowdown with N ranks is a ratio measured within seconds,
        # not against an N=1 probe a minute earlier on a machine whose speed drifts. Only once
        # every rank is warm (the spawned ranks start seconds apart, and rank 0 alone ran
        # during the others' imports and warm-up), and on both sides of the phase all at
        # once, so that a spell within the probe shows as two different halves.
        for _ in range(5):  # a new shape's first steps allocate
            solo()
        out["solo_s"] = _alone(solo, seconds / 4)
    work = _timed(step, seconds)
    out["work_s"] = work
    if group:
        out["solo_s"] += _alone(solo, seconds / 4)
        # blocks of about a tenth of the probe's seconds: enough block means to judge the
        # interval by, whether a step takes a millisecond (an MLP) or 0.2 s (an LSTM)
        block = agreed_block(seconds, statistics.fmean(work))
        synced, sync = _lockstep(model, criterion, x, y, cfg.train.lr, seconds, block)
        out.update(_gathered(work, synced, sync))
    return out


def _training_step(cfg: Config, shape: tuple[int, int, str], batch: int
                   ) -> tuple[torch.nn.Module, Callable, functools.partial]:
    """The model, its loss and one timed training step (forward, backward, Adam) on a fixed
    batch, with the worker's threads: the one-worker step the probes time. The step takes
    another batch as x=, y=."""
    features, window, task = shape
    torch.set_num_threads(worker_threads(cfg))
    if cfg.scaling.steady_malloc:  # its memory held as the launchers' ranks hold theirs
        malloc.hold_steady()
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, features, window, task)
    criterion = loss_fn(task)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(model(x).float(), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    x, y = _fake_batch(batch, window, features, task)
    return model, criterion, functools.partial(step, x=x, y=y)


def work_alone_and_loaded(cfg_dict: dict, shape: tuple[int, int, str], batch: int,
                          seconds: float, buckets: list[int] | tuple[int, ...] = ()
                          ) -> dict | None:
    """One rank of a process group whose ranks sit on different nodes (the network probe's):
    the training step alone, each rank in turn while the others wait in a barrier, on both
    sides of every rank stepping at once (so that a spell shows as two different halves);
    then an all-reduce of each size in `buckets` right after every rank's step. Rank 0 gets
    each rank's mean step alone (`alone_s`) and loaded (`loaded_s`), rank order, and per size
    (iterations, the median all-reduce) (`allreduce`); the others None. The steps all-reduce
    nothing: this is the compute a node does while the others compute, what a lockstep
    step's work is."""
    _, _, step = _training_step(from_dict(cfg_dict), shape, batch)
    for _ in range(20):  # allocations, the first steps' dispatch: burned in, all at once
        step()
    rank, world = dist.get_rank(), dist.get_world_size()
    alone = [_alone_in_turn(step, seconds / 4, rank, world)]
    loaded = _timed(step, seconds)
    alone.append(_alone_in_turn(step, seconds / 4, rank, world))
    mine = (statistics.fmean(alone[0] + alone[1]), statistics.fmean(loaded))
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    after = {b: _allreduce_after_step(step, b, seconds) for b in sorted(set(buckets))}
    if rank:
        return None
    return {"alone_s": [a for a, _ in everyone], "loaded_s": [w for _, w in everyone],
            "allreduce": after}


def _allreduce_after_step(step: Callable[[], float], nbytes: int,
                          seconds: float) -> tuple[int, float]:
    """All-reduces of `nbytes` each right after a training step on every rank, as DDP's last
    bucket runs once backward ends: (iterations, the median over them of the shortest time any
    rank saw). The rank that arrived last waited for nobody, so its time is the communication
    alone, with the nodes as busy as in training: where a node's CPU share is spent by its
    step, each hop of the ring also waits for the peer's quota to come back (the emulated
    cluster's LSTM: 32-45 ms of exposed DDP communication where idle ranks all-reduced its
    200 KB in 4-5 ms)."""
    tensor = torch.zeros(max(1, nbytes // 4))
    dist.all_reduce(tensor)  # connections and buffers
    start = time.perf_counter()
    step()
    dist.all_reduce(tensor)
    count = torch.tensor([max(5, math.ceil(seconds / (time.perf_counter() - start)))])
    dist.broadcast(count, 0)  # a collective: every rank runs rank 0's count
    mine = []
    for _ in range(int(count)):
        step()
        start = time.perf_counter()
        dist.all_reduce(tensor)
        mine.append(time.perf_counter() - start)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return len(mine), float(np.median(np.min(np.asarray(everyone), axis=0)))


def _alone_in_turn(step: Callable[[], float], seconds: float, rank: int,
                   world: int) -> list[float]:
    """This rank's steps while it is its turn, every rank in rank order."""
    mine = []
    for turn in range(world):
        dist.barrier()
        if turn == rank:
            mine = _timed(step, seconds, at_least=10)
    dist.barrier()
    return mine


def _gathered(work: list[float], synced: list[float], sync: list[float]) -> dict:
    """Every rank's step times in one list per phase, and per lockstep step the shortest sync
    any rank saw (its median: the communication alone)."""
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (work, synced, sync))
    latency = np.min(np.asarray([m for _, _, m in everyone]), axis=0)
    return {"work_s": [w for ranks_work, _, _ in everyone for w in ranks_work],
            "synced_work_s": [w for _, ranks_synced, _ in everyone for w in ranks_synced],
            "synced_allreduce_s": [a for _, _, ranks_sync in everyone for a in ranks_sync],
            "allreduce_s": float(np.percentile(latency, 50))}


def _alone(step: Callable[[], float], seconds: float) -> list[float]:
    """Rank 0's steps for `seconds` while every other rank waits in a barrier."""
    dist.barrier()
    times = _timed(step, seconds) if dist.get_rank() == 0 else []
    dist.barrier()
    return times


# The lockstep phase runs in blocks until the mean step is known to within this share (95%
# interval half-width over block means) or LOCKSTEP_MAX_FACTOR times the probe's seconds have
# passed: at small batches the sync is most of a step and heavy-tailed (a blocked rank waits
# for the scheduler), and two seconds of it moved the forecast by 35 points between runs.
LOCKSTEP_TOLERANCE = 0.03
LOCKSTEP_MAX_FACTOR = 3
LOCKSTEP_BLOCK = 25  # steps per block at most


def agreed_block(seconds: float, step_s: float) -> int:
    """Steps per lockstep block, the same on every rank (the smallest any rank asks for): each
    rank's own step time gave 24 on one rank and 25 on another under load, and one rank's DDP
    all-reduce met the other's end-of-block flag."""
    block = torch.tensor([int(min(LOCKSTEP_BLOCK, max(1, seconds / 10 / step_s)))])
    dist.all_reduce(block, op=dist.ReduceOp.MIN)
    return int(block.item())


def _lockstep(model: torch.nn.Module, criterion: Any, x: torch.Tensor, y: torch.Tensor,
              lr: float, seconds: float, block: int) -> tuple[list[float], list[float]]:
    """Data-parallel steps as the loop runs them (DDP, its default buckets, the comm hook the
    loop registers), every rank the same number: each step's work and its sync."""
    from torch.nn.parallel import DistributedDataParallel

    from raybench.loop.collector import StepClock, SyncClock

    ddp = DistributedDataParallel(model)
    clock = SyncClock(dist.get_world_size(), StepClock(torch.device("cpu")))
    ddp.register_comm_hook(None, clock.hook)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=lr)

    def synced_step() -> tuple[float, float]:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        criterion(ddp(x).float(), y).backward()
        backward_end = time.perf_counter()
        optimizer.step()
        total = time.perf_counter() - start
        sync = backward_end - clock.last_launch
        return total - sync, sync

    for _ in range(5):  # DDP's first iterations rebuild its buckets
        synced_step()
    dist.barrier()
    work, sync, block_means = [], [], []
    started = time.perf_counter()
    while True:
        block_start = time.perf_counter()
        for _ in range(block):
            w, s = synced_step()
            work.append(w)
            sync.append(s)
        block_means.append((time.perf_counter() - block_start) / block)
        elapsed = time.perf_counter() - started
        half = (stats.relative_halfwidth(*stats.mean_interval(block_means))
                if len(block_means) >= 5 else None)
        more = elapsed < seconds or (elapsed < LOCKSTEP_MAX_FACTOR * seconds
                                     and (half is None or half > LOCKSTEP_TOLERANCE))
        flag = torch.tensor([int(more)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank runs as many steps
        if not flag.item():
            return work, sync


def _fake_batch(batch: int, window: int, features: int,
                task: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, window, features)
    y = torch.randint(0, 2, (batch,)).float() if task == "classification" else torch.randn(batch)
    return x, y


def _timed(step: Callable[[], float], seconds: float, at_least: int = 20) -> list[float]:
    """Steps for `seconds` of wall time, at least `at_least`."""
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < at_least:
        times.append(step())
    return times


def _loaded_rank(rank: int, world: int, port: int, results: Any, cfg_dict: dict,
                 shape: tuple[int, int, str], batch: int, seconds: float,
                 solo_batch: int | None) -> None:
    def body() -> None:
        with _process_group(rank, world, port, "gloo", group=world > 1):
            row = loaded_step_probe(cfg_dict, shape, batch, seconds, solo_batch)
            if rank == 0:
                _deliver(results, row)

    _run_rank(body)


def loaded_step_sweep(world: int, cfg: Config, shape: tuple[int, int, str], batch: int,
                      seconds: float = 2.0, solo_batch: int | None = None) -> dict:
    """`world` plain processes (no Ray) running the model's real training step at once: each
    step's work under that contention (cores shared, hyperthreads, memory bandwidth), then
    DDP steps in lockstep, their sync timed as the loop times it (the communication, the wait
    for the last rank and for the scheduler); first, rank 0's step at solo_batch (the N=1
    point's) alone. What the scaling model's step is made of, measured on this machine
    without training the point it forecasts."""
    row, _ = _spawn(world, _loaded_rank, cfg.to_dict(), shape, batch, seconds, solo_batch)
    if row is None:
        raise RuntimeError(f"loaded-step probe with {world} processes failed")
    return row
