"""`python -m raybench.run`: train one model on N Ray Train workers and write its run directory."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

import raybench
from raybench import artifacts, environment, plots, probes
from raybench.backends import LaunchContext
from raybench.backends.local import wants_gpu
from raybench.backends.ray_cluster import RayHandle, ingest_cpus, start_ray
from raybench.backends.ray_train import RayTrainBackend
from raybench.cli import Parser
from raybench.config import (
    Config,
    add_config_args,
    apply_overrides,
    config_from_args,
    load_config,
)
from raybench.console import Console, EpochProgress, recovery_line
from raybench.data import (
    Source,
    check_source_batches,
    describe_source,
    load_source,
    train_windows,
)
from raybench.errors import RunFailed, UserError, run_cli
from raybench.loop import LoopOptions, worker_threads
from raybench.loop.steps import work_s
from raybench.models import build_checked, build_model, count_parameters, flops_per_sample
from raybench.results import RunResult, RunStatus, read_status, write_doc, write_status
from raybench.resume import prepare_resume
from raybench.runlock import RunLock, check_not_live
from raybench.tracking import TENSORBOARD_DIR, TrackingOptions, check_mlflow, flatten

EXAMPLE = """examples:
  python -m raybench.run --workers 4
  python -m raybench.run --model lstm --epochs 50 --batch-size 128 --lr 0.001 \\
      --hidden 128 --layers 2
  python -m raybench.run --config configs/lstm_classification.yaml --workers 2
  python -m raybench.run --resume outputs/run_20251105_143015"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m raybench.run", description=__doc__, epilog=EXAMPLE)
    add_config_args(parser, "run")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a stopped run from its last checkpoint, same directory")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's own logs and every worker's output")
    parser.add_argument("--dashboard", action="store_true",
                        help="start the Ray dashboard (127.0.0.1 only; it has no auth)")
    return parser


def _epoch_line(cfg: Config, metric: str, row: dict) -> str:
    parts = [f"Epoch {row['epoch']}/{cfg.train.epochs}", f"train_loss={row['train_loss']:.4f}"]
    if "val_loss" in row:
        parts.append(f"val_loss={row['val_loss']:.4f}")
        keys = ("val_accuracy", "val_auc") if cfg.data.task == "classification" else (
            "val_r2", "val_mae")
        parts += [f"{k.replace('accuracy', 'acc')}={row[k]:.3f}" for k in keys if k in row]
    parts.append(f"{row['epoch_time_s']:.2f}s")
    line = " | ".join(parts)
    if row.get("new_best"):
        line += f"\n{' ' * 22}  * new best {metric}={row['best']:.4f}"
    return line


def _summary(name: str, task: str, m: dict) -> str:
    if task == "regression":
        b = m["baseline_persistence"]
        return (f"{name}: mse={m['mse']:.5f} mae={m['mae']:.4f} r2={m['r2']:.3f}   "
                f"(persistence: mse={b['mse']:.5f} mae={b['mae']:.4f} r2={b['r2']:.3f})")
    b = m["baseline_majority"]
    return (f"{name}: acc={m['accuracy']:.3f} auc={m['auc']:.3f} prec={m['precision']:.3f} "
            f"rec={m['recall']:.3f} f1={m['f1']:.3f}   (majority: acc={b['accuracy']:.3f})")


def throughput_line(timing) -> str:
    """Throughput, or why there is none: never a 0 that looks measured."""
    start = (f", time to first step {timing.time_to_first_step_s:.1f}s"
             if timing.time_to_first_step_s is not None else "")
    if timing.samples_per_sec is None:
        return (f"throughput not measured: every one of the {timing.steps_per_epoch} step(s) "
                f"was warm-up (use more data or epochs){start}")
    return (f"{timing.samples_per_sec:,.0f} samples/s on {timing.num_workers} worker(s) "
            f"(warm-up excluded, {timing.measured_steps} steps){start}")


