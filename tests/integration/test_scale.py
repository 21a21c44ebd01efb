"""A real tiny scaling sweep: raybench (Ray Train), ddp and raw at 1 and 2 workers."""

import csv
import json
import statistics

import pytest

from raybench import scale
from raybench.targets import mlperf_score


def test_tiny_sweep_writes_all_three_files(ray_cluster, tmp_path):
    """The restart protocol: every launcher started for its one window (test_resident.py has
    the default, resident one)."""
    out = tmp_path / "scale"
    doc = scale.run_sweep(scale.build_parser().parse_args([
        "--protocol", "restart", "--workers", "1,2", "--repeats", "1", "--synthetic-samples",
        "6000", "--window", "20",
        "--batch_size", "128", "--warmup-steps", "5", "--min-steps", "25", "--min-seconds", "0",
        "--allreduce-iters", "20", "--predict", "8", "--out", str(out), "--quiet"]))
    assert {p.name for p in out.iterdir()} >= {"scaling.json", "scaling.csv", "scaling.png"}
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    points = {(r["backend"], int(r["workers"])) for r in rows}
    assert points == {("raybench", 1), ("raybench", 2), ("ddp", 1), ("ddp", 2), ("raw", 1)}
    for r in rows:
        assert float(r["samples_per_sec"]) > 0
        assert int(r["measured_steps"]) == 25  # the window, cycling over the data
        # strong scaling: the global batch is fixed (--batch_size at the smallest N)
        assert int(r["global_batch_size"]) == 128
        assert int(r["batch_size_per_worker"]) * int(r["workers"]) == 128
    saved = json.loads((out / "scaling.json").read_text())
    assert saved["schema_version"] == 2
    assert saved["environment"]["torch"] and saved["environment"]["ray_nodes"] == 1
    assert saved["config"]["train"]["early_stop_patience"] == 0
    by_point = {(r.backend, r.workers): r for r in doc.summary}
    ray2 = by_point[("raybench", 2)]
    assert ray2.vs_ddp > 0 and by_point[("raybench", 1)].vs_raw > 0
    # two processes all-reduce gradients: the sync phase is measured, not hidden
    assert ray2.sync_share > 0 and by_point[("raybench", 1)].sync_share == 0
    assert by_point[("ddp", 2)].allreduce_ms_p50 > 0
    run2 = [r for r in saved["runs"] if r["backend"] == "raybench" and r["workers"] == 2][0]
    assert len(run2["nodes"]) == 2 and len(run2["peak_rss_mib_per_rank"]) == 2
    # the forecasts: made from the N=1 point (and all-reduces under load) before N=2 ran,
    # kept, and set against what N=2 then measured
    forecasts = {(f.backend, f.workers): f for f in doc.forecasts}
    assert {("raybench", 1), ("raybench", 2), ("ddp", 1), ("ddp", 2), ("raw", 1),
            ("raybench", 8)} <= forecasts.keys()
    f2 = forecasts[("raybench", 2)]
    assert not f2.extrapolated and f2.measured_samples_per_sec == ray2.samples_per_sec.median
    assert f2.error == pytest.approx(f2.predicted_samples_per_sec
                                     / f2.measured_samples_per_sec - 1)
    assert f2.work_ms > 0 and f2.wait_ms >= 0 and f2.allreduce_ms > 0 and f2.step_ms > 0
    assert f2.cost_per_million_samples == pytest.approx(2 * 1e6 / f2.predicted_samples_per_sec)
    eight = forecasts[("raybench", 8)]
    assert eight.extrapolated and eight.measured_samples_per_sec is None
    model = doc.model
    assert model.allreduce and all(a.workers == 2 for a in model.allreduce)
    assert model.alpha_s is not None and model.gradient_bytes == 4 * 193
    assert model.calibration["matmul_gflops_per_core"] > 0 and "raybench" in model.launcher_factor
    assert ray2.predicted_samples_per_sec == f2.predicted_samples_per_sec
    # the N=1 point's step scaled by the probe's lockstep over alone; raw's step just before
    # and after the N=2 probe is the checks' reference
    probe = model.probe["2"]
    assert probe["raw_ms"] > 0 and set(model.basis_ratios) == set(model.point_drift) == {"2"}
    factor = model.launcher_factor
    assert f2.work_ms == pytest.approx(factor["raybench"] * 1e3 * probe["lockstep_work_ms"]
                                       / probe["solo_ms"])
    assert model.basis_ratios["2"] == pytest.approx(probe["raw_ms"] / probe["solo_ms"])
    assert model.point_drift["2"] == pytest.approx(factor["raw"] * 1e3 / probe["raw_ms"])
    # raw's N=1 step just before and just after each N=2 run: the machine's speed then
    reference = model.reference_ms["2"]
    assert len(reference) == 2 * 2 and all(x > 0 for x in reference)  # raybench's run, ddp's
    assert f2.speed == pytest.approx(factor["raw"] * 1e3 / statistics.median(reference))
    assert f2.error_same_speed == pytest.approx(f2.predicted_samples_per_sec * f2.speed
                                                / f2.measured_samples_per_sec - 1)
    assert forecasts[("raybench", 1)].speed is None and eight.speed is None
    assert ray2.cpu_mfu is not None and 0 < ray2.cpu_mfu < 1
    assert {"backend", "workers", "predicted_samples_per_sec", "measured_samples_per_sec",
            "error"} <= set(saved["forecasts"][0])


