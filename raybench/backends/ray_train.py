"""`raybench`: the loop on N Ray Train workers (`TorchTrainer`), on a local Ray or any cluster.
`build_trainer` is the one place a TorchTrainer is built, for run, scale and tune alike."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue as queue_mod
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from raybench.backends import warm_imports
from raybench.backends.base import LaunchContext
from raybench.backends.conductor import ActorChannel, RayConductor, window_board
from raybench.backends.local import wants_gpu
from raybench.backends.ray_cluster import (
    ObjectStoreMonitor,
    check_resources,
    node_of_this_process,
    wait_for_free_cpus,
)
from raybench.chaos import ChaosMonkey, ChaosSchedule, Injected
from raybench.config import Config, elastic, metric_mode
from raybench.data.dataset import Dataset
from raybench.data.ingest import trainer_datasets
from raybench.data.parquet import ParquetDataset
from raybench.errors import RunFailed, cause_line, raise_if_stopped
from raybench.loop import LoopOptions, hang
from raybench.ray_env import emulated_cluster
from raybench.results import (
    FirstStep,
    Recovery,
    Registered,
    RunResult,
    StepProgress,
    WindowOrder,
    WindowReport,
    WorkersFailed,
    WorkerUp,
    metric_key,
)

# ------------------------------------------------------------------ sessions


class RaySession:
    """A Ray Train worker: rank and device from Ray, DDP via prepare_model, checkpoints via
    ray.train.report, and rank 0's epoch metrics forwarded to the driver's progress queue."""

    def __init__(self, progress: Any = None, board: Any = None) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        self.device = ray.train.torch.get_device()
        self._progress = progress
        # A resident run's orders (backends.conductor): the driver interleaves its windows.
        self._channel = ActorChannel(board, self.rank) if board is not None else None
        if progress is not None:  # who to kill for --chaos; where this incarnation runs
            node = node_of_this_process()
            progress.put_nowait(WorkerUp(self.rank, os.getpid(), node["id"], node["ip"]))

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

    def step_progress(self, progress: StepProgress) -> None:
        if self._progress is not None:
            self._progress.put_nowait(progress)

    def first_step(self, at: float) -> None:
        if self._progress is not None and self.rank == 0:
            self._progress.put_nowait(FirstStep(at))

    def node(self) -> dict[str, str]:
        return node_of_this_process()

    def dataset_shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def wait_window(self) -> WindowOrder | None:
        return self._channel.wait()

    def report_window(self, report: WindowReport) -> None:
        self._channel.report(report)


class TuneSession:
    """A one-process Tune trial: the loop runs inside the trial and reports to Tune directly;
    a streamed dataset is the trial's own Ray Data dataset (one rank reads all of it)."""

    rank, local_rank, world_size = 0, 0, 1

    def __init__(self, device: Any, datasets: dict[str, Any] | None = None) -> None:
        self.device = device
        self._datasets = datasets or {}

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

    def step_progress(self, progress: StepProgress) -> None:
        pass  # a sweep shows progress per trial, not per step

    def first_step(self, at: float) -> None:
        pass  # Tune restarts a trial as a new trial

    def node(self) -> dict[str, str]:
        return node_of_this_process()

    def dataset_shard(self, name: str) -> Any:
        return self._datasets[name]

    def wait_window(self) -> WindowOrder | None:
        raise RuntimeError("a Tune trial is not a resident launcher")

    def report_window(self, report: WindowReport) -> None:
        raise RuntimeError("a Tune trial is not a resident launcher")


# ------------------------------------------------------------------ the TorchTrainer

