"""Launchers: the same per-worker loop under Ray Train (N workers on any cluster) or in the
current process (`raw`). Only the launcher differs, so their ratio is the launcher's cost."""

from __future__ import annotations

import logging
import math
import os
import queue as queue_mod
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from raybench.config import Config
from raybench.data import Dataset
from raybench.errors import UserError
from raybench.loop import LoopOptions, train_worker
from raybench.models import build_model, count_parameters

# ------------------------------------------------------------------ sessions


class LocalSession:
    """One plain process (rank 0 of 1), or one rank of a torch.distributed group."""

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1,
                 on_report: Callable[[dict], None] | None = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self._on_report = on_report

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

    def step_progress(self, info: dict[str, Any]) -> None:
        if self._on_report:
            self._on_report({"progress": True, **info})

    def node(self) -> dict[str, str]:
        return {"ip": "127.0.0.1", "id": socket.gethostname()}


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
        return ray_node()


def ray_node() -> dict[str, str]:
    import ray

    return {"ip": ray.util.get_node_ip_address(), "id": ray.get_runtime_context().get_node_id()}


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


def run_raw(cfg: Config, data: Dataset, options: LoopOptions,
            on_report: Callable[[dict], None] | None = None) -> dict:
    """The loop in this process, no Ray: the ceiling a single worker can reach."""
    result = train_worker(cfg, data, LocalSession(pick_device(cfg), on_report=on_report), options)
    assert result is not None
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: dict, data_dir: str,
                options: LoopOptions, results: Any, allreduce_iters: int) -> None:
    from raybench.config import from_dict
    from raybench.data import load_dataset
    from raybench.timing import allreduce_latency

    code = 1
    try:
        cfg = from_dict(cfg_dict)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        gpu = wants_gpu(cfg)
        device = torch.device("cuda", rank) if gpu else torch.device("cpu")
        if gpu:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world)
        try:
            data = load_dataset(data_dir)
            result = train_worker(cfg, data, LocalSession(device, rank, world), options)
            numel = count_parameters(build_model(cfg.model, data.n_features, data.window))
            comm = allreduce_latency(numel, device, allreduce_iters) if allreduce_iters else None
            if rank == 0:
                assert result is not None
                result["allreduce"] = comm
                results.put(result)
                results.close()
                results.join_thread()  # flush the queue's feeder thread before os._exit
            code = 0
        finally:
            dist.destroy_process_group()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip interpreter teardown: gloo's threads sometimes abort it ("terminate called
        # without an active exception") after the work is done and the result delivered.
        os._exit(code)


def run_ddp(cfg: Config, data_dir: str, options: LoopOptions, *,
            allreduce_iters: int = 200) -> dict:
    """The loop under plain torch DistributedDataParallel: cfg.scaling.workers processes
    started with torch.multiprocessing, gloo on CPU (nccl on GPU), no Ray. Data comes from
    memory-mapped .npy files (see data.save_dataset), shared through the page cache."""
    import torch.multiprocessing as mp

    world = cfg.scaling.workers
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, daemon=True,
                         args=(rank, world, port, cfg.to_dict(), data_dir, options, results,
                               allreduce_iters)) for rank in range(world)]
    for proc in procs:
        proc.start()
    result = None
    try:
        # Read while the processes run: a large result blocks its writer until it is read.
        while result is None:
            try:
                result = results.get(timeout=1.0)
            except queue_mod.Empty:
                if any(p.exitcode not in (None, 0) for p in procs) or all(
                        p.exitcode is not None for p in procs):
                    break
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed or result is None:
        raise RuntimeError(f"DDP baseline with {world} processes failed (exit codes {failed})")
    return result


# ------------------------------------------------------------------ Ray cluster


def wants_gpu(cfg: Config) -> bool:
    return cfg.scaling.use_gpu or cfg.train.device == "cuda"


# Ray Train V2's report() returns only when the controller next polls its workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): measured here, that added 2 s to every
# 0.1 s epoch. Clusters raybench starts itself poll every 0.2 s (users can still override).
# That polling costs CPU, though: with both cores busy (LSTM, 2 workers) steps ran 4-6% slower
# at 0.2 s than at 2 s, so throughput benchmarks (raybench.scale) keep Ray's 2 s.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
REPORT_POLL_S = 0.2


_STARTED_RAY = False
# A local Ray gets as many logical CPUs as the workers ask for, so that 4 workers run on a
# 2-core laptop; past this many worker processes per core the machine only thrashes.
LOCAL_OVERSUBSCRIPTION = 4


def started_local_ray() -> bool:
    return _STARTED_RAY


def shutdown_if_ours() -> None:
    """Stop the local Ray this process started (its workers with it); leave clusters alone."""
    import ray

    if _STARTED_RAY and ray.is_initialized():
        ray.shutdown()


def _local_ray_env(report_poll_s: float | None) -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if report_poll_s is not None and "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(report_poll_s)


