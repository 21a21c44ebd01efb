"""`python -m raybench.tune`: Ray Tune sweeps with ASHA early stopping over the same per-worker
loop as `raybench.run`.

A sweep YAML names a base config and a search space over any config key:

    base: ../lstm_classification.yaml
    metric: auc            # val_loss, auc, accuracy, f1, r2, mse, mae
    num_samples: 16
    scheduler: {max_t: 12, grace_period: 2, reduction_factor: 3}
    search_space:
      train.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.hidden: {choice: [16, 32, 64]}
      model.layers: {randint: [1, 3]}       # 1 or 2 (upper bound excluded)
      model.dropout: {uniform: [0.0, 0.3]}
      model.kind: {grid: [lstm, gru]}       # every value, times num_samples
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

from raybench import artifacts, environment
from raybench.artifacts import Output
from raybench.backends.local import pick_device, wants_gpu
from raybench.backends.ray_cluster import start_ray
from raybench.backends.ray_train import TuneSession, build_trainer, train_fn
from raybench.cli import Parser
from raybench.config import (
    METRIC_MODES,
    Config,
    add_config_args,
    check_metric,
    from_dict,
    load_yaml,
    set_value,
)
from raybench.console import Console
from raybench.data import ParquetDataset, check_source_batches, load_source
from raybench.data.ingest import open_ingest, trainer_datasets
from raybench.errors import (
    RunFailed,
    UserError,
    graceful_tune_signals,
    printable,
    raise_if_stopped,
    run_cli,
    stopped,
)
from raybench.loop import LoopOptions, train_worker
from raybench.models import build_checked
from raybench.results import TrialRow, TrialsDoc, metric_key, write_doc
from raybench.tune_spec import SweepSpec, spec_from_args, to_tune_space

DRIVER_CPU = 0.01

EXAMPLE = """examples:
  python -m raybench.tune --config configs/tune/lstm_classification.yaml --num-samples 16
  python -m raybench.tune --config configs/tune/mlp_regression.yaml --workers-per-trial 2 \\
      --max-t 10 --grace-period 2 --out results/tune_mlp
  python -m raybench.tune --resume results/tune_mlp"""


# ------------------------------------------------------------------ trials


def trial_config(base: dict, sampled: dict) -> Config:
    cfg = from_dict(base)
    for key, value in sampled.items():
        set_value(cfg, key, value)
    return cfg


def _trial_data(data: dict) -> Any:
    """The trial's data: a Dataset from the object store, or a streamed dataset's metadata."""
    import ray

    ref = data["ref"]
    return ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref


def _single_worker_trial(params: dict, base: dict, data: dict) -> None:
    """The loop inside the trial's own process: no TorchTrainer start-up per trial. A streamed
    dataset is read by Ray Data inside the trial (the whole train split: one rank)."""
    cfg = trial_config(base, params)
    source = _trial_data(data)
    streams = trainer_datasets(cfg, source)
    session = TuneSession(pick_device(cfg), streams["datasets"] if streams else None)
    ingest = open_ingest(cfg, source, session)
    train_worker(cfg, ingest, session, LoopOptions())


def _distributed_trial(params: dict, base: dict, data: dict) -> None:
    """A TorchTrainer per trial, built like raybench.run's; Ray's callback forwards rank 0's
    reports to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(base, params)
    source = _trial_data(data)
    trainer = build_trainer(train_fn, {"cfg": cfg.to_dict(), "data": data["ref"]}, cfg,
                            name="train", storage_path=ray.tune.get_context().get_trial_dir(),
                            callbacks=[TuneReportCallback()],
                            datasets=trainer_datasets(cfg, source))
    trainer.fit()


# ------------------------------------------------------------------ sweep


