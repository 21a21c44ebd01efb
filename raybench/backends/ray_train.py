"""`raybench`: the loop on N Ray Train workers (`TorchTrainer`), on a local Ray or any cluster.
`build_trainer` is the one place a TorchTrainer is built, for run, scale and tune alike."""

from __future__ import annotations

import dataclasses
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from raybench.backends.base import LaunchContext
from raybench.backends.local import wants_gpu
from raybench.backends.ray_cluster import check_resources, node_of_this_process
from raybench.config import Config, metric_mode
from raybench.data.dataset import Dataset
from raybench.loop import LoopOptions
from raybench.results import RunResult, metric_key

# ------------------------------------------------------------------ sessions


class RaySession:
    """A Ray Train worker: rank and device from Ray, DDP via prepare_model, checkpoints via
    ray.train.report, and rank 0's epoch metrics forwarded to the driver's progress queue."""

    def __init__(self, progress: Any = None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._progress = progress

    def prepare_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if self._progress is not None and self.rank == 0:
            self._progress.put_nowait(metrics)

    def get_checkpoint_dir(self) -> str | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        return checkpoint.to_directory() if checkpoint else None

    def step_progress(self, info: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.put_nowait({"progress": True, **info})

    def node(self) -> dict[str, str]:
        return node_of_this_process()

    def dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)


class TuneSession:
    """A one-process Tune trial: the loop runs inside the trial and reports to Tune directly."""

    rank, world_size = 0, 1

    def __init__(self, device: Any) -> None:
        self.device = device

    def prepare_model(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        from ray import tune

        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

    def get_checkpoint_dir(self) -> str | None:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        return checkpoint.to_directory() if checkpoint else None

    def step_progress(self, info: dict) -> None:
        pass  # a sweep shows progress per trial, not per step

    def node(self) -> dict[str, str]:
        return node_of_this_process()

    def dataset_shard(self, name: str) -> Any:
        raise RuntimeError("streamed datasets need the Ray Train launcher")


# ------------------------------------------------------------------ the TorchTrainer


def scaling_config(cfg: Config):
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=cfg.scaling.workers, use_gpu=wants_gpu(cfg),
        resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        placement_strategy=cfg.scaling.placement_strategy)


def checkpoint_config(cfg: Config):
    """Keep the best checkpoint by the early-stopping metric, and the latest (Ray always keeps
    the latest: it is what a restarted worker group resumes from)."""
    import ray.train

    metric = cfg.train.early_stop_metric
    if metric is None:
        return ray.train.CheckpointConfig(num_to_keep=1)
    return ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric_key(metric),
                                      checkpoint_score_order=metric_mode(metric))


def build_trainer(train_fn: Callable, loop_config: dict, cfg: Config, *, name: str,
                  storage_path: str, callbacks: Sequence[Any] = ()):
    """The TorchTrainer for a config: workers, resources and placement (ScalingConfig),
    restarts (FailureConfig) and checkpoint retention (CheckpointConfig)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_fn, train_loop_config=loop_config or None, scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=checkpoint_config(cfg)))


def train_fn(config: dict) -> RunResult | None:
    """What every Ray Train worker runs: the per-worker loop on its shard of the data."""
    entered = time.time()
    import ray

    from raybench.config import from_dict
    from raybench.data.ingest import open_ingest
    from raybench.loop import train_worker

    cfg = from_dict(config["cfg"])
    session = RaySession(config.get("progress"))
    ingest = open_ingest(cfg, ray.get(config["data"]), session.rank, session.world_size,
                         session.device)
    options = dataclasses.replace(config.get("options") or LoopOptions(),
                                  worker_entry_time=entered)
    return train_worker(cfg, ingest, session, options)


def _fit_with_progress(trainer: Any, progress: Any, on_report: Callable[[dict], None] | None):
    """fit() in a thread while this thread hands rank 0's reports to on_report."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="raybench-fit", daemon=True)
    thread.start()
    while thread.is_alive() or (progress is not None and not progress.empty()):
        if progress is None:
            thread.join(0.5)
            continue
        try:
            on_report(progress.get(timeout=0.5))
        except queue_mod.Empty:  # ray.util.queue.Empty subclasses it
            pass
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class RayTrainBackend:
    name = "raybench"

    def __init__(self, data: Dataset, context: LaunchContext) -> None:
        import ray

        self.context = context
        self.data_ref = ray.put(data)  # once; workers on a node map it without a copy

    def run(self, cfg: Config, options: LoopOptions, run_name: str) -> RunResult:
        """Run the loop on cfg.scaling.workers Ray Train workers. Rank 0's epoch metrics reach
        context.on_report live."""
        from ray.util.queue import Queue

        check_resources(cfg)
        on_report = self.context.on_report
        progress = Queue(actor_options={"num_cpus": 0}) if on_report else None
        trainer = build_trainer(train_fn, {"cfg": cfg.to_dict(), "data": self.data_ref,
                                           "options": options, "progress": progress},
                                cfg, name=run_name, storage_path=self.context.storage_path)
        result = _fit_with_progress(trainer, progress, on_report)
        if result.return_value is None:
            raise RuntimeError("Ray Train finished without a result from rank 0")
        return result.return_value

    def close(self) -> None:
        self.data_ref = None


def _floor_fn() -> float | None:
    first_line = time.time()
    import torch.distributed as dist

    if not dist.is_initialized():
        return first_line
    times = [None] * dist.get_world_size()
    dist.all_gather_object(times, first_line)
    return max(times) if dist.get_rank() == 0 else None


def startup_floor(cfg: Config, *, storage_path: str, name: str) -> float:
    """Ray's own start-up floor: seconds from this call until every worker of a TorchTrainer
    whose loop does nothing has reached its first line (same workers and resources)."""
    start = time.time()
    result = build_trainer(_floor_fn, {}, cfg, name=name, storage_path=storage_path).fit()
    return result.return_value - start


BACKEND = RayTrainBackend
