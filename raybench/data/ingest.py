"""The batches a worker trains and evaluates on, behind one interface (`Ingest`).

`memory`: the dataset sits in memory (Ray's object store, a memory-mapped file or this process);
each rank trains on slices of its contiguous shard, no DataLoader and no copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from raybench.data.dataset import Dataset, shard_bounds

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_BATCH = 4096


class Ingest(Protocol):
    """One rank's view of the data."""

    task: str
    window: int
    n_features: int
    n_local: int  # training samples this rank sees per epoch
    steps_per_epoch: int
    dataset_mib: float

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """The epoch's training batches of this rank, on its device."""

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x, y, baseline) batches of this rank's shard of 'valid' or 'test'."""


def as_tensor(a: np.ndarray) -> torch.Tensor:
    # Arrays from Ray's object store are read-only views of shared memory; we never write to
    # them, so share instead of copying and silence torch's non-writable warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)


def shuffle_order(n: int, seed: int, rank: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of a rank's shard: a function of (seed, rank, epoch) only, so a
    resumed or re-sharded run needs no stored generator state."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


class MemoryIngest:
    """Equal contiguous shards of an in-memory Dataset: every rank runs the same number of steps
    (DDP hangs on uneven step counts); at most world-1 training samples are left out."""

    def __init__(self, data: Dataset, rank: int, world: int, batch: int, device: torch.device,
                 shuffle: bool = False, seed: int = 0) -> None:
        self.data, self.rank, self.world, self.batch = data, rank, world, batch
        self.device, self.shuffle, self.seed = device, shuffle, seed
        self.task, self.window, self.n_features = data.task, data.window, data.n_features
        self.dataset_mib = data.nbytes / 2**20
        self.n_local = len(data.X_train) // world
        start = shard_bounds(len(data.X_train), world, rank)[0]
        self._X = as_tensor(data.X_train[start:start + self.n_local])
        self._y = as_tensor(data.y_train[start:start + self.n_local])
        self._on_gpu = device.type == "cuda"
        if self._on_gpu:  # pinned host memory makes the copies asynchronous
            self._X, self._y = self._X.pin_memory(), self._y.pin_memory()
        self.steps_per_epoch = -(-self.n_local // batch)
        self._eval_batch = max(batch, EVAL_BATCH)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        X, y, batch = self._X, self._y, self.batch
        order = shuffle_order(self.n_local, self.seed, self.rank, epoch) if self.shuffle else None
        for lo in range(0, self.n_local, batch):
            if order is None:
                xb, yb = X[lo:lo + batch], y[lo:lo + batch]
            else:
                idx = order[lo:lo + batch]
                xb, yb = X[idx], y[idx]
            if self._on_gpu:
                xb = xb.to(self.device, non_blocking=True)
                yb = yb.to(self.device, non_blocking=True)
            yield xb, yb

    def eval_batches(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        X, y, base = (getattr(self.data, f"{k}_{split}") for k in ("X", "y", "baseline"))
        start, stop = shard_bounds(len(X), self.world, self.rank)
        for lo in range(start, stop, self._eval_batch):
            hi = min(lo + self._eval_batch, stop)
            yield (as_tensor(X[lo:hi]).to(self.device), as_tensor(y[lo:hi]),
                   as_tensor(base[lo:hi]))


def open_ingest(cfg, data: Dataset, rank: int, world: int, device: torch.device) -> Ingest:
    """The ingest a config asks for, for one rank."""
    return MemoryIngest(data, rank, world, cfg.train.batch_size, device,
                        shuffle=cfg.data.shuffle_train, seed=cfg.train.seed)
