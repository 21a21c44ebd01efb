"""What a red team found in this round's features (issue 37), the cases that need no Ray: each
was accepted, dropped without a word, or compared apples with oranges before its fix."""

import pytest
import yaml

from raybench import report, scale, scaling_report, tune
from raybench.errors import UserError
from tests.unit.test_edges import one_line_error
from tests.unit.test_scaling_report import rec

QUICK = ["--synthetic-samples", "2000", "--quiet"]


@pytest.mark.parametrize("argv, message", [
    (["--ci-halfwidth", "5"], "--ci-halfwidth 5 is +-500%"),
    (["--ci-halfwidth", "1"], "+-100%"),
    # strong scaling splits the global batch 64 (the default 64 x N=1): 100000 cannot
    (["--workers", "1,2", "--predict", "100000"], "--predict 100000: strong scaling splits the"
     " global batch 64"),
    (["--workers", "1,2", "--predict", "8", "--no-model"], "drop --no-model"),
    (["--workers", "1,2", "--predict", "8", "--backends", "ddp,raw"],
     "include the raybench backend"),
])
def test_scale_refuses_requests_it_would_drop_or_that_decide_nothing(argv, message, capsys):
    err = one_line_error(capsys, scale.main, [*QUICK, *argv])
    assert message in err, err


def sweep_yaml(tmp_path, **extra) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "metric": "val_loss", "num_samples": 1, "scheduler": {"max_t": 2, "grace_period": 1},
        "search_space": {"train.lr": {"grid": [0.01]}}, **extra}))
    return str(path)


@pytest.mark.parametrize("argv, extra, message", [
    (["--max-t", "0"], {}, "scheduler: max_t must be a positive number of epochs, got 0"),
    (["--grace-period", "0"], {}, "grace_period must be a positive number of epochs"),
    (["--max-concurrent", "-1"], {}, "--max-concurrent must be a positive integer, got -1"),
    (["--max-concurrent", "0"], {}, "--max-concurrent must be a positive integer, got 0"),
    ([], {"max_concurrent": -1}, "max_concurrent must be a positive integer, got -1"),
    ([], {"scheduler": {"max_t": 0}}, "max_t must be a positive number of epochs, got 0"),
])
def test_tune_refuses_a_schedule_it_would_replace(tmp_path, argv, extra, message, capsys):
    err = one_line_error(capsys, tune.main,
                         ["--config", sweep_yaml(tmp_path, **extra), "--out",
                          str(tmp_path / "t"), *argv])
    assert message in err, err
    assert not (tmp_path / "t").exists()


def test_the_regression_gate_refuses_two_different_workloads(tmp_path):
    """An MLP sweep against an LSTM sweep failed 'change<0.95' on their throughput ratio."""
    runs = [rec("raybench", 1, r, v) for r, v in zip((1, 2, 3), (100.0, 101.0, 99.0),
                                                      strict=True)]
    mlp = {"model": {"kind": "mlp", "hidden": 64}, "train": {"batch_size": 64},
           "data": {"window": 20, "task": "regression"}}
    lstm = {**mlp, "model": {"kind": "lstm", "hidden": 64, "layers": 2}}
    for name, cfg, batch in (("mlp", mlp, 64), ("lstm", lstm, 64), ("mlp256", mlp, 256)):
        cfg = {**cfg, "train": {"batch_size": batch}}
        scaling_report.write_report(tmp_path / name, environment={}, config=cfg, runs=runs,
                                    mode="strong", data_source="synthetic:2000",
                                    backends=["raybench"])
    with pytest.raises(UserError, match="needs the same workload .* differ in model"):
        report.main(["--compare", str(tmp_path / "mlp"), str(tmp_path / "lstm"), "--fail-if",
                     "change<0.95"])
    with pytest.raises(UserError, match="batch_size 64 -> 256"):
        report.main(["--compare", str(tmp_path / "mlp"), str(tmp_path / "mlp256")])


def test_findings_count_only_forecasts_of_points_that_ran_after_n1(tmp_path):
    """'within 53%' was the N=1 row (repeat 1 against the median of three restarts); with no
    N >= 2, 'within 2.2e-14%'. The N=1 row is not a forecast; the note says which restart the
    forecasts were made from."""
    from raybench.report.sections import forecast_note, scaling_section
    from raybench.results import Forecast

    runs = [rec("raybench", 1, r, v) for r, v in zip((1, 2, 3), (100.0, 65.0, 66.0),
                                                      strict=True)]
    n1 = Forecast(backend="raybench", workers=1, batch_size_per_worker=64,
                  predicted_samples_per_sec=100.0, measured_samples_per_sec=65.36, error=0.53)
    doc = scaling_report.write_report(tmp_path / "s", environment={}, config={}, runs=runs,
                                      mode="strong", forecasts=[n1], repeats=3)
    assert not any("forecasts" in x for x in scaling_section(tmp_path / "s").findings)
    assert "made from repeat 1's N=1 point" in forecast_note(doc)


def test_a_run_directory_missing_its_results_is_not_called_incomplete_and_completed(tmp_path):
    from raybench.report.sections import Incomplete, kind_of
    from raybench.results import RunStatus, write_status

    write_status(tmp_path, RunStatus("completed"))
    with pytest.raises(Incomplete, match="status says completed but timing.json and "
                                         "metrics_test.json are missing"):
        kind_of(tmp_path)