# Ray Train V2's own helpers that a user can switch off (ray/train/v2/_internal/constants.py),
# each read from the driver's environment when fit() starts and passed on to the controller
# and the workers: `raybench.scale --ray-train-switches` measures what each costs. The state
# actor's reconciliation is left out: that actor is one per cluster, created by the first run,
# so a run cannot switch it off for itself.
RAY_TRAIN_SWITCHES = {
    "preemption_watcher": "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER",
    "print_patch": "RAY_TRAIN_ENABLE_PRINT_PATCH",
    "controller_logging": "RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING",
    "worker_logging": "RAY_TRAIN_ENABLE_WORKER_STRUCTURED_LOGGING",
}


def scaling_config(cfg: Config):
    import ray.train

    s = cfg.scaling
    workers = (s.min_workers, s.workers) if elastic(cfg) else s.workers
    return ray.train.ScalingConfig(
        num_workers=workers, use_gpu=wants_gpu(cfg),
        resources_per_worker={"CPU": s.cpus_per_worker},
        placement_strategy=s.placement_strategy,
        elastic_resize_monitor_interval_s=s.elastic_resize_interval_s)


def checkpoint_config(cfg: Config, scored: bool = True):
    """Keep the best checkpoint by the early-stopping metric, and the latest (Ray always keeps
    the latest: it is what a restarted worker group resumes from). A loop that does not
    validate (scale --chaos) reports no metric to score by: only the latest is kept (Ray
    warned twice an epoch that the metric was missing)."""
    import ray.train

    metric = cfg.train.early_stop_metric
    if metric is None or not scored:
        return ray.train.CheckpointConfig(num_to_keep=1)
    return ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric_key(metric),
                                      checkpoint_score_order=metric_mode(metric))


def build_trainer(train_fn: Callable, loop_config: dict, cfg: Config, *, name: str,
                  storage_path: str, callbacks: Sequence[Any] = (),
                  datasets: dict[str, Any] | None = None, warm: bool = True):
    """The TorchTrainer for a config: workers, resources and placement (ScalingConfig),
    restarts (FailureConfig), checkpoint retention (CheckpointConfig), and the datasets an
    ingest hands the workers (data.ingest.trainer_datasets). `warm`: the workers import
    torch's compiler stack while Ray starts them (backends.warm_imports); the start-up floor
    turns it off, being Ray's own start."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    set_health_check_bound(cfg)
    return TorchTrainer(
        train_fn, train_loop_config=loop_config or None, scaling_config=scaling_config(cfg),
        # The process group's timeout until the loop has measured its steps (loop.hang).
        torch_config=TorchConfig(timeout_s=int(hang.start_bound_s(cfg))),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=checkpoint_config(cfg, getattr(
                (loop_config or {}).get("options"), "evaluate", True)),
            worker_runtime_env=warm_imports.worker_runtime_env(
                ray.get_runtime_context().runtime_env if ray.is_initialized() else None)
            if warm else None),
        **(datasets or {}))


HEALTH_CHECK_ENV = "RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S"
# What the user exported before raybench set anything: kept when they give no --hang-timeout-s.
_USER_HEALTH_CHECK = os.environ.get(HEALTH_CHECK_ENV)


def set_health_check_bound(cfg: Config) -> float:
    """How long Ray Train's controller waits on a worker that does not answer before failing
    the worker group (Ray's default: 600 s). Ray reads it from the driver's environment when
    fit() starts and passes it on to the controller and the workers."""
    if cfg.scaling.hang_timeout_s is None and _USER_HEALTH_CHECK is not None:
        os.environ[HEALTH_CHECK_ENV] = _USER_HEALTH_CHECK
    else:
        os.environ[HEALTH_CHECK_ENV] = f"{hang.health_check_bound_s(cfg):g}"
    return float(os.environ[HEALTH_CHECK_ENV])


def train_fn(config: dict) -> RunResult | None:
    """What every Ray Train worker runs: the per-worker loop on its shard of the data."""
    entered = time.time()
    import ray

    from raybench.config import from_dict
    from raybench.data.ingest import open_ingest
    from raybench.loop import train_worker

    cfg = from_dict(config["cfg"])
    session = RaySession(config.get("progress"), config.get("board"))
    _drop_single_rank_group(session.world_size)
    data = config["data"]  # an object reference to a Dataset, or a ParquetDataset's metadata
    data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    ingest = open_ingest(cfg, data, session)
    options = dataclasses.replace(config.get("options") or LoopOptions(),
                                  worker_entry_time=entered)
    return train_worker(cfg, ingest, session, options)


def _drop_single_rank_group(world_size: int) -> None:
    """Ray Train sets up a gloo process group even for one worker, where there is nothing to
    synchronise (the loop's collectives all ask for world_size > 1); its TCP loop thread woke
    about 100 times a second in an idle worker here, on the cores the training thread uses.
    Ray's own shutdown destroys the group only for two or more workers, so dropping it is
    safe."""
    import torch.distributed as dist

    if world_size == 1 and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def progress_queue() -> Any:
    """A queue actor on the head node: a node that leaves (elastic runs, chaos) must not take
    the run's progress and failure times with it. Not "the driver's node": on a cluster whose
    nodes share one IP (ray.cluster_utils, a test) the driver may be attached to a worker
    node's raylet, and the queue went down with that node, failing the run."""
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE_NAME: 0.001}})


