"""An emulated multi-node Ray cluster on one Linux machine (`raybench.cluster local`).

Each node is a `ray start` in its own network, mount and PID namespaces, with its own address
in 198.18.0.0/15 (RFC 2544's range for benchmark networks), joined to the others through a
bridge by a veth pair whose two ends are rate-limited with tbf; its CPU share is a cgroup quota
(advertised to Ray as its logical CPUs) and it can be frozen as a whole. Nodes talk over their
links, so gloo's bytes cross a shaped link, and a node can be cut off, slowed, frozen or killed.

What it does not emulate: added latency or loss (this kernel has no netem), separate machines'
cores (every node shares this machine's, each capped at its share), separate disks or memory.

Everything made carries the cluster's name, so `down` finds it again after a crash of `up`:
  netns  raybench-NAME-I     host link  rbv-NAME-I     bridge  rbbr-NAME
  cgroup raybench/NAME/nodeI                           files   CLUSTERS_DIR/NAME/
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from raybench.cluster import kernel
from raybench.errors import UserError
from raybench.ray_env import EMULATED_CLUSTER_VAR, NODE_ENV

BENCHMARK_NET = ipaddress.ip_network("198.18.0.0/15")  # RFC 2544
NAME_RE = re.compile(r"^[a-z0-9]{1,8}$")  # interface names are at most 15 characters
GCS_PORT, DASHBOARD_PORT = 6379, 8265
HOST_OCTET = 254  # the host's own address on the bridge (for `ray job submit` from here)
MAX_NODES = 16
MIN_SHARE = 0.1  # a node below this starts Ray's own processes too slowly to be useful
# What one idle node's Ray processes hold (raylet, agents; the head also GCS and dashboard),
# measured here with Ray 2.60: the refusal of "more nodes than the machine can start".
NODE_MEMORY_MIB = 600
UP_TIMEOUT_S = 180.0
# The control process (cluster.control) and its socket, in the cluster's directory
CONTROL_SOCKET = "control.sock"
CONTROL_PID = "control.pid"
# The join-then-enter prefix of every process started on a node: the shell moves itself into
# the node's cgroups (its children follow) and execs the rest, so no Python runs in between.
_JOIN = 'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 126; shift; done; shift; exec "$@"'


def clusters_dir() -> Path:
    return Path(os.environ.get("RAYBENCH_CLUSTERS_DIR", "/tmp/raybench-clusters"))


def parse_rate(text: str) -> int | None:
    """'100mbit' -> 100_000_000 bit/s (tc's decimal units); 'none' -> None (unshaped)."""
    text = text.strip().lower()
    if text in ("none", "unlimited", "0"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)(?:/s)?", text)
    if not m:
        raise UserError(f"link rate {text!r}: expected e.g. 100mbit, 1gbit, 500kbit or none")
    bps = int(float(m[1]) * {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m[2]])
    if bps < 100_000:
        raise UserError(f"link rate {text!r}: below 100kbit Ray's own traffic cannot keep up")
    return bps


def rate_text(bps: int | None) -> str:
    if bps is None:
        return "unshaped"
    for unit, size in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= size:
            return f"{bps / size:g}{unit}"
    return f"{bps}bit"


def parse_shares(text: str | None, nodes: int, cores: int) -> list[float]:
    """'1,0.5,0.5' or one value for every node; default: the machine's cores split evenly, so
    no node's speed depends on what the others do."""
    if text is None:
        return [round(cores / nodes, 3)] * nodes
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--node-cpus {text!r}: expected numbers, e.g. 1,0.5,0.5") from None
    if len(values) == 1:
        values *= nodes
    if len(values) != nodes:
        raise UserError(f"--node-cpus gives {len(values)} shares for {nodes} nodes")
    bad = [v for v in values if not (math.isfinite(v) and MIN_SHARE <= v <= cores)]
    if bad:
        raise UserError(f"--node-cpus: each share must be between {MIN_SHARE} and this "
                        f"machine's {cores} cores, got {bad[0]:g}")
    return values


@dataclass
class NodeSpec:
    index: int
    ip: str
    cpu_share: float  # as last set (up, then `cpu`)
    logical_cpus: int
    link_bps: int | None = None  # as last set (up, then `link --rate`); None: unshaped

    @property
    def role(self) -> str:
        return "head" if self.index == 0 else "worker"


@dataclass
class ClusterSpec:
    """What `up` was asked for (state.json); the kernel is asked for what is true now."""

    name: str
    subnet: str
    link_bps: int | None
    nodes: list[NodeSpec]
    object_store_mib: int
    created: float = field(default_factory=time.time)

    @property
    def head_ip(self) -> str:
        return self.nodes[0].ip

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{GCS_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head_ip}:{DASHBOARD_PORT}"

    @classmethod
    def load(cls, path: Path) -> ClusterSpec:
        raw = json.loads(path.read_text())
        raw["nodes"] = [NodeSpec(**n) for n in raw["nodes"]]
        return cls(**raw)


@dataclass
class NodeStatus:
    """One node as the kernel and Ray see it now."""

    spec: NodeSpec
    running: bool  # its init (and so its Ray) is alive
    frozen: bool
    cpu_share: float | None
    link_up: bool
    rate_out_bps: int | None  # the node's sending side
    rate_in_bps: int | None  # its receiving side
    sent_bytes: int
    received_bytes: int
    ray_state: str  # ALIVE / DEAD / absent, or why Ray could not be asked


class LocalCluster:
    """One emulated cluster, by name: everything it makes is named after it."""

    def __init__(self, name: str = "rb") -> None:
        if not NAME_RE.match(name):
            raise UserError(f"--name {name!r}: 1-8 lowercase letters or digits (it becomes "
                            "part of network interface names, at most 15 characters)")
        self.name = name
        self.dir = clusters_dir() / name
        self.bridge = f"rbbr-{name}"
        # the `unshare` of each node this process started: it lives exactly as long as the
        # node's init (which it forks a moment after it starts)
        self._launched: dict[int, subprocess.Popen] = {}

    # -------------------------------------------------------------- names

    def netns(self, i: int) -> str:
        return f"raybench-{self.name}-{i}"

    def host_end(self, i: int) -> str:
        return f"rbv-{self.name}-{i}"

    def hostname(self, i: int) -> str:
        return f"raybench-{self.name}-{i}"

    def hosts_dir(self, i: int) -> Path:
        """`ip netns exec` binds the files here over /etc in the node: its /etc/hosts names
        every node, so a reverse lookup (c10d's, gloo's) never leaves the machine."""
        return Path("/etc/netns") / self.netns(i)

    def cgroup(self, i: int | None = None) -> str:
        return f"raybench/{self.name}" + ("" if i is None else f"/node{i}")

    def node_dir(self, i: int) -> Path:
        return self.dir / f"node{i}"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def _save(self, spec: ClusterSpec) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(spec), indent=1))
        tmp.replace(self.state_file)

    def _update(self, i: int, **changes: object) -> None:
        """Keep a change of node i in state.json and driver.json (what drivers read)."""
        spec = self.spec()
        spec.nodes[i] = dataclasses.replace(spec.nodes[i], **changes)
        self._save(spec)
        self._describe(spec)

    @property
    def driver_file(self) -> Path:
        return self.dir / "driver.json"

    @property
    def view_dir(self) -> Path:
        """Where each node mounts the cgroup accounting hierarchy, privately (empty here)."""
        return self.dir / "cgroup"

    def _describe(self, spec: ClusterSpec) -> None:
        """driver.json: the settings figures measured on the cluster were measured under (a
        driver's environment.json, a probe's record), and the counter of the whole cluster's
        CPU time, so that a window's outside load leaves the other nodes out (interference)."""
        usage = kernel.Cgroups.detect().usage_file(self.cgroup())
        doc = {"name": spec.name, "subnet": spec.subnet,
               "cpu_usage_file": str(self.view_dir / usage) if usage else None,
               "control_socket": str(self.dir / CONTROL_SOCKET),
               "nodes": [{"ip": n.ip, "link": rate_text(n.link_bps), "cpu_share": n.cpu_share,
                          "logical_cpus": n.logical_cpus} for n in spec.nodes]}
        tmp = self.driver_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(self.driver_file)

    def spec(self) -> ClusterSpec:
        if not self.state_file.is_file():
            raise UserError(f"no emulated cluster named {self.name!r} is up (start one with "
                            f"python -m raybench.cluster local up --name {self.name})")
        return ClusterSpec.load(self.state_file)

    def exists(self) -> bool:
        prefix = f"raybench-{self.name}-"
        return (self.state_file.exists() or self.bridge in kernel.links(self.bridge)
                or any(ns.startswith(prefix) for ns in kernel.netns_list()))

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One change of this cluster at a time (up, down, start, kill...)."""
        root = clusters_dir()
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY)  # a lock on the directory: no lock file to leave
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -------------------------------------------------------------- up

    def plan(self, nodes: int, link: str, node_cpus: str | None,
             logical_cpus: str | None = None, subnet: str | None = None,
             object_store_mib: int = 1024) -> ClusterSpec:
        """The cluster `up` would make, checked against this machine before anything is."""
        cores = os.cpu_count() or 1
        if not 1 <= nodes <= MAX_NODES:
            raise UserError(f"--nodes {nodes}: between 1 and {MAX_NODES}")
        free_mib = _available_memory_mib()
        if nodes * NODE_MEMORY_MIB > free_mib:
            raise UserError(f"--nodes {nodes}: each node's Ray needs about {NODE_MEMORY_MIB} "
                            f"MiB and this machine has {free_mib:,.0f} MiB available; at most "
                            f"{int(free_mib // NODE_MEMORY_MIB)} nodes")
        shares = parse_shares(node_cpus, nodes, cores)
        logical = _logical(logical_cpus, shares)
        net = self._subnet(subnet)
        ips = [str(net.network_address + i + 1) for i in range(nodes)]
        bps = parse_rate(link)
        return ClusterSpec(self.name, str(net), bps,
                           [NodeSpec(i, ip, s, c, bps) for i, (ip, s, c)
                            in enumerate(zip(ips, shares, logical, strict=True))],
                           object_store_mib)

    def _subnet(self, requested: str | None) -> ipaddress.IPv4Network:
        """The /24 the nodes live in: the one asked for, or a free one picked by the name."""
        net = None
        if requested:
            try:
                net = ipaddress.ip_network(requested, strict=True)
            except ValueError as exc:
                raise UserError(f"--subnet {requested!r}: {exc}") from None
            if not net.subnet_of(BENCHMARK_NET) or net.prefixlen > 24:
                raise UserError(f"--subnet {requested}: must be a /24 or wider inside "
                                f"{BENCHMARK_NET} (RFC 2544's benchmark range)")
        used = [ipaddress.ip_interface(a).network for a in kernel.addresses_in_use()]
        if net is not None:
            clash = next((u for u in used if u.overlaps(net)), None)
            if clash:
                raise UserError(f"--subnet {net} is already in use on this machine ({clash})")
            return net
        nets = list(BENCHMARK_NET.subnets(new_prefix=24))
        start = zlib.crc32(self.name.encode()) % len(nets)
        for k in range(len(nets)):
            net = nets[(start + k) % len(nets)]
            if not any(u.overlaps(net) for u in used):
                return net
        raise UserError(f"every /24 of {BENCHMARK_NET} is in use on this machine")

    def up(self, spec: ClusterSpec, log: Callable[[str], None] = print) -> float:
        """Make the cluster and wait until Ray sees every node; seconds it took. Whatever goes
        wrong (Ctrl-C included), what was made is removed again."""
        problem = kernel.missing()
        if problem:
            raise UserError(problem)
        t0 = time.monotonic()
        with self.locked():
            if self.exists():
                raise UserError(f"an emulated cluster named {self.name!r} already exists; "
                                f"remove it with python -m raybench.cluster local down --name "
                                f"{self.name}, or give another --name")
            try:
                self._make(spec, log)
            except BaseException:
                self._remove(log=lambda _: None)
                raise
        return time.monotonic() - t0

    def _make(self, spec: ClusterSpec, log: Callable[[str], None]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.view_dir.mkdir()
        self._save(spec)
        self._describe(spec)
        _ensure_auth_token()
        net = ipaddress.ip_network(spec.subnet)
        kernel.add_bridge(self.bridge, f"{net.network_address + HOST_OCTET}/{net.prefixlen}")
        groups = kernel.Cgroups.detect()
        for node in spec.nodes:
            kernel.add_node_link(self.netns(node.index), self.host_end(node.index),
                                 f"rbn-{self.name}-{node.index}", self.bridge,
                                 f"{node.ip}/{net.prefixlen}")
            self._shape(node.index, spec.link_bps)
            self._hosts_file(spec, node.index)
            groups.create(self.cgroup(node.index))
            groups.set_cpu(self.cgroup(node.index), node.cpu_share)
            self.node_dir(node.index).joinpath("ray").mkdir(parents=True)
        self._start_node(spec, spec.nodes[0])
        _wait_for_port(spec.head_ip, GCS_PORT, UP_TIMEOUT_S, lambda: self._died(spec, 0))
        for node in spec.nodes[1:]:
            self._start_node(spec, node)
        self._start_control()
        self.wait_for_ray(spec, [n.index for n in spec.nodes])

    def _start_control(self) -> None:
        """The host's process behind the control socket (cluster.control), for the faults a
        driver on a node schedules; it exits by itself once the cluster is removed."""
        with open(self.dir / "control.log", "ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "raybench.cluster.control", self.name],
                                    stdout=log_file, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd="/")
        (self.dir / CONTROL_PID).write_text(str(proc.pid))
        deadline = time.monotonic() + 30
        while not (self.dir / CONTROL_SOCKET).exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"the cluster's control process did not start; see "
                                f"{self.dir}/control.log")
            time.sleep(0.05)

    def _hosts_file(self, spec: ClusterSpec, i: int) -> None:
        # c10d's store listens dual-stack and looks its clients up as IPv4-mapped addresses
        names = "".join(f"{ip}\t{self.hostname(n.index)}\n" for n in spec.nodes
                        for ip in (n.ip, f"::ffff:{n.ip}"))
        self.hosts_dir(i).mkdir(parents=True, exist_ok=True)
        (self.hosts_dir(i) / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\tlocalhost\n::ffff:127.0.0.1\tlocalhost\n{names}")

    def _shape(self, i: int, bps: int | None) -> None:
        kernel.shape(self.host_end(i), bps)  # what the node receives
        kernel.shape("eth0", bps, netns=self.netns(i))  # what it sends

    def _start_node(self, spec: ClusterSpec, node: NodeSpec) -> None:
        """The node's init in fresh PID and mount namespaces inside its network namespace,
        moved into its cgroups first; `ray start --block` under it."""
        ray = Path(sys.executable).with_name("ray")
        ray_cmd = [str(ray if ray.exists() else shutil.which("ray") or "ray"), "start",
                   "--block", "--disable-usage-stats", f"--node-ip-address={node.ip}",
                   f"--num-cpus={node.logical_cpus}",
                   f"--object-store-memory={spec.object_store_mib * 2**20}"]
        if node.index == 0:
            ray_cmd += ["--head", f"--port={GCS_PORT}", "--include-dashboard=true",
                        f"--dashboard-host={node.ip}", f"--dashboard-port={DASHBOARD_PORT}"]
        else:
            ray_cmd += [f"--address={spec.address}"]
        view = kernel.Cgroups.detect().view()
        init = ["ip", "netns", "exec", self.netns(node.index), "unshare", "--pid", "--fork",
                "--kill-child", "--mount-proc", "--uts", sys.executable, "-m",
                "raybench.cluster.node", str(self.node_dir(node.index) / "ray"),
                self.hostname(node.index),
                f"{view[0]}:{view[1]}:{self.view_dir}" if view else "-", "--", *ray_cmd]
        with open(self.node_dir(node.index) / "node.log", "ab") as log_file:
            self._launched[node.index] = subprocess.Popen(
                self._joined(node.index, init), env=self.node_env(), stdout=log_file,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd="/")

    def _joined(self, i: int, argv: list[str]) -> list[str]:
        procs = [str(d / "cgroup.procs") for d in kernel.Cgroups.detect().dirs(self.cgroup(i))]
        return ["sh", "-c", _JOIN, "sh", *procs, "--", *argv]

    def node_env(self) -> dict[str, str]:
        """What every process on a node inherits from its raylet (Ray's workers included)."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update(NODE_ENV)
        # a job's bare `python` resolves through the raylet's PATH: the Python of raybench
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(
            os.pathsep) if p and p != bin_dir]])
        # gloo binds to what gethostname() resolves to unless told the interface: the host's
        # name resolves outside the node (or to loopback) and connectFullMesh fails.
        env.update(GLOO_SOCKET_IFNAME="eth0", RAY_AUTH_MODE="token")
        env[EMULATED_CLUSTER_VAR] = str(self.driver_file)  # jobs and trials read it too
        return env

    def driver_env(self) -> dict[str, str]:
        return {**self.node_env(), "RAY_ADDRESS": self.spec().address}

    def _died(self, spec: ClusterSpec, i: int) -> str | None:
        """Why node i, started by this process, is gone (its log's last error), or None while
        it runs."""
        launched = self._launched.get(i)
        if launched is None or launched.poll() is None:
            return None
        lines = (self.node_dir(i) / "node.log").read_text(errors="replace").splitlines()
        why = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln),
                   lines[-1] if lines else "no output")
        return f"node {i} ({spec.nodes[i].ip}) stopped: {why.strip()[:200]}"

    def wait_for_ray(self, spec: ClusterSpec, indices: list[int],
                     timeout_s: float = UP_TIMEOUT_S) -> None:
        """Until Ray's GCS lists every node in `indices` alive at its address."""
        deadline = time.monotonic() + timeout_s
        want = {spec.nodes[i].ip for i in indices}
        while True:
            view = ray_view(spec.address)
            alive = {ip for ip, row in view.items() if row.get("state") == "ALIVE"}
            if want <= alive:
                return
            for i in indices:
                if (why := self._died(spec, i)) is not None:
                    raise UserError(why)
            if time.monotonic() > deadline:
                raise UserError(f"Ray did not see node(s) {sorted(want - alive)} within "
                                f"{timeout_s:g}s; logs in {self.dir}/node*/node.log")
            time.sleep(0.5)

    # -------------------------------------------------------------- down

    def down(self, log: Callable[[str], None] = print) -> int:
        """Remove every namespace, link, cgroup, mount, process and file of this cluster;
        whatever state it is in (half made, a node killed, frozen). Returns what was found."""
        with self.locked():
            return self._remove(log)

    def _indices(self) -> list[int]:
        """Every node index anything of this cluster still carries."""
        found: set[int] = set()
        for ns in kernel.netns_list():
            if ns.startswith(f"raybench-{self.name}-"):
                found.add(int(ns.rsplit("-", 1)[1]))
        for dev in kernel.links(f"rbv-{self.name}-"):
            found.add(int(dev.rsplit("-", 1)[1]))
        for d in Path("/etc/netns").glob(f"raybench-{self.name}-*"):
            found.add(int(d.name.rsplit("-", 1)[1]))
        groups = _groups()
        for root in groups.dirs(self.cgroup()) if groups else []:
            found.update(int(p.name[4:]) for p in root.glob("node*") if p.name[4:].isdigit())
        with contextlib.suppress(UserError, OSError, ValueError):
            found.update(n.index for n in self.spec().nodes)
        return sorted(found)

    def _remove(self, log: Callable[[str], None]) -> int:
        indices = self._indices()
        groups = _groups()
        for i in indices:
            if groups is not None:
                with contextlib.suppress(OSError, kernel.KernelError):
                    groups.freeze(self.cgroup(i), False)  # a frozen process never dies
        _kill_all(self._pids(indices, groups) + self._control_pid())
        for i in indices:
            kernel.delete_netns(self.netns(i))
            kernel.delete_link(self.host_end(i))
            shutil.rmtree(self.hosts_dir(i), ignore_errors=True)
        kernel.delete_link(self.bridge)
        if groups is not None:
            with contextlib.suppress(OSError):
                groups.remove(self.cgroup())
            for parent in groups.dirs("raybench"):  # shared by clusters: only once empty
                with contextlib.suppress(OSError):
                    parent.rmdir()
        with contextlib.suppress(OSError):
            Path("/etc/netns").rmdir()  # only once empty: other namespaces may use it
        _unmount_below(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.dir.parent.rmdir()
        made = len(indices)
        log(f"Removed emulated cluster {self.name!r}: {made} node(s), their namespaces, links, "
            "cgroups and files" if made else f"Nothing left of an emulated cluster named "
            f"{self.name!r}")
        return made

    def _control_pid(self) -> list[int]:
        """The control process, if its pid file names one that is still that process."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.dir / CONTROL_PID).read_text())
            if "raybench.cluster.control" in Path(f"/proc/{pid}/cmdline").read_text():
                return [pid]
        return []

    def _pids(self, indices: list[int], groups: kernel.Cgroups | None) -> list[int]:
        me = {os.getpid(), os.getppid()}
        pids: set[int] = set()
        for i in indices:
            pids.update(kernel.netns_pids(self.netns(i)))
            if groups is not None:
                pids.update(groups.pids(self.cgroup(i)))
        return sorted(pids - me)

    # -------------------------------------------------------------- a running cluster

    def init_pid(self, i: int) -> int | None:
        return kernel.namespace_init(kernel.netns_pids(self.netns(i)))

    def node_status(self) -> tuple[ClusterSpec, list[NodeStatus]]:
        spec = self.spec()
        view = ray_view(spec.address)
        groups = kernel.Cgroups.detect()
        rows = []
        for node in spec.nodes:
            i, host = node.index, self.host_end(node.index)
            sent, received = kernel.byte_counters(host)  # the host end receives what it sends
            ray_row = view.get(node.ip, {})
            rows.append(NodeStatus(
                node, running=self.init_pid(i) is not None,
                frozen=groups.is_frozen(self.cgroup(i)),
                cpu_share=groups.cpu_share(self.cgroup(i)), link_up=kernel.link_is_up(host),
                rate_out_bps=kernel.shaped_rate("eth0", self.netns(i)),
                rate_in_bps=kernel.shaped_rate(host), sent_bytes=sent, received_bytes=received,
                ray_state=ray_row.get("state") or view.get("error", {}).get("state", "absent")))
        return spec, rows

    def node(self, i: int) -> NodeSpec:
        spec = self.spec()
        if not 0 <= i < len(spec.nodes):
            raise UserError(f"node {i}: cluster {self.name!r} has nodes 0-{len(spec.nodes) - 1}")
        return spec.nodes[i]

    def set_link(self, i: int, *, rate: str | None = None, up: bool | None = None) -> str:
        with self.locked():
            return self._set_link(i, rate, up)

    def _set_link(self, i: int, rate: str | None, up: bool | None) -> str:
        self.node(i)
        if rate is not None:
            bps = parse_rate(rate)
            self._shape(i, bps)
            self._update(i, link_bps=bps)
            return f"node {i}: link shaped at {rate_text(bps)} in both directions"
        kernel.set_link_up(self.host_end(i), bool(up))
        return f"node {i}: link {'up' if up else 'down (cut off from every other node)'}"

    def set_cpu(self, i: int, share: float) -> str:
        with self.locked():
            return self._set_cpu(i, share)

    def _set_cpu(self, i: int, share: float) -> str:
        self.node(i)
        cores = os.cpu_count() or 1
        if not (math.isfinite(share) and MIN_SHARE <= share <= cores):
            raise UserError(f"--share must be between {MIN_SHARE} and {cores}, got {share:g}")
        kernel.Cgroups.detect().set_cpu(self.cgroup(i), share)
        self._update(i, cpu_share=share)
        return f"node {i}: CPU share {share:g} of a core's time (Ray still counts it as before)"

    def freeze(self, i: int, frozen: bool) -> str:
        self.node(i)
        kernel.Cgroups.detect().freeze(self.cgroup(i), frozen)
        return f"node {i}: {'frozen (every process stopped)' if frozen else 'thawed'}"

    def kill(self, i: int) -> str:
        """SIGKILL the node's init: the kernel kills every process in its PID namespace (the
        raylet, its workers, its object store) at once, as when a machine dies."""
        with self.locked():
            self.node(i)
            init = self.init_pid(i)
            if init is None:
                return f"node {i}: not running"
            with contextlib.suppress(OSError, kernel.KernelError):
                kernel.Cgroups.detect().freeze(self.cgroup(i), False)
            # its `unshare` (outside the PID namespace) reaps it and exits by itself
            _kill_all([init])
            _kill_all(kernel.netns_pids(self.netns(i)), grace_s=5.0)
            return f"node {i}: killed (init pid {init} and everything in its namespaces)"

    def start(self, i: int, timeout_s: float = UP_TIMEOUT_S) -> str:
        """Start a killed node's Ray again, as a machine that comes back."""
        with self.locked():
            node = self.node(i)
            if self.init_pid(i) is not None:
                raise UserError(f"node {i} is running; kill it first")
            spec = self.spec()
            self._start_node(spec, node)
            self.wait_for_ray(spec, [i], timeout_s)
            return f"node {i}: started again at {node.ip}"

    def revive(self, i: int, settle_s: float = 60.0, timeout_s: float = UP_TIMEOUT_S) -> str:
        """After a node was frozen or cut off, Ray's GCS may declare it dead, and its raylet
        exits once it hears so: then start it again, as an operator would. The GCS's verdict
        can come well after the node is back (measured: 26 s after a 30 s cut ended, its
        health checks still failing on a reconnect back-off), so the node is watched for
        `settle_s`; one Ray still counts alive after that is left as it is."""
        spec = self.spec()
        ip = self.node(i).ip
        deadline = time.monotonic() + settle_s
        dead_since = None
        while True:
            if self.init_pid(i) is None:  # its raylet exited: Ray declared it dead
                return self.start(i, timeout_s)
            if ray_view(spec.address).get(ip, {}).get("state") == "DEAD":
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > 30:  # declared dead, yet it lingers
                    self.kill(i)
                    return self.start(i, timeout_s)
            elif time.monotonic() >= deadline:
                return f"node {i}: Ray still counts it alive"
            time.sleep(0.5)

    def command(self, i: int, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that run `argv` as a driver on node i: in its
        cgroups and namespaces, in this directory, with RAY_ADDRESS set."""
        self.node(i)
        init = self.init_pid(i)
        if init is None:
            raise UserError(f"node {i} of cluster {self.name!r} is not running (killed? "
                            f"python -m raybench.cluster local start {i} --name {self.name})")
        # cd inside the node, not nsenter's --wd: that directory is opened in the host's mount
        # namespace, and a rename from an absolute path (the node's mounts) to a relative one
        # (the host's) then fails with EXDEV although both are on one file system.
        enter = ["nsenter", f"--target={init}", "--net", "--mount", "--pid", "--uts", "--",
                 "sh", "-c", 'cd -- "$0" && exec "$@"', os.getcwd(), *argv]
        return self._joined(i, enter), self.driver_env()


def exec_on(cluster: LocalCluster, i: int, argv: list[str]) -> int:
    """Run `argv` on node i and return its exit code; Ctrl-C and SIGTERM go to it (it runs in
    a session of its own so that they can be sent to all it started)."""
    command, env = cluster.command(i, argv)
    proc = subprocess.Popen(command, env=env, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


# ------------------------------------------------------------------ helpers


def ray_view(address: str, timeout_s: float = 3.0) -> dict[str, dict]:
    """Ray's view of the nodes by IP (its newest entry for each), asked from the host through
    the GCS; {"error": {"state": why}} when the GCS does not answer."""
    host, port = address.rsplit(":", 1)
    try:  # Ray's client retries a dead GCS for minutes, logging twice a second
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        return {"error": {"state": f"GCS at {address} not answering ({exc.strerror or exc})"}}
    _token_client()
    try:
        from ray._raylet import GcsClient
        from ray.core.generated import gcs_pb2

        infos = GcsClient(address=address).get_all_node_info(timeout=timeout_s).values()
    except Exception as exc:  # noqa: BLE001 (a head going down answers nothing; say so)
        return {"error": {"state": f"GCS at {address} not answering ({type(exc).__name__})"}}
    rows: dict[str, dict] = {}
    for info in sorted(infos, key=lambda n: n.start_time_ms):
        rows[info.node_manager_address] = {
            "state": gcs_pb2.GcsNodeInfo.GcsNodeState.Name(info.state),
            "cpus": dict(info.resources_total).get("CPU", 0.0)}
    return rows


def _token_client() -> None:
    """This process talks to the cluster with Ray's token: set the mode as Ray itself does
    (the environment, then its cached config read again: Ray may be imported already)."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        os.environ["RAY_AUTH_MODE"] = "token"
        from ray._raylet import Config

        Config.initialize("")


def _ensure_auth_token() -> None:
    """The cluster runs with Ray's token authentication: its nodes run as root, and a dashboard
    without it would run anyone's job. The token is Ray's own file (~/.ray/auth_token)."""
    from ray._private.authentication.authentication_token_setup import (
        _get_default_token_path,
        generate_and_save_token,
    )

    if not _get_default_token_path().is_file():
        generate_and_save_token()


def _logical(text: str | None, shares: list[float]) -> list[int]:
    if text is None:
        return [max(1, math.ceil(s - 1e-9)) for s in shares]
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--logical-cpus {text!r}: expected whole numbers") from None
    values = values * len(shares) if len(values) == 1 else values
    # 0 is allowed: a head that runs drivers and Ray's own actors but no worker (as
    # production heads are set up)
    if len(values) != len(shares) or min(values) < 0:
        raise UserError(f"--logical-cpus {text!r}: one count (0 or more) per node, or one for "
                        "all")
    return values


def _available_memory_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _groups() -> kernel.Cgroups | None:
    try:
        return kernel.Cgroups.detect()
    except kernel.KernelError:
        return None


def _wait_for_port(host: str, port: int, timeout_s: float, died: Callable[[], str | None]) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if (why := died()) is not None:
                raise UserError(why) from None
            if time.monotonic() > deadline:
                raise UserError(f"the head's GCS did not listen at {host}:{port} within "
                                f"{timeout_s:g}s") from None
            time.sleep(0.3)


def _kill_all(pids: list[int], timeout_s: float = 15.0, grace_s: float = 0.0) -> None:
    """SIGKILL `pids` (after `grace_s` for them to exit by themselves) and wait until none
    runs (a zombie does not)."""
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _unmount_below(path: Path) -> None:
    """Bind mounts die with a node's mount namespace; one made on the host by hand would make
    rmtree delete through it."""
    target = str(path.resolve())
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point == target or point.startswith(target + "/"):
            subprocess.run(["umount", "-l", point], capture_output=True)
