"""Connecting to Ray: join the cluster at --address / RAY_ADDRESS, or start a local Ray on
127.0.0.1 sized for the workers; fail fast where Ray itself would wait forever. `connect`
returns a handle that knows whether this process started the Ray it holds."""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass

from raybench.backends.local import wants_gpu
from raybench.config import Config
from raybench.errors import UserError

# Ray Train V2's report() returns only when the controller next polls its workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): measured here, that added 2 s to every
# 0.1 s epoch. Clusters raybench starts itself poll every 0.2 s (users can still override).
# That polling costs CPU, though: with both cores busy (LSTM, 2 workers) steps ran 4-6% slower
# at 0.2 s than at 2 s, so throughput benchmarks (raybench.scale) keep Ray's 2 s.
LOCAL_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
REPORT_POLL_S = 0.2
# A local Ray gets as many logical CPUs as the workers ask for, so that 4 workers run on a
# 2-core laptop; past this many worker processes per core the machine only thrashes.
LOCAL_OVERSUBSCRIPTION = 4


@dataclass
class RayHandle:
    """The Ray this command runs on."""

    description: str
    started_local: bool  # this process started it (and stops it on the way out)
    address: str | None = None  # the cluster joined, None for a local Ray

    def shutdown(self) -> None:
        """Stop the local Ray this process started (its workers with it); leave clusters."""
        import ray

        if self.started_local and ray.is_initialized():
            ray.shutdown()


def _local_ray_env(report_poll_s: float | None) -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    if report_poll_s is not None and "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(report_poll_s)


def connect(cfg: Config, *, verbose: bool = False, dashboard: bool = False,
            extra_cpus: int = 0, report_poll_s: float | None = REPORT_POLL_S) -> RayHandle:
    """Join the cluster at scaling.address or RAY_ADDRESS, else start a local Ray on 127.0.0.1
    with enough logical CPUs for the requested workers (plus extra_cpus, e.g. for Tune's trial
    drivers)."""
    import ray

    address = cfg.scaling.address or os.environ.get("RAY_ADDRESS")
    level = logging.INFO if verbose else logging.ERROR
    if ray.is_initialized():
        return RayHandle("existing Ray session", started_local=False)
    if address:
        return _join(address, level)
    _local_ray_env(report_poll_s)  # inherited by the processes this ray.init starts
    cores = os.cpu_count() or 1
    if cfg.scaling.workers > LOCAL_OVERSUBSCRIPTION * cores:
        raise UserError(f"{cfg.scaling.workers} workers on this {cores}-core machine: a local "
                        f"Ray runs at most {LOCAL_OVERSUBSCRIPTION * cores} worker processes "
                        f"({LOCAL_OVERSUBSCRIPTION} per core); use --address to run on a cluster")
    needed = math.ceil(cfg.scaling.workers * cfg.scaling.cpus_per_worker)
    num_cpus = max(cores, needed + extra_cpus)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
             dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             log_to_driver=verbose, logging_level=level)
    return RayHandle(f"local Ray on 127.0.0.1 with {num_cpus} logical CPUs", started_local=True)


def _join(address: str, level: int) -> RayHandle:
    import ray

    _probe_cluster(address)
    try:
        # Worker output stays visible on a cluster: inside `ray job submit` it is the only
        # place a user sees what the workers printed.
        ray.init(address=address, log_to_driver=True, logging_level=level)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot connect to a Ray cluster at {address!r}: {msg}") from None
    return RayHandle(f"Ray cluster at {address}", started_local=False, address=address)


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


def node_of_this_process() -> dict[str, str]:
    import ray

    return {"ip": ray.util.get_node_ip_address(), "id": ray.get_runtime_context().get_node_id()}