def controller_clock(queue: Any, world_size: int | None = None) -> Any:
    """A Ray Train callback (it runs on the controller) that puts the controller's own events
    into the run's progress queue: every worker failure, timestamped (the start of a recovery),
    and every epoch report it has registered, checkpoint included (an epoch chaos schedule
    kills only then, so the restart resumes from that checkpoint)."""
    import ray.train

    def put(message: WorkersFailed | Registered) -> None:
        try:
            queue.put_nowait(message)
        except Exception:  # noqa: BLE001 (a lost clock costs a figure, never the run)
            pass

    class ControllerClock(ray.train.UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict) -> None:
            put(WorkersFailed(time.time(), sorted(worker_exceptions),
                              failure_cause(worker_exceptions, world_size),
                              stalled_ranks(worker_exceptions, world_size)))

        def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
            epoch = metrics[0].get("epoch") if metrics else None
            if epoch is not None:
                put(Registered(int(epoch), checkpoint is not None))

    return ControllerClock()


def failure_cause(worker_exceptions: dict, world_size: int | None = None) -> str:
    """The failure in one line: a run that recovered still says what it recovered from (a
    lost node reads differently from a bug in the loop). A hang names the rank that stopped
    (stalled_ranks)."""
    if not worker_exceptions:
        return ""
    stuck = stalled_ranks(worker_exceptions, world_size)
    if any(map(_unanswered, worker_exceptions.values())):
        return (f"{HANG_CAUSE}: {_ranks(stuck)} did not answer for "
                f"{os.environ.get(HEALTH_CHECK_ENV, '?')} s (a stopped or frozen process, or a "
                "node lost or cut off)")
    waited = sorted(r for r, e in worker_exceptions.items() if _timed_out_in_collective(e))
    if waited:
        who = f"{_ranks(stuck)} made no progress" if stuck else "a rank made no progress"
        return (f"{HANG_CAUSE}: {who}; {_ranks(waited)} timed out waiting for it in a "
                "collective")
    rank = min(worker_exceptions)
    error = worker_exceptions[rank]
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return f"rank {rank}: {type(error).__name__}: {lines[0] if lines else ''}"[:300]


def stalled_ranks(worker_exceptions: dict, world_size: int | None) -> list[int]:
    """The ranks a hang is blamed on: those whose health check Ray Train gave up on; else,
    when others timed out waiting in a collective, the ranks that did not fail (still alive,
    not progressing). Empty when the failure was no hang."""
    silent = sorted(r for r, e in worker_exceptions.items() if _unanswered(e))
    if silent:
        return silent
    if world_size and any(_timed_out_in_collective(e) for e in worker_exceptions.values()):
        return sorted(set(range(world_size)) - set(worker_exceptions))
    return []


