"""What the Linux kernel gives an emulated cluster, as root: network namespaces joined by veth
pairs on a bridge, `tc tbf` rate limits, and cgroups for a node's CPU share and freezing.

Everything is done with the `ip`, `tc`, `nsenter` and `unshare` programs and cgroupfs writes,
so what the project runs is what a user can type to look at it (`ip netns`, `tc qdisc show`).
cgroup v1 (a hierarchy per controller, this project's machine) and v2 (one unified hierarchy,
most current distributions) are both handled; `missing()` names what a machine lacks."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from raybench.errors import UserError

TOOLS = ("ip", "tc", "nsenter", "unshare", "mount")
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
# A CPU quota is a duty cycle, not a slower CPU: work that follows an idle stretch runs at full
# speed until the period's quota is spent. With the kernel's default 100 ms period, 37 ms of CPU
# after 120 ms of waiting (a DDP step's compute after its all-reduce) took 33.5 ms at a 0.4-core
# share, against 91.6 ms never idle: a sync-bound step computed up to 2.7x faster than its node's
# share (the wide MLP's work: 45 ms a step at N=2 against 92 ms at N=1 on the emulated
# cluster). At 10 ms: 71.0 and 79.9 ms (scripts/quota_period.py). The kernel's smallest quota is
# 1 ms: a share under 0.1 core gets the period that holds it.
CFS_PERIOD_US = 10_000
MIN_QUOTA_US = 1_000
# tbf's bucket must hold a whole segmentation-offload super-packet (64 KiB) or it under-delivers
# (measured here at 1 Gbit/s: a 4 KiB bucket carried TCP at 404 Mbit/s, 160 KB at 955 Mbit/s);
# above that, a millisecond of the rate keeps the kernel's timer granularity out of the rate.
MIN_BURST_BYTES = 2 * 65536 + 1514
QUEUE_LATENCY = "50ms"


class KernelError(UserError):
    """A kernel operation the emulated cluster needs failed (one line, exit 2)."""


def run(argv: list[str], *, check: bool = True, timeout: float = 30.0) -> str:
    """Run one of the kernel tools; its error's first line becomes a KernelError."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise KernelError(f"the emulated cluster needs {argv[0]} (iproute2 for ip and tc, "
                          "util-linux for nsenter, unshare and mount)") from None
    if check and proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise KernelError(f"`{' '.join(argv)}` failed: {why[0] if why else proc.returncode}")
    return proc.stdout


# ------------------------------------------------------------------ what is missing


def _capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def missing() -> str | None:
    """Why this machine cannot run an emulated cluster, in one line, or None."""
    caps = _capabilities()
    if os.geteuid() != 0 or not caps >> CAP_NET_ADMIN & 1 or not caps >> CAP_SYS_ADMIN & 1:
        return ("the emulated cluster needs root (CAP_NET_ADMIN for namespaces and links, "
                "CAP_SYS_ADMIN for mounts and cgroups); run it with sudo")
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return (f"the emulated cluster needs {', '.join(absent)} (iproute2 for ip and tc, "
                "util-linux for nsenter, unshare and mount)")
    try:
        Cgroups.detect()
    except KernelError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------ links and namespaces


def netns_list() -> list[str]:
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line]


def links(prefix: str = "") -> list[str]:
    """Interfaces of the host's namespace whose names start with `prefix`."""
    out = json.loads(run(["ip", "-j", "link", "show"]) or "[]")
    return [entry["ifname"] for entry in out if entry["ifname"].startswith(prefix)]


def addresses_in_use() -> list[str]:
    """Every IPv4 network (CIDR) configured on the host's interfaces."""
    out = json.loads(run(["ip", "-j", "-4", "addr", "show"]) or "[]")
    return [f"{a['local']}/{a['prefixlen']}" for entry in out for a in entry.get("addr_info", [])]


def add_bridge(name: str, address: str) -> None:
    run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "addr", "add", address, "dev", name])
    run(["ip", "link", "set", name, "up"])