def connect(cfg: Config, *, verbose: bool = False, dashboard: bool = False,
            extra_cpus: int = 0, report_poll_s: float | None = REPORT_POLL_S) -> str:
    """Join the cluster at scaling.address or RAY_ADDRESS, else start a local Ray on 127.0.0.1
    with enough logical CPUs for the requested workers (plus extra_cpus, e.g. for Tune's trial
    drivers). Returns a description of the cluster."""
    import ray

    address = cfg.scaling.address or os.environ.get("RAY_ADDRESS")
    level = logging.INFO if verbose else logging.ERROR
    if ray.is_initialized():
        return "existing Ray session"
    if address:
        _probe_cluster(address)
        try:
            ray.init(address=address, log_to_driver=verbose, logging_level=level)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot connect to a Ray cluster at {address!r}: {msg}") from None
        return f"Ray cluster at {address}"
    _local_ray_env(report_poll_s)  # inherited by the processes this ray.init starts
    cores = os.cpu_count() or 1
    if cfg.scaling.workers > LOCAL_OVERSUBSCRIPTION * cores:
        raise UserError(f"{cfg.scaling.workers} workers on this {cores}-core machine: a local "
                        f"Ray runs at most {LOCAL_OVERSUBSCRIPTION * cores} worker processes "
                        f"({LOCAL_OVERSUBSCRIPTION} per core); use --address to run on a cluster")
    needed = math.ceil(cfg.scaling.workers * cfg.scaling.cpus_per_worker)
    num_cpus = max(cores, needed + extra_cpus)
    global _STARTED_RAY
    _STARTED_RAY = True
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
             dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             log_to_driver=verbose, logging_level=level)
    return f"local Ray on 127.0.0.1 with {num_cpus} logical CPUs"


def _probe_cluster(address: str, timeout: float = 3.0) -> None:
    """Fail in seconds when nothing listens at the address: ray.init would retry for minutes
    (measured here: still waiting after 10 min for 127.0.0.1:1)."""
    from ray._private.services import canonicalize_bootstrap_address, parse_address

    if address.startswith("ray://"):  # Ray Client: probe its own port
        host_port = address[len("ray://"):]
    else:
        try:
            host_port = canonicalize_bootstrap_address(address)
        except Exception as exc:  # Ray raises ConnectionError/ValueError for a missing cluster
            raise UserError(f"cannot connect to a Ray cluster at {address!r}: "
                            f"{str(exc).strip().splitlines()[0]}") from None
        if host_port is None:
            return  # "local": ray.init starts one
    parsed = parse_address(host_port)
    if parsed is None:
        raise UserError(f"--address {address!r}: expected host:port, auto or ray://host:port")
    host, port = parsed
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot connect to a Ray cluster at {address!r} ({host}:{port}: "
                        f"{exc.strerror or exc}); start one with `ray start --head` or drop "
                        "--address / RAY_ADDRESS to run locally") from None


def check_resources(cfg: Config) -> None:
    """Fail fast when the cluster can never place the workers: Ray itself would retry forever."""
    import ray

    cpus, gpus = cfg.scaling.cpus_per_worker, (1.0 if wants_gpu(cfg) else 0.0)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if gpus and not any(n.get("Resources", {}).get("GPU") for n in nodes):
        raise UserError("--use-gpu / device cuda: the Ray cluster has no GPUs "
                        f"({len(nodes)} node(s), {ray.cluster_resources().get('CPU', 0):g} CPU)")
    fits = 0
    for node in nodes:
        res = node.get("Resources", {})
        per_node = math.floor(res.get("CPU", 0) / cpus + 1e-9) if cpus else cfg.scaling.workers
        if gpus:
            per_node = min(per_node, math.floor(res.get("GPU", 0) / gpus + 1e-9))
        fits += per_node
    if fits < cfg.scaling.workers:
        total = ray.cluster_resources()
        have = f"{total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU on {len(nodes)} node(s)"
        need = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        raise UserError(f"cluster too small: {cfg.scaling.workers} workers x ({need}) do not fit "
                        f"in {have}; at most {fits} fit")


def scaling_config(cfg: Config):
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=cfg.scaling.workers, use_gpu=wants_gpu(cfg),
        resources_per_worker={"CPU": cfg.scaling.cpus_per_worker},
        placement_strategy=cfg.scaling.placement_strategy)


def _floor_fn() -> float | None:
    first_line = time.time()
    import torch.distributed as dist

    if not dist.is_initialized():
        return first_line
    times = [None] * dist.get_world_size()
    dist.all_gather_object(times, first_line)
    return max(times) if dist.get_rank() == 0 else None


def ray_startup_floor(cfg: Config, *, storage_path: str, name: str) -> float:
    """Ray's own start-up floor: seconds from this call until every worker of a TorchTrainer
    whose loop does nothing has reached its first line (same workers and resources)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    start = time.time()
    result = TorchTrainer(_floor_fn, scaling_config=scaling_config(cfg),
                          run_config=ray.train.RunConfig(name=name, storage_path=storage_path)
                          ).fit()
    return result.return_value - start


@dataclass
class RayRun:
    result: dict  # rank 0's return value of the loop
    storage: str  # where Ray Train kept checkpoints for this run


def _ray_train_fn(config: dict) -> dict | None:
    entered = time.time()
    import dataclasses

    import ray

    from raybench.config import from_dict

    cfg = from_dict(config["cfg"])
    data = ray.get(config["data"])
    options = dataclasses.replace(config["options"], worker_entry_time=entered)
    return train_worker(cfg, data, RaySession(config.get("progress")), options)


def run_ray(cfg: Config, data_ref: Any, options: LoopOptions, *, storage_path: str, name: str,
            on_report: Callable[[dict], None] | None = None) -> RayRun:
    """Run the loop on cfg.scaling.workers Ray Train workers. Rank 0's epoch metrics reach
    on_report live (fit runs in a thread while this thread drains a progress queue)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    check_resources(cfg)
    progress = Queue(actor_options={"num_cpus": 0}) if on_report else None
    trainer = TorchTrainer(
        _ray_train_fn,
        train_loop_config={"cfg": cfg.to_dict(), "data": data_ref, "options": options,
                           "progress": progress},
        scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )
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
    result = outcome["result"]
    if result.return_value is None:
        raise RuntimeError("Ray Train finished without a result from rank 0")
    return RayRun(result=result.return_value, storage=result.path)