HANG_CAUSE = "hang timeout"


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def _unanswered(error: BaseException) -> bool:
    """Ray Train gave up on this worker's health check (its class is internal to Ray Train)."""
    return type(error).__name__ == "WorkerHealthCheckTimeoutError"


def _timed_out_in_collective(error: BaseException) -> bool:
    """gloo's "Timed out waiting Nms for recv", nccl's watchdog timeout, in a worker's error."""
    text = str(error)
    return "Timed out waiting" in text or "Watchdog caught collective operation timeout" in text


class _Events:
    """What the progress queue carries besides rank 0's reports."""

    def __init__(self, on_report: Callable[[dict], None] | None, chaos: Any) -> None:
        self.on_report, self.chaos = on_report, chaos
        self.failures: list[float] = []
        self.causes: dict[float, str] = {}  # failure time -> what failed
        self.first_steps: list[float] = []  # rank 0's first step of every incarnation
        self.progress: list[tuple[float, int]] = []  # rank 0's (time, global step) reports
        self.blamed: dict[float, tuple[list[int], str]] = {}  # failure -> its ranks, node
        self.nodes: dict[int, str] = {}  # rank -> its node's IP, this incarnation

    def __call__(self, message: Any) -> None:
        if isinstance(message, WorkersFailed):
            if message.stalled:  # a hang: name where the stuck ranks ran
                message.cause += " [" + ", ".join(f"rank {r} on {self.nodes.get(r, '?')}"
                                                  for r in message.stalled) + "]"
            self.failures.append(message.at)
            self.causes[message.at] = message.cause
            ranks = message.stalled or message.ranks
            self.blamed[message.at] = (ranks, ", ".join(sorted({
                self.nodes[r] for r in ranks if r in self.nodes})))
            if self.on_report is not None:  # said at once, not only in the summary
                self.on_report(message)
        elif isinstance(message, FirstStep):
            self.first_steps.append(message.at)
            if self.chaos is not None:
                self.chaos.training_began()
        elif isinstance(message, Registered):
            if self.chaos is not None:
                self.chaos.registered(message.epoch)
        elif isinstance(message, WorkerUp):
            self.nodes[message.rank] = message.node_ip or message.node_id
            if self.chaos is not None:
                self.chaos.saw_worker(message.rank, message.pid, message.node_id,
                                      message.node_ip)
        else:  # an epoch report (a dict) or a StepProgress
            if isinstance(message, StepProgress):
                self.progress.append((message.at or time.time(), message.global_step))
            if self.on_report is not None:
                self.on_report(message)


def _fit_with_progress(trainer: Any, progress: Any, on_report: Callable[[dict], None] | None):
    """fit() in a thread while this thread hands the progress queue's messages on."""
    import ray

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="raybench-fit", daemon=True)
    thread.start()
    while thread.is_alive() or (progress is not None and not progress.empty()):
        # A Ctrl-C or SIGTERM that arrived inside a Ray call may come back as a Ray error, or
        # not at all (measured: a busy machine trained all 300 epochs after a Ctrl-C): ask.
        raise_if_stopped()
        if progress is None:
            thread.join(0.5)
            continue
        try:
            on_report(progress.get(timeout=0.5))
        except queue_mod.Empty:  # ray.util.queue.Empty subclasses it
            pass
        except ray.exceptions.RayError:  # the queue is gone: training goes on, unwatched
            raise_if_stopped()
            progress = None
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


