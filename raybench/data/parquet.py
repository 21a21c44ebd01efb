"""Parquet datasets for data larger than memory: series stored once, windowed while reading.

Layout of a dataset directory:

    raybench_dataset.json        task, window T, features F, chunk length L, the split
                                 boundaries, train-split normalisation statistics
    train/part-00000.parquet ... K shards, chronological
    valid/part-00000.parquet ...
    test/part-00000.parquet ...

Every row is a chunk of L consecutive windows of one series: `x` holds the (L + T - 1) x F
values those windows cover (time-major, raw, not normalised), `y` the L targets, `n` how many of
the L windows are real (the last chunk of a validation or test segment is padded; training
chunks are always full, so that every rank gets the same number of windows), `chunk` the chunk's
index within its split (a stable key for sharding and ordering evaluation). Windows stored whole
would repeat every value T times; a chunk repeats only its T - 1 halo values. `--chunk-windows 1`
writes the whole-window layout (one window per row), for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from raybench.errors import UserError
from raybench.results import SCHEMA_VERSION

META = "raybench_dataset.json"
SPLITS = ("train", "valid", "test")
COLUMNS = ("x", "y", "n", "chunk")


@dataclass
class SplitInfo:
    files: list[str] = field(default_factory=list)  # relative to the dataset directory
    chunks: int = 0
    windows: int = 0  # real windows (padding excluded)
    dropped_windows: int = 0  # train only: segment tails shorter than a chunk


@dataclass
class ParquetDataset:
    """A prepared Parquet dataset (its metadata file) and where it lives."""

    path: str
    task: str
    window: int
    features: int
    chunk_windows: int
    valid_ratio: float
    test_ratio: float
    source: str
    norm_stats: dict  # mu, sd per feature over the train split's values; y_mu, y_sd
    majority: float | None  # classification: the train split's majority class
    splits: dict[str, SplitInfo]

    @property
    def n_features(self) -> int:
        """F under the name an in-memory Dataset uses, so callers need not ask which they hold."""
        return self.features

    @property
    def row_values(self) -> int:
        return (self.chunk_windows + self.window - 1) * self.features

    def files(self, split: str) -> list[str]:
        return [str(Path(self.path) / f) for f in self.splits[split].files]


# ------------------------------------------------------------------ planning


@dataclass
class Chunk:
    split: str
    series: int
    start: int  # first window within the series
    windows: int  # real windows (<= chunk length)


def split_bounds(total: int, valid_ratio: float, test_ratio: float) -> tuple[int, int]:
    """Global window indices where validation and test begin (chronological)."""
    test_start = total - int(round(total * test_ratio))
    valid_start = test_start - int(round(test_start * valid_ratio))
    if not 0 < valid_start < test_start < total:
        raise UserError(f"{total} windows leave an empty train, validation or test split "
                        f"(valid ratio {valid_ratio}, test ratio {test_ratio})")
    return valid_start, test_start


def plan_chunks(lengths: list[int], window: int, chunk: int, valid_ratio: float,
                test_ratio: float) -> list[Chunk]:
    """Every chunk of every split, in order. A chunk never crosses a series or a split
    boundary; training segments keep full chunks only."""
    per_series = [m - window for m in lengths]
    if min(per_series) < 1:
        short = lengths[per_series.index(min(per_series))]
        raise UserError(f"a series of {short} values is too short for windows of {window} "
                        "(it needs at least window + 1 values)")
    valid_start, test_start = split_bounds(sum(per_series), valid_ratio, test_ratio)
    bounds = {"train": (0, valid_start), "valid": (valid_start, test_start),
              "test": (test_start, math.inf)}
    out, offset = [], 0
    for s, w in enumerate(per_series):
        for split, (lo, hi) in bounds.items():
            a, b = max(lo, offset) - offset, min(hi, offset + w) - offset
            for start in range(a, b, chunk):
                n = min(chunk, b - start)
                if split != "train" or n == chunk:
                    out.append(Chunk(split, s, start, n))
        offset += w
    return out


# ------------------------------------------------------------------ writing


class _SplitWriter:
    """Writes one split's chunks into K contiguous shards, buffering at most a row group."""

    def __init__(self, root: Path, split: str, total_chunks: int, shards: int, row_values: int,
                 chunk: int, features: int, compression: str = "snappy") -> None:
        self.root, self.split, self.total = root, split, total_chunks
        self.compression = compression
        self.shards = max(1, min(shards, total_chunks))
        self.row_values, self.chunk, self.features = row_values, chunk, features
        self.info = SplitInfo()
        self.writer, self.current = None, -1
        self.rows: list[tuple[np.ndarray, np.ndarray, int]] = []
        # Row groups of about 64 MiB of x values: large reads, bounded memory.
        self.group_rows = max(1, (64 << 20) // (4 * row_values))
        (root / split).mkdir(parents=True, exist_ok=True)

    def add(self, x: np.ndarray, y: np.ndarray, n: int) -> None:
        shard = self.info.chunks * self.shards // self.total
        if shard != self.current:
            self._open(shard)
        self.rows.append((x, y, n))
        self.info.chunks += 1
        self.info.windows += n
        if len(self.rows) >= self.group_rows:
            self._flush()

    def _open(self, shard: int) -> None:
        import pyarrow.parquet as pq

        self.close()
        name = f"{self.split}/part-{shard:05d}.parquet"
        self.writer = pq.ParquetWriter(str(self.root / name), _schema(self.row_values,
                                                                        self.chunk,
                                                                        self.features),
                                      compression=self.compression)
        self.info.files.append(name)
        self.current = shard

    def _flush(self) -> None:
        import pyarrow as pa

        if not self.rows:
            return
        first = self.info.chunks - len(self.rows)
        x = np.stack([r[0] for r in self.rows]).astype(np.float32)
        y = np.stack([r[1] for r in self.rows]).astype(np.float32)
        table = pa.table({
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), self.row_values),
            "y": pa.FixedSizeListArray.from_arrays(pa.array(y.ravel()), self.chunk),
            "n": pa.array([r[2] for r in self.rows], pa.int32()),
            "chunk": pa.array(np.arange(first, first + len(self.rows)), pa.int64())},
            schema=_schema(self.row_values, self.chunk, self.features))
        self.writer.write_table(table)
        self.rows = []

    def close(self) -> None:
        if self.writer is not None:
            self._flush()
            self.writer.close()
            self.writer = None


