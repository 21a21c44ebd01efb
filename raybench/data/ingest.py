"""The batches a worker trains and evaluates on, behind one interface (`Ingest`). Selected by
`data.ingest`:

  memory    the dataset sits in memory (Ray's object store, a memory-mapped file or this
            process); each rank trains on slices of its contiguous shard: no DataLoader, no copy
  ray_data  a Parquet dataset (data/parquet.py) streamed by Ray Data: the TorchTrainer splits
            the train split across workers (`get_dataset_shard`, `iter_torch_batches` with a
            prefetch depth); each worker windows its chunks itself, so the object store carries
            every value about once instead of T times

A new path is a class here, a branch in `open_ingest` (and `trainer_datasets` if the launcher
must hand it data) and one value of `data.ingest`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from raybench.data.dataset import Dataset, as_tensor, shard_bounds
from raybench.data.parquet import COLUMNS, ParquetDataset, unfold

Batch = tuple[torch.Tensor, torch.Tensor]
# (inputs, targets, naive baseline, key): the key orders gathered evaluation rows identically
# on every rank whatever order the shards arrived in.
EvalBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
EVAL_BATCH = 4096


class Ingest(Protocol):
    """One rank's view of the data."""

    name: str
    task: str
    window: int
    n_features: int
    n_local: int  # training samples this rank sees per epoch
    steps_per_epoch: int
    dataset_mib: float
    first_batch_s: float | None  # from asking for the first epoch's batches to having one

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """The epoch's training batches of this rank, on its device."""

    def eval_batches(self, split: str) -> Iterator[EvalBatch]:
        """This rank's shard of 'valid' or 'test'."""


