"""Faults on a schedule, for measuring what they cost (`raybench.scale --chaos SPEC`).

    kill-worker every 30s        SIGKILL one Ray Train worker (a random rank) every 30 seconds
    kill-worker once at 20s      SIGKILL one worker 20 seconds after training began
    kill-worker once after epoch 2   ... as soon as Ray Train has registered epoch 2's checkpoint
    kill-worker every 3 epochs   ... after every third registered epoch

On an emulated cluster (`raybench.cluster local`) the faults of a node, with the same schedules:

    freeze-node once after epoch 2 for 30s   stop every process of a worker's node for 30 s
    cut-link once at 20s for 10s             take a worker's node off the network for 10 s
    slow-node once after epoch 1             that node gets a quarter of its CPU share
    kill-node once after epoch 3 [for 20s]   SIGKILL the node with everything on it; it starts
                                             again after 20 s (at once without `for`)

Several schedules in one run are separated by `;`. A node fault picks a node that runs a
worker and is not the head (the head holds the driver and Ray's own state: losing it ends any
cluster's run). Every fault is undone when its `for` is over, and whatever is still in force
when the run ends (a slow node, a node not yet started again) is undone then: the cluster is
left as it was found.

The clock of a timed schedule starts at the run's first training step, not at its launch: how
long a machine takes to start Ray Train (12-21 s here on a busy day) must not decide whether a
fault lands in training or in start-up. An epoch schedule fires when Ray Train's controller has
registered that epoch's report (and its checkpoint), so the restart resumes from it on a fast
machine or a slow one alike.

A worker is killed through a zero-CPU Ray task pinned to its node, so kill-worker works on any
cluster; a node fault goes through the emulated cluster's control socket (cluster.control), as
only the host can cut a link or freeze a node. Every fault is timed (`Injected`): with the
failure the controller saw and the first training step after the restart, it gives the time
to detect and to recover.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field

from raybench.errors import UserError

NODE_FAULTS = ("freeze-node", "cut-link", "slow-node", "kill-node")
FAULTS = ("kill-worker", *NODE_FAULTS)
WORDS = {"kill-worker": "killed worker", "freeze-node": "frozen node", "cut-link": "cut link",
         "slow-node": "slow node", "kill-node": "lost node"}
SLOW_FACTOR = 0.25  # a slow node's share of the CPU it had
_MIN_SHARE = 0.1  # cluster.local.MIN_SHARE: below it the cluster refuses the change
_PUT_BACK_S = 300.0  # a node started again: its Ray up (180 s at most) after a wait (30 s)

_DURATION = r"(\d+(?:\.\d+)?)\s*(s|m)"
_FAULT = re.compile(
    rf"^\s*(?P<fault>{'|'.join(FAULTS)})\s+"
    rf"(?:(?P<timed>every|once at)\s+{_DURATION}"
    r"|once after epoch\s+(?P<after>\d+)|every\s+(?P<every>\d+)\s+epochs?)"
    rf"(?:\s+for\s+(?P<for_n>\d+(?:\.\d+)?)\s*(?P<for_u>s|m))?\s*$")
_EXAMPLES = ("'kill-worker every 30s', 'kill-worker once at 20s' (s or m), 'kill-worker once "
             "after epoch 2', 'kill-worker every 3 epochs'; on an emulated cluster also "
             "freeze-node, cut-link, slow-node, kill-node, with 'for 30s' (required for "
             "freeze-node and cut-link); several separated by ';'")


@dataclass(frozen=True)
class ChaosSpec:
    """One fault on its schedule."""

    interval_s: float | None  # a timed schedule: seconds after training began, or between kills
    repeat: bool  # every interval (True) or once (False)
    text: str
    epochs: int | None = None  # an epoch schedule: after this epoch (or every this many)
    fault: str = "kill-worker"
    for_s: float | None = None  # how long a node fault lasts; None: until the run ends

    def __str__(self) -> str:
        return self.text

    def due_after(self, epoch: int) -> bool:
        """Whether an epoch schedule fires once `epoch` is registered."""
        if self.epochs is None:
            return False
        return epoch % self.epochs == 0 if self.repeat else epoch == self.epochs


@dataclass(frozen=True)
class ChaosSchedule:
    """Every fault of a run (`--chaos`), each on its own schedule."""

    specs: tuple[ChaosSpec, ...]

    def __str__(self) -> str:
        return "; ".join(map(str, self.specs))

    @property
    def on_nodes(self) -> bool:
        """Whether a fault needs an emulated cluster's control socket."""
        return any(s.fault in NODE_FAULTS for s in self.specs)


