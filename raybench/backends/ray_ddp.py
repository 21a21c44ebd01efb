"""`ddp-ray`: plain torch DistributedDataParallel placed by Ray, no Ray Train. One actor per
placement-group bundle, with the same bundles and strategy a Ray Train run of the config gets;
the ranks meet over TCP at rank 0's address and run the same per-worker loop. On a multi-node
cluster this is the DDP baseline that the `ddp` launcher (local processes) cannot be."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist

from raybench.backends.base import LaunchContext
from raybench.backends.conductor import ActorChannel, RayConductor, window_board
from raybench.backends.local import LocalSession, train_rank, wants_gpu
from raybench.backends.ray_cluster import (
    meeting_point,
    node_of_this_process,
    placed_actors,
    release,
)
from raybench.config import Config
from raybench.data.dataset import Dataset
from raybench.errors import cause_line
from raybench.loop import LoopOptions
from raybench.results import RunResult, WindowOrder, WindowReport


class _RaySideSession(LocalSession):
    """A torch.distributed rank in a Ray actor: it reports the Ray node it runs on."""

    def node(self) -> dict[str, str]:
        return node_of_this_process()


class DdpRank:
    """One rank, as a Ray actor (wrapped with ray.remote where it is started)."""

    def address(self) -> tuple[str, int]:
        return meeting_point()

    def train(self, rank: int, world: int, address: tuple[str, int], cfg_dict: dict,
              data: Dataset, options: LoopOptions, allreduce_iters: int,
              board: Any = None) -> RunResult | None:
        from raybench.config import from_dict

        cfg = from_dict(cfg_dict)
        gpu = wants_gpu(cfg)
        device = torch.device("cuda", 0) if gpu else torch.device("cpu")
        dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world,
                                init_method=f"tcp://{address[0]}:{address[1]}")
        try:
            channel = ActorChannel(board, rank) if board is not None else None
            session = _RaySideSession(device, rank, world, channel=channel)
            return train_rank(cfg, data, session, options, allreduce_iters)
        finally:
            dist.destroy_process_group()


class RayDdpBackend:
    name = "ddp-ray"

    def __init__(self, data: Dataset, context: LaunchContext) -> None:
        import ray

        self.context = context
        self.data_ref = ray.put(data)

    def run(self, cfg: Config, options: LoopOptions, run_name: str = "ddp-ray") -> RunResult:
        ranks = RayRanks(cfg, self.data_ref, options, self.context.allreduce_iters)
        return ranks.stop()

    def start(self, cfg: Config, options: LoopOptions, run_name: str = "ddp-ray") -> RayRanks:
        return RayRanks(cfg, self.data_ref, dataclasses.replace(options, resident=True),
                        self.context.allreduce_iters)

    def close(self) -> None:
        self.data_ref = None


class RayRanks:
    """The ranks as actors in a placement group, training (or resident: serving windows from
    a board) from construction until stop()."""

    def __init__(self, cfg: Config, data_ref: Any, options: LoopOptions,
                 allreduce_iters: int) -> None:
        import ray

        world = cfg.scaling.workers
        self.pg, self.actors = placed_actors(cfg, DdpRank)
        board = window_board(world) if options.resident else None
        try:
            address = ray.get(self.actors[0].address.remote())
            self.futures = [a.train.remote(rank, world, address, cfg.to_dict(), data_ref,
                                           options, allreduce_iters, board)
                            for rank, a in enumerate(self.actors)]
        except BaseException:
            self.abort()
            raise
        self.conductor = RayConductor(board, dead=self._dead) if board is not None else None

    def _dead(self) -> str | None:
        """The first rank whose actor has ended, and why, or None while every rank runs."""
        import ray

        done = ray.wait(self.futures, num_returns=1, timeout=0)[0]
        if not done:
            return None
        rank = self.futures.index(done[0])
        try:
            ray.get(done[0])
            return f"rank {rank} ended its run"
        except Exception as exc:  # noqa: BLE001 (its death is what is being described)
            return f"rank {rank} failed ({cause_line(exc)})"

    def measure(self, order: WindowOrder, timeout_s: float) -> list[WindowReport]:
        return self.conductor.measure(order, timeout_s)

    def stop(self) -> RunResult:
        import ray

        if self.conductor is not None:
            self.conductor.stop()
        try:
            results = ray.get(self.futures)
        finally:
            self.abort()
        return results[0]

    def abort(self) -> None:
        release(self.pg, self.actors)


BACKEND = RayDdpBackend

