"""The one interface every launcher implements. A launcher is built once per dataset (it may
stage the data: put it in Ray's object store, write a memory-mapped copy) and then runs the
same per-worker loop for any number of configs; only the launcher differs between backends, so
their ratio is the launcher's cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from raybench.config import Config
from raybench.data.dataset import Dataset
from raybench.loop import LoopOptions
from raybench.results import RunResult, WindowOrder, WindowReport

if TYPE_CHECKING:
    from raybench.backends.ray_cluster import RayHandle


@dataclass
class LaunchContext:
    """What a launcher may need besides the config and the data."""

    scratch_dir: Path  # private files of this command (the ddp launcher's copy of the data)
    storage_path: str | None = None  # Ray Train's storage: checkpoints and its run directory
    ray: RayHandle | None = None  # the Ray cluster this command is connected to
    allreduce_iters: int = 0  # the ddp launcher also times an all-reduce of the gradient
    # rank 0's epoch metrics (a dict, as reported to Ray Train) and StepProgress, live
    on_report: Callable[[Any], None] | None = None
    _copies: dict[int, str] = field(default_factory=dict, repr=False)

    def local_copy(self, data: Dataset) -> str:
        """A memory-mapped copy of `data` in the scratch directory that local processes share
        through the page cache (written once, whichever launcher asks first)."""
        if id(data) not in self._copies:
            from raybench.data.dataset import save_dataset

            where = self.scratch_dir / f"local_data_{len(self._copies)}"
            self._copies[id(data)] = str(save_dataset(data, where))
        return self._copies[id(data)]


class Resident(Protocol):
    """A launcher started once and kept warm: its ranks train the windows the driver orders
    and wait, blocked, in between (backends.conductor)."""

    def measure(self, order: WindowOrder, timeout_s: float) -> list[WindowReport]:
        """One window on every rank; each rank's report (rank order)."""

    def stop(self) -> RunResult:
        """Let the ranks finish; rank 0's result over every counted window."""

    def abort(self) -> None:
        """Stop the ranks without a result."""


class Backend(Protocol):
    """A launcher of the per-worker loop."""

    name: ClassVar[str]

    def __init__(self, data: Dataset, context: LaunchContext) -> None: ...

    def run(self, cfg: Config, options: LoopOptions, run_name: str) -> RunResult:
        """Train cfg.scaling.workers ranks; rank 0's result."""

    def start(self, cfg: Config, options: LoopOptions, run_name: str) -> Resident:
        """Set cfg.scaling.workers ranks up and keep them resident, serving windows."""

    def close(self) -> None:
        """Release what the constructor staged."""