class RayTrainBackend:
    name = "raybench"

    def __init__(self, data: Dataset | ParquetDataset, context: LaunchContext) -> None:
        import ray

        self.context, self.source = context, data
        # In memory: put once; workers on a node map it without a copy. Streamed: the workers
        # get the dataset's metadata and Ray Data reads the files.
        self.data_ref = ray.put(data) if isinstance(data, Dataset) else data

    def run(self, cfg: Config, options: LoopOptions, run_name: str,
            resume_from: Path | None = None, chaos: ChaosSchedule | None = None) -> RunResult:
        """Run the loop on cfg.scaling.workers Ray Train workers. Rank 0's epoch metrics reach
        context.on_report live; resume_from starts from that checkpoint when Ray's own record of
        the run's checkpoints is unusable (resume.prepare_resume)."""
        if cfg.scaling.wait_for_workers_s is None:  # an autoscaling cluster may still grow
            check_resources(cfg)
        monkey = ChaosMonkey(chaos, cfg.train.seed, emulated_cluster()) if chaos else None
        events = _Events(self.context.on_report, monkey)
        # The queue carries reports, worker announcements and failure times; a benchmark that
        # can neither fail nor show progress does without it (an actor less to start).
        wanted = events.on_report or monkey or cfg.scaling.max_failures != 0
        progress = progress_queue() if wanted else None
        if resume_from is not None:  # Ray Train V2 refuses resume_from_checkpoint: the loop
            options = dataclasses.replace(options, resume_from=str(resume_from))  # loads it
        trainer = build_trainer(train_fn, {"cfg": cfg.to_dict(), "data": self.data_ref,
                                           "options": options, "progress": progress},
                                cfg, name=run_name, storage_path=self.context.storage_path,
                                callbacks=([controller_clock(
                                    progress, None if elastic(cfg) else cfg.scaling.workers)]
                                           if progress is not None else []),
                                datasets=trainer_datasets(cfg, self.source))
        with ObjectStoreMonitor() as store, monkey or contextlib.nullcontext():
            try:
                result = _fit_with_progress(trainer, progress, events)
            except Exception as exc:
                raise hang_failure(events, cfg) or exc from None
        if result.return_value is None:
            raise RuntimeError("Ray Train finished without a result from rank 0")
        run = result.return_value
        run.timing.object_store_peak_mib, run.timing.spilled_mib = store.mib()
        run.timing.hang_health_check_s = float(os.environ[HEALTH_CHECK_ENV])
        time_recoveries(run.timing, events.failures, monkey.injected if monkey else [],
                        events.first_steps, events.causes, events.progress, events.blamed)
        return run

    def start(self, cfg: Config, options: LoopOptions, run_name: str) -> RayResident:
        """The loop resident on cfg.scaling.workers Ray Train workers: set up once, then
        windows on order (RayResident.measure) until stop()."""
        check_resources(cfg)
        wait_for_free_cpus(cfg)
        board = window_board(cfg.scaling.workers)
        options = dataclasses.replace(options, resident=True)
        trainer = build_trainer(train_fn, {"cfg": cfg.to_dict(), "data": self.data_ref,
                                           "options": options, "board": board},
                                cfg, name=run_name, storage_path=self.context.storage_path,
                                datasets=trainer_datasets(cfg, self.source))
        # The object store is watched only where it matters (streamed data): its cluster-wide
        # RPC would otherwise run during every launcher's windows for nothing.
        store = ObjectStoreMonitor() if cfg.data.ingest == "ray_data" else None
        return RayResident(trainer, board, store)

    def close(self) -> None:
        self.data_ref = None


