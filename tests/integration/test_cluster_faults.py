"""The faults a cluster has, each scheduled by `raybench.scale --chaos` on the emulated cluster
(`raybench.cluster local`) during one run, and the clean run beside it: a link cut and a node
frozen for less than the hang bound (the run goes on, no restart), a slow node, a node frozen
for longer (detected within the bound, restart from the checkpoint on the nodes left), a node
killed with everything on it, a link cut for longer than the bound. Each is a Recovery with its
fault, node, detection time and steps lost; every epoch is trained once and the run ends where
the clean one did. Root only (CI runs
as root); its own 4-node cluster, removed after."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from raybench.cluster import kernel
from raybench.cluster.local import LocalCluster

pytestmark = pytest.mark.slow
BOUND_S = 15  # --hang-timeout-s: Ray Train's health check gives up on a worker after this
EPOCHS = 16
SCHEDULE = ("cut-link once after epoch 2 for 5s; freeze-node once after epoch 4 for 5s; "
            "slow-node once after epoch 5 for 6s; freeze-node once after epoch 7 for 45s; "
            "kill-node once after epoch 10 for 3s; cut-link once after epoch 12 for 30s")


@pytest.fixture(scope="module")
def cluster():
    problem = kernel.missing()
    if problem:
        pytest.skip(problem)
    # the head holds the driver and no worker (0 logical CPUs, as production heads do); three
    # nodes of one CPU take the two workers, so a restart finds room without the node a fault
    # took
    c = LocalCluster(f"f{os.getpid() % 10**6:06d}")
    c.up(c.plan(4, "1gbit", "0.5,0.5,0.5,0.5", "0,1,1,1"), log=lambda _: None)
    yield c
    c.down(log=lambda _: None)


def test_each_fault_is_survived_detected_in_bound_and_recorded(cluster, reg_npz, tmp_path):
    command, env = cluster.command(0, [
        sys.executable, "-m", "raybench.scale", "--workers", 2, "--backends", "raybench",
        "--chaos", SCHEDULE, "--hang-timeout-s", BOUND_S, "--epochs", EPOCHS,
        "--npz-path", reg_npz, "--batch-size", 64, "--repeats", 1, "--out", tmp_path / "s"])
    done = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    doc = json.loads(next((tmp_path / "s").rglob("scaling.json")).read_text())
    clean, chaos = sorted((r for r in doc["runs"] if r["workers"] == 2),
                          key=lambda r: r["chaos"] is not None)
    assert chaos["chaos"] and chaos["epochs"] == clean["epochs"] == EPOCHS
    # every epoch once, from the checkpoints: the run ends where the clean one did
    assert chaos["final_train_loss"] == pytest.approx(clean["final_train_loss"], rel=1e-5)
    by_kind: dict[str, list[dict]] = {}
    for r in chaos["recoveries"]:
        by_kind.setdefault(r["fault"], []).append(r)
    nodes = {n.ip for n in cluster.spec().nodes[1:]}
    # shorter than the bound: the run went on, nothing lost
    cut, long_cut = sorted(by_kind["cut link"], key=lambda r: r["failure_epoch_s"])
    assert not cut["restarted"] and cut["steps_lost"] == 0 and cut["node"] in nodes, cut
    assert cut["fault_s"] == pytest.approx(5, abs=2)
    short, long_ = sorted(by_kind["frozen node"], key=lambda r: r["failure_epoch_s"])
    assert not short["restarted"] and short["steps_lost"] == 0, short
    slow, = by_kind["slow node"]
    assert not slow["restarted"], slow
    # longer: detected within the bound (+10 s), restarted from epoch 7's checkpoint
    assert long_["restarted"] and long_["detect_s"] <= BOUND_S + 10, long_
    assert long_["resumed_from_epoch"] == 7 and long_["recovery_s"] > 0, long_
    assert long_["steps_lost"] is not None and long_["node"] in nodes, long_
    lost, = by_kind["lost node"]
    assert lost["restarted"] and lost["detect_s"] <= BOUND_S + 10, lost
    assert lost["resumed_from_epoch"] == 10 and lost["recovery_s"] > 0, lost
    assert long_cut["restarted"] and long_cut["detect_s"] <= BOUND_S + 10, long_cut
    assert long_cut["resumed_from_epoch"] == 12 and long_cut["fault_s"] == pytest.approx(
        30, abs=3)
    assert chaos["failures"] == 3, chaos["recoveries"]
    point = next(p for p in doc["summary"] if p["chaos"])
    assert 0 < point["goodput_samples_per_sec"] < next(
        p for p in doc["summary"] if not p["chaos"] and p["workers"] == 2
    )["goodput_samples_per_sec"]
    assert all(r["seen_by"] == "chaos" for r in chaos["recoveries"])  # no failure unplanned
    # the cluster as it was found: every node back in Ray, links up, shares restored
    spec = cluster.spec()
    assert all(kernel.link_is_up(cluster.host_end(n.index)) for n in spec.nodes)
    assert [n.cpu_share for n in spec.nodes] == [0.5] * 4
    assert all(cluster.init_pid(n.index) is not None for n in spec.nodes)
    cluster.wait_for_ray(spec, [n.index for n in spec.nodes], timeout_s=5)
