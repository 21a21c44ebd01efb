"""The seam between the per-worker loop and whatever launched it. The loop sees only this
protocol: it never imports Ray, Tune or a launcher."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from raybench.results import StepProgress, WindowOrder, WindowReport


class Session(Protocol):
    """What a launcher provides to the loop on every rank."""

    rank: int
    local_rank: int  # among the ranks on this node
    world_size: int
    device: torch.device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move the model to the device and wrap it for data parallelism (DDP) if world > 1."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        """End of an epoch on every rank (a barrier under Ray Train); rank 0 may attach the
        directory of a checkpoint to persist."""

    def get_checkpoint_dir(self) -> str | None:
        """A local directory holding the checkpoint to resume from, or None."""

    def step_progress(self, progress: StepProgress) -> None:
        """Rank 0, within long epochs: how far the epoch is (for a progress bar)."""

    def first_step(self, at: float) -> None:
        """This incarnation's first training step began at `at` (epoch seconds): a launcher
        that restarts workers times each recovery up to it."""

    def node(self) -> dict[str, str]:
        """{"ip": ..., "id": ...} of the machine this rank runs on."""

    def dataset_shard(self, name: str) -> Any:
        """This rank's shard of a streamed dataset (Ray Data ingest only)."""

    def wait_window(self) -> WindowOrder | None:
        """A resident rank: block (no CPU) until the driver orders a window; None: stop."""

    def report_window(self, report: WindowReport) -> None:
        """A resident rank: what it measured in the window just ordered."""
