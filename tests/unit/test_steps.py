"""Each named step of the per-worker loop on its own, in this process (no full run)."""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from raybench import data
from raybench.backends.local import LocalSession
from raybench.config import Config, resolve
from raybench.data.ingest import MemoryIngest
from raybench.loop import Diverged, checkpoint, steps
from raybench.loop.collector import MetricsCollector, Window, breakdown_of


@pytest.fixture(scope="module")
def ds(reg_npz):
    return data.build_dataset(data.load_npz(reg_npz), None, 0.1, "zscore")


def make(ds, *, lr=1e-3, patience=5, batch=64, session=None, window=None, warmup_epochs=0):
    cfg = resolve(Config(), task=ds.task)
    cfg.train.lr, cfg.train.early_stop_patience, cfg.train.batch_size = lr, patience, batch
    session = session or LocalSession(torch.device("cpu"))
    ingest = MemoryIngest(ds, session.rank, session.world_size, batch, session.device)
    collector = MetricsCollector(session.device, warmup_epochs=warmup_epochs, window=window)
    return steps.setup(cfg, ingest, session, collector), collector


class RecordingSession(LocalSession):
    """The plain-process session, keeping a copy of every checkpoint it is handed."""

    def __init__(self, keep_dir):
        super().__init__(torch.device("cpu"))
        self.keep_dir, self.reports = keep_dir, []

    def report(self, metrics, checkpoint_dir):
        kept = None
        if checkpoint_dir:
            kept = shutil.copytree(checkpoint_dir, self.keep_dir / f"e{metrics['epoch']}")
        self.reports.append((metrics, kept))


def test_early_stopper_modes_and_patience():
    s = steps.EarlyStopper("val_loss", "min", patience=2)
    assert s.update(1.0, 1) and not s.update(1.5, 2) and not s.should_stop
    assert not s.update(1.2, 3) and s.should_stop and (s.best, s.best_epoch) == (1.0, 1)
    up = steps.EarlyStopper("auc", "max", patience=0)
    assert up.update(0.5, 1) and up.update(0.6, 2) and not up.update(0.1, 3)
    assert not up.should_stop  # patience 0 never stops


def test_setup_builds_the_model_and_marks_model_ready(ds):
    state, collector = make(ds)
    assert state.num_parameters == sum(p.numel() for p in state.module.parameters())
    assert state.steps_per_epoch == math.ceil((len(ds.X_train)) / 64)
    assert collector.marks["model_ready"] >= collector.marks["loop_entry"]
    assert torch.get_num_threads() == 1 and state.stopper.metric == "val_loss"


def test_train_epoch_times_every_step_after_warmup(ds):
    state, collector = make(ds, warmup_epochs=1)
    first = steps.train_epoch(state, 1, collector)
    assert collector.measured_steps == 0  # the warm-up epoch counts nothing
    second = steps.train_epoch(state, 2, collector)
    assert collector.measured_steps == state.steps_per_epoch
    assert second.world_size == 1 and second.train_loss < first.train_loss
    b = collector.breakdown()
    assert sum(getattr(b, f"{p}_share") for p in ("data", "compute", "sync", "optimizer")) == (
        pytest.approx(1.0))
    assert collector.samples == state.ingest.n_local and collector.samples_per_sec() > 0


def test_benchmark_window_stops_after_the_agreed_steps(ds):
    window = Window(warmup_steps=3, min_steps=7, min_seconds=0.0)
    state, collector = make(ds, window=window)
    steps.train_epoch(state, 1, collector)
    assert collector.window_complete and collector.measured_steps == 7
    assert collector.global_step == 3 + 7


def test_validate_and_decide_fills_the_row_and_keeps_the_best_weights(ds):
    state, collector = make(ds)
    row = steps.train_epoch(state, 1, collector)
    steps.validate_and_decide(state, row)
    assert row.new_best and row.val_loss is not None and "val_r2" in row.val_metrics
    assert state.stopper.best == row.val_loss
    best = {k: v.clone() for k, v in state.best_state.items()}
    assert all(torch.equal(best[k], v) for k, v in state.module.state_dict().items())


def test_checkpoint_round_trip_resumes_where_it_stopped(ds, tmp_path):
    session = RecordingSession(tmp_path)
    state, collector = make(ds, session=session)
    for epoch in (1, 2):
        row = steps.train_epoch(state, epoch, collector)
        steps.validate_and_decide(state, row)
        steps.close_epoch(state, row, 0.0)
        checkpoint.report_epoch(state, row, checkpoint=True)
    metrics, kept = session.reports[-1]
    assert (metrics["epoch"], metrics["metric"], metrics["pid"]) == (2, "val_loss", os.getpid())
    assert sorted(os.listdir(kept)) == sorted([checkpoint.CKPT_MODEL, checkpoint.CKPT_STATE,
                                               checkpoint.CKPT_BEST])

    fresh, _ = make(ds)
    checkpoint.resume(fresh, kept)
    assert fresh.first_epoch == 3 and fresh.resumed_from_epoch == 2
    assert [r.epoch for r in fresh.history] == [1, 2]
    assert fresh.stopper.best == state.stopper.best
    for k, v in state.module.state_dict().items():
        assert torch.equal(fresh.module.state_dict()[k], v)


def test_a_non_finite_loss_is_divergence_not_a_result(ds):
    state, collector = make(ds, lr=1e30)
    with pytest.raises(Diverged, match="diverged in epoch"):
        for epoch in range(1, 6):
            steps.train_epoch(state, epoch, collector)


def test_breakdown_percentiles_and_p50_interval():
    phases = np.tile([[0.001, 0.006, 0.002, 0.001]], (99, 1))
    phases = np.vstack([phases, [[0.001, 0.096, 0.002, 0.001]]])
    b = breakdown_of(phases)
    assert b.steps == 100 and b.compute_s == pytest.approx(0.0069)
    assert b.step_time_ms_p50 == pytest.approx(10.0)
    assert b.step_time_ms_p50_ci.low == pytest.approx(10.0)
    assert b.step_time_ms_p50_ci.high == pytest.approx(10.0)


class FakeEvent:
    """Stands in for torch.cuda.Event (no GPU here): a recorded timestamp in ms that is only
    readable after the device was synchronised, as with CUDA events."""

    synced = False

    def __init__(self, ms):
        self.ms = ms

    def elapsed_time(self, other):
        assert FakeEvent.synced, "an event was read before the window's synchronisation"
        return other.ms - self.ms


def test_gpu_steps_are_timed_by_events_read_once_per_epoch(monkeypatch):
    syncs = []

    def synchronize(device=None):
        syncs.append(device)
        FakeEvent.synced = True

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    collector = MetricsCollector(torch.device("cpu"))
    collector.clock.cuda = True  # the GPU code path, with events it can resolve here
    collector.start_epoch(1)
    FakeEvent.synced = False
    for i in range(50):
        base = 10.0 * i
        events = [FakeEvent(base + dt) for dt in (0.0, 1.0, 7.0, 8.0, 10.0)]
        collector.record(64, *events)
    assert syncs == []  # no step synchronised the device
    collector.end_epoch()
    assert len(syncs) == 1
    b = collector.breakdown()
    assert b.steps == 50 and b.step_time_ms_p50 == pytest.approx(10.0)
    assert (b.data_s, b.compute_s, b.sync_s, b.optimizer_s) == pytest.approx(
        (0.001, 0.006, 0.001, 0.002))