@pytest.mark.slow
def test_time_to_target_is_scored_per_point(ray_cluster, reg_npz, tmp_path):
    doc = scale.run_sweep(scale.build_parser().parse_args([
        "--workers", "1,2", "--repeats", "1", "--backends", "raybench", "--npz_path",
        str(reg_npz), "--target", "val_r2>=0.8", "--epochs", "12", "--batch_size", "16",
        "--lr", "0.01", "--lr-scaling", "sqrt", "--warmup-steps", "2", "--out",
        str(tmp_path / "ttt"), "--quiet"]))
    assert doc.target == "val_r2>=0.8" and doc.lr_scaling == "sqrt"
    for point in doc.summary:
        t = point.target
        assert t.runs == 1 and t.target == "val_r2>=0.8"
        assert t.score_s == mlperf_score(t.times_s).score_s  # the rules: tests/unit
        if t.valid:
            assert t.epochs_median >= 1 and 0 < t.eval_share < 1
    runs = {(r.workers, r.repeat): r for r in doc.runs}
    r1, r2 = runs[(1, 1)], runs[(2, 1)]
    # strong scaling keeps the global batch: sqrt scaling leaves lr alone; recorded per run
    assert r1.lr == r2.lr == pytest.approx(0.01)
    for r in doc.runs:
        if r.target.reached:
            assert r.target.value >= 0.8 and r.target.epochs <= 12
            assert r.target.time_from_start_s > r.target.time_from_first_step_s > 0
            assert r.target.samples == r.target.epochs * r.steps_per_epoch * 16
    assert doc.verdict and "fastest to val_r2>=0.8" in doc.verdict[0] or "no N" in doc.verdict[0]
    saved = json.loads((tmp_path / "ttt" / "scaling.json").read_text())
    assert saved["summary"][0]["target"]["runs"] == 1


@pytest.fixture(scope="module")
def long_npz(tmp_path_factory):
    from raybench import data

    return data.prepare("synthetic", "regression", 20, 0.2,
                        tmp_path_factory.mktemp("long") / "long.npz", samples=40000, seed=5)