def add_node_link(netns: str, host_end: str, temp_end: str, bridge: str, address: str) -> None:
    """A namespace with a veth pair into it: the node's end renamed eth0 (an interface named
    veth* is excluded by some Ray versions' NCCL_SOCKET_IFNAME default), the host's end on the
    bridge. Segmentation offload stays on: tbf's bucket holds its super-packets instead."""
    run(["ip", "netns", "add", netns])
    run(["ip", "link", "add", host_end, "type", "veth", "peer", "name", temp_end])
    run(["ip", "link", "set", temp_end, "netns", netns])
    run(["ip", "-n", netns, "link", "set", temp_end, "name", "eth0"])
    run(["ip", "-n", netns, "addr", "add", address, "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "link", "set", host_end, "master", bridge])
    run(["ip", "link", "set", host_end, "up"])


def set_link_up(host_end: str, up: bool) -> None:
    """Plug or unplug a node's cable at the bridge: both directions at once."""
    run(["ip", "link", "set", host_end, "up" if up else "down"])


def link_is_up(host_end: str) -> bool:
    out = json.loads(run(["ip", "-j", "link", "show", host_end], check=False) or "[]")
    return bool(out) and "UP" in out[0].get("flags", [])


def burst_bytes(rate_bps: int) -> int:
    return max(MIN_BURST_BYTES, rate_bps // 8 // 1000)


def shape(dev: str, rate_bps: int | None, netns: str | None = None) -> None:
    """tbf on the egress of `dev` (tbf shapes egress only: a link is shaped at both ends), or
    no qdisc for an unshaped link."""
    ns = ["-n", netns] if netns else []
    if rate_bps is None:
        run(["tc", *ns, "qdisc", "del", "dev", dev, "root"], check=False)
        return
    try:
        run(["tc", *ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
             f"{rate_bps}bit", "burst", str(burst_bytes(rate_bps)), "latency", QUEUE_LATENCY])
    except KernelError as exc:
        if "unknown" in str(exc).lower():  # no sch_tbf in this kernel, built in or as a module
            raise KernelError("the kernel has no tbf qdisc (sch_tbf): links cannot be "
                              "rate-limited; use --link none") from None
        raise


def shaped_rate(dev: str, netns: str | None = None) -> int | None:
    """The tbf rate on a device's egress in bit/s, None when it has none."""
    ns = ["-n", netns] if netns else []
    out = json.loads(run(["tc", *ns, "-j", "qdisc", "show", "dev", dev], check=False) or "[]")
    for q in out:
        if q.get("kind") == "tbf" and q.get("root"):
            return int(q["options"]["rate"]) * 8  # tc's JSON gives bytes per second
    return None


def byte_counters(dev: str) -> tuple[int, int]:
    """(received, sent) bytes of a host-side interface since it was created."""
    stats = Path("/sys/class/net") / dev / "statistics"
    try:
        return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())
    except OSError:
        return 0, 0


def netns_pids(netns: str) -> list[int]:
    return [int(p) for p in run(["ip", "netns", "pids", netns], check=False).split()]


def namespace_init(pids: list[int]) -> int | None:
    """The process among `pids` that is PID 1 of its own PID namespace (a node's init)."""
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:") and len(line.split()) > 2 and line.split()[-1] == "1":
                return pid
    return None


def delete_netns(netns: str) -> None:
    run(["ip", "netns", "del", netns], check=False)


def delete_link(dev: str) -> None:
    run(["ip", "link", "del", dev], check=False)


# ------------------------------------------------------------------ cgroups


def quota_of(share: float | None) -> tuple[int, int]:
    """(quota, period) in microseconds for a share of cores (quota -1: no limit)."""
    if share is None:
        return -1, CFS_PERIOD_US
    period = max(CFS_PERIOD_US, math.ceil(MIN_QUOTA_US / share))
    return max(MIN_QUOTA_US, round(share * period)), period


@dataclass(frozen=True)
class Cgroups:
    """Where a group's CPU quota, freezer and CPU accounting live: v1 (a hierarchy per
    controller) or v2 (one for all)."""

    version: int
    cpu_root: Path
    freezer_root: Path
    acct_root: Path | None = None  # v1's cpuacct hierarchy (v2 accounts in cpu.stat)

    @classmethod
    def detect(cls) -> Cgroups:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
        v1 = {opt: Path(m[1]) for m in mounts if m[2] == "cgroup"
              for opt in m[3].split(",") if opt in ("cpu", "freezer", "cpuacct")}
        if "cpu" in v1 and "freezer" in v1:
            return cls(1, v1["cpu"], v1["freezer"], v1.get("cpuacct"))
        for m in mounts:
            if m[2] != "cgroup2":
                continue
            root = Path(m[1])
            controllers = (root / "cgroup.controllers").read_text().split()
            if "cpu" in controllers:
                return cls(2, root, root, root)
        if "cpu" in v1 or "freezer" in v1:
            lack = "freezer" if "cpu" in v1 else "cpu"
            raise KernelError(f"cgroup v1 has no {lack} controller mounted (mount -t cgroup -o "
                              f"{lack} cgroup /sys/fs/cgroup/{lack}); node CPU shares and "
                              "freezing need both cpu and freezer")
        raise KernelError("no cgroup cpu controller (neither a cgroup v1 cpu hierarchy nor cpu "
                          "in cgroup v2's cgroup.controllers): node CPU shares cannot be "
                          "enforced")

    def dirs(self, rel: str) -> list[Path]:
        if self.version == 2:
            return [self.cpu_root / rel]
        roots = dict.fromkeys([self.cpu_root, self.freezer_root, self.acct_root])
        return [root / rel for root in roots if root is not None]

    def view(self) -> tuple[str, str, Path] | None:
        """(fstype, options, hierarchy root) of the accounting hierarchy: a node mounts it
        again inside its own mount namespace, where /sys is the netns's and has no cgroups."""
        if self.acct_root is None:
            return None
        if self.version == 2:
            return "cgroup2", "rw", self.acct_root
        return "cgroup", "cpuacct", self.acct_root

    def usage_file(self, rel: str) -> str | None:
        """The file that counts the group's CPU time, relative to the accounting hierarchy's
        root (v1: cpuacct.usage in ns; v2: cpu.stat's usage_usec)."""
        if self.acct_root is None:
            return None
        return f"{rel}/{'cpu.stat' if self.version == 2 else 'cpuacct.usage'}"

    def create(self, rel: str) -> None:
        if self.version == 2:  # each ancestor hands the cpu controller down
            parts = Path(rel).parts
            for depth in range(len(parts)):
                parent = self.cpu_root.joinpath(*parts[:depth])
                (parent / parts[depth]).mkdir(exist_ok=True)
                (parent / "cgroup.subtree_control").write_text("+cpu")
            return
        for d in self.dirs(rel):
            d.mkdir(parents=True, exist_ok=True)

    def join(self, rel: str, pid: int = 0) -> None:
        """Move a process (0: the calling one) into the group; its children follow."""
        for d in self.dirs(rel):
            (d / "cgroup.procs").write_text(str(pid))

    def set_cpu(self, rel: str, share: float | None) -> None:
        """At most `share` cores' worth of CPU time per period (None: no limit)."""
        quota, period = quota_of(share)
        if self.version == 2:
            text = f"{'max' if quota < 0 else quota} {period}"
            (self.cpu_root / rel / "cpu.max").write_text(text)
            return
        # v1 checks the quota against the period as each is written: lift the quota first
        (self.cpu_root / rel / "cpu.cfs_quota_us").write_text("-1")
        (self.cpu_root / rel / "cpu.cfs_period_us").write_text(str(period))
        (self.cpu_root / rel / "cpu.cfs_quota_us").write_text(str(quota))

    def cpu_share(self, rel: str) -> float | None:
        try:
            if self.version == 2:
                quota, period = (self.cpu_root / rel / "cpu.max").read_text().split()
            else:
                quota = (self.cpu_root / rel / "cpu.cfs_quota_us").read_text().strip()
                period = (self.cpu_root / rel / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
        return None if quota in ("max", "-1") else int(quota) / int(period)

    def freeze(self, rel: str, frozen: bool, timeout_s: float = 10.0) -> None:
        """Stop (or resume) every process of the group at once, and wait until the kernel
        says it is done."""
        deadline = time.monotonic() + timeout_s
        if self.version == 2:
            (self.freezer_root / rel / "cgroup.freeze").write_text("1" if frozen else "0")
        else:
            (self.freezer_root / rel / "freezer.state").write_text(
                "FROZEN" if frozen else "THAWED")
        while self.is_frozen(rel) != frozen:
            if time.monotonic() > deadline:
                raise KernelError(f"cgroup {rel} did not {'freeze' if frozen else 'thaw'} "
                                  f"within {timeout_s:g}s")
            time.sleep(0.02)

    def is_frozen(self, rel: str) -> bool:
        try:
            if self.version == 2:
                events = (self.freezer_root / rel / "cgroup.events").read_text()
                return "frozen 1" in events
            return (self.freezer_root / rel / "freezer.state").read_text().strip() == "FROZEN"
        except OSError:
            return False

    def pids(self, rel: str) -> list[int]:
        found: set[int] = set()
        for d in self.dirs(rel):
            for procs in d.rglob("cgroup.procs") if d.is_dir() else []:
                try:
                    found.update(int(p) for p in procs.read_text().split())
                except OSError:
                    pass
        return sorted(found)

    def remove(self, rel: str) -> None:
        """Remove the group and every group below it (each must be empty of processes)."""
        for d in self.dirs(rel):
            if not d.is_dir():
                continue
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True):
                sub.rmdir()
            d.rmdir()