def trial_progress(console: Console, total: int, key: str, max_t: int):
    """A Tune callback on the driver: a bar over finished trials on a terminal, else one plain
    line per finished trial (how far it got and why it ended)."""
    import sys

    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self) -> None:
            self.bar = None
            self.done = 0
            if sys.stdout.isatty() and not console.quiet:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="trials", unit="trial")

        def _finished(self, trial, how: str) -> None:
            self.done += 1
            last = trial.last_result or {}
            epochs = last.get("training_iteration", 0)
            if how == "completed" and epochs < max_t:
                how = "stopped early"
            line = (f"trial {trial.trial_id} {how} after {epochs} epoch(s): "
                    f"{key}={last.get(key, float('nan')):.4f} [{self.done}/{total}]")
            if self.bar is not None:
                self.bar.write(line)
                self.bar.update(1)
            else:
                console.log(line)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._finished(trial, "completed")

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._finished(trial, "failed")

        def on_experiment_end(self, trials, **info) -> None:
            if self.bar is not None:
                self.bar.close()

    return TrialProgress()



def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m raybench.tune", description=__doc__,
                    epilog=EXAMPLE)
    parser.add_argument("--num-samples", type=int, help="trials to sample (default: the YAML's)")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help="Ray Train workers per trial; >1 runs each trial as a TorchTrainer")
    parser.add_argument("--max-concurrent", type=int,
                        help="trials at once (default: as many as the cluster's CPUs/GPUs hold)")
    parser.add_argument("--scheduler", choices=("asha", "none"), default="asha",
                        help="asha stops poor trials early; none runs every trial to max_t")
    parser.add_argument("--max-t", type=int, help="epochs a trial may run (ASHA max_t)")
    parser.add_argument("--grace-period", type=int, help="epochs before ASHA may stop a trial")
    parser.add_argument("--reduction-factor", type=float, help="ASHA reduction factor")
    parser.add_argument("--metric", choices=sorted(METRIC_MODES),
                        help="metric to optimize (default: the YAML's, else by task)")
    parser.add_argument("--out", help="output directory (default results/tune_<timestamp>)")
    parser.add_argument("--resume", metavar="DIR", help="continue an interrupted sweep in DIR")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--verbose", action="store_true", help="show Ray Tune's own progress")
    add_config_args(parser, "tune")
    return parser


def _trial_resources(cfg: Config) -> dict:
    if cfg.scaling.workers == 1:
        res = {"cpu": cfg.scaling.cpus_per_worker}
        if wants_gpu(cfg):
            res["gpu"] = 1
        return res
    # The trial only drives a TorchTrainer whose workers hold the real resources; Tune needs a
    # non-empty request, so the driver asks for a sliver of a CPU.
    return {"cpu": DRIVER_CPU}


