"""In-memory datasets: chronological validation split, z-scoring with train-split statistics
only, the naive baselines, and memory-mapped copies other processes can share."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raybench.data.npz import infer_task
from raybench.errors import UserError


@dataclass
class Dataset:
    """Splits ready for training, normalized with statistics of the train split only."""

    task: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_valid: np.ndarray
    y_valid: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    norm_stats: dict
    # Naive baselines, in the same units as y: persistence for regression (last value in the
    # window), the train majority class for classification.
    baseline_valid: np.ndarray
    baseline_test: np.ndarray

    @property
    def window(self) -> int:
        return self.X_train.shape[1]

    @property
    def n_features(self) -> int:
        return self.X_train.shape[2]

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f).nbytes for f in ARRAY_FIELDS)


ARRAY_FIELDS = ("X_train", "y_train", "X_valid", "y_valid", "X_test", "y_test", "baseline_valid",
                "baseline_test")


def save_dataset(ds: Dataset, directory: str | Path) -> Path:
    """Write a prepared Dataset as .npy files that other processes can memory-map."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_FIELDS:
        np.save(directory / f"{name}.npy", getattr(ds, name))
    (directory / "meta.json").write_text(json.dumps({"task": ds.task,
                                                     "norm_stats": ds.norm_stats}))
    return directory


def load_dataset(directory: str | Path) -> Dataset:
    """Memory-map a saved Dataset: processes on one machine share its pages."""
    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    arrays = {n: np.load(directory / f"{n}.npy", mmap_mode="r") for n in ARRAY_FIELDS}
    return Dataset(task=meta["task"], norm_stats=meta["norm_stats"], **arrays)


def split_valid(n_train: int, valid_ratio: float, source: str = "data") -> int:
    """Index where the chronological validation tail starts."""
    n_valid = int(round(n_train * valid_ratio))
    if n_valid < 1:
        raise UserError(f"{source}: valid_ratio {valid_ratio} of {n_train} train samples leaves "
                        "an empty validation split")
    if n_train - n_valid < 1:
        raise UserError(f"{source}: valid_ratio {valid_ratio} leaves no training samples")
    return n_train - n_valid


def norm_stats(X_train: np.ndarray, y_train: np.ndarray, task: str, norm: str) -> dict:
    """Per-feature mean and sd of the train split (and of y for regression); identity for
    norm 'none'. A constant feature keeps sd 1 instead of dividing by zero."""
    n_feat = X_train.shape[2]
    if norm != "zscore":
        return {"mu": [0.0] * n_feat, "sd": [1.0] * n_feat}
    mu = X_train.mean(axis=(0, 1), dtype=np.float64)
    sd = X_train.std(axis=(0, 1), dtype=np.float64)
    stats: dict = {"mu": mu.tolist(), "sd": np.where(sd > 0, sd, 1.0).tolist()}
    if task == "regression":
        y_sd = float(y_train.std(dtype=np.float64))
        stats.update(y_mu=float(y_train.mean(dtype=np.float64)), y_sd=y_sd if y_sd > 0 else 1.0)
    return stats


def scale_x(X: np.ndarray, stats: dict) -> np.ndarray:
    out = np.empty(X.shape, dtype=np.float32)
    np.subtract(X, np.asarray(stats["mu"], np.float32), out=out)
    out /= np.asarray(stats["sd"], np.float32)
    return out


def scale_y(y: np.ndarray, stats: dict) -> np.ndarray:
    return ((y - stats.get("y_mu", 0.0)) / stats.get("y_sd", 1.0)).astype(np.float32)


def baselines(task: str, X: np.ndarray, y_train: np.ndarray, stats: dict) -> np.ndarray:
    """Persistence (the window's last value of feature 0, in y's units) for regression; the
    train split's majority class for classification."""
    if task == "regression":
        return scale_y(X[:, -1, 0].astype(np.float64), stats)
    return np.full(len(X), float(y_train.mean() >= 0.5), dtype=np.float32)


def build_dataset(arrays: dict[str, np.ndarray], task: str | None, valid_ratio: float,
                  norm: str, source: str = "data") -> Dataset:
    task = infer_task(arrays["y_train"], arrays["y_test"], task, source)
    X_all, y_all = arrays["X_train"], arrays["y_train"]
    cut = split_valid(len(X_all), valid_ratio, source)
    X_train, X_valid, X_test = X_all[:cut], X_all[cut:], arrays["X_test"]
    y_train = y_all[:cut].astype(np.float32)
    y_valid = y_all[cut:].astype(np.float32)
    y_test = arrays["y_test"].astype(np.float32)
    stats = norm_stats(X_train, y_train, task, norm)
    return Dataset(task=task, X_train=scale_x(X_train, stats), y_train=scale_y(y_train, stats),
                   X_valid=scale_x(X_valid, stats), y_valid=scale_y(y_valid, stats),
                   X_test=scale_x(X_test, stats), y_test=scale_y(y_test, stats),
                   norm_stats=stats,
                   baseline_valid=baselines(task, X_valid, y_train, stats),
                   baseline_test=baselines(task, X_test, y_train, stats))


def check_batches(n_train: int, workers: int, batch_size: int, source: str = "data") -> None:
    """Every worker needs at least one full batch of its shard."""
    shard = n_train // workers
    if shard < batch_size:
        raise UserError(f"{source}: {n_train} training samples over {workers} worker(s) give "
                        f"{shard} per worker, fewer than batch_size {batch_size}; lower "
                        "--batch_size or --workers, or use more data")


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """Contiguous, nearly equal shards (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing the array's memory. Arrays from Ray's object store (and Arrow) are
    read-only views; we never write to them, so share instead of copying and silence torch's
    non-writable warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)