def _schema(row_values: int, chunk: int, features: int):
    import pyarrow as pa

    return pa.schema([("x", pa.list_(pa.float32(), row_values)),
                      ("y", pa.list_(pa.float32(), chunk)), ("n", pa.int32()),
                      ("chunk", pa.int64())],
                     metadata={b"raybench.features": str(features).encode()})


class _Stats:
    """Streaming mean and variance (float64 sums) of train values and targets."""

    def __init__(self, features: int) -> None:
        self.n = 0
        self.s = np.zeros(features)
        self.ss = np.zeros(features)
        self.yn, self.ys, self.yss = 0, 0.0, 0.0

    def add_x(self, values: np.ndarray) -> None:
        self.n += len(values)
        self.s += values.sum(axis=0)
        self.ss += (values.astype(np.float64) ** 2).sum(axis=0)

    def add_y(self, y: np.ndarray) -> None:
        self.yn += len(y)
        self.ys += float(y.sum())
        self.yss += float((y.astype(np.float64) ** 2).sum())

    def result(self, task: str, norm: str) -> tuple[dict, float | None]:
        mu = self.s / self.n
        sd = np.sqrt(np.maximum(self.ss / self.n - mu**2, 0.0))
        y_mu = self.ys / self.yn
        y_sd = math.sqrt(max(self.yss / self.yn - y_mu**2, 0.0))
        majority = float(y_mu >= 0.5) if task == "classification" else None
        if norm != "zscore":
            return {"mu": [0.0] * len(mu), "sd": [1.0] * len(mu)}, majority
        stats = {"mu": mu.tolist(), "sd": np.where(sd > 0, sd, 1.0).tolist()}
        if task == "regression":
            stats.update(y_mu=y_mu, y_sd=y_sd if y_sd > 0 else 1.0)
        return stats, majority


def targets(series: np.ndarray, window: int, task: str) -> np.ndarray:
    """The target of every window of a series: the next value of feature 0, or whether it is
    above the window's last value."""
    nxt = series[window:, 0]
    if task == "regression":
        return nxt.astype(np.float32)
    return (nxt > series[window - 1:-1, 0]).astype(np.float32)