def _capacity(cfg: Config) -> int:
    """How many trials the cluster can run at once (fails fast when not even one fits)."""
    import ray

    total = ray.cluster_resources()
    per_trial_cpu = cfg.scaling.workers * cfg.scaling.cpus_per_worker
    if cfg.scaling.workers > 1:
        per_trial_cpu += DRIVER_CPU
    fits = int(total.get("CPU", 0) // per_trial_cpu)
    if wants_gpu(cfg):
        fits = min(fits, int(total.get("GPU", 0) // cfg.scaling.workers))
    return max(fits, 1)


def _load_spec(args: argparse.Namespace) -> tuple[SweepSpec, Output]:
    """A new sweep's spec and output, or an interrupted sweep's own (a local one)."""
    if args.resume:
        if artifacts.is_uri(args.resume):
            raise UserError("--resume takes a local sweep directory (copy a remote one first)")
        output = Output(args.resume)
        saved = output.local / "sweep.yaml"
        if not saved.is_file():
            raise UserError(f"--resume {args.resume}: no sweep.yaml there; not a raybench sweep")
        return SweepSpec.from_doc(load_yaml(saved), str(saved)), output
    spec = spec_from_args(args)
    output = Output(args.out or time.strftime("results/tune_%Y%m%d_%H%M%S"))
    if output.has("sweep.yaml"):
        raise UserError(f"{output.where} already holds a sweep; use --resume {output.where} or "
                        "another --out")
    return spec, output


def _prepare_data(spec: SweepSpec, out: Console) -> tuple[Any, str, float | None]:
    """Data, the metric (spec.base resolved against the data in place), the naive baseline;
    every check that can fail happens here, before Ray starts."""
    data, where, spec.base = load_source(spec.base, out.log)
    metric = spec.metric or spec.base.early_stop(data.task)[0]
    check_metric(metric, data.task, "sweep metric")
    spec.metric = spec.base.train.early_stop_metric = metric
    build_checked(spec.base.model, data.n_features, data.window, data.task)
    baseline = baseline_score(data, metric)
    if baseline is not None:
        out.log(f"Naive baseline on the validation split: {metric}={baseline:.4f} "
                f"({'persistence' if data.task == 'regression' else 'majority class'})")
    check_source_batches(data, spec.base.scaling.workers, max(spec.batch_sizes()), where)
    return data, metric, baseline


def _make_tuner(spec: SweepSpec, data_ref: Any, output: Output, key: str, mode: str,
                concurrent: int, *, resume: bool, verbose: bool, out: Console):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    base = spec.base
    fn = _single_worker_trial if base.scaling.workers == 1 else _distributed_trial
    trainable = tune.with_resources(
        # The reference sits inside a dict so that with_parameters hands trials the reference
        # (data placed once in the object store), not a copy of the data.
        tune.with_parameters(fn, base=base.to_dict(), data={"ref": data_ref}),
        _trial_resources(base))
    if resume:
        out.log(f"Resuming sweep in {output.where}")
        return tune.Tuner.restore(output.storage("tune"), trainable=trainable,
                                  resume_errored=True)
    sched = spec.schedule
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=sched.max_t,
                               grace_period=sched.grace_period,
                               reduction_factor=sched.reduction_factor)
                 if sched.kind == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable, param_space=to_tune_space(spec.space),
        tune_config=tune.TuneConfig(metric=key, mode=mode, scheduler=scheduler,
                                    num_samples=spec.num_samples,
                                    max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name="tune", storage_path=output.root,
            verbose=1 if verbose else 0,
            callbacks=[trial_progress(out, spec.expected_trials, key, sched.max_t)],
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=key, checkpoint_score_order=mode)))


