"""Resident launchers measured in interleaved windows: every launcher (Ray Train workers, local
DDP ranks, the raw process) serves windows on order; ratios come from the pairs; a budget stops
the rounds; a CPU burner's rounds are excluded."""

import json
import subprocess
import sys
import threading
import time

import pytest

from raybench import scale
from raybench.backends import LaunchContext
from raybench.backends.ddp import DdpBackend
from raybench.backends.raw import RawBackend
from raybench.config import Config
from raybench.data import build_dataset, synthetic
from raybench.errors import RunFailed
from raybench.interleave import Contender, PointRun, Precision
from raybench.loop import LoopOptions
from raybench.results import PHASES, ScalingDoc, read_doc

QUICK = ["--synthetic-samples", "6000", "--window", "20", "--warmup-steps", "5",
         "--window-s", "0.2", "--allreduce-iters", "10", "--no-model", "--quiet"]


def test_all_three_launchers_serve_interleaved_windows(ray_cluster, tmp_path):
    out = tmp_path / "resident"
    doc = scale.run_sweep(scale.build_parser().parse_args([
        *QUICK, "--workers", "1,2", "--batch_size", "128", "--min-pairs", "3",
        "--max-pairs", "4", "--max-outside-load", "1", "--out", str(out)]))
    assert doc.protocol == "resident" and doc.precision["window_s"] == 0.2
    comps = {(c.numerator, c.denominator, c.workers): c for c in doc.comparisons}
    assert set(comps) == {("raybench", "raw", 1), ("raybench", "ddp", 1), ("raybench", "ddp", 2)}
    for c in comps.values():
        assert 3 <= c.pairs <= 4 and c.excluded_pairs == 0
        assert 0 < c.ci95[0] <= c.ratio <= c.ci95[1]
        assert set(c.phases) == set(PHASES) and c.halfwidth is not None
        assert set(c.startup_s) == {c.numerator, c.denominator}
        assert c.startup_s[c.numerator]["first_step_s"] > 0
    # rounds alternate their order (ABBA), and a launcher's windows all have its step count
    n1 = [w for w in doc.windows if w.workers == 1]
    first = [w.launcher for w in sorted(n1, key=lambda w: w.slot) if w.round == 0]
    second = [w.launcher for w in sorted(n1, key=lambda w: w.slot) if w.round == 1]
    assert first == ["raybench", "ddp", "raw"] and second == first[::-1]
    for label in ("raybench", "ddp", "raw"):  # sized again once, after the first round
        assert len({w.steps for w in n1 if w.launcher == label and w.round > 0}) == 1
    # two ranks per window at N=2: the ranks' samples add up (each epoch end a window
    # crosses gives every rank one short batch: a window sized while the machine ran fast
    # spans several epochs), the sync phase is measured
    n2 = [w for w in doc.windows if w.workers == 2 and w.launcher == "raybench"]
    per_epoch = next(r for r in doc.runs if r.label == "raybench" and r.workers == 2
                     ).steps_per_epoch
    for w in n2:
        ends = -(-w.steps // per_epoch)  # epoch ends a window of w.steps can cross, at most
        assert w.steps * 128 - ends * 2 * 64 < w.samples <= w.steps * 128, (w, per_epoch)
    assert all(w.phase_ms["sync"] > 0 for w in n2)
    # every rank's kernel CPU and page faults per step, and each side's busiest rank
    for w in doc.windows:
        assert len(w.kernel_ms_per_rank) == len(w.faults_per_rank) == w.workers, w
        assert min(w.kernel_ms_per_rank) >= 0 and min(w.faults_per_rank) >= 0
    assert any(ms > 0 for w in doc.windows for ms in w.kernel_ms_per_rank)
    for c in comps.values():
        assert set(c.kernel_ms) == set(c.faults_per_step) == {c.numerator, c.denominator}
    # a run's throughput is its windows' pooled rate; the summary's ratio is the comparison's
    ray1 = next(r for r in doc.runs if r.label == "raybench" and r.workers == 1)
    assert ray1.windows == len(ray1.window_rates) == comps[("raybench", "raw", 1)].pairs
    point = next(p for p in doc.summary if p.label == "raybench" and p.workers == 1)
    assert point.vs_raw == comps[("raybench", "raw", 1)].ratio
    saved = json.loads((out / "scaling.json").read_text())
    record = next(c for c in saved["comparisons"] if c["denominator"] == "raw")
    assert {"numerator", "denominator", "workers", "ingest", "ratio", "ci95", "pairs",
            "excluded_pairs", "window_s", "phases"} <= set(record)
    assert record["ingest"] == "memory" and len(saved["windows"]) == len(doc.windows)


def test_the_budget_stops_the_rounds_and_the_record_says_so(tmp_path):
    """The start-ups alone spend a 1 s budget: one round, no interval. That used to pass as a
    completed sweep; it fails, kept as failed, and the point says why (issue 37)."""
    out = tmp_path / "budget"
    with pytest.raises(RunFailed, match="no comparison was measured: ddp/raw at N=1"):
        scale.run_sweep(scale.build_parser().parse_args([
            *QUICK, "--workers", "1", "--backends", "ddp,raw", "--batch_size", "64",
            "--ci-halfwidth", "0.0001", "--budget-s", "1", "--out", str(out)]))
    doc = read_doc(out / "scaling.json", ScalingDoc)
    (c,) = doc.comparisons
    assert doc.status == "failed" and (c.numerator, c.denominator) == ("ddp", "raw")
    assert not c.reached and "budget ran out" in c.note and "start-up alone took" in c.note
    assert len({w.round for w in doc.windows}) == 1  # the start-ups alone spent the budget


def _burn(seconds: float) -> None:
    """A busy loop outside the run's process tree (orphaned, like another tenant's job)."""
    subprocess.run(["sh", "-c", f"timeout {seconds} nice -n 19 {sys.executable} -c "
                    "'while True: pass' >/dev/null 2>&1 &"], check=True)


@pytest.fixture(scope="module")
def small_data():
    arrays = synthetic(4000, 20, "regression", 0, 0.2)
    return build_dataset(arrays, None, 0.1, "zscore", "test")


def test_rounds_that_overlap_a_cpu_burner_are_excluded(small_data, tmp_path):
    cfg = Config()
    cfg.train.batch_size, cfg.train.early_stop_patience = 64, 0
    context = LaunchContext(scratch_dir=tmp_path)
    contenders = [Contender("ddp", DdpBackend(small_data, context), cfg),
                  Contender("raw", RawBackend(small_data, context), cfg)]
    burning = threading.Event()

    def log(line: str) -> None:
        # the burner starts as soon as both launchers are warm and burns through a few rounds
        if "raw" in line and "started and warm" in line and not burning.is_set():
            burning.set()
            _burn(2.0)

    precision = Precision(window_s=0.2, min_pairs=3, max_pairs=12, max_outside_load=0.35,
                          warmup_steps=5)
    point = PointRun(contenders, precision, 1, 1, log).measure(
        LoopOptions(checkpoint=False, evaluate=False), "burn")
    time.sleep(2.0)  # the burner is gone before the next test
    (c,) = point.comparisons
    burned = [w for w in point.windows if (w.outside_share or 0) > 0.35]
    assert burned and all(w.excluded for w in burned)
    assert c.excluded_pairs >= 1
    assert c.excluded_pairs == len({w.round for w in point.windows if w.excluded})
    assert c.pairs + c.excluded_pairs == len({w.round for w in point.windows})


def test_a_speed_reference_runs_one_window_in_every_round(small_data, tmp_path):
    """The forecast's speed reference (raw's N=1 loop, resident beside the point) serves one
    window at the start of each round, and the point keeps its seconds per step."""
    from raybench.forecast import RawBeside

    cfg = Config()
    cfg.train.batch_size, cfg.train.early_stop_patience = 64, 0
    context = LaunchContext(scratch_dir=tmp_path)
    precision = Precision(window_s=0.1, min_pairs=3, max_pairs=3, max_outside_load=1.0,
                          warmup_steps=5)
    contenders = [Contender("ddp", DdpBackend(small_data, context), cfg)]
    with RawBeside(RawBackend(small_data, context), Config(), 64) as beside:
        point = PointRun(contenders, precision, 1, 1, lambda line: None,
                         beside.step_s).measure(LoopOptions(checkpoint=False, evaluate=False),
                                                "reference")
    rounds = {w.round for w in point.windows}
    assert len(rounds) == 3 and len(point.reference_s) == 3
    assert all(0 < s < 1 for s in point.reference_s)  # seconds a step of a batch of 64