def straggler_line(timing) -> str:
    """The rank the others waited for, with each side's work and wait per step."""
    slow = next(r for r in timing.ranks if r.rank == timing.straggler_rank)
    others = [r for r in timing.ranks if r.rank != slow.rank]
    work = sorted(work_s(r.step_breakdown) for r in others)[len(others) // 2]
    wait = sorted(r.step_breakdown.sync_share for r in others)[len(others) // 2]
    mine = work_s(slow.step_breakdown)
    return (f"straggler: rank {slow.rank} on {slow.node} worked {mine * 1e3:.2f} ms a step"
            f" against {work * 1e3:.2f} ms for the others, who spent {wait:.0%} of "
            "their step waiting in sync (timing.json ranks[].step_breakdown)")


def recovery_lines(timing) -> list[str]:
    """Each failure the run survived: what failed and how long training stopped for it."""
    lines = [recovery_line(r) for r in timing.recoveries]
    if timing.straggler_rank is not None:
        lines.append(straggler_line(timing))
    for p in timing.pauses:  # shorter than the hang bound: the run went on, slower
        when = time.strftime("%H:%M:%S", time.localtime(p.started_epoch_s))
        lines.append(f"rank {p.rank} on {p.node} did not run for {p.seconds:.1f}s from {when} "
                     "(stopped, frozen or starved); the others waited, and the run's wall time "
                     "includes it")
    return lines


def _resolve_config(args: argparse.Namespace) -> tuple[Config, Path | None]:
    """The run's config: a new one from YAML and flags, or a stopped run's own (flags on top)."""
    if not args.resume:
        return config_from_args(args), None
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "status.json").is_file():
        raise UserError(f"--resume {run_dir}: not a raybench run directory (no config.yaml and "
                        "status.json)")
    if read_status(run_dir).completed:
        raise UserError(f"--resume {run_dir}: that run already completed")
    check_not_live(run_dir)
    if args.config:
        raise UserError("--resume takes the run's own config.yaml; drop --config")
    return apply_overrides(load_config(run_dir / "config.yaml"), args), run_dir


def load_data(cfg: Config, out: Console) -> tuple[Source, Config]:
    """The data, and the config resolved against it; user mistakes fail here, before Ray."""
    t0 = time.perf_counter()
    data, label, cfg = load_source(cfg, out.log)
    check_source_batches(data, cfg.scaling.workers, cfg.train.batch_size, label)
    model = build_checked(cfg.model, data.n_features, cfg.data.window, cfg.data.task)
    n_params = count_parameters(model)
    out.log(f"Data loading took {time.perf_counter() - t0:.2f}s: {describe_source(data)}")
    shard = train_windows(data, cfg.scaling.workers)
    out.log(f"  Train batches per worker: {-(-shard // cfg.train.batch_size)}   Input dim: "
            f"{data.n_features}   Ingest: {cfg.data.ingest}")
    out.log(f"Model {cfg.model.kind}: {n_params:,} parameters")
    return data, cfg


def main(argv: list[str] | None = None) -> int:
    started = raybench.command_started()
    args = build_parser().parse_args(argv)
    cfg, resume_dir = _resolve_config(args)
    out = Console(quiet=args.quiet)
    if resume_dir is None:
        artifacts.check_writable(cfg.io.save_dir)
        taken = Path(cfg.io.save_dir) / (cfg.io.run_name or "")
        if cfg.io.run_name and taken.exists():
            raise UserError(f"run directory {taken} already exists; pick another --run_name, "
                            f"or --resume {taken}")
    if cfg.io.storage_path:
        artifacts.check_storage(cfg.io.storage_path)
    out.log(f"Set random seed: {cfg.train.seed}")
    data, cfg = load_data(cfg, out)
    if cfg.io.mlflow_uri:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise UserError("--mlflow needs the MLflow client: pip install 'raybench[mlflow]'"
                            ) from None
        problem = check_mlflow(cfg.io.mlflow_uri)
        if problem:  # the run goes on, untracked, and says so where the user looks
            out.warn(f"{problem}: MLflow tracking is off for this run")
            cfg.io.mlflow_uri = None
    resume_from = None
    if resume_dir is not None:
        resume_from = prepare_resume(storage_of(resume_dir, cfg) / _train_name(resume_dir, cfg),
                                     cfg, out.warn)

    handle = start_ray(cfg, out.log, verbose=args.verbose, dashboard=args.dashboard,
                       extra_cpus=ingest_cpus(cfg))
    check_storage_is_shared(cfg)
    for warning in resource_warnings(cfg, train_windows(data, cfg.scaling.workers), handle):
        out.warn(warning)
    run_dir = resume_dir or artifacts.make_run_dir(cfg.io.save_dir, cfg.io.run_name)
    lock, abandoned = RunLock.acquire(run_dir)
    try:
        if abandoned:
            out.log(f"Taking over {run_dir}: its driver (pid {abandoned.get('pid')} on "
                    f"{abandoned.get('host')}) is gone")
        if resume_dir is None:
            artifacts.write_yaml(run_dir / "config.yaml", cfg.to_dict())  # what --resume reads
        write_status(run_dir, RunStatus("running"))
        result = train(cfg, data, run_dir, handle, out, resume_from=resume_from,
                       resumed=resume_dir is not None, started=started)
        result.timing.wall_time_s = time.time() - started
        finish(run_dir, cfg, data, result, out)
    except KeyboardInterrupt:  # in training, the final evaluation or saving: --resume ends it
        write_status(run_dir, RunStatus("interrupted"))
        handle.shutdown()  # stops the workers with the local Ray we started
        out.summary(f"Interrupted; continue with: python -m raybench.run --resume {run_dir}")
        raise
    finally:
        lock.release()
    return 0


def finish(run_dir: Path, cfg: Config, data: Source, result: RunResult, out: Console) -> None:
    """Every artifact of the finished run, then the summary a user came for."""
    shape = (data.n_features, cfg.data.window)
    model = build_model(cfg.model, *shape, cfg.data.task)
    probes.annotate_flops(result.timing, flops_per_sample(model, *shape), cfg.train.precision)
    write_run(run_dir, cfg, data.norm_stats, result)
    if cfg.io.storage_path:
        where = artifacts.upload_dir(run_dir, cfg.io.storage_path, run_dir.name)
        out.log(f"Copied run artifacts to {where}")
    out.summary(_summary("VAL ", cfg.data.task, result.metrics_valid))
    out.summary(_summary("TEST", cfg.data.task, result.metrics_test))
    out.summary(throughput_line(result.timing))
    for line in recovery_lines(result.timing):
        out.summary(line)
    out.summary(f"Saved → {run_dir.resolve()}")


def tracking_options(cfg: Config, run_dir: Path) -> TrackingOptions:
    return TrackingOptions(
        tensorboard_dir=str(run_dir.resolve() / TENSORBOARD_DIR) if cfg.io.tensorboard else None,
        mlflow_uri=cfg.io.mlflow_uri, mlflow_experiment=cfg.io.mlflow_experiment,
        run_name=run_dir.name, params=flatten(cfg.to_dict()))


def storage_of(run_dir: Path, cfg: Config) -> Path:
    """Where Ray Train keeps the run's checkpoints (a local path; URIs are not inspected)."""
    if cfg.io.storage_path and "://" not in cfg.io.storage_path:
        return Path(cfg.io.storage_path)
    return run_dir.resolve()


def train(cfg: Config, data: Source, run_dir: Path, handle: RayHandle, out: Console, *,
          resume_from: Path | None, resumed: bool, started: float) -> RunResult:
    """The Ray Train run, with status.json saying how it ended if it did not complete."""
    metric = cfg.train.early_stop_metric
    out.log(f"Workers: {cfg.scaling.workers} x {cfg.scaling.cpus_per_worker:g} CPU"
            f"{' + 1 GPU' if wants_gpu(cfg) else ''}, {worker_threads(cfg)} torch "
            f"thread(s) each, batch {cfg.train.batch_size} per worker, placement "
            f"{cfg.scaling.placement_strategy}")
    out.log(f"Run directory: {run_dir.resolve()}" + (" (resumed)" if resumed else ""))
    view = EpochProgress(out, lambda row: _epoch_line(cfg, metric, row))
    storage = cfg.io.storage_path or str(run_dir.resolve())
    context = LaunchContext(scratch_dir=Path(tempfile.gettempdir()), storage_path=storage,
                            ray=handle, on_report=view)
    try:
        backend = RayTrainBackend(data, context)
        del data  # the object store holds it now; workers map it without copying
        out.section("TRAINING")
        out.log(f"Starting training for {cfg.train.epochs} epochs; early stopping on {metric}, "
                f"patience {cfg.train.early_stop_patience}")
        options = LoopOptions(launch_time=started, progress_interval_s=1.0,
                              storage_dir=str(storage_of(run_dir, cfg)),
                              tracking=tracking_options(cfg, run_dir))
        return backend.run(cfg, options, _train_name(run_dir, cfg), resume_from=resume_from)
    except KeyboardInterrupt:
        raise  # main marks the run interrupted, wherever the signal came
    except BaseException as exc:
        failure = known_failure(exc)
        status = failure.status if failure else "failed"
        message = str(failure) if failure else str(exc).strip()[:2000]
        write_status(run_dir, RunStatus(status, message))
        if failure:
            raise failure from None
        raise
    finally:
        view.close()


# A worker's exception reaches the driver as text inside Ray's error; these name the failures
# a user can act on.
KNOWN_FAILURES = (("no space left on device", "failed"), ("training diverged", "diverged"))


def known_failure(exc: BaseException) -> RunFailed | None:
    """A one-line RunFailed for a worker failure raybench can name, else None."""
    # The worker's traceback is in the text too: the message is the last line naming the
    # failure that is not source code (the `raise` line holds the f-string, not its values).
    for line in reversed(str(exc).splitlines()):
        if "{" in line or line.strip().startswith("raise"):
            continue
        for phrase, status in KNOWN_FAILURES:
            if phrase in line.lower():
                message = line.strip()
                message = message[message.lower().index(phrase):]
                if status == "diverged":
                    message += "; the last good checkpoint is kept (lower --lr and --resume)"
                return RunFailed(message, status)
    return None


def check_storage_is_shared(cfg: Config) -> None:
    """Ray Train keeps the run's checkpoints under the run directory (without --storage_path);
    inside a job, a relative --save_dir is in Ray's copy of the working directory on the
    driver's node only. On several nodes the other nodes cannot reach it, and Ray Train fails
    after the workers started (seen on the emulated cluster): refuse now, in one line."""
    import ray

    save_dir = str(Path(cfg.io.save_dir).resolve())
    if cfg.io.storage_path or "/runtime_resources/" not in save_dir:
        return
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    if nodes > 1:
        raise UserError(f"save_dir {save_dir} is inside Ray's copy of the job's working "
                        f"directory on this node; the cluster's other {nodes - 1} node(s) cannot "
                        "reach it, and Ray Train keeps the checkpoints there: pass an absolute "
                        "--save_dir on shared storage, or --storage_path")


def resource_warnings(cfg: Config, shard: int, handle: RayHandle) -> list[str]:
    """What will make the numbers worse, or the results hard to find, one line each."""
    warnings = []
    cores = os.cpu_count() or 1
    wanted = cfg.scaling.workers * max(cfg.scaling.cpus_per_worker, 1)
    if handle.started_local and wanted > cores:
        warnings.append(f"{cfg.scaling.workers} workers x {cfg.scaling.cpus_per_worker:g} CPU on "
                        f"{cores} cores: workers share cores, so per-worker throughput drops")
    steps = -(-shard // cfg.train.batch_size)
    if steps < 5:
        warnings.append(f"only {steps} step(s) per epoch per worker ({shard} samples, batch "
                        f"{cfg.train.batch_size}): timings will be dominated by epoch overhead")
    save_dir = str(Path(cfg.io.save_dir).resolve())
    if "/runtime_resources/" in save_dir:
        warnings.append(f"save_dir {save_dir} is inside Ray's copy of the job's working "
                        "directory, which Ray deletes with the job; pass an absolute --save_dir "
                        "on shared storage")
    return warnings


def _train_name(run_dir: Path, cfg: Config) -> str:
    # With shared storage, runs from many drivers meet in one place: name them by run dir.
    return f"{run_dir.name}_train" if cfg.io.storage_path else "ray_train"


def write_run(run_dir: Path, cfg: Config, norm_stats: dict, result: RunResult) -> None:
    """Every artifact of a finished run; status.json turns 'completed' last."""
    artifacts.save_state_dict(run_dir / "best.ckpt",
                              {k: torch.tensor(v) for k, v in result.best_state.items()})
    artifacts.write_yaml(run_dir / "config.yaml", cfg.to_dict())
    write_doc(run_dir / "norm_stats.json", norm_stats)
    write_doc(run_dir / "environment.json", environment.collect())
    artifacts.write_csv(run_dir / "history.csv", [row.flat() for row in result.history])
    timing = result.timing
    plots.curves_png(result.history, result.metric, timing.best_epoch, run_dir / "curves.png")
    if cfg.data.task == "classification" and cfg.eval.save_cm:
        for split in ("valid", "test"):
            plots.confusion_matrix_png(getattr(result, f"metrics_{split}")["confusion_matrix"],
                                       run_dir / f"confusion_matrix_{split}.png",
                                       f"{split} (threshold {cfg.eval.threshold:g})")
    write_doc(run_dir / "metrics_valid.json", result.metrics_valid)
    write_doc(run_dir / "metrics_test.json", result.metrics_test)
    write_doc(run_dir / "timing.json", timing)
    write_status(run_dir, RunStatus("completed"))


if __name__ == "__main__":
    run_cli(main)
