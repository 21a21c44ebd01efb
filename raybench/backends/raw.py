"""`raw`: the loop in this process, no Ray and no process group: the ceiling a single worker
can reach with the same model, data, batch and threads."""

from __future__ import annotations

from raybench.backends.base import LaunchContext, Resident
from raybench.backends.local import LocalSession, pick_device
from raybench.config import Config
from raybench.data.dataset import Dataset
from raybench.data.ingest import open_ingest
from raybench.loop import LoopOptions, train_worker
from raybench.results import RunResult


class RawBackend:
    name = "raw"

    def __init__(self, data: Dataset, context: LaunchContext) -> None:
        self.data, self.context = data, context

    def run(self, cfg: Config, options: LoopOptions, run_name: str = "raw") -> RunResult:
        session = LocalSession(pick_device(cfg), on_report=self.context.on_report)
        result = train_worker(cfg, open_ingest(cfg, self.data, session), session, options)
        assert result is not None  # rank 0 always returns
        return result

    def start(self, cfg: Config, options: LoopOptions, run_name: str = "raw") -> Resident:
        """A resident raw loop runs in a process of its own (one rank, no process group), not
        in this driver: the driver's Ray threads would share its core."""
        from raybench.backends.ddp import LocalResident

        return LocalResident(cfg, self.context.local_copy(self.data), options, 0, group=False)

    def close(self) -> None:
        pass


BACKEND = RawBackend