class RayResident:
    """A TorchTrainer whose fit() runs in a driver thread while its workers serve windows."""

    def __init__(self, trainer: Any, board: Any, store: ObjectStoreMonitor | None) -> None:
        self.outcome: dict[str, Any] = {}
        self.store = store.__enter__() if store is not None else None
        self.thread = threading.Thread(target=self._fit, args=(trainer,), name="raybench-fit",
                                       daemon=True)
        self.thread.start()
        self.conductor = RayConductor(board, dead=self._dead)

    def _dead(self) -> str | None:
        """Why the resident run ended (fit() returned or failed: a worker died, its placement
        group was removed), or None while it serves windows."""
        if self.thread.is_alive():
            return None
        error = self.outcome.get("error")
        return f"its Ray Train run failed ({cause_line(error)})" if error else (
            "its Ray Train run ended")

    def _fit(self, trainer: Any) -> None:
        try:
            self.outcome["result"] = trainer.fit()
        except BaseException as exc:  # re-raised in the driver's thread by stop()
            self.outcome["error"] = exc

    def measure(self, order: WindowOrder, timeout_s: float) -> list[WindowReport]:
        return self.conductor.measure(order, timeout_s)

    def stop(self) -> RunResult:
        self.conductor.stop()
        self.thread.join()
        if self.store is not None:
            self.store.__exit__(None, None, None)
        self._raise_failure()
        result = self.outcome["result"].return_value
        if result is None:
            raise RuntimeError("Ray Train finished without a result from rank 0")
        if self.store is not None:
            result.timing.object_store_peak_mib, result.timing.spilled_mib = self.store.mib()
        return result

    def _raise_failure(self) -> None:
        if "error" in self.outcome:
            raise self.outcome["error"]

    def abort(self) -> None:
        """Stop without a result (the driver is leaving): the workers go with the trainer."""
        self.conductor.stop()
        self.thread.join(timeout=60)
        if self.store is not None:
            self.store.__exit__(None, None, None)


def hang_failure(events: _Events, cfg: Config) -> RunFailed | None:
    """The run's last failure in one line when it was a hang it could not restart from (Ray
    Train's own error holds every rank's traceback)."""
    last = events.causes.get(max(events.failures)) if events.failures else None
    if not last or not last.startswith(HANG_CAUSE):
        return None
    restarts = cfg.scaling.max_failures
    return RunFailed(f"{last}; no restart was left (--max-failures {restarts}); the last "
                     "checkpoint is kept (--resume continues from it)")


def time_recoveries(timing: Any, failures: list[float], injected: list[Injected],
                    first_steps: list[float], causes: dict[float, str] | None = None,
                    progress: list[tuple[float, int]] | None = None,
                    blamed: dict[float, tuple[list[int], str]] | None = None) -> None:
    """One Recovery per fault: each failure Ray Train's controller saw, matched to the --chaos
    fault that caused it (the last one carried out before it), and each --chaos fault the run
    went on through without a restart. A restart's recovery runs from the fault (its own clock
    when --chaos made it, else the controller's sighting) to rank 0's next first training step,
    whether it resumed from a checkpoint or started over; each restore from a checkpoint gets
    the failure that preceded it (none for an elastic resize). `causes` and `blamed` map a
    controller-seen failure's time to what failed and to the ranks (and node) it blamed;
    `progress` is rank 0's (time, global step) reports, the run's last progress before each."""
    timing.failures = len(failures)
    restores = sorted((r for r in timing.restores if r.first_step_epoch_s is not None),
                      key=lambda r: r.first_step_epoch_s)
    # Without the queue's first steps (it was lost), the restores' own first steps still time
    # the recoveries that resumed from a checkpoint.
    first_steps = sorted(first_steps or [r.first_step_epoch_s for r in restores])
    bound = (timing.hang_health_check_s or 60.0) + MATCH_SLACK_S
    matched = _match_faults(sorted(failures), injected, bound)
    used = {id(f) for f in matched.values()}
    events = [(matched.get(f), f) for f in failures]
    events += [(i, None) for i in injected if id(i) not in used]
    events.sort(key=lambda e: e[0].at if e[0] else e[1])
    timing.recoveries = []
    for k, (fault, seen) in enumerate(events):
        start = fault.at if fault else seen
        nxt = events[k + 1] if k + 1 < len(events) else None
        nxt_start = (nxt[0].at if nxt[0] else nxt[1]) if nxt else float("inf")
        ranks, node = (blamed or {}).get(seen, ([], "")) if seen else ([], "")
        rec = Recovery(failure_epoch_s=start, seen_by="chaos" if fault else "controller",
                       cause=_cause_line(fault, (causes or {}).get(seen, "") if seen else ""),
                       fault=fault.words if fault else _fault_words(causes, seen),
                       ranks=list(fault.ranks if fault and fault.ranks else ranks),
                       node=fault.target if fault and fault.fault != "kill-worker" else node,
                       restarted=seen is not None or (fault is not None
                                                      and fault.fault == "kill-worker"),
                       fault_s=(fault.ended_at - fault.at) if fault and fault.ended_at else None,
                       detected_epoch_s=seen)
        if seen is not None:
            marks = [t for t, _ in progress or [] if t < seen] + ([fault.at] if fault else [])
            rec.detect_s = seen - max(marks) if marks else None
        if not rec.restarted:
            rec.steps_lost = 0
            rec.note = ("the run went on through it without a restart" if fault.fault
                        != "slow-node" else "the run went on at the slow node's pace")
        else:
            _time_restart(rec, start, nxt_start, first_steps, restores, progress, timing)
        if fault is not None and fault.problem:
            rec.note = "; ".join(filter(None, (rec.note, fault.problem)))
        timing.recoveries.append(rec)


