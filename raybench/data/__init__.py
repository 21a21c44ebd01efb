"""Data: the NPZ contract (npz), price sources (sources), in-memory datasets (dataset) and the
batches a worker trains on (ingest)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from raybench.data.dataset import (
    ARRAY_FIELDS,
    Dataset,
    build_dataset,
    check_batches,
    load_dataset,
    save_dataset,
    shard_bounds,
    split_valid,
)
from raybench.data.npz import KEYS, infer_task, load_npz, save_npz, validate_arrays
from raybench.data.parquet import ParquetDataset, describe, load_memory, load_meta
from raybench.data.sources import (
    default_npz,
    default_task,
    prepare,
    resolve_npz,
    split_test,
    synthetic,
    window_series,
)
from raybench.errors import UserError

__all__ = ["ARRAY_FIELDS", "KEYS", "Dataset", "ParquetDataset", "Source", "build_dataset",
           "check_batches", "check_source_batches", "default_npz", "default_task",
           "describe_source", "infer_task", "load_configured", "load_dataset", "load_npz",
           "load_source", "prepare", "resolve_npz", "save_dataset", "save_npz", "shard_bounds",
           "split_test", "split_valid", "synthetic", "train_windows", "validate_arrays",
           "window_series"]


def load_configured(data_cfg, model_kind: str,
                    say: Callable[[str], None] = print) -> tuple[Dataset, Path]:
    """The Dataset a DataConfig's NPZ asks for, and the NPZ it came from: its npz_path, or the
    S&P 500 NPZ prepared once into the cache. The config is left as it was (see
    config.resolve)."""
    npz_path, note = resolve_npz(data_cfg.npz_path, data_cfg.task, model_kind, data_cfg.window)
    if note:
        say(note)
    data = build_dataset(load_npz(npz_path), data_cfg.task, data_cfg.valid_from_train,
                         data_cfg.norm, str(npz_path))
    return data, npz_path


Source = Dataset | ParquetDataset


def load_source(cfg, say: Callable[[str], None] = print) -> tuple[Source, str, object]:
    """The data a config asks for, where it came from, and the config resolved against it: an
    in-memory Dataset (an NPZ, or a Parquet dataset loaded whole for --ingest memory), or a
    Parquet dataset's metadata for --ingest ray_data. Every mistake fails here, before Ray."""
    from raybench.config import resolve

    d = cfg.data
    if d.npz_path and d.parquet_dir:
        raise UserError("give --npz_path or --parquet_dir, not both")
    if d.ingest == "ray_data" and not d.parquet_dir:
        raise UserError("--ingest ray_data streams a Parquet dataset: give --parquet_dir (write "
                        "one with python -m raybench.data prepare --format parquet)")
    if d.cache_train and d.ingest != "ray_data":
        raise UserError("--cache-train keeps a streamed train split in Ray's object store: it "
                        "needs --ingest ray_data")
    if not d.parquet_dir:
        data, npz_path = load_configured(d, cfg.model.kind, say)
        resolved = resolve(cfg, npz_path=npz_path, task=data.task)
        resolved.data.window = data.window  # the data's windows, whatever the config said
        return data, str(npz_path), resolved
    meta = load_meta(d.parquet_dir)
    _check_parquet_config(cfg, meta)
    if d.norm == "none":
        meta = dataclasses.replace(meta, norm_stats={"mu": [0.0] * meta.features,
                                                     "sd": [1.0] * meta.features})
    say(f"Parquet dataset {describe(meta)}")
    resolved = resolve(cfg, task=meta.task)
    resolved.data.window = meta.window
    return (load_memory(meta) if d.ingest == "memory" else meta), meta.path, resolved


def _check_parquet_config(cfg, meta: ParquetDataset) -> None:
    if cfg.data.task and cfg.data.task != meta.task:
        raise UserError(f"{meta.path}: the dataset was prepared for {meta.task}, but the task "
                        f"is {cfg.data.task}")
    if abs(cfg.data.valid_from_train - meta.valid_ratio) > 1e-12:
        raise UserError(f"{meta.path}: the dataset's validation split was fixed at "
                        f"{meta.valid_ratio} when it was prepared (data.valid_from_train is "
                        f"{cfg.data.valid_from_train}); prepare it again to change it")


def train_windows(source: Source, workers: int) -> int:
    """Training windows each of `workers` ranks gets per epoch."""
    if isinstance(source, ParquetDataset):
        return source.splits["train"].chunks // workers * source.chunk_windows
    return len(source.X_train) // workers


def check_source_batches(source: Source, workers: int, batch_size: int, label: str) -> None:
    """Every worker needs at least one full batch of its shard."""
    check_batches(train_windows(source, workers) * workers, workers, batch_size, label)


def describe_source(source: Source) -> str:
    if isinstance(source, ParquetDataset):
        return (f"train {source.splits['train'].windows:,} windows (streamed), valid "
                f"{source.splits['valid'].windows:,}, test {source.splits['test'].windows:,} "
                f"windows of {source.window} x {source.features}, task {source.task}")
    return (f"train {source.X_train.shape}, valid {source.X_valid.shape}, test "
            f"{source.X_test.shape}, task {source.task}")
