"""raybench.report over real run/scaling/sweep directories written by the project's writers."""

import json

import pytest
import yaml

from raybench import artifacts, plots, report, scaling_report
from raybench.config import Config
from raybench.errors import UserError
from tests.unit.test_scaling_report import RUNS


@pytest.fixture
def dirs(tmp_path):
    run = tmp_path / "run_1"
    run.mkdir()
    cfg = Config()
    cfg.data.task = "classification"
    artifacts.write_yaml(run / "config.yaml", cfg.to_dict())
    metrics = {"accuracy": 0.55, "auc": 0.57, "f1": 0.6, "baseline_majority": {"accuracy": 0.53,
                                                                              "auc": 0.5,
                                                                              "f1": 0.69}}
    artifacts.write_json(run / "metrics_valid.json", metrics)
    artifacts.write_json(run / "metrics_test.json", metrics)
    artifacts.write_json(run / "timing.json", {"num_workers": 2, "total_epochs": 3,
                                               "best_epoch": 2, "samples_per_sec": 12345.0})
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_auc": 0.5 + e / 100}
               for e in (1, 2, 3)]
    plots.curves_png(history, "auc", 2, run / "curves.png")
    plots.confusion_matrix_png([[5, 3], [2, 7]], run / "confusion_matrix_test.png", "test")
    scale = tmp_path / "scale"
    scaling_report.write_report(scale, environment={}, config={}, runs=RUNS)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    trials = [{"trial_id": "a", "status": "completed", "epochs_run": 4, "best": 0.56,
               "config": {"train.lr": 0.01}, "history": [0.5, 0.52, 0.55, 0.56]},
              {"trial_id": "b", "status": "stopped_early", "epochs_run": 1, "best": 0.5,
               "config": {"train.lr": 1e-5}, "history": [0.5]}]
    artifacts.write_json(sweep / "trials.json", {"metric": "auc", "mode": "max",
                                                 "trials": trials})
    plots.trials_png(trials, "auc", sweep / "trials.png")
    return run, scale, sweep


@pytest.mark.parametrize("suffix", [".html", ".md"])
def test_report_is_self_contained_with_every_section(dirs, tmp_path, suffix):
    out = tmp_path / f"report{suffix}"
    assert report.main([*map(str, dirs), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 4  # curves, confusion, scaling, trials
    for needle in ("run_1", "12,345", "Scaling: scale", "Sweep: sweep", "stopped early",
                   "raybench"):
        assert needle in text, needle


def test_report_rejects_unknown_dirs_and_formats(tmp_path):
    with pytest.raises(UserError, match="not a raybench run"):
        report.main([str(tmp_path), "--out", str(tmp_path / "r.html")])
    with pytest.raises(UserError, match="expected a .html or .md"):
        report.main([str(tmp_path), "--out", str(tmp_path / "r.pdf")])


def test_written_files_are_readable_by_others(tmp_path):
    path = artifacts.write_json(tmp_path / "x.json", {"a": 1})
    assert path.stat().st_mode & 0o044 == 0o044 and json.loads(path.read_text()) == {"a": 1}
    assert yaml.safe_load(artifacts.write_yaml(tmp_path / "x.yaml", {"b": 2}).read_text())
