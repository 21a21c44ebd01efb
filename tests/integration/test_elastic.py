"""Elastic workers on a real two-node cluster (ray.cluster_utils): a node leaves mid-run and
comes back; the run shrinks to one worker and grows back to two, every epoch trained once."""

import csv
import json
import subprocess
import sys
import textwrap

from tests.integration.test_cluster_runs import clean_env

ELASTIC = textwrap.dedent("""
    import os, sys, threading, time
    # Before the cluster starts, so its processes inherit them: reports every 0.2 s, and a
    # 10 s (not 60 s) wait for a worker group Ray believes it can place after the node left.
    os.environ.update(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
                      RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="10")
    from pathlib import Path
    import torch
    from ray.cluster_utils import Cluster
    from raybench import run
    from raybench.resume import checkpoints

    import raybench
    npz, save_dir = sys.argv[1], Path(sys.argv[2])
    (save_dir / "launch_time").write_text(repr(raybench.START_TIME))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    train_dir = save_dir / "elastic" / "ray_train"

    def latest_history():
        found = checkpoints(train_dir) if train_dir.exists() else []
        try:
            return torch.load(found[0] / "train_state.pt", weights_only=True)["history"]
        except Exception:
            return []

    def wait_for(world):
        # two epochs at that size: the first one's checkpoint was registered with Ray before
        # the second epoch began (report() is a barrier)
        while [r["world_size"] for r in latest_history()[-2:]] != [world, world]:
            if not trainer.is_alive():
                sys.exit(f"training ended before it ran on {world} worker(s)")
            time.sleep(0.2)

    result = {}

    def train():
        result["code"] = run.main([
            "--address", cluster.address, "--workers", "1-2", "--set",
            "scaling.elastic_resize_interval_s=1", "--max_failures", "-1", "--npz_path", npz,
            "--epochs", "120", "--patience", "0", "--batch_size", "8", "--save_dir", str(save_dir),
            "--run_name", "elastic", "--quiet"])

    # Training runs in a thread because Cluster.add_node installs a SIGTERM handler, which
    # Python allows only on the main thread.
    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    wait_for(2)  # training on both nodes (an elastic run may start small and grow)
    cluster.remove_node(nodes[1])  # a node is lost (a preempted spot instance)
    wait_for(1)  # training goes on, on one
    cluster.add_node(num_cpus=1)  # capacity returns
    trainer.join()
    code = result.get("code", 1)
    import ray
    ray.shutdown()
    cluster.shutdown()
    sys.exit(code)
""")


def test_a_node_leaves_and_returns_the_run_shrinks_and_grows(reg_npz, tmp_path):
    proc = subprocess.run([sys.executable, "-c", ELASTIC, str(reg_npz), str(tmp_path)],
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "elastic"
    history = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in history] == list(range(1, 121))  # each epoch once
    sizes = [int(r["world_size"]) for r in history]
    two = sizes.index(2)
    one = sizes.index(1, two)
    assert 2 in sizes[one:], sizes  # 2 -> 1 -> 2
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["failures"] >= 1  # the lost node; growing back is a resize, not a failure
    lost = next(r for r in timing["restores"] if r["world_size"] == 1 and r["from_epoch"] >= two)
    assert lost["recovery_s"] > 0
    # the node's loss is a failure that says what failed (the worker on it died)
    lost_failure = next(r for r in timing["recoveries"]
                        if r["failure_epoch_s"] == lost["failure_epoch_s"])
    assert lost_failure["cause"].startswith("rank "), lost_failure
    # growing back (the first two-worker restore after the loss) is a resize: no failure is
    # attributed to it unless the controller reported one in between, whose cause is shown
    grown = next(r for r in timing["restores"]
                 if r["world_size"] == 2 and r["from_epoch"] > lost["from_epoch"])
    between = [r for r in timing["recoveries"]
               if lost["first_step_epoch_s"] < r["failure_epoch_s"] < grown["first_step_epoch_s"]]
    assert grown["failure_epoch_s"] is None, (
        "the grow-back restore was attributed a failure; failures the controller saw between "
        f"the loss and the grow-back: {between}")
    # the last incarnation ran on two workers again, each with its own equal shard
    assert timing["num_workers"] == 2 and len(timing["ranks"]) == 2
    # time to first step is the job's start-up, not the restart's (which recovery_s measures)
    launch = float((tmp_path / "launch_time").read_text())
    assert launch + timing["time_to_first_step_s"] < lost["failure_epoch_s"]
