"""raybench against clusters it did not start: `ray job submit` to a real head node, and a
two-node cluster (ray.cluster_utils) where STRICT_SPREAD places the ranks of Ray Train and of
the Ray-placed DDP baseline on different nodes, and pre-flight refuses or waits."""

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

import psutil
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
    # `ray start --block` stops its node on SIGTERM, gracefully (about 30 s here); the test is
    # over, so whatever is left after a few seconds is killed, this head's processes only.
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=5)
    for left in alive:
        left.kill()
    psutil.wait_procs(alive, timeout=30)


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


PLACED = textwrap.dedent("""
    import json, sys, threading, time
    from ray.cluster_utils import Cluster
    from raybench import run, scale
    from raybench.errors import UserError

    npz, out = sys.argv[1], sys.argv[2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    report = {}
    # 1. the DDP baseline placed by Ray, with the same STRICT_SPREAD as Ray Train; N=1 first,
    # so that the second node's N=2 is forecast before it runs, then checked
    doc = scale.run_sweep(scale.build_parser().parse_args([
        "--address", cluster.address, "--workers", "1,2", "--repeats", "1", "--backends",
        "raybench,ddp-ray", "--placement_strategy", "STRICT_SPREAD", "--npz_path", npz,
        "--mode", "weak", "--batch_size", "32", "--warmup-steps", "3", "--window-s", "0.2",
        "--max-pairs", "3", "--max-outside-load", "1", "--allreduce-iters", "10", "--out",
        out + "/scale", "--quiet"]))
    runs = {r.backend: r for r in doc.runs if r.workers == 2}
    report["node_ids"] = {b: r.node_ids for b, r in runs.items()}
    report["vs_ddp"] = [p.vs_ddp for p in doc.summary if p.backend == "raybench"
                        and p.workers == 2][0]
    report["forecasts"] = [[f.backend, f.workers, f.predicted_samples_per_sec,
                            f.measured_samples_per_sec, f.error] for f in doc.forecasts]
    report["allreduce"] = runs["ddp-ray"].allreduce_ms_p50
    # 2. a placement the cluster can never hold fails in one line, not a wait forever
    common = ["--address", cluster.address, "--placement_strategy", "STRICT_SPREAD",
              "--npz_path", npz, "--epochs", "2", "--batch_size", "16", "--quiet"]
    t0 = time.monotonic()
    try:
        run.main([*common, "--workers", "3", "--save_dir", out + "/never"])
    except UserError as exc:
        report["refused"] = str(exc)
    report["refused_after_s"] = time.monotonic() - t0
    # 3. with --wait-for-workers, an autoscaler's node arriving in time lets the run go on
    # (the run in a thread: Cluster.add_node sets a SIGTERM handler, main thread only)
    waited = threading.Thread(target=lambda: report.update(waited=run.main(
        [*common, "--workers", "3", "--wait-for-workers", "90", "--save_dir", out + "/waited",
         "--run_name", "w"])))
    waited.start()
    time.sleep(4)
    cluster.add_node(num_cpus=2)
    waited.join()
    print("REPORT " + json.dumps(report))
    import ray
    ray.shutdown()
    cluster.shutdown()
""")


def test_ddp_baseline_and_preflight_on_a_two_node_cluster(reg_npz, tmp_path):
    proc = subprocess.run([sys.executable, "-c", PLACED, str(reg_npz), str(tmp_path)],
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    report = json.loads(line.removeprefix("REPORT "))
    for backend in ("raybench", "ddp-ray"):  # STRICT_SPREAD: one rank per node, both launchers
        assert len(set(report["node_ids"][backend])) == 2, report
    assert report["vs_ddp"] > 0 and report["allreduce"] > 0
    # the second node's N, forecast from N=1 and set beside what was then measured
    ((_, _, predicted, measured, error),) = [f for f in report["forecasts"]
                                              if f[:2] == ["raybench", 2]]
    assert predicted > 0 and measured > 0 and error == pytest.approx(predicted / measured - 1)
    assert "cannot place 3 workers" in report["refused"] and "STRICT_SPREAD" in report["refused"]
    assert report["refused_after_s"] < 60
    assert report["waited"] == 0
    timing = json.loads((tmp_path / "waited" / "w" / "timing.json").read_text())
    assert len({r["node_id"] for r in timing["ranks"]}) == 3