def shuffle_order(n: int, seed: int, rank: int, epoch: int) -> torch.Tensor:
    """The epoch's permutation of a rank's samples: a function of (seed, rank, epoch) only, so a
    resumed or re-sharded run needs no stored generator state."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)


class MemoryIngest:
    """Equal contiguous shards of an in-memory Dataset: every rank runs the same number of steps
    (DDP hangs on uneven step counts); at most world-1 training samples are left out."""

    name = "memory"

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
        self.first_batch_s = None

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

    def eval_batches(self, split: str) -> Iterator[EvalBatch]:
        X, y, base = (getattr(self.data, f"{k}_{split}") for k in ("X", "y", "baseline"))
        start, stop = shard_bounds(len(X), self.world, self.rank)
        for lo in range(start, stop, self._eval_batch):
            hi = min(lo + self._eval_batch, stop)
            yield (as_tensor(X[lo:hi]).to(self.device), as_tensor(y[lo:hi]),
                   as_tensor(base[lo:hi]), torch.arange(lo, hi))


class RayDataIngest:
    """A rank's stream of a Parquet dataset. The train split arrives through Ray Data as this
    rank's equal share of chunk rows (streaming_split with equal=True), so every rank has the
    same number of windows and steps; validation and test are sharded by file (or by chunk
    index) and read directly."""

    name = "ray_data"

    def __init__(self, meta: ParquetDataset, session: Any, batch: int, device: torch.device,
                 prefetch: int = 2, shuffle: bool = False, seed: int = 0) -> None:
        self.meta, self.session, self.batch, self.device = meta, session, batch, device
        self.prefetch, self.shuffle, self.seed = prefetch, shuffle, seed
        self.rank, self.world = session.rank, session.world_size
        self.task, self.window, self.n_features = meta.task, meta.window, meta.features
        self.n_local = meta.splits["train"].chunks // self.world * meta.chunk_windows
        self.steps_per_epoch = -(-self.n_local // batch)
        self.dataset_mib = meta.splits["train"].chunks * meta.row_values * 4 / 2**20
        # Chunk rows per fetch: about four training batches of windows.
        self.rows_per_fetch = max(1, math.ceil(4 * batch / meta.chunk_windows))
        stats = meta.norm_stats
        self._mu = torch.tensor(stats["mu"], dtype=torch.float32)
        self._sd = torch.tensor(stats["sd"], dtype=torch.float32)
        self._y_mu, self._y_sd = stats.get("y_mu", 0.0), stats.get("y_sd", 1.0)
        self.first_batch_s = None
        self._epochs_started = 0

    def _train_fetches(self, rows: int) -> Iterator[dict[str, torch.Tensor]]:
        shard = self.session.dataset_shard("train")
        shuffle = self.shuffle
        return shard.iter_torch_batches(
            batch_size=rows, prefetch_batches=self.prefetch, device="cpu",
            dtypes={"x": torch.float32, "y": torch.float32, "n": torch.int64,
                    "chunk": torch.int64},
            local_shuffle_buffer_size=4 * rows if shuffle else None,
            local_shuffle_seed=self.seed + self._epochs_started if shuffle else None)

    def _windows(self, fetched: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Normalised windows (rows, L, T, F) as a view of the rows, targets, raw last values."""
        x = fetched["x"].view(len(fetched["x"]), -1, self.n_features)
        last = unfold(fetched["x"], self.window, self.n_features)[:, :, -1, 0]
        x = (x - self._mu) / self._sd
        windows = x.unfold(1, self.window, 1).permute(0, 1, 3, 2)
        y = fetched["y"]
        if self.task == "regression":
            y = (y - self._y_mu) / self._y_sd
        return windows, y, last

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        asked = time.perf_counter()
        self._epochs_started += 1
        carry_x: list[torch.Tensor] = []
        carry_y: list[torch.Tensor] = []
        seen, epoch_no = 0, self._epochs_started
        for fetched in self._train_fetches(self.rows_per_fetch):
            windows, y, _ = self._windows(fetched)
            rows, length = windows.shape[:2]
            order = torch.arange(rows * length)
            if self.shuffle:
                order = shuffle_order(rows * length, self.seed, self.rank, epoch * 100_003
                                      + seen)
            X, Y = windows[order // length, order % length], y[order // length, order % length]
            carry_x.append(X)
            carry_y.append(Y)
            have = sum(len(c) for c in carry_x)
            if have < self.batch:
                continue
            X, Y = torch.cat(carry_x), torch.cat(carry_y)
            full = have // self.batch * self.batch
            for lo in range(0, full, self.batch):
                if epoch_no == 1 and self.first_batch_s is None:
                    self.first_batch_s = time.perf_counter() - asked
                seen += self.batch
                yield self._to_device(X[lo:lo + self.batch], Y[lo:lo + self.batch])
            carry_x, carry_y = [X[full:]], [Y[full:]]
        tail = sum(len(c) for c in carry_x)
        if tail:
            seen += tail
            yield self._to_device(torch.cat(carry_x), torch.cat(carry_y))
        self._check_share(seen)

    def _check_share(self, seen: int) -> None:
        # Equal shares are what keeps DDP from hanging; say so loudly if Ray Data ever differs.
        if seen != self.n_local:
            raise RuntimeError(f"rank {self.rank} streamed {seen} training windows, expected "
                               f"{self.n_local}: the ranks' shares of the train split differ")

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        if self.device.type == "cuda":
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x, y

    def eval_batches(self, split: str) -> Iterator[EvalBatch]:
        """Validation and test are read with pyarrow, not Ray Data: a rank reads its share of
        the files (every world-th), or, with fewer files than ranks, every file keeping its
        share of the chunks; no per-epoch pipeline to start for a pass this small."""
        length = self.meta.chunk_windows
        for fetched in self._eval_fetches(split):
            windows, y, last = self._windows(fetched)
            real = torch.arange(length) < fetched["n"][:, None]  # padding is not evaluated
            key = fetched["chunk"][:, None] * length + torch.arange(length)
            yield (windows[real].to(self.device), y[real], self._baseline(last[real]), key[real])

    def _eval_fetches(self, split: str) -> Iterator[dict[str, torch.Tensor]]:
        import pyarrow.parquet as pq

        files = self.meta.files(split)
        by_file = len(files) >= self.world
        rows = max(1, EVAL_BATCH // self.meta.chunk_windows)
        for path in files[self.rank::self.world] if by_file else files:
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=rows, columns=list(COLUMNS)):
                fetched = {"x": _column(batch, "x", self.meta.row_values),
                           "y": _column(batch, "y", self.meta.chunk_windows),
                           "n": as_tensor(batch.column("n").to_numpy()).long(),
                           "chunk": as_tensor(batch.column("chunk").to_numpy())}
                if not by_file:
                    mine = fetched["chunk"] % self.world == self.rank
                    fetched = {k: v[mine] for k, v in fetched.items()}
                if len(fetched["chunk"]):
                    yield fetched

    def _baseline(self, last: torch.Tensor) -> torch.Tensor:
        """Persistence (the window's last raw value, in y's units) or the majority class."""
        if self.task == "regression":
            return (last - self._y_mu) / self._y_sd
        return torch.full_like(last, float(self.meta.majority))


def _column(batch: Any, name: str, width: int) -> torch.Tensor:
    """A fixed-size list column of a record batch as a (rows, width) float tensor."""
    values = batch.column(name).flatten().to_numpy(zero_copy_only=False)
    return as_tensor(values.reshape(len(batch), width)).float()


def open_ingest(cfg: Any, data: Dataset | ParquetDataset, session: Any) -> Ingest:
    """The ingest a config asks for, for one rank."""
    if cfg.data.ingest == "ray_data":
        return RayDataIngest(data, session, cfg.train.batch_size, session.device,
                             prefetch=cfg.data.prefetch_batches, shuffle=cfg.data.shuffle_train,
                             seed=cfg.train.seed)
    return MemoryIngest(data, session.rank, session.world_size, cfg.train.batch_size,
                        session.device, shuffle=cfg.data.shuffle_train, seed=cfg.train.seed)


def trainer_datasets(cfg: Any, data: Dataset | ParquetDataset) -> dict[str, Any] | None:
    """What a TorchTrainer must be handed for this ingest (None: nothing, the data travels in
    the train loop config): Ray Data datasets and the DataConfig that splits only 'train'."""
    if cfg.data.ingest != "ray_data":
        return None
    import ray.data
    import ray.train

    # Read tasks take a quarter CPU: training workers hold the whole CPUs they reserved.
    datasets = {"train": ray.data.read_parquet(data.files("train"), num_cpus=0.25)}
    if cfg.data.shuffle_train:
        datasets["train"] = datasets["train"].randomize_block_order(seed=cfg.train.seed)
    # Blocks in file order: with one worker the stream is the memory path's order exactly, and
    # a run repeats itself (with several, which rank gets which block is Ray Data's choice).
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return {"datasets": datasets,
            "dataset_config": ray.train.DataConfig(datasets_to_split=["train"],
                                                   execution_options={"train": options})}

