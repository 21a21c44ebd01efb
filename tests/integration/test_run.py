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


def tensorboard_scalars(directory):
    """Every scalar in a directory's TensorBoard event files: {tag: [(step, value)]}, read
    straight from the TFRecord framing (8-byte length, 4-byte CRC, event, 4-byte CRC)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_mlflow_and_ray_native_results(ray_cluster, reg_npz, tmp_path,
                                                    monkeypatch):
    import mlflow
    import ray.train

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reading its file store
    mlruns = tmp_path / "mlruns"
    assert run.main(["--npz_path", str(reg_npz), "--epochs", "4", "--workers", "2",
                     "--lr", "0.05", "--save_dir", str(tmp_path), "--run_name", "tracked",
                     "--mlflow", mlruns.as_uri(), "--quiet"]) == 0
    d = tmp_path / "tracked"
    scalars = tensorboard_scalars(d / "tensorboard")
    for tag in ("train/loss", "val/loss", "val/r2", "throughput/samples_per_sec",
                "step/sync_share", "test/r2"):
        assert tag in scalars, sorted(scalars)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    history = list(csv.DictReader((d / "history.csv").open()))
    assert scalars["val/loss"][-1][1] == pytest.approx(float(history[-1]["val_loss"]), rel=1e-5)
    # MLflow: the same metrics per epoch, the config as parameters, the best weights
    client = mlflow.tracking.MlflowClient(tracking_uri=mlruns.as_uri())
    (exp,) = [e for e in client.search_experiments() if e.name == "raybench"]
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.data.params["train.lr"] == "0.05" and mrun.info.run_name == "tracked"
    assert len(client.get_metric_history(mrun.info.run_id, "val_loss")) == 4
    assert [a.path for a in client.list_artifacts(mrun.info.run_id)] == ["best.ckpt"]
    # Ray's own view of the run: its storage keeps the best checkpoint by the stopping metric
    timing = json.loads((d / "timing.json").read_text())
    result = ray.train.Result.from_path(str(d / "ray_train"))
    best = result.get_best_checkpoint("val_loss", "min")
    state = torch.load(f"{best.path}/train_state.pt", weights_only=True)
    assert state["epoch"] == timing["best_epoch"]


FACTORY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, n_features, width):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, x):
        return self.net(x[:, -1]).squeeze(-1)


def build(n_features, window, task, width=8):
    return Tiny(n_features, width)


def wrong_shape(n_features, window, task):
    return nn.Linear(n_features, 3)


not_callable = 42


def raises(n_features, window, task):
    raise RuntimeError("my factory is broken")


class NoParams(nn.Module):
    def forward(self, x):
        return x[:, -1, 0]


def no_params(n_features, window, task):
    return NoParams()
'''


@pytest.fixture
def user_module(tmp_path):
    (tmp_path / "mymodels.py").write_text(FACTORY)
    (tmp_path / "broken.py").write_text("def build(n_features, window, task)\n    return 1\n")
    return tmp_path


USER_MODEL = """
import sys, yaml
from raybench import run, scale, tune
npz = sys.argv[1]
model = ["--model", "mymodels:build", "--set", "model.params.width=16", "--npz_path", npz]
assert run.main([*model, "--workers", "2", "--epochs", "2", "--save_dir", "runs",
                 "--run_name", "mine", "--quiet"]) == 0
scale.main([*model, "--workers", "1", "--repeats", "1", "--backends", "raybench,raw",
            "--warmup-steps", "2", "--window-s", "0.2", "--max-pairs", "2", "--no-model",
            "--out", "scale", "--quiet"])
open("sweep.yaml", "w").write(yaml.safe_dump({
    "metric": "val_loss", "overrides": {"model.kind": "mymodels:build", "data.npz_path": npz},
    "scheduler": {"max_t": 2, "grace_period": 1}, "num_samples": 1,
    "search_space": {"model.params.width": {"grid": [4, 8]}}}))
tune.main(["--config", "sweep.yaml", "--out", "tune", "--quiet"])
"""


@pytest.mark.slow
def test_a_users_own_model_runs_through_run_scale_and_tune(user_module, reg_npz):
    """The factory lives in the current directory only: raybench puts it on the local
    workers' path."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", USER_MODEL, str(reg_npz)], cwd=user_module,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    saved = yaml.safe_load((user_module / "runs" / "mine" / "config.yaml").read_text())
    assert saved["model"]["kind"] == "mymodels:build"
    assert saved["model"]["params"] == {"width": 16}
    state = torch.load(user_module / "runs" / "mine" / "best.ckpt", weights_only=True)
    assert state["net.0.weight"].shape == (16, 1)
    doc = json.loads((user_module / "scale" / "scaling.json").read_text())
    # (two workers loading the user's module: the run above)
    assert {(r["backend"], r["workers"]) for r in doc["runs"]} == {("raybench", 1), ("raw", 1)}
    trials = json.loads((user_module / "tune" / "trials.json").read_text())["trials"]
    assert sorted(t["config"]["model.params.width"] for t in trials) == [4, 8]


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule:build", "cannot import 'nosuchmodule'"),
    ("mymodels:missing", "module 'mymodels' has no 'missing'"),
    ("mymodels:not_callable", "'not_callable' is a int, not a callable"),
    ("mymodels:wrong_shape", "returned output of shape (2, 20, 3)"),
    ("mymodels:raises", "failed: RuntimeError: my factory is broken"),
    ("mymodels:no_params", "no trainable parameters"),
    ("broken:build", "importing 'broken' failed: SyntaxError"),
])
def test_a_broken_factory_fails_before_any_worker(user_module, reg_npz, spec, message,
                                                  monkeypatch, capsys):
    from raybench.errors import run_cli

    monkeypatch.syspath_prepend(str(user_module))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(run.main, ["--model", spec, "--npz_path", str(reg_npz), "--save_dir",
                           str(user_module / "runs")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (user_module / "runs").exists() or not any((user_module / "runs").iterdir())


def test_train_workers_import_the_compiler_stack_while_ray_starts_them(ray_cluster, tmp_path,
                                                                     monkeypatch):
    """backends.warm_imports, switched on: the hook reaches the Train workers of
    build_trainer (and only them: the start-up floor, Ray's own start, goes without it)."""
    from raybench.backends import warm_imports
    from raybench.backends.ray_train import build_trainer

    monkeypatch.setenv(warm_imports.SWITCH_ENV, "1")

    def _compiler_stack_seen(config=None) -> bool:  # by value: the workers cannot import tests
        """At a Train worker's first line: has anything begun importing torch._dynamo (the
        warm-imports thread, or the module already in sys.modules)?"""
        import sys
        import threading

        return "torch._dynamo" in sys.modules or any(
            t.name == "raybench-warm-imports" for t in threading.enumerate())

    cfg = Config()
    cfg.scaling.workers = 1
    seen = {warm: build_trainer(_compiler_stack_seen, {}, cfg, name=f"warm-{warm}",
                                storage_path=str(tmp_path), warm=warm).fit().return_value
            for warm in (True, False)}
    assert seen == {True: True, False: False}
