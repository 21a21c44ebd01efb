"""Connecting to Ray: join the cluster at --address / RAY_ADDRESS, or start a local Ray on
127.0.0.1 sized for the workers; fail fast where Ray itself would wait forever. `connect`
returns a handle that knows whether this process started the Ray it holds."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raybench.backends.local import wants_gpu
from raybench.config import Config
from raybench.errors import UserError, install_signal_handlers
from raybench.ray_env import NODE_ENV

# Every Ray node raybench configures keeps idle worker processes for reuse (ray_env.py).
LOCAL_RAY_ENV = dict(NODE_ENV)
# Ray Train V2's report() returns only when the controller next polls its workers, every
# RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): measured here, that added 2 s to every
# 0.1 s epoch. Clusters raybench starts itself poll every 0.2 s (users can still override).
# That polling costs CPU, though: with both cores busy (LSTM, 2 workers) steps ran 4-6% slower
# at 0.2 s than at 2 s, so throughput benchmarks (raybench.scale) keep Ray's 2 s.
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


def _local_ray_env(report_poll_s: float | None, cfg: Config) -> None:
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    _share_model_path(cfg)
    if report_poll_s is not None and "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" not in os.environ:
        os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = str(report_poll_s)


def _share_model_path(cfg: Config) -> None:
    """A user's model factory importable here (from the current directory, say) must import in
    the local workers too: put its package's directory on their PYTHONPATH. On a cluster the
    code has to be installed or shipped with the job (--working-dir)."""
    import importlib.util

    if ":" not in cfg.model.kind:
        return
    top = cfg.model.kind.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return
    origin = os.path.dirname(spec.origin)
    root = os.path.dirname(origin) if spec.submodule_search_locations else origin
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])


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
    _local_ray_env(report_poll_s, cfg)  # inherited by the processes this ray.init starts
    cores = os.cpu_count() or 1
    if cfg.scaling.workers > LOCAL_OVERSUBSCRIPTION * cores:
        raise UserError(f"{cfg.scaling.workers} workers on this {cores}-core machine: a local "
                        f"Ray runs at most {LOCAL_OVERSUBSCRIPTION * cores} worker processes "
                        f"({LOCAL_OVERSUBSCRIPTION} per core); use --address to run on a cluster")
    needed = math.ceil(cfg.scaling.workers * cfg.scaling.cpus_per_worker)
    num_cpus = max(cores, needed + extra_cpus)
    store = cfg.scaling.object_store_mib
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                 dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                 object_store_memory=store * 2**20 if store else None,
                 log_to_driver=verbose, logging_level=level)
    except BaseException:  # Ctrl-C or SIGTERM while Ray starts: stop what it started
        ray.shutdown()
        raise
    finally:
        install_signal_handlers()  # ray.init replaced our SIGTERM handler with sys.exit(15)
    return RayHandle(f"local Ray on 127.0.0.1 with {num_cpus} logical CPUs", started_local=True)


def start_ray(cfg: Config, log: Callable[[str], None], *, verbose: bool = False,
              dashboard: bool = False, extra_cpus: int = 0,
              report_poll_s: float | None = REPORT_POLL_S) -> RayHandle:
    """What every command does to get a Ray: connect (or start one), with the signal handlers
    in place again after ray.init, say which, and check that the workers can be placed."""
    handle = connect(cfg, verbose=verbose, dashboard=dashboard, extra_cpus=extra_cpus,
                     report_poll_s=report_poll_s)
    log(f"Ray: {handle.description}")
    preflight(cfg, cfg.scaling.wait_for_workers_s)
    return handle


def ingest_cpus(cfg: Config) -> int:
    """Logical CPUs a local Ray needs beyond the workers': Ray Data's read tasks cannot run
    where the training workers have reserved every CPU."""
    return 1 if cfg.data.ingest == "ray_data" else 0


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
    finally:
        install_signal_handlers()
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
    least = cfg.scaling.min_workers or cfg.scaling.workers  # an elastic run needs its minimum
    if fits < least:
        total = ray.cluster_resources()
        have = f"{total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU on {len(nodes)} node(s)"
        need = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        raise UserError(f"cluster too small: {least} workers x ({need}) do not fit "
                        f"in {have}; at most {fits} fit")


def wait_for_free_cpus(cfg: Config, timeout_s: float = 20.0) -> None:
    """A resident launcher starts while others hold their workers: the cluster must have the
    CPUs free now (plus a quarter CPU for Ray Data's read tasks when streaming), else its
    workers would wait forever. Resources freed a moment ago take Ray a moment to show."""
    import time

    import ray

    need = cfg.scaling.workers * cfg.scaling.cpus_per_worker
    need += 0.25 if cfg.data.ingest == "ray_data" else 0.0
    deadline = time.monotonic() + timeout_s
    while (free := ray.available_resources().get("CPU", 0.0)) + 1e-9 < need:
        if time.monotonic() > deadline:
            raise UserError(f"another resident launcher needs {need:g} CPUs and the Ray cluster "
                            f"has {free:g} free while the others hold theirs; start Ray with "
                            "more (logical) CPUs, or measure with --protocol restart")
        time.sleep(0.5)


def place_workers(cfg: Config, workers: int, timeout_s: float):
    """A placement group of `workers` bundles as Ray Train would ask for them (CPUs, a GPU,
    the placement strategy), ready within timeout_s, or one line saying it cannot be placed.
    Ray alone would wait forever for bundles a cluster can never hold (STRICT_SPREAD with more
    workers than nodes, say)."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    bundle = {"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if wants_gpu(cfg) else {})}
    strategy = cfg.scaling.placement_strategy
    pg = placement_group([dict(bundle) for _ in range(workers)], strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if ready:
        return pg
    remove_placement_group(pg)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    sizes = ", ".join(f"{n.get('Resources', {}).get('CPU', 0):g}" for n in nodes)
    raise UserError(f"Ray cannot place {workers} workers x {bundle} with {strategy} on this "
                    f"cluster ({len(nodes)} node(s) with {sizes} CPU) within {timeout_s:g}s; "
                    "use fewer workers, another --placement-strategy, or --wait-for-workers on "
                    "an autoscaling cluster")


def placed_actors(cfg: Config, cls: type, timeout_s: float = 120.0) -> tuple[Any, list]:
    """One actor of `cls` on each bundle of a placement group placed as Ray Train would place
    cfg's workers (place_workers): the plain-DDP ranks and the network probe's."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = place_workers(cfg, cfg.scaling.workers, timeout_s)
    remote = ray.remote(cls)
    actors = [remote.options(
        num_cpus=cfg.scaling.cpus_per_worker, num_gpus=1 if wants_gpu(cfg) else 0,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
    ).remote() for i in range(cfg.scaling.workers)]
    return pg, actors


def release(pg: Any, actors: list) -> None:
    import ray
    from ray.util.placement_group import remove_placement_group

    for actor in actors:
        ray.kill(actor)
    remove_placement_group(pg)


def preflight(cfg: Config, wait_s: float | None = None) -> None:
    """Check that the run's workers can be placed, as Ray's scheduler would place them: a
    real placement group, honouring STRICT_PACK and STRICT_SPREAD. Without `wait_s` the
    cluster's current resources must hold them (a quick arithmetic check first, for a message
    with numbers); with it, an autoscaling cluster gets that long to add nodes."""
    from ray.util.placement_group import remove_placement_group

    if wait_s is None:
        check_resources(cfg)
    least = cfg.scaling.min_workers or cfg.scaling.workers  # an elastic run needs its minimum
    remove_placement_group(place_workers(cfg, least, wait_s if wait_s is not None else 10.0))


def meeting_point() -> tuple[str, int]:
    """This node's address and a free port on it: where torch.distributed ranks placed by Ray
    meet (rank 0's)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return node_of_this_process()["ip"], sock.getsockname()[1]


def node_of_this_process() -> dict[str, str]:
    import ray

    return {"ip": ray.util.get_node_ip_address(), "id": ray.get_runtime_context().get_node_id()}


class ObjectStoreMonitor:
    """Samples Ray's object store (all nodes) every `every_s` while a run is going: the peak
    bytes in use and the bytes spilled to disk meanwhile. A probe Ray does not answer (an
    older or locked-down cluster) leaves both None rather than failing the run.

    A sample is not free: the raylet asks every worker process of every node for its stats,
    so its cost grows with the processes a streamed run keeps. Measured here with 20 idle
    actors (scripts/store_sample_cost.py): 21-91 ms of the machine's CPU a sample through
    Ray's get_memory_info_reply (a new channel and node-table read each call), 0-45% less over
    one kept channel. Every 0.5 s that was 2-9% of a 2-core machine; every 2 s it is a quarter
    of that or less. The spill total is read again at the end, so only a peak shorter than 2 s
    can be missed."""

    def __init__(self, every_s: float = 2.0) -> None:
        import threading

        self.every_s = every_s
        self.peak_bytes: int | None = None
        self.spilled_bytes: int | None = None
        self._first_spilled: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raybench-store", daemon=True)
        self._ask: Any = None

    def _connect(self) -> Any:
        """The raylet's FormatGlobalMemoryInfo call, on a channel kept for the whole run (Ray's
        get_memory_info_reply opens a channel and reads the node table at every call)."""
        import ray
        from ray._common.network_utils import build_address
        from ray._private.grpc_utils import init_grpc_channel
        from ray._private.internal_api import MAX_MESSAGE_LENGTH, get_state_from_address
        from ray.core.generated import node_manager_pb2, node_manager_pb2_grpc

        # The cluster this driver is connected to, by its GCS address: without one Ray looks
        # up /tmp/ray/ray_current_cluster, which may name another (or a dead) cluster; a dead
        # one cost 2.5 s per connection attempt, 15 s per run.
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        raylet = next(n for n in state.node_table() if n["Alive"])
        channel = init_grpc_channel(
            build_address(raylet["NodeManagerAddress"], raylet["NodeManagerPort"]),
            options=[("grpc.max_send_message_length", MAX_MESSAGE_LENGTH),
                     ("grpc.max_receive_message_length", MAX_MESSAGE_LENGTH)])
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        request = node_manager_pb2.FormatGlobalMemoryInfoRequest(include_memory_info=False)
        return lambda: stub.FormatGlobalMemoryInfo(request, timeout=5)

    def _sample(self) -> None:
        if self._ask is None:
            self._ask = self._connect()
        try:
            stats = self._ask().store_stats
        except Exception:
            self._ask = None  # the raylet asked may be gone (a node lost): another, next time
            raise
        used, spilled = int(stats.object_store_bytes_used), int(stats.spilled_bytes_total)
        self.peak_bytes = max(self.peak_bytes or 0, used)
        if self._first_spilled is None:
            self._first_spilled = spilled
        self.spilled_bytes = spilled - self._first_spilled

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # noqa: BLE001 (monitoring must never break a run)
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> ObjectStoreMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        try:
            self._sample()  # the final spill count
        except Exception:  # noqa: BLE001
            pass

    def mib(self) -> tuple[float | None, float | None]:
        def to_mib(b: int | None) -> float | None:
            return None if b is None else b / 2**20
        return to_mib(self.peak_bytes), to_mib(self.spilled_bytes)
