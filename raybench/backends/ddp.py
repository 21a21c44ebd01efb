"""`ddp`: the loop under plain torch DistributedDataParallel, N processes started with
torch.multiprocessing on this machine, gloo on CPU (nccl on GPU), no Ray: the peer a user would
otherwise pick. Its ranks also time an all-reduce of the gradient's size."""

from __future__ import annotations

import contextlib
import os
import queue as queue_mod
import socket
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from raybench.backends.base import LaunchContext
from raybench.backends.local import LocalSession, wants_gpu
from raybench.config import Config
from raybench.data.dataset import Dataset, save_dataset
from raybench.loop import LoopOptions
from raybench.results import RunResult


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, results: Any, cfg_dict: dict, data_dir: str,
               options: LoopOptions, allreduce_iters: int) -> None:
    """One DDP process: join the group, train, put rank 0's result on the queue."""
    from raybench.config import from_dict
    from raybench.data.dataset import load_dataset
    from raybench.data.ingest import open_ingest
    from raybench.loop import train_worker
    from raybench.probes import allreduce_latency

    def body() -> None:
        cfg = from_dict(cfg_dict)
        gpu = wants_gpu(cfg)
        device = torch.device("cuda", rank) if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(device)
        with _process_group(rank, world, port, "nccl" if gpu else "gloo"):
            session = LocalSession(device, rank, world)
            result = train_worker(cfg, open_ingest(cfg, load_dataset(data_dir), session), session,
                                  options)
            numel = _broadcast_int(result.num_parameters if result else 0, device)
            comm = allreduce_latency(numel, device, allreduce_iters) if allreduce_iters else None
            if rank == 0:
                assert result is not None
                result.allreduce = comm
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
def _process_group(rank: int, world: int, port: int, backend: str) -> Iterator[None]:
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


def _broadcast_int(value: int, device: torch.device) -> int:
    t = torch.tensor([value], dtype=torch.long, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


class DdpBackend:
    name = "ddp"

    def __init__(self, data: Dataset, context: LaunchContext) -> None:
        # Memory-mapped .npy files: the processes share the pages through the page cache.
        self.data_dir = str(save_dataset(data, context.scratch_dir / "ddp_data"))
        self.context = context

    def run(self, cfg: Config, options: LoopOptions, run_name: str = "ddp") -> RunResult:
        world = cfg.scaling.workers
        result, failed = _spawn(world, _rank_main, cfg.to_dict(), self.data_dir, options,
                                self.context.allreduce_iters)
        if failed or result is None:
            raise RuntimeError(f"DDP baseline with {world} processes failed (exit codes "
                               f"{failed})")
        return result

    def close(self) -> None:
        pass


def _spawn(world: int, target: Callable, *args: Any) -> tuple[Any, list[int]]:
    """Run target(rank, world, port, results, *args) in `world` spawned processes: rank 0's
    result from the queue and the non-zero exit codes. Processes still alive are killed."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, daemon=True,
                         args=(rank, world, port, results, *args))
             for rank in range(world)]
    for proc in procs:
        proc.start()
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
                    iters: int) -> None:
    from raybench.probes import allreduce_latency

    def body() -> None:
        torch.set_num_threads(1)
        with _process_group(rank, world, port, "gloo"):
            rows = [allreduce_latency(max(1, nbytes // 4), torch.device("cpu"), iters)
                    for nbytes in sizes]
            if rank == 0:
                _deliver(results, rows)

    _run_rank(body)


def allreduce_sweep(world: int, sizes: list[int], iters: int = 50) -> list[dict]:
    """p50 latency of all-reduces of each size (bytes of float32) among `world` gloo processes
    on this machine: the communication the scaling model is fitted to."""
    rows, _ = _spawn(world, _allreduce_rank, sizes, iters)
    if rows is None:
        raise RuntimeError(f"all-reduce benchmark with {world} processes failed")
    return [{"workers": world, "bytes": r["bytes"], "seconds": r["allreduce_ms_p50"] / 1e3}
            for r in rows]
