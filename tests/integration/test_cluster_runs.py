"""raybench against clusters it did not start: `ray job submit` to a real head node, and a
two-node cluster (ray.cluster_utils) where SPREAD places the ranks on different nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # A local cluster started by ray.init() enables token authentication (~/.ray/auth_token)
    # and `ray start` then requires it; the job client reads the same token in this mode.
    if (Path.home() / ".ray" / "auth_token").is_file():
        env["RAY_AUTH_MODE"] = "token"
    return env


@pytest.fixture
def head_node(tmp_path):
    port, dashboard = free_port(), free_port()
    env = clean_env()
    # Every port on free ones: the test session's own local Ray already holds the defaults
    # (the dashboard agent's 52365 among them), and a head whose agent cannot bind never
    # accepts jobs ("No available agent to submit job").
    ports = {f"--{name}": free_port() for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        "ray-client-server-port")}
    proc = subprocess.Popen(
        ["ray", "start", "--head", "--block", f"--port={port}", "--num-cpus=4",
         "--node-ip-address=127.0.0.1", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--disable-usage-stats", *[f"{k}={v}" for k, v in ports.items()]],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:
            break  # it answers (401 under token authentication): the server is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("head node did not start:\n" + (tmp_path / "head.log").read_text())
            time.sleep(1)
    yield url, env
    proc.send_signal(signal.SIGTERM)  # `ray start --block` drains and stops its node
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_ray_job_submit_runs_on_the_existing_cluster(head_node, reg_npz, tmp_path):
    url, env = head_node
    # A relative --save_dir, as users type it: inside a job it lands in Ray's copy of the
    # working directory, so raybench warns and prints the absolute run directory.
    command = ["ray", "job", "submit", "--address", url, "--working-dir", str(ROOT), "--",
               "python", "-m", "raybench.run", "--workers", "2", "--npz_path", str(reg_npz),
               "--epochs", "2", "--save_dir", "runs", "--run_name", "job"]
    deadline = time.monotonic() + 120
    while True:
        submit = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
        out = submit.stdout + submit.stderr
        # The dashboard answers before its job agent has registered; Ray says to retry.
        if "No available agent to submit job" not in out or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submit.returncode == 0, out
    assert "succeeded" in out.lower(), out
    assert "local Ray on 127.0.0.1" not in out  # it joined the cluster, it did not start one
    assert "inside Ray's copy of the job's working directory" in out
    # worker output reaches `ray job logs` on a cluster (log_to_driver stays on)
    assert "(RayTrainWorker pid=" in out, out
    saved = [line for line in out.splitlines() if line.startswith("Saved → ")]
    run_dir = Path(saved[-1].removeprefix("Saved → ").strip())
    assert run_dir.is_absolute() and run_dir.name == "job" and "runtime_resources" in str(run_dir)
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"
    timing = json.loads((run_dir / "timing.json").read_text())
    assert timing["num_workers"] == 2 and (run_dir / "metrics_test.json").is_file()


TWO_NODES = textwrap.dedent("""
    import json, sys
    from ray.cluster_utils import Cluster
    from raybench import run

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    code = run.main(["--address", cluster.address, "--workers", "2", "--placement-strategy",
                     "SPREAD", "--npz_path", sys.argv[1], "--epochs", "2", "--save_dir",
                     sys.argv[2], "--run_name", "spread", "--quiet"])
    import ray
    ray.shutdown()
    cluster.shutdown()
    sys.exit(code)
""")


def test_spread_places_ranks_on_different_nodes(reg_npz, tmp_path):
    proc = subprocess.run([sys.executable, "-c", TWO_NODES, str(reg_npz), str(tmp_path)],
                          env=clean_env(), capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    timing = json.loads((tmp_path / "spread" / "timing.json").read_text())
    node_ids = [r["node_id"] for r in timing["ranks"]]
    assert len(node_ids) == 2 and len(set(node_ids)) == 2, timing["ranks"]