MATCH_SLACK_S = 30.0  # a failure this long past a fault's end plus the hang bound is another


def _match_faults(failures: list[float], injected: list[Injected],
                  bound_s: float) -> dict[float, Injected]:
    """Each controller-seen failure -> the --chaos fault that caused it: the last one carried
    out since the failure before, still in force (or ended less than the hang bound ago). A
    slow node fails nothing."""
    matched: dict[float, Injected] = {}
    previous = float("-inf")
    for seen in failures:
        causes = [i for i in injected if previous < i.at <= seen and i.fault != "slow-node"
                  and (i.ended_at is None or seen <= i.ended_at + bound_s)]
        if causes:
            matched[seen] = max(causes, key=lambda i: i.at)
        previous = seen
    return matched


def _cause_line(fault: Injected | None, controller: str) -> str:
    if fault is None:
        return controller
    what = f"--chaos {fault.fault}: {fault.words} ({fault.target}"
    what += f", rank(s) {', '.join(map(str, fault.ranks))})" if fault.fault != "kill-worker" \
        and fault.ranks else ")"
    return f"{what}; Ray Train saw: {controller}" if controller else what


def _fault_words(causes: dict[float, str] | None, seen: float | None) -> str:
    cause = (causes or {}).get(seen, "") if seen is not None else ""
    return "stall" if cause.startswith(HANG_CAUSE) else "worker failure"


def _time_restart(rec: Recovery, start: float, nxt_start: float, first_steps: list[float],
                  restores: list[Any], progress: list[tuple[float, int]] | None,
                  timing: Any) -> None:
    """A restart's recovery time, the checkpoint it resumed from, the steps it threw away."""
    after = next((t for t in first_steps if t > start), None)
    rec.first_step_epoch_s = after
    if after is None:
        rec.note = "no training step followed: the run ended, or its progress queue was lost"
        return
    if after > nxt_start:
        rec.note = "the next failure came before training resumed"
        return
    rec.recovery_s = after - start
    restore = next((r for r in restores if r.first_step_epoch_s == after), None)
    if restore is not None:  # resumed from a checkpoint (else it started over)
        restore.failure_epoch_s, restore.recovery_s = start, rec.recovery_s
        rec.resumed_from_epoch = restore.from_epoch
    cutoff = rec.detected_epoch_s or start
    before = [s for t, s in sorted(progress or []) if t <= cutoff]
    if before:  # this incarnation's last report: an earlier one may have gone further
        reached = before[-1]
        kept = (rec.resumed_from_epoch or 0) * timing.steps_per_epoch
        rec.steps_lost = max(0, reached - kept)


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
    result = build_trainer(_floor_fn, {}, cfg, name=name, storage_path=storage_path,
                           warm=False).fit()
    return result.return_value - start


BACKEND = RayTrainBackend
