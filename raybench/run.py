"""`python -m raybench.run`: train one model on N Ray Train workers and write its run directory."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from raybench import artifacts, environment, launch, plots
from raybench.config import Config, add_config_args, apply_overrides, config_from_args, load_config
from raybench.console import Console, EpochProgress
from raybench.data import check_batches, load_configured
from raybench.errors import UserError, run_cli
from raybench.launch import check_resources, connect, run_ray, shutdown_if_ours, wants_gpu
from raybench.loop import LoopOptions, worker_threads
from raybench.models import build_model, count_parameters
from raybench.timing import process_start_time

EXAMPLE = """examples:
  python -m raybench.run --workers 4
  python -m raybench.run --model lstm --epochs 50 --batch_size 128 --lr 0.001 \\
      --hidden 128 --layers 2
  python -m raybench.run --config configs/lstm_classification.yaml --workers 2
  python -m raybench.run --resume outputs/run_20251105_143015"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raybench.run", description=__doc__, epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
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
    parts.append(f"{row['epoch_time_sec']:.2f}s")
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


def _resolve_config(args: argparse.Namespace) -> tuple[Config, Path | None]:
    """The run's config: a new one from YAML and flags, or a stopped run's own (flags on top)."""
    if not args.resume:
        return config_from_args(args), None
    run_dir = Path(args.resume)
    status = run_dir / "status.json"
    if not (run_dir / "config.yaml").is_file() or not status.is_file():
        raise UserError(f"--resume {run_dir}: not a raybench run directory (no config.yaml and "
                        "status.json)")
    if '"completed"' in status.read_text():
        raise UserError(f"--resume {run_dir}: that run already completed")
    if args.config:
        raise UserError("--resume takes the run's own config.yaml; drop --config")
    return apply_overrides(load_config(run_dir / "config.yaml"), args), run_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    launch_time = process_start_time()
    cfg, resume_dir = _resolve_config(args)
    out = Console(quiet=args.quiet)
    if resume_dir is None:
        artifacts.check_writable(cfg.io.save_dir)

    out.log(f"Set random seed: {cfg.train.seed}")
    t0 = time.perf_counter()
    data = load_configured(cfg.data, cfg.model.kind, out.log)
    npz_path = cfg.data.npz_path
    metric = cfg.early_stop(data.task)[0]  # rejects a metric that does not fit the task
    check_batches(len(data.X_train), cfg.scaling.workers, cfg.train.batch_size, str(npz_path))
    n_params = count_parameters(build_model(cfg.model, data.n_features, data.window))
    out.log(f"Data loading took {time.perf_counter() - t0:.2f}s: train {data.X_train.shape}, "
            f"valid {data.X_valid.shape}, test {data.X_test.shape}, task {data.task}")
    shard = len(data.X_train) // cfg.scaling.workers
    out.log(f"  Train batches per worker: {-(-shard // cfg.train.batch_size)}   Input dim: "
            f"{data.n_features}")
    out.log(f"Model {cfg.model.kind}: {n_params:,} parameters")

    import ray

    cluster = connect(cfg, verbose=args.verbose, dashboard=args.dashboard)
    check_resources(cfg)
    out.log(f"Ray: {cluster}")
    for warning in resource_warnings(cfg, shard):
        out.warn(warning)
    run_dir = resume_dir or artifacts.make_run_dir(cfg.io.save_dir, cfg.io.run_name)
    storage = cfg.io.storage_path or str(run_dir.resolve())
    if resume_dir is None:
        artifacts.write_yaml(run_dir / "config.yaml", cfg.to_dict())  # what --resume reads
    artifacts.write_json(run_dir / "status.json", {"status": "running"})
    norm_stats = data.norm_stats
    try:
        out.log(f"Workers: {cfg.scaling.workers} x {cfg.scaling.cpus_per_worker:g} CPU"
                f"{' + 1 GPU' if wants_gpu(cfg) else ''}, {worker_threads(cfg)} torch "
                f"thread(s) each, batch {cfg.train.batch_size} per worker, placement "
                f"{cfg.scaling.placement_strategy}")
        out.log(f"Run directory: {run_dir}" + (" (resumed)" if resume_dir else ""))
        data_ref = ray.put(data)
        del data  # the object store holds it now; workers map it without copying
        out.section("TRAINING")
        out.log(f"Starting training for {cfg.train.epochs} epochs; early stopping on {metric}, "
                f"patience {cfg.train.early_stop_patience}")
        view = EpochProgress(out, lambda row: _epoch_line(cfg, metric, row))
        try:
            run = run_ray(cfg, data_ref, LoopOptions(launch_time=launch_time,
                                                     progress_interval_sec=1.0),
                          storage_path=storage, name=_train_name(run_dir, cfg), on_report=view)
        finally:
            view.close()
        result = run.result
        write_run(run_dir, cfg, norm_stats, result)
        if cfg.io.storage_path:
            where = artifacts.upload_dir(run_dir, cfg.io.storage_path, run_dir.name)
            out.log(f"Copied run artifacts to {where}")
    except KeyboardInterrupt:
        artifacts.write_json(run_dir / "status.json", {"status": "interrupted"})
        shutdown_if_ours()  # stops the workers with the local Ray we started
        out.summary(f"Interrupted; continue with: python -m raybench.run --resume {run_dir}")
        raise
    except BaseException as exc:
        artifacts.write_json(run_dir / "status.json", {"status": "failed",
                                                       "error": str(exc).strip()[:2000]})
        raise

    out.summary(_summary("VAL ", cfg.data.task, result["metrics_valid"]))
    out.summary(_summary("TEST", cfg.data.task, result["metrics_test"]))
    t = result["timing"]
    out.summary(f"{t['samples_per_sec']:,.0f} samples/s on {t['num_workers']} worker(s) "
                f"(warm-up excluded), time to first step {t['time_to_first_step_sec']:.1f}s")
    out.summary(f"Saved → {run_dir}")
    return 0


