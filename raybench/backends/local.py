"""Plain processes: the device a process trains on, and the session of a rank that is not a
Ray Train worker (one process alone, or one rank of a torch.distributed group)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from raybench.config import Config
from raybench.errors import UserError
from raybench.results import StepProgress, WindowOrder, WindowReport


def wants_gpu(cfg: Config) -> bool:
    return cfg.scaling.use_gpu or cfg.train.device == "cuda"


def pick_device(cfg: Config) -> torch.device:
    """Device for a plain process, from train.device (auto: cuda, then mps, then cpu)."""
    want = "cuda" if cfg.scaling.use_gpu else cfg.train.device
    if want == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but torch sees no CUDA GPU")
    if want == "mps" and not torch.backends.mps.is_available():
        raise UserError("device mps requested but torch sees no MPS device")
    return torch.device(want)


class LocalSession:
    """One plain process (rank 0 of 1), or one rank of a torch.distributed group."""

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1,
                 on_report: Callable[[dict], None] | None = None, channel: Any = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self.local_rank = rank  # every rank of a local group runs on this machine
        self._on_report = on_report
        self._channel = channel  # a resident rank's orders (backends.conductor)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return model

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if self._on_report and self.rank == 0:
            self._on_report(metrics)

    def get_checkpoint_dir(self) -> str | None:
        return None

    def step_progress(self, progress: StepProgress) -> None:
        if self._on_report:
            self._on_report(progress)

    def first_step(self, at: float) -> None:
        pass  # a plain process is never restarted

    def node(self) -> dict[str, str]:
        return {"ip": "127.0.0.1", "id": socket.gethostname()}

    def dataset_shard(self, name: str) -> Any:
        raise RuntimeError("streamed datasets need the Ray Train launcher")

    def wait_window(self) -> WindowOrder | None:
        return self._channel.wait()

    def report_window(self, report: WindowReport) -> None:
        self._channel.report(report)


def train_rank(cfg: Config, data: Any, session: LocalSession, options: Any,
               allreduce_iters: int) -> Any:
    """One rank of a plain DDP group (local processes or Ray actors), inside its process group:
    the loop on this rank's shard, then, on every rank together, an all-reduce of the
    gradient's size timed for the scaling model. Rank 0's result, None elsewhere."""
    import torch.distributed as dist

    from raybench.data.ingest import open_ingest
    from raybench.loop import train_worker
    from raybench.probes import allreduce_latency

    result = train_worker(cfg, open_ingest(cfg, data, session), session, options)
    if session.world_size == 1 and not dist.is_initialized():
        return result  # the raw launcher: no group to time
    numel = torch.tensor([result.num_parameters if result else 0], device=session.device)
    dist.broadcast(numel, src=0)
    if allreduce_iters:
        comm = allreduce_latency(int(numel.item()), session.device, allreduce_iters)
        if result is not None:
            result.allreduce = comm
    return result