@pytest.mark.slow
def test_chaos_kills_a_worker_and_goodput_is_set_against_the_clean_run(ray_cluster, long_npz,
                                                                       tmp_path, cpu_burner,
                                                                       capsys):
    # An epoch schedule: the kill lands once Ray has registered epoch 2's checkpoint, however
    # slow the machine is to start workers or to train (a timed kill could land in start-up).
    doc = scale.run_sweep(scale.build_parser().parse_args([
        "--workers", "2", "--repeats", "1", "--backends", "raybench", "--npz_path",
        str(long_npz), "--chaos", "kill-worker once after epoch 2", "--epochs", "4", "--mode",
        "weak", "--batch_size", "32", "--no-model", "--out", str(tmp_path / "chaos"),
        "--quiet"]))
    clean = next(r for r in doc.runs if r.chaos is None)
    chaotic = next(r for r in doc.runs if r.chaos)
    assert clean.epochs == chaotic.epochs == 4  # every epoch trained once, faults or not
    assert clean.failures == 0 and chaotic.failures >= 1
    assert chaotic.recovery_s and all(x > 0 for x in chaotic.recovery_s)
    assert not chaotic.recovery_notes
    assert chaotic.restore_s_total > 0 and chaotic.checkpoint_save_s_total > 0
    assert chaotic.goodput_samples_per_sec < clean.goodput_samples_per_sec
    point = next(p for p in doc.summary if p.chaos)
    assert 0 < point.goodput_vs_clean.value < 1 and point.recovery_s > 0
    saved = json.loads((tmp_path / "chaos" / "scaling.json").read_text())
    assert saved["runs"][1]["recovery_s"] == chaotic.recovery_s
    killed = chaotic.recoveries[0]
    assert killed.fault == "killed worker" and killed.restarted and killed.resumed_from_epoch == 2
    # each fault is said in the summary, --quiet or not
    assert "raybench N=2 repeat 1: survived a failure (--chaos kill-worker: killed worker (rank" \
        in capsys.readouterr().out


def test_the_network_probe_runs_among_each_n_of_the_sweep(ray_cluster):
    """scale --probe-network: the largest point's probe over 4 KiB to 64 MiB, then among each
    smaller N >= 2, up to the first size that holds the model's largest DDP bucket (a 2.3 MiB
    weight: 4 MiB); N=1 has nothing to all-reduce. Each probe also times the configured
    model's step on its ranks, each alone and then all at once (the forecast's work term where
    nodes share CPUs) and all-reduces each DDP bucket right after a step: here every rank
    shares this machine's two cores."""
    from torch import nn

    from raybench.backends.ray_network import SIZES
    from raybench.config import Config
    from raybench.console import Console
    from raybench.network_forecast import gradient_buckets
    from raybench.plan import Plan, ScaleSpec, load_data, point_config
    from raybench.sweep import network_probe

    quiet = Console(quiet=True)
    data, _, _, base = load_data(Config(), ScaleSpec(workers=[1], synthetic_samples=2000), quiet)
    base.scaling.cpus_per_worker = 1
    base.train.batch_size = 64
    # the model whose buckets size the smaller probes; the step timed is base's model
    plan = Plan(base, "test", [(n, point_config(base, n, None)) for n in (1, 2, 3)], data, None,
                nn.Linear(1000, 600))
    probe = network_probe(plan, quiet)
    assert probe.workers == 3 and [r.bytes for r in probe.rows] == list(SIZES)
    (two,) = probe.at_other_n
    assert two.workers == 2 and [r.bytes for r in two.rows] == list(SIZES[:6])
    assert all(r.time_s > 0 for r in two.rows)
    buckets = sorted(set(gradient_buckets(plan.model)))
    for q in (probe, two):
        w = q.work
        assert w.batch_size_per_worker == 64 and len(w.alone_ms) == len(w.loaded_ms) == q.workers
        assert all(x > 0 for x in w.alone_ms + w.loaded_ms)
        # each of DDP's buckets, all-reduced right after a step on every rank
        assert [r.bytes for r in w.allreduce_after_step] == buckets
        assert all(r.time_s > 0 and r.iters >= 5 for r in w.allreduce_after_step)
    # three single-threaded ranks stepping at once on two cores: slower than one alone
    assert probe.work.slowdown > 1.2
