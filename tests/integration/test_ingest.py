"""Ray Data ingest of a Parquet dataset on real Ray Train workers, next to the memory path."""

import json
import os
import time

import pytest

from raybench import run, scale
from raybench.backends.ray_cluster import ObjectStoreMonitor
from raybench.data.__main__ import main as data_main


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pq") / "synth"
    data_main(["prepare", "--source", "synthetic", "--samples", "6000", "--window", "20",
               "--format", "parquet", "--shards", "4", "--chunk-windows", "32", "--seed", "3",
               "--out", str(out)])
    return out


def timing_of(save_dir, name):
    return json.loads((save_dir / name / "timing.json").read_text())


def check_streamed(save_dir, name, parquet_dir, workers, batch):
    t = timing_of(save_dir, name)
    assert t["ingest"] == "ray_data" and t["num_workers"] == workers
    meta = json.loads((parquet_dir / "raybench_dataset.json").read_text())
    share = meta["splits"]["train"]["chunks"] // workers * 32
    assert t["steps_per_epoch"] == -(-share // batch)  # every rank: the same steps
    ranks = t["ranks"]
    assert len({(r["epochs_run"], r["best_epoch"]) for r in ranks}) == 1  # the same decisions
    assert len({r["final_weights_sha256"] for r in ranks}) == 1
    for r in ranks:  # the per-rank ingest figures
        assert r["ingest"] == "ray_data" and r["first_batch_s"] > 0
        assert 0 < r["step_breakdown"]["data_share"] < 1
    assert t["object_store_peak_mib"] is not None and t["spilled_mib"] == 0
    return t


def test_one_worker_streams_the_same_windows_as_memory(ray_cluster, parquet_dir, tmp_path):
    common = ["--parquet_dir", str(parquet_dir), "--workers", "1", "--epochs", "2",
              "--patience", "1", "--lr", "0.05", "--batch_size", "64", "--save_dir",
              str(tmp_path), "--quiet"]
    assert run.main([*common, "--ingest", "memory", "--run_name", "mem"]) == 0
    assert run.main([*common, "--ingest", "ray_data", "--run_name", "rd"]) == 0
    # read once into the object store, each epoch streamed from there: the same windows too
    assert run.main([*common, "--ingest", "ray_data", "--cache-train", "--run_name",
                     "cached"]) == 0
    m1 = json.loads((tmp_path / "mem" / "metrics_test.json").read_text())
    for name in ("rd", "cached"):
        streamed = check_streamed(tmp_path, name, parquet_dir, 1, 64)
        assert timing_of(tmp_path, "mem")["steps_per_epoch"] == streamed["steps_per_epoch"]
        # same windows, same order, same normalisation: the same test metrics
        m2 = json.loads((tmp_path / name / "metrics_test.json").read_text())
        assert m1["mse"] == pytest.approx(m2["mse"], rel=1e-5)
        assert m1["baseline_persistence"]["mse"] == pytest.approx(
            m2["baseline_persistence"]["mse"], rel=1e-6)


@pytest.mark.slow
def test_two_workers_stream_equal_shares_and_decide_alike(ray_cluster, parquet_dir, tmp_path):
    assert run.main(["--parquet_dir", str(parquet_dir), "--ingest", "ray_data", "--workers",
                     "2", "--epochs", "3", "--patience", "1", "--lr", "0.05", "--batch_size",
                     "32", "--save_dir", str(tmp_path), "--run_name", "rd2", "--quiet"]) == 0
    check_streamed(tmp_path, "rd2", parquet_dir, 2, 32)


@pytest.mark.slow
def test_scale_puts_both_ingest_paths_side_by_side(ray_cluster, parquet_dir, tmp_path):
    doc = scale.run_sweep(scale.build_parser().parse_args([
        "--workers", "1", "--parquet_dir", str(parquet_dir), "--backends", "raybench",
        "--ingest", "memory,ray_data", "--ingest-ceiling", "--batch_size", "32", "--mode",
        "weak", "--warmup-steps", "5", "--window-s", "0.2", "--min-pairs", "3", "--max-pairs",
        "3", "--max-outside-load", "1", "--out", str(tmp_path / "s"), "--quiet"]))
    labels = {(r.label, r.workers) for r in doc.summary}
    assert labels == {(label, 1) for label in (
        "raybench", "raybench+ray_data", "raybench+ray_data ingest-only")}
    rd = next(r for r in doc.summary if r.label == "raybench+ray_data")
    assert rd.vs_memory > 0 and rd.vs_memory_ci.n == 3  # three interleaved window pairs
    (c,) = doc.comparisons
    assert (c.numerator, c.denominator, c.ingest) == ("raybench+ray_data", "raybench",
                                                      "ray_data")
    assert rd.data_share_min <= rd.data_share_max and rd.first_batch_s > 0
    ceiling = next(r for r in doc.summary if r.label == "raybench+ray_data ingest-only")
    assert ceiling.compute_share == 0 and ceiling.samples_per_sec.median > 0
    run1 = [r for r in doc.runs if r.label == "raybench+ray_data"][0]
    assert len(run1.data_share_per_rank) == 1 and len(run1.samples_per_sec_per_rank) == 1
    # the pipeline was started, and its first batch fetched, before any measured window
    streamed = [w for w in doc.windows if w.launcher == "raybench+ray_data"]
    assert streamed and run1.first_batch_at < min(w.started_at for w in streamed)


def test_idle_read_workers_are_kept_for_the_next_epoch(ray_cluster):
    """Ray kills idle worker processes past its soft limit after a second; a streamed epoch's
    read tasks then start new Python processes every epoch, on the training worker's CPU.
    The local Ray raybench starts keeps them (LOCAL_RAY_ENV): more quarter-CPU tasks than
    the node has CPUs, then longer idle than Ray's kill delay, and every process is still
    there to be reused."""

    @ray_cluster.remote(num_cpus=0.25)
    def read_like_task():
        time.sleep(2.0)  # overlap: each task holds its own worker process
        return os.getpid()

    pids = set(ray_cluster.get([read_like_task.remote() for _ in range(8)]))
    assert len(pids) > 4  # more workers than the session's 4 CPUs, Ray's default soft limit
    time.sleep(3.0)  # Ray's idle_worker_killing_time_threshold_ms is 1000
    gone = [pid for pid in pids if not os.path.exists(f"/proc/{pid}")]
    assert not gone, f"Ray killed idle workers {gone}: the next epoch would start them again"


def test_object_store_monitor_keeps_one_channel_and_sees_the_store(ray_cluster):
    """Each sample makes the raylet ask every worker process for its stats; the monitor keeps
    its channel across samples (Ray's helper opened one and read the node table each call)
    and still sees bytes put into the store."""
    import numpy as np

    monitor = ObjectStoreMonitor()
    held = ray_cluster.put(np.ones(4 * 2**20, dtype=np.uint8))  # 4 MiB, in the shared store
    monitor._sample()
    ask = monitor._ask
    monitor._sample()
    assert monitor._ask is ask
    assert monitor.peak_bytes >= 4 * 2**20 and monitor.spilled_bytes == 0
    del held
