"""The per-worker loop in one plain process (the `raw` launcher): no Ray needed."""

import numpy as np
import pytest

from raybench import data
from raybench.config import Config
from raybench.data import shard_bounds
from raybench.loop import LoopOptions
from tests.conftest import run_raw


def small_cfg(**train):
    cfg = Config()
    cfg.train.epochs, cfg.train.batch_size = 4, 64
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def dataset(npz, task=None):
    return data.build_dataset(data.load_npz(npz), task, 0.1, "zscore")


def test_shards_are_contiguous_and_cover_everything():
    bounds = [shard_bounds(10, 3, r) for r in range(3)]
    assert bounds == [(0, 4), (4, 7), (7, 10)]


def test_same_seed_same_result(reg_npz):
    ds = dataset(reg_npz)
    a = run_raw(small_cfg(), ds, LoopOptions(checkpoint=False))
    b = run_raw(small_cfg(), ds, LoopOptions(checkpoint=False))
    assert a.metrics_test == b.metrics_test
    assert [r.train_loss for r in a.history] == [r.train_loss for r in b.history]
    c = run_raw(small_cfg(seed=7), ds, LoopOptions(checkpoint=False))
    assert c.metrics_test != a.metrics_test


def test_training_learns_and_reports_timing(reg_npz):
    result = run_raw(small_cfg(epochs=6, lr=0.01), dataset(reg_npz), LoopOptions())
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0]
    t = result.timing
    assert t.total_epochs == len(t.epoch_times) == 6
    assert t.samples_per_sec > 0 and t.threads_per_worker == 1
    b = t.step_breakdown
    assert b.steps == t.measured_steps == 5 * t.steps_per_epoch  # warm-up epoch excluded
    assert b.sync_share == 0  # one process: nothing to all-reduce
    assert b.step_time_ms_p50_ci.low <= b.step_time_ms_p50 <= b.step_time_ms_p50_ci.high
    assert "baseline_persistence" in result.metrics_test


def test_one_epoch_warms_up_on_steps_and_still_measures(reg_npz):
    """Every epoch being warm-up must not print 0 samples/s: the first tenth of the steps is
    the warm-up instead."""
    result = run_raw(small_cfg(epochs=1), dataset(reg_npz), LoopOptions(checkpoint=False))
    t = result.timing
    assert t.warmup_epochs == 0 and t.warmup_steps == max(1, t.steps_per_epoch // 10)
    assert t.measured_steps == t.steps_per_epoch - t.warmup_steps
    assert t.samples_per_sec > 0


def test_early_stopping_stops_and_keeps_best(cls_npz):
    # lr so high the validation metric cannot keep improving
    result = run_raw(small_cfg(epochs=30, lr=5.0, early_stop_patience=2), dataset(cls_npz),
                     LoopOptions(checkpoint=False))
    t = result.timing
    assert t.stopped_early and t.total_epochs < 30
    assert t.total_epochs - t.best_epoch == 2
    best_row = result.history[t.best_epoch - 1]
    assert best_row.val_metrics["val_auc"] == pytest.approx(result.best)
    assert result.metrics_valid["auc"] == pytest.approx(result.best, abs=1e-6)


def test_shuffle_changes_batches_but_not_determinism(reg_npz):
    cfg = small_cfg()
    cfg.data.shuffle_train = True
    ds = dataset(reg_npz)
    a = run_raw(cfg, ds, LoopOptions(checkpoint=False))
    b = run_raw(cfg, ds, LoopOptions(checkpoint=False))
    plain = run_raw(small_cfg(), ds, LoopOptions(checkpoint=False))
    assert a.history[0].train_loss == b.history[0].train_loss
    assert a.history[1].train_loss != plain.history[1].train_loss


def test_best_state_is_plain_numpy(reg_npz):
    result = run_raw(small_cfg(epochs=1), dataset(reg_npz), LoopOptions(checkpoint=False))
    assert all(isinstance(v, np.ndarray) for v in result.best_state.values())
    assert not any(k.startswith("module.") for k in result.best_state)


def test_bf16_autocast_and_compile_paths_train(reg_npz):
    ds = dataset(reg_npz)
    bf16 = small_cfg(epochs=2, precision="bf16")
    result = run_raw(bf16, ds, LoopOptions(checkpoint=False))
    assert np.isfinite(result.history[-1].train_loss)
    assert result.metrics_test["mse"] != run_raw(small_cfg(epochs=2), ds, LoopOptions(
        checkpoint=False)).metrics_test["mse"]  # bf16 really changed the arithmetic
    compiled = run_raw(small_cfg(epochs=2, compile=True), ds, LoopOptions(checkpoint=False))
    assert not any(k.startswith("_orig_mod") for k in compiled.best_state)
    assert np.isfinite(compiled.metrics_test["mse"])
