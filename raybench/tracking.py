"""Where users already look: TensorBoard event files in the run directory and, with --mlflow URI,
an MLflow run. Written from rank 0 inside the loop (Ray Train V2 takes no logger callbacks).

Per epoch: train/loss, val/loss, val/<metric> (r2, auc, ...), throughput/samples_per_sec and the
step phases' shares (step/data_share, step/compute_share, step/sync_share,
step/optimizer_share). At the end: the final validation and test metrics, and in MLflow the
config as parameters and the best weights as an artifact.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from raybench.results import PHASES, EpochRow, StepBreakdown

TENSORBOARD_DIR = "tensorboard"


@dataclass
class TrackingOptions:
    tensorboard_dir: str | None = None  # event files go here (rank 0's filesystem)
    mlflow_uri: str | None = None
    mlflow_experiment: str = "raybench"
    run_name: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # the flattened config


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _opened(what: str, open_it: Any, arg: Any) -> Any:
    """One tracker, or None with one line saying why (the others still open)."""
    try:
        return open_it(arg)
    except Exception as exc:  # noqa: BLE001 (tracking never fails a run)
        print(f"raybench: {what} tracking disabled: {type(exc).__name__}: {exc}", flush=True)
        return None


class Tracker:
    """Rank 0's writers. A tracker that cannot be opened (TensorBoard's directory on another
    node, MLflow unreachable) warns once and steps aside: tracking never fails a run."""

    def __init__(self, options: TrackingOptions) -> None:
        self.options = options
        self.tb = _opened("TensorBoard", self._tensorboard, options.tensorboard_dir)
        self.mlflow = _opened("MLflow", self._mlflow, options)

    @staticmethod
    def _tensorboard(directory: str | None) -> Any:
        if not directory or not os.path.isdir(os.path.dirname(os.path.abspath(directory))):
            return None
        from tensorboardX import SummaryWriter

        return SummaryWriter(logdir=directory, flush_secs=5)

    @staticmethod
    def _mlflow(options: TrackingOptions) -> Any:
        if not options.mlflow_uri:
            return None
        import mlflow

        if options.mlflow_uri.startswith("file:") or "://" not in options.mlflow_uri:
            # MLflow 3 keeps its file store only for those who ask: a file URI is asking
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        mlflow.set_tracking_uri(options.mlflow_uri)
        mlflow.set_experiment(options.mlflow_experiment)
        mlflow.start_run(run_name=options.run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in options.params.items()})
        return mlflow

    def epoch(self, row: EpochRow, breakdown: StepBreakdown, samples_per_sec: float | None) -> None:
        scalars = {"train/loss": row.train_loss}
        if row.val_loss is not None:
            scalars["val/loss"] = row.val_loss
        scalars.update({f"val/{k.removeprefix('val_')}": v for k, v in row.val_metrics.items()})
        if samples_per_sec:
            scalars["throughput/samples_per_sec"] = samples_per_sec
        if breakdown.steps:
            scalars.update({f"step/{p}_share": getattr(breakdown, f"{p}_share") for p in PHASES})
        self._log(scalars, row.epoch)

    def _log(self, scalars: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in scalars.items()},
                                    step=step)

    def finish(self, metrics: dict[str, dict], best_state: dict, step: int) -> None:
        """Final metrics (numbers only) and, in MLflow, the best weights."""
        final = {f"{split}/{k}": v for split, m in metrics.items() for k, v in m.items()
                 if isinstance(v, float)}
        self._log(final, step)
        if self.mlflow is not None and best_state:
            import torch

            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "best.ckpt")
                torch.save(best_state, path)
                self.mlflow.log_artifact(path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
