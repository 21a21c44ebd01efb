"""The one interface every launcher implements. A launcher is built once per dataset (it may
stage the data: put it in Ray's object store, write a memory-mapped copy) and then runs the
same per-worker loop for any number of configs; only the launcher differs between backends, so
their ratio is the launcher's cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol

from raybench.config import Config
from raybench.data.dataset import Dataset
from raybench.loop import LoopOptions
from raybench.results import RunResult

if TYPE_CHECKING:
    from raybench.backends.ray_cluster import RayHandle


@dataclass
class LaunchContext:
    """What a launcher may need besides the config and the data."""

    scratch_dir: Path  # private files of this command (the ddp launcher's copy of the data)
    storage_path: str | None = None  # Ray Train's storage: checkpoints and its run directory
    ray: RayHandle | None = None  # the Ray cluster this command is connected to
    allreduce_iters: int = 0  # the ddp launcher also times an all-reduce of the gradient
    on_report: Callable[[dict], None] | None = None  # rank 0's epoch metrics, live


class Backend(Protocol):
    """A launcher of the per-worker loop."""

    name: ClassVar[str]

    def __init__(self, data: Dataset, context: LaunchContext) -> None: ...

    def run(self, cfg: Config, options: LoopOptions, run_name: str) -> RunResult:
        """Train cfg.scaling.workers ranks; rank 0's result."""

    def close(self) -> None:
        """Release what the constructor staged."""
