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
import time
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


# MLflow's HTTP client retries for minutes by default (measured: 272 s before the first step
# with nothing listening); a tracker gets seconds, then steps aside.
MLFLOW_ENV = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
KNOWN_SCHEMES = ("http", "https", "file", "databricks", "sqlite", "postgresql", "mysql",
                 "mssql")


def check_mlflow(uri: str, timeout_s: float = 3.0) -> str | None:
    """Why tracking to `uri` cannot work, checked on the driver before anything starts (None:
    it may). A warning the user sees, where a worker's own message would be hidden."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if "://" not in uri:
        return None  # a local path: MLflow's file store
    if parsed.scheme.split("+")[0] not in KNOWN_SCHEMES:
        return f"--mlflow {uri}: unknown scheme {parsed.scheme!r}"
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout_s).close()
        except OSError as exc:
            return f"--mlflow {uri}: nothing answers at {parsed.hostname}:{port} ({exc})"
    return None


class _MlflowRun:
    """One MLflow run addressed by its id. MLflow's fluent API keeps the active run per thread,
    so a metric logged from the background thread would open a second, empty run."""

    def __init__(self, mlflow: Any, options: TrackingOptions) -> None:
        from mlflow.entities import Param

        self.client = mlflow.MlflowClient(tracking_uri=options.mlflow_uri)
        experiment = self.client.get_experiment_by_name(options.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(options.mlflow_experiment))
        self.run_id = self.client.create_run(experiment_id,
                                             run_name=options.run_name).info.run_id
        params = [Param(k, str(v)[:500]) for k, v in options.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()])

    def log_artifact(self, path: str) -> None:
        self.client.log_artifact(self.run_id, path)

    def end_run(self) -> None:
        self.client.set_terminated(self.run_id)


class _Background:
    """Runs a tracker's calls in a thread of their own, in order: a slow or dead tracking server
    never holds up a training step. close() waits a bounded time for what is queued."""

    def __init__(self, target: Any) -> None:
        import queue
        import threading

        self.target, self.calls = target, queue.Queue()
        self.thread = threading.Thread(target=self._run, name="raybench-tracking", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (call := self.calls.get()) is not None:
            name, args, kwargs = call
            try:
                getattr(self.target, name)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 (tracking never fails a run)
                print(f"raybench: MLflow tracking stopped: {type(exc).__name__}: {exc}",
                      flush=True)
                return

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self.calls.put((name, args, kwargs))

    def close(self, timeout_s: float = 30.0) -> None:
        self.calls.put(("end_run", (), {}))
        self.calls.put(None)
        self.thread.join(timeout_s)


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
        for key, value in MLFLOW_ENV.items():
            os.environ.setdefault(key, value)
        import mlflow

        if options.mlflow_uri.startswith("file:") or "://" not in options.mlflow_uri:
            # MLflow 3 keeps its file store only for those who ask: a file URI is asking
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return _Background(_MlflowRun(mlflow, options))

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

            # the artifact outlives this call (the upload is queued): a file of its own
            path = os.path.join(tempfile.mkdtemp(prefix="raybench-mlflow-"), "best.ckpt")
            torch.save(best_state, path)
            self.mlflow.log_artifact(path)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.close()
