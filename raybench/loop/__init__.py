"""The per-worker loop: `worker.train_worker` reads top to bottom and calls the named steps in
`steps`; `collector` owns what a rank measures; `session` is the seam to the launchers."""

from raybench.loop.collector import Window
from raybench.loop.session import Session
from raybench.loop.steps import Diverged, worker_threads
from raybench.loop.worker import LoopOptions, train_worker

__all__ = ["Diverged", "LoopOptions", "Session", "Window", "train_worker", "worker_threads"]
