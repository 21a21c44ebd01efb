"""The network between ranks placed as a run's workers: gloo all-reduces of float32 tensors
from 4 KiB to 64 MiB between Ray actors on the run's placement group, reported as nccl-tests
does (time, algorithm bandwidth, bus bandwidth = algbw x 2(n-1)/n), with the ring model
fitted to them. What gloo runs for a dense CPU all-reduce is a ring, pipelined in segments of
at most 1 MiB, so each link carries 2(n-1)/n of the tensor and busbw approaches the slowest
link's rate when the link, not the CPU, bounds it."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from raybench.backends.ddp import work_alone_and_loaded
from raybench.backends.ray_cluster import (
    meeting_point,
    node_of_this_process,
    placed_actors,
    release,
)
from raybench.config import Config
from raybench.ray_env import emulated_cluster
from raybench.results import NetworkProbe, NetworkRow, NodeWork
from raybench.scaling_model import CommModel

SIZES = tuple(4096 * 4**k for k in range(8))  # 4 KiB ... 64 MiB
SECONDS_PER_SIZE = 1.0  # timed iterations of a size: at least this long...
MIN_ITERS = 3  # ...and at least this many (64 MiB at 100 Mbit/s: 5.4 s each)


class NetworkRank:
    """One rank of the probe (wrapped with ray.remote where it is placed)."""

    def address(self) -> tuple[str, int]:
        return meeting_point()

    def node(self) -> str:
        return node_of_this_process()["ip"]

    def sweep(self, rank: int, world: int, address: tuple[str, int], sizes: list[int],
              seconds: float, min_iters: int, work: WorkOrder | None = None
              ) -> tuple[list[tuple[int, float]], dict | None]:
        """(iterations, mean seconds per all-reduce) for each size, on this rank; then, with
        `work`, the training step alone and loaded (ddp.work_alone_and_loaded: rank 0's)."""
        torch.set_num_threads(1)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                init_method=f"tcp://{address[0]}:{address[1]}")
        try:
            rows = [_timed_allreduce(nbytes, seconds, min_iters) for nbytes in sizes]
            steps = (work_alone_and_loaded(work.cfg, work.shape, work.batch, work.seconds,
                                           work.buckets) if work is not None else None)
            return rows, steps
        finally:
            dist.destroy_process_group()


@dataclass(frozen=True)
class WorkOrder:
    """The training step a probe also times on each rank (alone, then all at once)."""

    cfg: dict  # the point's config (Config.to_dict): model, threads, seed, lr
    shape: tuple[int, int, str]  # features, window, task
    batch: int  # per worker
    buckets: tuple[int, ...] = ()  # DDP's bucket sizes (bytes): all-reduced after a step
    seconds: float = 4.0  # all at once; alone, a quarter of it on each side, each rank


def _timed_allreduce(nbytes: int, seconds: float, min_iters: int) -> tuple[int, float]:
    """Warm up once (connections, buffers), time one to size the block, then a block of
    rank 0's count on every rank: a collective every rank must call the same number of times."""
    tensor = torch.ones(max(1, nbytes // 4))
    dist.all_reduce(tensor)
    dist.barrier()
    t0 = time.perf_counter()
    dist.all_reduce(tensor)
    one = time.perf_counter() - t0
    count = torch.tensor([max(min_iters, math.ceil(seconds / max(one, 1e-6)))])
    dist.broadcast(count, 0)
    iters = int(count)
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor)
    return iters, (time.perf_counter() - t0) / iters


def probe(cfg: Config, sizes: list[int] | tuple[int, ...] = SIZES,
          seconds: float = SECONDS_PER_SIZE, min_iters: int = MIN_ITERS,
          work: WorkOrder | None = None) -> NetworkProbe:
    """All-reduces among cfg.scaling.workers ranks placed as its workers would be; with
    `work`, the model's step on the same ranks alone and all at once (NetworkProbe.work)."""
    import ray

    world = cfg.scaling.workers
    pg, actors = placed_actors(cfg, NetworkRank)
    try:
        nodes = ray.get([a.node.remote() for a in actors])
        address = ray.get(actors[0].address.remote())
        per_rank = ray.get([a.sweep.remote(rank, world, address, list(sizes), seconds,
                                           min_iters, work) for rank, a in enumerate(actors)])
    finally:
        release(pg, actors)
    rows = [r for r, _ in per_rank]
    # the slowest rank's mean: an all-reduce is done when the last rank has its result
    times = [max(rank[k][1] for rank in rows) for k in range(len(sizes))]
    iters = [rows[0][k][0] for k in range(len(sizes))]
    record = network_record(world, list(sizes), times, iters, nodes,
                            cfg.scaling.placement_strategy)
    record.link = emulated_cluster()  # on an emulated cluster, the links' settings
    if work is not None and per_rank[0][1] is not None:
        got = per_rank[0][1]
        record.work = node_work(work.batch, got["alone_s"], got["loaded_s"], world,
                                got["allreduce"])
    return record


def node_work(batch: int, alone_s: list[float], loaded_s: list[float], world: int = 2,
              allreduce: dict[int, tuple[int, float]] | None = None) -> NodeWork:
    """The record of each rank's step alone and loaded, and of the all-reduces after a step
    (by size: iterations, seconds); the slowdown is the geometric mean of the ranks' own
    ratios, so a slower node does not read as contention."""
    ratios = [w / a for a, w in zip(alone_s, loaded_s, strict=True)]
    rows = [nccl_row(world, b, t, k) for b, (k, t) in sorted((allreduce or {}).items())]
    return NodeWork(batch_size_per_worker=batch, alone_ms=[a * 1e3 for a in alone_s],
                    loaded_ms=[w * 1e3 for w in loaded_s],
                    slowdown=math.exp(statistics.fmean(math.log(r) for r in ratios)),
                    allreduce_after_step=rows)


def network_record(world: int, sizes: list[int], times: list[float], iters: list[int],
                   nodes: list[str], strategy: str) -> NetworkProbe:
    """nccl-tests' rows and the ring fitted to them (relative errors: latency from the
    small sizes, bandwidth from the large)."""
    rows = [nccl_row(world, b, t, k) for b, t, k in zip(sizes, times, iters, strict=True)]
    ring = CommModel.fit({(world, b): t for b, t in zip(sizes, times, strict=True)},
                         relative=True)
    latency = ring.alpha_s * 1e6 if ring.alpha_s is not None else None
    bandwidth = 8 / ring.beta_s_per_byte / 1e9 if ring.beta_s_per_byte else None
    return NetworkProbe(rows=rows, workers=world, latency_us=latency, bandwidth_gbps=bandwidth,
                        nodes=nodes, placement_strategy=strategy)


def nccl_row(world: int, nbytes: int, seconds: float, iters: int) -> NetworkRow:
    """One all-reduce size as nccl-tests reports it: algbw = bytes / time, busbw = algbw x
    2(n-1)/n (what each link carried), in Gbit/s."""
    algbw = nbytes * 8 / seconds / 1e9
    return NetworkRow(bytes=nbytes, time_s=seconds, algbw_gbps=algbw,
                      busbw_gbps=algbw * 2 * (world - 1) / world, iters=iters)