def parse_fault(text: str) -> ChaosSpec:
    """One schedule, e.g. 'freeze-node once after epoch 2 for 30s'."""
    canonical = " ".join(text.split())
    m = _FAULT.match(text)
    if not m:
        raise UserError(f"--chaos {canonical!r}: expected {_EXAMPLES}")
    fault = m.group("fault")
    for_s = (float(m.group("for_n")) * (60 if m.group("for_u") == "m" else 1)
             if m.group("for_n") else None)
    if fault == "kill-worker" and for_s is not None:
        raise UserError(f"--chaos {canonical!r}: a killed worker has no duration ('for')")
    if fault in ("freeze-node", "cut-link") and not for_s:
        raise UserError(f"--chaos {canonical!r}: say how long the fault lasts, e.g. "
                        f"'{fault} once after epoch 2 for 30s'")
    if m.group("timed"):
        seconds = float(m.group(3)) * (60 if m.group(4) == "m" else 1)
        if seconds <= 0:
            raise UserError(f"--chaos {canonical!r}: the interval must be positive")
        return ChaosSpec(seconds, m.group("timed") == "every", canonical, fault=fault,
                         for_s=for_s)
    epochs = int(m.group("after") or m.group("every"))
    if epochs < 1:
        raise UserError(f"--chaos {canonical!r}: the epoch must be at least 1")
    return ChaosSpec(None, m.group("every") is not None, canonical, epochs=epochs, fault=fault,
                     for_s=for_s)


def parse_chaos(text: str) -> ChaosSchedule:
    """`--chaos`: one schedule or several separated by ';'."""
    parts = [p for p in text.split(";") if p.strip()]
    if not parts:
        raise UserError(f"--chaos {text!r}: expected {_EXAMPLES}")
    return ChaosSchedule(tuple(parse_fault(p) for p in parts))


@dataclass
class Injected:
    """One fault as it was carried out: when, on what, for how long."""

    fault: str  # a FAULTS name
    at: float  # epoch seconds: when it took effect
    target: str  # "rank 1" (a killed worker) or the node's address
    ranks: list[int] = field(default_factory=list)  # the ranks it hit
    ended_at: float | None = None  # when it was undone (None: it lasted to the run's end)
    problem: str = ""  # what went wrong undoing it

    @property
    def words(self) -> str:
        return WORDS[self.fault]


def settle_s(fault_s: float) -> float:
    """How long a node is watched after a freeze or a cut for Ray declaring it dead. Ray's GCS
    does so after 5 health checks in a row fail (3 s apart, 10 s each); a fault of a few
    seconds fails at most two, and gRPC reconnects within seconds. After a longer one its
    reconnect back-off has grown: the verdict came 26 s after a 30 s cut ended here."""
    return 0.0 if fault_s < 10 else min(75.0, 15.0 + 2 * fault_s)


def _kill(pid: int) -> None:
    import os
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it died on its own meanwhile