def write_dataset(series: Iterator[np.ndarray], lengths: list[int], *, task: str, window: int,
                  out: str | Path, shards: int, chunk: int, valid_ratio: float,
                  test_ratio: float, source: str, norm: str = "zscore",
                  compression: str = "snappy") -> ParquetDataset:
    """Write series (each an (m, F) array, produced one at a time) as a chunked Parquet
    dataset; memory stays near one series plus one row group per split."""
    out = _fresh_dir(out)
    plan = plan_chunks(lengths, window, chunk, valid_ratio, test_ratio)
    features = None
    writers: dict[str, _SplitWriter] = {}
    stats = None
    by_series: dict[int, list[Chunk]] = {}
    for c in plan:
        by_series.setdefault(c.series, []).append(c)
    for s, values in enumerate(series):
        values = np.asarray(values, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        if features is None:
            features = values.shape[1]
            stats = _Stats(features)
            counts = {sp: sum(c.split == sp for c in plan) for sp in SPLITS}
            writers = {sp: _SplitWriter(out, sp, counts[sp], shards if sp == "train" else
                                        max(1, shards // 8), (chunk + window - 1) * features,
                                        chunk, features, compression)
                       for sp in SPLITS if counts[sp]}
        _write_series(values, by_series.get(s, []), window, chunk, task, writers, stats)
    for w in writers.values():
        w.close()
    norm_stats, majority = stats.result(task, norm)
    dropped = sum(m - window for m in lengths) - sum(c.windows for c in plan)
    splits = {sp: w.info for sp, w in writers.items()}
    splits["train"].dropped_windows = dropped
    meta = ParquetDataset(path=str(out.resolve()), task=task, window=window, features=features,
                          chunk_windows=chunk, valid_ratio=valid_ratio, test_ratio=test_ratio,
                          source=source, norm_stats=norm_stats, majority=majority,
                          splits=splits)
    _write_meta(meta)
    return meta


def _write_series(values: np.ndarray, chunks: list[Chunk], window: int, chunk: int, task: str,
                  writers: dict[str, _SplitWriter], stats: _Stats) -> None:
    y_all = targets(values, window, task)
    row_len = chunk + window - 1
    train_end = None  # where the previous train chunk's windows ended
    for c in chunks:
        seg = values[c.start:c.start + c.windows + window - 1]
        y = y_all[c.start:c.start + c.windows]
        if c.split == "train":
            # Each value once: a chunk that follows another repeats its last T - 1 values.
            stats.add_x(seg[window - 1:] if c.start == train_end else seg)
            stats.add_y(y)
            train_end = c.start + c.windows
        x = np.zeros((row_len, values.shape[1]))
        x[:len(seg)] = seg
        y_row = np.zeros(chunk, dtype=np.float32)
        y_row[:len(y)] = y
        writers[c.split].add(x.ravel(), y_row, c.windows)


def _fresh_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; a Parquet dataset is a directory")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; give a new directory for the dataset")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: a parent of it is a file") from None
    return out


def _write_meta(meta: ParquetDataset) -> None:
    from raybench.artifacts import write_json

    doc = {"schema_version": SCHEMA_VERSION, **asdict(meta)}
    doc.pop("path")
    write_json(Path(meta.path) / META, doc)


# ------------------------------------------------------------------ reading


def load_meta(directory: str | Path) -> ParquetDataset:
    """A prepared dataset's metadata, after checking every shard's schema: one line and exit
    2 for a directory that is not one, before any worker starts."""

    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--parquet_dir {directory}: not a directory")
    meta_path = directory / META
    if not meta_path.is_file():
        found = "no Parquet files" if not any(directory.rglob("*.parquet")) else \
            f"Parquet files but no {META}"
        raise UserError(f"{directory}: not a raybench Parquet dataset ({found}); write one with "
                        "python -m raybench.data prepare --format parquet --out DIR")
    from raybench.results import read_json

    doc = read_json(meta_path)
    doc.pop("schema_version")
    splits = {k: SplitInfo(**v) for k, v in doc.pop("splits").items()}
    meta = ParquetDataset(path=str(directory.resolve()), splits=splits, **doc)
    for split in SPLITS:
        if split not in meta.splits or not meta.splits[split].files:
            raise UserError(f"{directory}: the {split} split has no Parquet files")
        rows = 0
        for f in meta.files(split):
            if not Path(f).is_file():
                raise UserError(f"{directory}: {f} is listed in {META} but missing")
            schema, n = _footer(f)
            _check_schema(schema, f, meta)
            rows += n
        if rows != meta.splits[split].chunks:
            raise UserError(f"{directory}: the {split} split's files hold {rows} chunk rows, "
                            f"{META} says {meta.splits[split].chunks}: a shard was cut short or "
                            "replaced; prepare the dataset again")
    return meta


def _footer(path: str) -> tuple[object, int]:
    """A shard's schema and row count from its footer: a truncated or damaged file fails here,
    in one line naming it, not inside a worker after Ray started."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as pf:
            return pf.schema_arrow, pf.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise UserError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})"
                        ) from None


def _check_schema(schema, path: str, meta: ParquetDataset) -> None:
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise UserError(f"{path}: Parquet schema has no column {missing[0]!r} (a raybench "
                        f"dataset has {', '.join(COLUMNS)}; found {', '.join(schema.names)})")
    features = int((schema.metadata or {}).get(b"raybench.features", b"0"))
    if features != meta.features:
        raise UserError(f"{path}: {features} feature(s) per time step, but the dataset has "
                        f"{meta.features}; every shard must have the same features")
    width = getattr(schema.field("x").type, "list_size", None)
    if width != meta.row_values:
        raise UserError(f"{path}: x holds {width} values per row, but chunks of "
                        f"{meta.chunk_windows} windows of {meta.window} x {meta.features} need "
                        f"{meta.row_values}")


def unfold(x: torch.Tensor, window: int, features: int) -> torch.Tensor:
    """(rows, (L + T - 1) * F) chunk values -> (rows, L, T, F) windows, as a view (no copy)."""
    rows = x.reshape(len(x), -1, features)
    return rows.unfold(1, window, 1).permute(0, 1, 3, 2)


def read_split(meta: ParquetDataset, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Every real window of a split in order, raw: X (N, T, F) float32, y (N,). For the memory
    ingest of a Parquet dataset; holds the whole split in memory."""
    import pyarrow.parquet as pq

    from raybench.data.dataset import as_tensor

    xs, ys = [], []
    for f in meta.files(split):
        table = pq.read_table(f, columns=list(COLUMNS))
        x = as_tensor(table.column("x").combine_chunks().flatten().to_numpy()
                      .reshape(len(table), -1))
        y = table.column("y").combine_chunks().flatten().to_numpy().reshape(len(table), -1)
        n = table.column("n").to_numpy()
        windows = unfold(x, meta.window, meta.features)
        for i in np.argsort(table.column("chunk").to_numpy(), kind="stable"):
            xs.append(windows[i, :n[i]].numpy())
            ys.append(y[i, :n[i]])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)