def resource_warnings(cfg: Config, shard: int) -> list[str]:
    """What will make the numbers worse without being an error, one line each."""
    warnings = []
    cores = os.cpu_count() or 1
    wanted = cfg.scaling.workers * max(cfg.scaling.cpus_per_worker, 1)
    if launch.started_local_ray() and wanted > cores:
        warnings.append(f"{cfg.scaling.workers} workers x {cfg.scaling.cpus_per_worker:g} CPU on "
                        f"{cores} cores: workers share cores, so per-worker throughput drops")
    steps = -(-shard // cfg.train.batch_size)
    if steps < 5:
        warnings.append(f"only {steps} step(s) per epoch per worker ({shard} samples, batch "
                        f"{cfg.train.batch_size}): timings will be dominated by epoch overhead")
    return warnings


def _train_name(run_dir: Path, cfg: Config) -> str:
    # With shared storage, runs from many drivers meet in one place: name them by run dir.
    return f"{run_dir.name}_train" if cfg.io.storage_path else "ray_train"


def write_run(run_dir: Path, cfg: Config, norm_stats: dict, result: dict) -> None:
    """Every artifact of a finished run; status.json turns 'completed' last."""
    artifacts.save_state_dict(run_dir / "best.ckpt",
                              {k: torch.tensor(v) for k, v in result["best_state"].items()})
    artifacts.write_yaml(run_dir / "config.yaml", cfg.to_dict())
    artifacts.write_json(run_dir / "norm_stats.json", norm_stats)
    artifacts.write_json(run_dir / "environment.json", environment.collect())
    artifacts.write_csv(run_dir / "history.csv", result["history"])
    timing = result["timing"]
    artifacts.write_json(run_dir / "timing.json", timing)
    plots.curves_png(result["history"], result["metric"], timing["best_epoch"],
                     run_dir / "curves.png")
    if cfg.data.task == "classification" and cfg.eval.save_cm:
        for split in ("valid", "test"):
            plots.confusion_matrix_png(result[f"metrics_{split}"]["confusion_matrix"],
                                       run_dir / f"confusion_matrix_{split}.png",
                                       f"{split} (threshold {cfg.eval.threshold:g})")
    artifacts.write_json(run_dir / "metrics_valid.json", result["metrics_valid"])
    artifacts.write_json(run_dir / "metrics_test.json", result["metrics_test"])
    artifacts.write_json(run_dir / "status.json", {"status": "completed"})


if __name__ == "__main__":
    run_cli(main)
