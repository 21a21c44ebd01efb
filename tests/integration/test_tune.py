"""A real tiny ASHA sweep on Ray Tune, and its best config run through raybench.run."""

import csv
import json

import pytest
import yaml

from raybench import run, tune


def test_asha_stops_bad_trials_and_best_config_runs(ray_cluster, reg_npz, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "metric": "val_loss",
        "overrides": {"data.npz_path": str(reg_npz), "train.batch_size": 64,
                      "model.hidden": 8},
        "scheduler": {"max_t": 3, "grace_period": 1, "reduction_factor": 2},
        # Grid order is run order with one trial at a time: trials that are behind the
        # earlier ones at a rung are stopped there.
        "search_space": {"train.lr": {"grid": [0.01, 1.0e-7, 1.0e-8]}},
        "num_samples": 1,
    }))
    out = tmp_path / "tune_out"
    result = tune.run_sweep(tune.build_parser().parse_args([
        "--config", str(sweep), "--max-concurrent", "1", "--out", str(out), "--quiet"]))
    for name in ("trials.csv", "trials.json", "best_config.yaml", "trials.png", "sweep.yaml"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 3
    stopped = [r for r in rows if r["status"] == "stopped_early"]
    assert stopped and all(int(r["epochs_run"]) < 3 for r in stopped)
    assert any(r["status"] == "completed" and int(r["epochs_run"]) == 3 for r in rows)
    doc = json.loads((out / "trials.json").read_text())
    assert doc["best"]["config"]["train.lr"] == 0.01
    assert all(r.checkpoint for r in result["rows"])

    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["train"]["lr"] == doc["best"]["config"]["train.lr"]
    assert run.main(["--config", str(out / "best_config.yaml"), "--epochs", "1",
                     "--save_dir", str(tmp_path / "runs"), "--quiet"]) == 0
    assert any((tmp_path / "runs").glob("run_*/metrics_test.json"))


@pytest.mark.slow
def test_a_sweep_streams_a_parquet_dataset_with_ray_data(ray_cluster, tmp_path):
    """--ingest ray_data reaches every trial: each reads the Parquet dataset through Ray Data
    (it used to be accepted and silently ignored)."""
    from raybench.data.__main__ import main as data_main

    pq_dir = tmp_path / "pq"
    data_main(["prepare", "--source", "synthetic", "--samples", "3000", "--window", "20",
               "--format", "parquet", "--shards", "2", "--chunk-windows", "32", "--out",
               str(pq_dir)])
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "metric": "val_loss",
        "overrides": {"data.parquet_dir": str(pq_dir), "data.ingest": "ray_data",
                      "train.batch_size": 64, "model.hidden": 8},
        "scheduler": {"max_t": 2, "grace_period": 2},
        "search_space": {"train.lr": {"grid": [0.01, 0.003]}}, "num_samples": 1}))
    out = tmp_path / "tune_rd"
    result = tune.run_sweep(tune.build_parser().parse_args([
        "--config", str(sweep), "--max-concurrent", "1", "--out", str(out), "--quiet"]))
    rows = result["rows"]
    assert len(rows) == 2 and all(r.epochs_run == 2 for r in rows)
    saved = yaml.safe_load((out / "sweep.yaml").read_text())
    assert saved["base"]["data"]["ingest"] == "ray_data"
    assert result["baseline"] is not None  # the naive baseline, read from the validation files
