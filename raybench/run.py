"""`python -m raybench.run`: train one model on N Ray Train workers and write its run directory."""

from __future__ import annotations

import argparse
import time

import torch

from raybench import artifacts, plots
from raybench.config import Config, add_config_args, config_from_args
from raybench.console import Console
from raybench.data import build_dataset, check_batches, load_npz, resolve_npz
from raybench.errors import run_cli
from raybench.launch import check_resources, connect, run_ray, wants_gpu
from raybench.loop import LoopOptions, worker_threads
from raybench.models import build_model, count_parameters
from raybench.timing import process_start_time

EXAMPLE = """examples:
  python -m raybench.run --workers 4
  python -m raybench.run --model lstm --epochs 50 --batch_size 128 --lr 0.001 \\
      --hidden 128 --layers 2
  python -m raybench.run --config configs/lstm_classification.yaml --workers 2"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raybench.run", description=__doc__, epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
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
        for key in ("val_accuracy", "val_auc") if metric in ("auc", "accuracy", "f1") else (
                "val_r2", "val_mae"):
            if key in row:
                parts.append(f"{key.replace('accuracy', 'acc')}={row[key]:.3f}")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    launch_time = process_start_time()
    cfg = config_from_args(args)
    out = Console(quiet=args.quiet)

    out.log(f"Set random seed: {cfg.train.seed}")
    t0 = time.perf_counter()
    npz_path, note = resolve_npz(cfg.data.npz_path, cfg.data.task, cfg.model.kind,
                                 cfg.data.window)
    if note:
        out.log(note)
    arrays = load_npz(npz_path)
    data = build_dataset(arrays, cfg.data.task, cfg.data.valid_from_train, cfg.data.norm,
                         str(npz_path))
    del arrays
    cfg.data.npz_path, cfg.data.task = str(npz_path), data.task
    cfg.early_stop(data.task)  # rejects a metric that does not fit the task before any work
    check_batches(len(data.X_train), cfg.scaling.workers, cfg.train.batch_size, str(npz_path))
    model = build_model(cfg.model, data.n_features, data.window)
    out.log(f"Data loading took {time.perf_counter() - t0:.2f}s: train {data.X_train.shape}, "
            f"valid {data.X_valid.shape}, test {data.X_test.shape}, task {data.task}")
    shard = len(data.X_train) // cfg.scaling.workers
    out.log(f"  Train batches per worker: {-(-shard // cfg.train.batch_size)}   Input dim: "
            f"{data.n_features}")
    out.log(f"Model {cfg.model.kind}: {count_parameters(model):,} parameters")
    del model

    import ray

    cluster = connect(cfg, verbose=args.verbose, dashboard=args.dashboard)
    check_resources(cfg)
    out.log(f"Ray: {cluster}")
    run_dir = artifacts.make_run_dir(cfg.io.save_dir, cfg.io.run_name)
    artifacts.write_json(run_dir / "status.json", {"status": "running"})
    norm_stats = data.norm_stats
    try:
        out.log(f"Workers: {cfg.scaling.workers} x {cfg.scaling.cpus_per_worker:g} CPU"
                f"{' + 1 GPU' if wants_gpu(cfg) else ''}, {worker_threads(cfg)} torch "
                f"thread(s) each, batch {cfg.train.batch_size} per worker")
        out.log(f"Run directory: {run_dir}")
        data_ref = ray.put(data)
        del data  # the object store holds it now; workers map it without copying
        metric = cfg.early_stop(cfg.data.task)[0]
        out.section("TRAINING")
        out.log(f"Starting training for {cfg.train.epochs} epochs; early stopping on {metric}, "
                f"patience {cfg.train.early_stop_patience}")
        run = run_ray(cfg, data_ref, LoopOptions(launch_time=launch_time),
                      storage_path=str(run_dir.resolve()), name="ray_train",
                      on_report=lambda row: out.log(_epoch_line(cfg, metric, row)))
        result = run.result
        write_run(run_dir, cfg, norm_stats, result)
    except KeyboardInterrupt:
        artifacts.write_json(run_dir / "status.json", {"status": "interrupted"})
        raise
    except BaseException as exc:
        artifacts.write_json(run_dir / "status.json", {"status": "failed", "error": str(exc)})
        raise

    out.summary(_summary("VAL ", cfg.data.task, result["metrics_valid"]))
    out.summary(_summary("TEST", cfg.data.task, result["metrics_test"]))
    t = result["timing"]
    out.summary(f"{t['samples_per_sec']:,.0f} samples/s on {t['num_workers']} worker(s) "
                f"(warm-up excluded), time to first step {t['time_to_first_step_sec']:.1f}s")
    out.summary(f"Saved → {run_dir}")
    return 0


def write_run(run_dir, cfg: Config, norm_stats: dict, result: dict) -> None:
    """Every artifact of a finished run; status.json turns 'completed' last."""
    task = cfg.data.task
    artifacts.save_state_dict(run_dir / "best.ckpt",
                              {k: torch.tensor(v) for k, v in result["best_state"].items()})
    artifacts.write_yaml(run_dir / "config.yaml", cfg.to_dict())
    artifacts.write_json(run_dir / "norm_stats.json", norm_stats)
    artifacts.write_csv(run_dir / "history.csv", result["history"])
    timing = dict(result["timing"])
    artifacts.write_json(run_dir / "timing.json", timing)
    plots.curves_png(result["history"], result["metric"], timing["best_epoch"],
                     run_dir / "curves.png")
    if task == "classification" and cfg.eval.save_cm:
        for split in ("valid", "test"):
            plots.confusion_matrix_png(result[f"metrics_{split}"]["confusion_matrix"],
                                       run_dir / f"confusion_matrix_{split}.png",
                                       f"{split} (threshold {cfg.eval.threshold:g})")
    artifacts.write_json(run_dir / "metrics_valid.json", result["metrics_valid"])
    artifacts.write_json(run_dir / "metrics_test.json", result["metrics_test"])
    artifacts.write_json(run_dir / "status.json", {"status": "completed"})


if __name__ == "__main__":
    run_cli(main)