def load_memory(meta: ParquetDataset):
    """The whole dataset as an in-memory Dataset, normalised with the dataset's own statistics
    (so that --ingest memory and --ingest ray_data train on identical windows)."""
    from raybench.data.dataset import Dataset, baselines, scale_x, scale_y

    arrays = {split: read_split(meta, split) for split in SPLITS}
    stats = meta.norm_stats
    y_train = arrays["train"][1]
    def base(split):  # noqa: E306
        X = arrays[split][0]
        if meta.task == "regression":
            return baselines(meta.task, X, y_train, stats)
        return np.full(len(X), meta.majority, dtype=np.float32)
    return Dataset(task=meta.task, X_train=scale_x(arrays["train"][0], stats),
                   y_train=scale_y(y_train, stats),
                   X_valid=scale_x(arrays["valid"][0], stats),
                   y_valid=scale_y(arrays["valid"][1], stats),
                   X_test=scale_x(arrays["test"][0], stats),
                   y_test=scale_y(arrays["test"][1], stats), norm_stats=stats,
                   baseline_valid=base("valid"), baseline_test=base("test"))


def describe(meta: ParquetDataset) -> str:
    t = meta.splits["train"]
    size = sum(Path(f).stat().st_size for s in SPLITS for f in meta.files(s)) / 2**20
    return (f"{meta.path}: {meta.task}, windows of {meta.window} x {meta.features}, chunks of "
            f"{meta.chunk_windows}; train {t.windows:,} windows in {t.chunks:,} chunks / "
            f"{len(t.files)} file(s) ({t.dropped_windows:,} dropped at segment ends), valid "
            f"{meta.splits['valid'].windows:,}, test {meta.splits['test'].windows:,}; "
            f"{size:,.1f} MiB on disk")

