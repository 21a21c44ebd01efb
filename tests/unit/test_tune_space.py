from pathlib import Path

import pytest

from raybench.errors import UserError
from raybench.tune_spec import SweepSpec, load_sweep, parse_space, spec_from_args, to_tune_space

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "tune"


def test_every_kind_and_dotted_keys():
    space = parse_space({
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "model.dropout": {"uniform": [0.0, 0.3]},
        "model.layers": {"randint": [1, 3]},
        "model.hidden": {"choice": [16, 32]},
        "model.kind": {"grid": ["lstm", "gru"]},
    })
    assert space["model.layers"] == ("randint", [1, 3])
    tune_space = to_tune_space(space)
    assert tune_space["model.kind"] == {"grid_search": ["lstm", "gru"]}
    assert 1e-4 <= tune_space["train.lr"].sample() <= 1e-2
    assert tune_space["model.layers"].sample() in (1, 2)
    assert tune_space["model.hidden"].sample() in (16, 32)


@pytest.mark.parametrize("spec, message", [
    ({"train.lrr": {"choice": [0.1]}}, "unknown config key 'train.lrr'"),
    ({"train.lr": {"normal": [0, 1]}}, "unknown kind 'normal'"),
    ({"train.lr": {"uniform": [0.1]}}, "needs [low, high]"),
    ({"train.lr": {"uniform": [0.2, 0.1]}}, "needs low < high"),
    ({"train.lr": {"loguniform": [0, 0.1]}}, "loguniform needs low > 0"),
    ({"model.layers": {"randint": [1.5, 3]}}, "randint needs integers"),
    ({"train.lr": {"choice": []}}, "choice needs a list"),
    ({"train.lr": 0.1}, "expected one of"),
    ({"model.kind": {"choice": ["lstm", "cnn"]}}, "model.kind: 'cnn' is not one of"),
    ({"train.lr": {"choice": [-1.0]}}, "train.lr: must be > 0"),
    ({}, "expected a mapping"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(UserError) as err:
        parse_space(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["mlp_regression.yaml", "lstm_classification.yaml"])
def test_shipped_sweeps_load(name):
    sweep = load_sweep(CONFIGS / name)
    assert sweep.space and sweep.schedule.max_t > sweep.schedule.grace_period
    assert sweep.base.model.kind in ("mlp", "lstm")


def test_sweep_file_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("search_space: {train.lr: {choice: [0.1]}}\nschedular: {}\n")
    with pytest.raises(UserError, match="unknown key 'schedular'"):
        load_sweep(bad)
    bad.write_text("search_space: {train.lr: {choice: [0.1]}}\nscheduler: {max_tt: 3}\n")
    with pytest.raises(UserError, match="unknown key 'max_tt'"):
        load_sweep(bad)


def test_a_sweep_is_parsed_once_into_a_spec_that_survives_sweep_yaml(tmp_path):
    from raybench import tune

    sweep = tmp_path / "s.yaml"
    sweep.write_text("metric: r2\nnum_samples: 2\nscheduler: {grace_period: 2}\n"
                     "search_space: {train.lr: {grid: [0.1, 0.01, 0.001]}}\n")
    spec = spec_from_args(tune.build_parser().parse_args([
        "--config", str(sweep), "--max-t", "5", "--workers-per-trial", "2", "--lr", "0.5"]))
    assert (spec.schedule.max_t, spec.schedule.grace_period, spec.schedule.kind) == (5, 2, "asha")
    assert spec.expected_trials == 6 and spec.base.scaling.workers == 2
    assert spec.base.train.epochs == 5 and spec.base.train.early_stop_patience == 0
    assert SweepSpec.from_doc(spec.to_doc(), "sweep.yaml") == spec
    with pytest.raises(UserError, match="not a sweep.yaml"):
        SweepSpec.from_doc({"base": {}}, "sweep.yaml")


@pytest.mark.parametrize("text, message", [
    ("metric: r2\nmode: min\n", "mode 'min' does not follow from the metric"),
    ("mode: max\n", "does not follow from the metric"),
    ("metric: auc\nmode: sideways\n", "mode must be min or max"),
    ("num_samples: 0\n", "num_samples must be a positive integer"),
    ("scheduler: [1, 2]\n", "scheduler: expected a mapping"),
])
def test_sweep_settings_that_would_be_ignored_or_cannot_run_are_refused(tmp_path, text, message):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(text + "search_space: {train.lr: {choice: [0.1]}}\n")
    with pytest.raises(UserError, match=message):
        load_sweep(sweep)


def test_a_failed_save_of_tunes_state_is_one_line_not_a_traceback(caplog):
    """Ray Tune logs a failed state save with its traceback (seen on SIGTERM on a busy
    machine); the sweep's user gets one line."""
    import logging

    from raybench.tune import OneLineSaveErrors

    logger = logging.getLogger("test.experiment_state")
    logger.addFilter(OneLineSaveErrors())
    try:
        raise FileNotFoundError(2, "Failed to open local file '/tmp/ray/x.tmp'\nDetail: gone")
    except FileNotFoundError:
        with caplog.at_level(logging.ERROR, logger="test.experiment_state"):
            logger.exception("Saving experiment state to storage at '/out' failed with "
                             "exception: ")
    (record,) = caplog.records
    text = caplog.text
    assert "Traceback" not in text and record.exc_info is None
    assert "failed with exception: FileNotFoundError: [Errno 2] Failed to open local file" in text
