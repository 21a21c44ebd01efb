"""`raybench.run` end to end on real Ray Train workers, small data."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import yaml

from raybench import run
from raybench.config import Config
from raybench.errors import UserError
from raybench.models import build_model

CORE = ["best.ckpt", "config.yaml", "norm_stats.json", "metrics_valid.json", "metrics_test.json",
        "timing.json", "history.csv", "curves.png", "status.json"]


def run_dir_of(save_dir):
    (path,) = [p for p in save_dir.iterdir() if p.name.startswith("run_")]
    return path


def test_one_worker_regression_writes_every_artifact(ray_cluster, reg_npz, tmp_path, capsys):
    assert run.main(["--npz_path", str(reg_npz), "--epochs", "3", "--workers", "1",
                     "--save_dir", str(tmp_path), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    d = run_dir_of(tmp_path)
    assert f"Saved → {d}" in out and "Epoch 3/3" in out
    for name in CORE:
        assert (d / name).stat().st_size > 0, name
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["data"]["task"] == "regression" and cfg["data"]["npz_path"] == str(reg_npz)
    for split in ("valid", "test"):
        m = json.loads((d / f"metrics_{split}.json").read_text())
        assert {"mse", "mae", "r2", "baseline_persistence"} <= m.keys()
    timing = json.loads((d / "timing.json").read_text())
    for key in ("total_epochs", "best_epoch", "total_time_sec", "mean_time_per_epoch",
                "std_time_per_epoch", "epoch_times", "num_workers", "samples_per_sec",
                "samples_per_sec_per_worker", "time_to_first_step_s", "wall_time_s"):
        assert key in timing, key
    assert timing["schema_version"] == 2
    assert timing["num_workers"] == 1 and len(timing["epoch_times"]) == 3
    # measured from the interpreter's start of raybench (this pytest process here), through
    # each start-up mark
    marks = timing["startup_s"]
    assert 0 < marks["worker_entry_s"] <= marks["loop_entry_s"] <= marks["model_ready_s"]
    assert marks["model_ready_s"] <= marks["first_step_s"] == timing["time_to_first_step_s"]
    assert timing["wall_time_s"] > timing["time_to_first_step_s"]
    rows = list(csv.DictReader((d / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_time_s", "epoch_time_s", "world_size", "val_loss", "val_r2"} <= rows[0].keys()
    norm = json.loads((d / "norm_stats.json").read_text())
    assert len(norm["mu"]) == len(norm["sd"]) == 1
    # best.ckpt is a plain state_dict (no DDP prefixes), safe to load, and fits the model
    state = torch.load(d / "best.ckpt", weights_only=True)
    model = build_model(Config().model, 1, 20)
    model.load_state_dict(state)
    assert json.loads((d / "status.json").read_text())["status"] == "completed"


def test_two_workers_classification_agree_and_plot(ray_cluster, cls_npz, tmp_path):
    assert run.main(["--npz_path", str(cls_npz), "--model", "gru", "--epochs", "2",
                     "--workers", "2", "--cpus-per-worker", "1", "--hidden", "8",
                     "--save_dir", str(tmp_path), "--quiet"]) == 0
    d = run_dir_of(tmp_path)
    for name in CORE + ["confusion_matrix_valid.png", "confusion_matrix_test.png"]:
        assert (d / name).stat().st_size > 0, name
    timing = json.loads((d / "timing.json").read_text())
    ranks = timing["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len({r["pid"] for r in ranks}) == 2
    # DDP keeps every rank's weights identical, bit for bit
    assert ranks[0]["final_weights_sha256"] == ranks[1]["final_weights_sha256"]
    assert timing["num_workers"] == 2
    assert timing["samples_per_sec"] == pytest.approx(sum(r["samples_per_sec"] for r in ranks))
    m = json.loads((d / "metrics_test.json").read_text())
    assert {"accuracy", "auc", "precision", "recall", "f1", "baseline_majority"} <= m.keys()
    assert sum(map(sum, m["confusion_matrix"])) == 300


def test_more_workers_than_the_cluster_holds_fails_fast(ray_cluster, reg_npz, tmp_path):
    with pytest.raises(UserError, match=r"cluster too small: 9 workers x \(1 CPU\)"):
        run.main(["--npz_path", str(reg_npz), "--workers", "9", "--batch_size", "8",
                  "--save_dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written that could look like a result