class OneLineSaveErrors(logging.Filter):
    """Ray Tune logs a failed save of the experiment's state with a traceback. Measured here
    on a busy machine: its final save on SIGTERM copied `driver_artifacts` while a temporary
    file in it was renamed (FileNotFoundError); the state saved before stands, so --resume
    works. The user gets the failure in one line, not Ray's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            first = record.getMessage().strip().splitlines()[0]
            record.msg, record.args = f"{first} {type(exc).__name__}: {printable(exc)}", None
            record.exc_info = record.exc_text = None
        return True


def run_sweep(args: argparse.Namespace) -> dict:
    import ray

    logging.getLogger("ray.tune.execution.experiment_state").addFilter(OneLineSaveErrors())

    out = Console(quiet=args.quiet)
    spec, output = _load_spec(args)
    out_dir = output.local
    data, metric, baseline = _prepare_data(spec, out)
    base, mode = spec.base, METRIC_MODES[metric]
    # Tune's clean-up of stopped TorchTrainer runs goes through the dashboard's State API.
    start_ray(base, out.log, verbose=args.verbose, dashboard=True, extra_cpus=1)
    capacity = _capacity(base)
    concurrent = min(spec.max_concurrent or capacity, capacity)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        artifacts.write_yaml(out_dir / "sweep.yaml", spec.to_doc())
    key, max_t, expected = metric_key(metric), spec.schedule.max_t, spec.expected_trials
    if not args.verbose:  # Tune's legacy reporter at verbosity 0 prints nothing per trial
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # In memory: put once, trials map it. Streamed: trials get the metadata, Ray Data reads.
    data_ref = data if isinstance(data, ParquetDataset) else ray.put(data)
    tuner = _make_tuner(spec, data_ref, output, key, mode, concurrent, resume=bool(args.resume),
                        verbose=args.verbose, out=out)
    out.log(f"Sweep: {spec.num_samples} sample(s), metric {metric} ({mode}), scheduler "
            f"{spec.schedule.kind} (max_t {max_t}, grace period {spec.schedule.grace_period}, "
            f"reduction factor {spec.schedule.reduction_factor:g}), {base.scaling.workers} "
            f"worker(s) per trial, up to {concurrent} at once")
    t0 = time.perf_counter()
    with graceful_tune_signals():
        grid = tuner.fit()
    wall = time.perf_counter() - t0
    # Tune answers Ctrl-C (and, here, SIGTERM) by stopping the experiment and returning what
    # it has; an incomplete sweep must not look finished.
    interrupted = bool(stopped()) or len(grid) < expected or (
        grid.num_terminated + grid.num_errors < len(grid))
    rows = trial_rows(grid, key, mode, max_t, interrupted)
    if interrupted and not any(r.epochs_run for r in rows):  # stopped before any trial ran
        out.summary(f"Sweep interrupted before any trial ran; continue with: python -m "
                    f"raybench.tune --resume {out_dir}")
        raise_if_stopped()
        raise KeyboardInterrupt
    if not rows:
        raise RunFailed("the sweep produced no trials")
    if not interrupted and all(r.status == "error" for r in rows):
        raise RunFailed(f"every trial failed; the first: {printable(rows[0].error or '')}")
    write_outputs(out_dir, rows, base, metric, mode, spec.to_doc(), wall,
                  "interrupted" if interrupted else "completed", baseline)
    if interrupted:
        ran = sum(r.epochs_run > 0 for r in rows)
        out.summary(f"Sweep interrupted: {ran} of {expected} trials ran; partial results in "
                    f"{out_dir}. Continue with: python -m raybench.tune --resume {out_dir}")
        raise_if_stopped()
        raise KeyboardInterrupt
    _print_summary(out, rows, metric, mode, max_t, wall, baseline, output.publish())
    return {"rows": rows, "out_dir": out_dir, "baseline": baseline}


def _print_summary(out: Console, rows: list[dict], metric: str, mode: str, max_t: int,
                   wall: float, baseline: float | None, where: str) -> None:
    stopped = sum(r.status == "stopped_early" for r in rows)
    out.summary(top_table(rows, metric, mode))
    run_epochs = sum(r.epochs_run for r in rows)
    full = len(rows) * max_t
    out.summary(f"{len(rows)} trials, {stopped} stopped early by ASHA: {run_epochs} epochs run "
                f"of {full} without early stopping ({1 - run_epochs / full:.0%} saved), "
                f"{wall:.0f}s")
    best = best_row(rows, mode)
    if baseline is not None:
        out.summary(f"Best trial {best.trial_id}: validation {metric}={best.best:.4f}; naive "
                    f"baseline {baseline:.4f}")
    out.summary(f"Saved → {where}")


def baseline_score(data: Any, metric: str) -> float | None:
    """The naive baseline's value of the sweep metric on the validation split."""
    from raybench.metrics import classification_metrics, regression_metrics

    if isinstance(data, ParquetDataset):
        data = streamed_validation(data)
        if data is None:
            return None
    if data.task == "regression":
        m = regression_metrics(data.baseline_valid, data.y_valid)
        m["val_loss"] = m["mse"]
    else:
        m = classification_metrics(data.baseline_valid, data.y_valid)
        m["val_loss"] = None  # a constant 0/1 guess has unbounded log loss
    return m.get(metric)


# A streamed dataset's validation split is read whole for the naive baseline only up to this.
BASELINE_MAX_WINDOWS = 2_000_000


def streamed_validation(meta: ParquetDataset) -> Any:
    """The validation targets and baseline of a Parquet dataset, read through the same
    evaluation path a worker uses (None when the split is too large to hold for this)."""
    import torch

    from raybench.data.ingest import RayDataIngest

    if meta.splits["valid"].windows > BASELINE_MAX_WINDOWS:
        return None

    class OneRank:
        rank, world_size = 0, 1

    ingest = RayDataIngest(meta, OneRank(), batch=1, device=torch.device("cpu"))
    ys, bases = [], []
    for _, y, base, _ in ingest.eval_batches("valid"):
        ys.append(y)
        bases.append(base)

    class Validation:
        task = meta.task
        y_valid = torch.cat(ys).numpy()
        baseline_valid = torch.cat(bases).numpy()

    return Validation()


