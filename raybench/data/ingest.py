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

import itertools
import math
import time
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from raybench.affinity import every_core
from raybench.data.dataset import Dataset, as_tensor, shard_bounds
from raybench.data.parquet import COLUMNS, ParquetDataset, unfold
from raybench.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
# (inputs, targets, naive baseline, key): the key orders gathered evaluation rows identically
# on every rank whatever order the shards arrived in.
EvalBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
EVAL_BATCH = 4096
# Cut windows per streamed fetch (rows_per_fetch): 8 MiB is 35 k windows of 60 values, where
# Ray Data's fixed cost per fetch is under a fifth of the windows' own CPU in the training
# process (docs/data.md); a few fetches in flight stay small beside a worker's memory.
FETCH_BYTES = 8 << 20


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

    def prime(self) -> None:
        """Start what the first batch needs before any clock runs (a streamed pipeline)."""

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

    def prime(self) -> None:
        pass  # in memory already

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


class WindowCollate:
    """Chunk rows (a pyarrow table from Ray Data) to training tensors: windows (rows x L, T, F)
    normalised with the train statistics and targets (rows x L,), shuffled within the fetch
    when asked. Ray Data runs it in its prefetch threads (iter_torch_batches' collate_fn), so
    cutting and normalising overlap the training step instead of adding to it; the columns are
    read straight from Arrow buffers, without a per-row Python object."""

    def __init__(self, ingest: RayDataIngest, epoch: int) -> None:
        self.window, self.features, self.task = ingest.window, ingest.n_features, ingest.task
        self.row_values, self.length = ingest.meta.row_values, ingest.meta.chunk_windows
        self.mu, self.sd, self.y_mu, self.y_sd = ingest._mu, ingest._sd, ingest._y_mu, ingest._y_sd
        self.shuffle, self.seed, self.rank, self.epoch = (ingest.shuffle, ingest.seed,
                                                          ingest.rank, epoch)

    def __call__(self, table: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = _column(table, "x", self.row_values).view(len(table), -1, self.features)
        y = _column(table, "y", self.length)
        x = (x - self.mu) / self.sd
        # (rows, L, T, F): a view of the rows; reshape copies once, into training order
        windows = x.unfold(1, self.window, 1).permute(0, 1, 3, 2)
        X = windows.reshape(-1, self.window, self.features)
        Y = y.reshape(-1)
        if self.task == "regression":
            Y = (Y - self.y_mu) / self.y_sd
        if self.shuffle:
            first = int(table.column("chunk")[0].as_py())
            order = shuffle_order(len(X), self.seed, self.rank, self.epoch * 100_003 + first)
            X, Y = X[order], Y[order]
        return X, Y


def arrow_collate(fn: WindowCollate) -> Any:
    """fn as the Arrow-table collate Ray Data recognises (a callable it does not know gets
    numpy batches, with every fixed-size list row turned into an object first)."""
    from ray.data.collate_fn import ArrowBatchCollateFn

    class Collate(ArrowBatchCollateFn):
        def __call__(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return fn(batch)

    return Collate()


class RayDataIngest:
    """A rank's stream of a Parquet dataset. The train split arrives through Ray Data as this
    rank's equal share of chunk rows (streaming_split with equal=True), so every rank has the
    same number of windows and steps; validation and test are sharded by file (or by chunk
    index) and read directly. Ray Data's prefetch threads cut the windows (WindowCollate): the
    training thread only slices ready tensors into batches."""

    name = "ray_data"

    def __init__(self, meta: ParquetDataset, session: Any, batch: int, device: torch.device,
                 prefetch: int = 2, shuffle: bool = False, seed: int = 0) -> None:
        self.meta, self.session, self.batch, self.device = meta, session, batch, device
        # At least one batch prefetched: the collate runs in Ray Data's threads only then.
        self.prefetch, self.shuffle, self.seed = max(1, prefetch), shuffle, seed
        self.rank, self.world = session.rank, session.world_size
        self.task, self.window, self.n_features = meta.task, meta.window, meta.features
        self.n_local = meta.splits["train"].chunks // self.world * meta.chunk_windows
        self.steps_per_epoch = -(-self.n_local // batch)
        self.dataset_mib = meta.splits["train"].chunks * meta.row_values * 4 / 2**20
        self.rows_per_fetch = rows_per_fetch(batch, meta.chunk_windows,
                                             4 * meta.window * meta.features)
        stats = meta.norm_stats
        self._mu = torch.tensor(stats["mu"], dtype=torch.float32)
        self._sd = torch.tensor(stats["sd"], dtype=torch.float32)
        self._y_mu, self._y_sd = stats.get("y_mu", 0.0), stats.get("y_sd", 1.0)
        self.first_batch_s = None
        self.first_batch_at: float | None = None  # epoch seconds the first batch was ready
        self._epochs_started = 0
        self._primed: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _train_fetches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's fetches, its first one already taken: Ray Data starts its prefetch
        threads at the first fetch, and starts them here with the process's cores, not only
        the pinned training thread's (--pin_threads), so that cutting windows overlaps the
        step on another core."""
        shard = self.session.dataset_shard("train")
        rows = self.rows_per_fetch
        with every_core():
            fetches = iter(shard.iter_torch_batches(
                batch_size=rows, prefetch_batches=self.prefetch,
                collate_fn=arrow_collate(WindowCollate(self, epoch)),
                local_shuffle_buffer_size=4 * rows if self.shuffle else None,
                local_shuffle_seed=self.seed + self._epochs_started if self.shuffle else None))
            first = next(fetches, None)
        return fetches if first is None else itertools.chain([first], fetches)

    def prime(self) -> None:
        """Start the first epoch's pipeline and wait for its first fetch, before any clock runs:
        Ray Data's processes and first blocks are paid for here (first_batch_s), not inside a
        measured epoch or window."""
        asked = time.perf_counter()
        self._epochs_started += 1
        self._primed = self._train_fetches(1)
        self.first_batch_s, self.first_batch_at = time.perf_counter() - asked, time.time()

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        primed, self._primed = self._primed, None
        # the primed stream is epoch 1's; a resumed run's first epoch is later, which only a
        # shuffled stream can tell apart
        if primed is not None and (epoch == 1 or not self.shuffle):
            fetches = primed
        else:
            self._epochs_started += 1
            fetches = self._train_fetches(epoch)
        seen = 0
        for x, y in batches_of(fetches, self.batch):
            seen += len(y)
            yield self._to_device(x, y)
        self._check_share(seen)

    def _windows(self, fetched: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Normalised windows (rows, L, T, F) as a view of the rows, targets, raw last values
        (evaluation: its batches are read here, not through Ray Data)."""
        x = fetched["x"].view(len(fetched["x"]), -1, self.n_features)
        last = unfold(fetched["x"], self.window, self.n_features)[:, :, -1, 0]
        x = (x - self._mu) / self._sd
        windows = x.unfold(1, self.window, 1).permute(0, 1, 3, 2)
        y = fetched["y"]
        if self.task == "regression":
            y = (y - self._y_mu) / self._y_sd
        return windows, y, last

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
    """A fixed-size list column of a record batch or table as a (rows, width) float tensor."""
    column = batch.column(name)
    if hasattr(column, "combine_chunks"):  # a table's ChunkedArray
        column = column.combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False)
    return as_tensor(values.reshape(len(batch), width)).float()


def rows_per_fetch(batch: int, chunk_windows: int, window_bytes: int) -> int:
    """Chunk rows per fetch: about FETCH_BYTES of cut windows and at least four training
    batches, rounded so that a fetch holds whole batches where that costs at most twice as
    many rows (then no batch straddles two fetches and none is copied together from two).

    Ray Data charges a fetch a fixed cost whatever its size (its batcher, formatting and thread
    hand-off: 1.4-2.1 ms of the machine's CPU here, about 1.2 ms in the training process,
    docs/data.md). At four batches of 1024 windows that was about 60% of the ingest's CPU in
    the training process, and on two cores that CPU is taken from the training step."""
    windows = max(4 * batch, FETCH_BYTES // window_bytes)
    rows = max(1, math.ceil(windows / chunk_windows))
    whole = batch // math.gcd(batch, chunk_windows)  # rows whose windows are whole batches
    if whole <= 2 * rows:
        rows = max(whole, rows // whole * whole)
    return rows


def batches_of(fetches: Iterator[tuple[torch.Tensor, torch.Tensor]],
               batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of `batch` windows from fetches of any size: slices (views) of each fetch, and
    where a batch straddles two fetches, one small copy of that batch only."""
    tail_x = tail_y = None
    for X, Y in fetches:
        lo = 0
        if tail_x is not None:
            need = batch - len(tail_x)
            X0, Y0 = torch.cat([tail_x, X[:need]]), torch.cat([tail_y, Y[:need]])
            if len(X0) < batch:  # this fetch was smaller than what the batch still needed
                tail_x, tail_y = X0, Y0
                continue
            yield X0, Y0
            tail_x = tail_y = None
            lo = need
        full = lo + (len(X) - lo) // batch * batch
        for i in range(lo, full, batch):
            yield X[i:i + batch], Y[i:i + batch]
        if full < len(X):
            tail_x, tail_y = X[full:], Y[full:]
    if tail_x is not None and len(tail_x):
        yield tail_x, tail_y


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

    datasets = {"train": read_train_split(data)}
    if cfg.data.cache_train:
        datasets["train"] = cache_split(datasets["train"], data)
    if cfg.data.shuffle_train:
        datasets["train"] = datasets["train"].randomize_block_order(seed=cfg.train.seed)
    # Blocks in file order: with one worker the stream is the memory path's order exactly, and
    # a run repeats itself (with several, which rank gets which block is Ray Data's choice).
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True
    return {"datasets": datasets,
            "dataset_config": ray.train.DataConfig(datasets_to_split=["train"],
                                                   execution_options={"train": options})}


def cache_split(ds: Any, data: ParquetDataset) -> Any:
    """The split read once into Ray's object store, its blocks in file order (as streamed).

    Measured (docs/data.md): a streamed epoch re-runs the Parquet read tasks and Ray Data's
    SplitCoordinator executes again; cached, each epoch only hands out blocks already in the
    store. What does not fit in half the store is refused: it would spill to disk every
    epoch, slower than reading the Parquet files."""
    import ray

    row_bytes = 4 * (data.row_values + data.chunk_windows)  # x's stretch and y, float32
    check_cache_fits(data.splits["train"].chunks * row_bytes,
                     ray.cluster_resources().get("object_store_memory", 0))
    ds.context.execution_options.preserve_order = True
    return ds.materialize()


def check_cache_fits(split_bytes: float, store_bytes: float) -> None:
    if split_bytes > store_bytes / 2:
        raise UserError(f"--cache-train: the train split ({split_bytes / 2**20:,.0f} MiB) does "
                        f"not fit in half of Ray's object store ({store_bytes / 2**20:,.0f} "
                        "MiB); stream it without --cache-train, or give Ray a bigger store "
                        "(--object-store-mib)")


def read_train_split(data: ParquetDataset) -> Any:
    """The train split as a Ray Data dataset, read by Ray Data's V1 Parquet datasource.

    Ray 2.60's default (V2) reader provisions a pool of FooterReader actors at every
    execution, i.e. every epoch of a streamed split, each a new Python process: measured here
    (4 files, 2 cores) an epoch restart of 4-5 s against 0.37 s with V1, and a first batch of
    10 s against 4.4 s (docs/data.md). Our files are written by `raybench.data` with known
    row groups, so the V2 reader's footer statistics buy nothing. The switch is read when the
    read is planned, so it is set around this call only and the user's DataContext is left
    as it was."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        # Read tasks take a quarter CPU: training workers hold the whole CPUs they reserved.
        return ray.data.read_parquet(data.files("train"), num_cpus=0.25)
    finally:
        ctx.use_datasource_v2 = before