class ChaosMonkey:
    """Carries out a schedule's faults while a run goes on. Workers announce themselves (rank,
    pid, node) through the run's progress queue; `workers` holds the newest incarnation of each
    rank. The run's events arrive through `training_began` (rank 0's first step) and
    `registered` (the controller took an epoch's report). `cluster` is the emulated cluster's
    driver.json (ray_env.emulated_cluster) for node faults."""

    def __init__(self, schedule: ChaosSchedule | ChaosSpec, seed: int = 0,
                 cluster: dict | None = None) -> None:
        if isinstance(schedule, ChaosSpec):
            schedule = ChaosSchedule((schedule,))
        self.schedule = schedule
        if schedule.on_nodes and not (cluster and cluster.get("control_socket")):
            raise UserError(f"--chaos {schedule}: node faults need an emulated cluster "
                            "(python -m raybench.cluster local up; run the command through "
                            "local exec or ray job submit); elsewhere use kill-worker")
        self.cluster = cluster or {}
        self.workers: dict[int, tuple[int, str, str]] = {}  # rank -> (pid, node id, node ip)
        self.injected: list[Injected] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._began = threading.Event()
        self._due = [threading.Semaphore(0) for _ in schedule.specs]  # epoch schedules
        self._fired: list[set[int]] = [set() for _ in schedule.specs]
        self._undo: dict[int, tuple[Injected, list]] = {}  # node -> what puts it back
        self._busy: set[int] = set()  # nodes under a fault or being put back
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True,
                                          name=f"raybench-chaos-{k}")
                         for k in range(len(schedule.specs))]

    @property
    def kills(self) -> list[float]:
        """When each worker was killed (kill-worker)."""
        return [i.at for i in self.injected if i.fault == "kill-worker"]

    def saw_worker(self, rank: int, pid: int, node_id: str, node_ip: str = "") -> None:
        self.workers[rank] = (pid, node_id, node_ip)

    def training_began(self) -> None:
        self._began.set()

    def registered(self, epoch: int) -> None:
        """The controller registered `epoch`'s report; each epoch is counted once, however
        often a restart trains it again."""
        for k, spec in enumerate(self.schedule.specs):
            if spec.due_after(epoch) and epoch not in self._fired[k]:
                self._fired[k].add(epoch)
                self._due[k].release()

    def _run(self, k: int) -> None:
        spec = self.schedule.specs[k]
        if spec.epochs is not None:
            while not self._stop.is_set():
                if self._due[k].acquire(timeout=0.1):
                    self._fire(spec)
            return
        while not self._began.wait(0.1):  # the clock starts with training
            if self._stop.is_set():
                return
        while not self._stop.wait(spec.interval_s):
            self._fire(spec)
            if not spec.repeat:
                return

    def _fire(self, spec: ChaosSpec) -> None:
        if spec.fault == "kill-worker":
            self._kill_worker()
        else:
            self._node_fault(spec)

    def _kill_worker(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if not self.workers:
            return
        rank = self._rng.choice(sorted(self.workers))
        pid, node, _ = self.workers.pop(rank)
        kill = ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False))(_kill)
        self.injected.append(Injected("kill-worker", time.time(), f"rank {rank}", [rank]))
        ray.get(kill.remote(pid), timeout=30)

    # ------------------------------------------------------------ node faults

    def _node_fault(self, spec: ChaosSpec) -> None:
        while True:  # every worker's node under a fault or being put back: the fault waits
            with self._lock:
                node = self._pick_node()
                if node is not None:
                    index, ip = node
                    self._busy.add(index)
                    break
            if self._stop.wait(0.5):
                return
        with self._lock:
            ranks = sorted(r for r, (_, _, wip) in self.workers.items() if wip == ip)
            if spec.fault == "kill-node":
                for r in ranks:  # gone with their node: a later kill picks a live one
                    self.workers.pop(r, None)
        injected = Injected(spec.fault, time.time(), ip, ranks)
        undo = self._do(spec, index)
        with self._lock:
            self.injected.append(injected)
            self._undo[index] = (injected, undo)
        if spec.for_s is not None and not self._stop.wait(spec.for_s):
            self._put_back(index)

    def _pick_node(self) -> tuple[int, str] | None:
        """A node (index, address) that runs a worker and is not the head, nor under a fault
        or being put back."""
        nodes = [n["ip"] for n in self.cluster.get("nodes", [])]
        used = {wip for _, _, wip in self.workers.values()}
        free = [(i, ip) for i, ip in enumerate(nodes)
                if i > 0 and ip in used and i not in self._busy]
        return self._rng.choice(free) if free else None

    def _do(self, spec: ChaosSpec, index: int) -> list[tuple[str, dict]]:
        """Carry a node fault out; the requests that undo it. After a freeze or a cut, Ray may
        declare the node dead up to a minute after it is back; the revive watches for that
        (longer after a longer fault) and starts it again if so."""
        settle = {"settle_s": settle_s(spec.for_s or 0.0)}
        if spec.fault == "freeze-node":
            self._ask("freeze", index, on=True)
            return [("freeze", {"on": False}), ("revive", settle)]
        if spec.fault == "cut-link":
            self._ask("link", index, up=False)
            return [("link", {"up": True}), ("revive", settle)]
        if spec.fault == "slow-node":
            share = float(self.cluster["nodes"][index].get("cpu_share") or 1.0)
            self._ask("cpu", index, share=max(_MIN_SHARE, share * SLOW_FACTOR))
            return [("cpu", {"share": share})]
        self._ask("kill", index)
        return [("start", {})]

    def _put_back(self, index: int) -> None:
        with self._lock:
            injected, undo = self._undo.pop(index, (None, []))
        try:
            for k, (op, args) in enumerate(undo):
                self._ask(op, index, **args)
                if k == 0 and injected is not None:  # the fault's end; a revive follows
                    injected.ended_at = time.time()
        except UserError as exc:  # said in the fault's record, not lost with this thread
            if injected is not None:
                injected.problem = f"putting node {index} back failed: {exc}"
        finally:
            with self._lock:
                self._busy.discard(index)

    def _ask(self, op: str, index: int, **args: object) -> str:
        from raybench.cluster.control import ask

        return ask(self.cluster["control_socket"], op, index, **args)

    def __enter__(self) -> ChaosMonkey:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        # A thread may be putting a node back (a revive waits for Ray to see it: up to
        # minutes); the run ends once the cluster is as it was found.
        for t in self._threads:
            t.join(timeout=_PUT_BACK_S)
        for index in list(self._undo):
            self._put_back(index)