def trial_rows(grid: Any, key: str, mode: str, max_t: int,
               interrupted: bool = False) -> list[TrialRow]:
    """One row per trial: its sampled values, status, epochs run, final and best metric. A
    trial that never reported is `not_started`; in an interrupted sweep, one that stopped short
    of max_t is `incomplete` (ASHA may have stopped it, or the interruption did)."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        history = df.to_dict("records") if df is not None else []
        values = [h[key] for h in history if h.get(key) is not None]
        epochs = len(history)
        if result.error is not None:
            status = "error"
        elif epochs >= max_t:
            status = "completed"
        elif epochs == 0:
            status = "not_started"
        else:
            status = "incomplete" if interrupted else "stopped_early"
        best = (min(values) if mode == "min" else max(values)) if values else None
        best_epoch = values.index(best) + 1 if values else None
        checkpoint = None
        try:
            ckpt = result.get_best_checkpoint(key, mode) if values else None
            checkpoint = ckpt.path if ckpt else None
        except (RuntimeError, ValueError, KeyError):
            checkpoint = history[-1].get("checkpoint_path") if history else None
        if checkpoint is None and history:
            checkpoint = next((h["checkpoint_path"] for h in reversed(history)
                               if h.get("checkpoint_path")), None)
        rows.append(TrialRow(
            trial_id=(result.metrics or {}).get("trial_id") or (
                history[-1].get("trial_id") if history else None),
            config=dict(result.config or {}), status=status, epochs_run=epochs,
            final=values[-1] if values else None, best=best, best_epoch=best_epoch,
            wall_time_sec=history[-1].get("time_total_s") if history else None,
            checkpoint=checkpoint, history=[h.get(key) for h in history],
            error=str(result.error).splitlines()[0] if result.error else None))
    return rows


def best_row(rows: list[TrialRow], mode: str) -> TrialRow:
    scored = [r for r in rows if r.best is not None]
    if not scored:
        raise RuntimeError("no trial reported the metric")
    return (min if mode == "min" else max)(scored, key=lambda r: r.best)


CSV_FIELDS = ("status", "epochs_run", "final", "best", "best_epoch", "wall_time_sec",
              "checkpoint", "error")


def write_outputs(out_dir: Path, rows: list[TrialRow], base: Config, metric: str, mode: str,
                  settings: dict, wall: float, status: str, baseline: float | None) -> None:
    keys = sorted({k for r in rows for k in r.config})
    flat = [{"trial_id": r.trial_id, **{k: r.config.get(k) for k in keys},
             **{k: getattr(r, k) for k in CSV_FIELDS}} for r in rows]
    artifacts.write_csv(out_dir / "trials.csv", flat)
    best = best_row(rows, mode)
    cfg = trial_config(base.to_dict(), best.config)
    cfg.train.early_stop_metric = metric
    artifacts.write_yaml(out_dir / "best_config.yaml", cfg.to_dict())
    from raybench.plots import trials_png

    trials_png(rows, metric, out_dir / "trials.png")
    write_doc(out_dir / "trials.json", TrialsDoc(
        status=status, metric=metric, mode=mode, trials=rows, settings=settings,
        baseline_valid=baseline, wall_time_sec=wall, environment=environment.collect(),
        best=best))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def top_table(rows: list[TrialRow], metric: str, mode: str, top: int = 8) -> str:
    from raybench.report import format as f
    from raybench.report.tables import Table

    scored = sorted((r for r in rows if r.best is not None), key=lambda r: r.best,
                    reverse=mode == "max")
    keys = sorted({k for r in rows for k in r.config})
    return Table(f"Best trials by {metric} ({mode})",
                 ["trial", "status", "epochs", f"best {metric}", *keys],
                 [[str(r.trial_id or "-"), f.label(r.status), str(r.epochs_run), f.number(r.best),
                   *(_short(r.config.get(k)) for k in keys)] for r in scored[:top]]).text()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_sweep(args)
    return 0


if __name__ == "__main__":
    run_cli(main)
