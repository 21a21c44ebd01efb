"""Data: the NPZ contract (npz), price sources (sources), in-memory datasets (dataset) and the
batches a worker trains on (ingest)."""

from __future__ import annotations

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
from raybench.data.sources import (
    default_npz,
    prepare,
    resolve_npz,
    split_test,
    synthetic,
    window_series,
)

__all__ = ["ARRAY_FIELDS", "KEYS", "Dataset", "build_dataset", "check_batches", "default_npz",
           "infer_task", "load_configured", "load_dataset", "load_npz", "prepare",
           "resolve_npz", "save_dataset", "save_npz", "shard_bounds", "split_test", "split_valid",
           "synthetic", "validate_arrays", "window_series"]


def load_configured(data_cfg, model_kind: str,
                    say: Callable[[str], None] = print) -> tuple[Dataset, Path]:
    """The Dataset a DataConfig asks for, and the NPZ it came from: its npz_path, or the S&P 500
    NPZ prepared once into the cache. The config is left as it was (see config.resolve)."""
    npz_path, note = resolve_npz(data_cfg.npz_path, data_cfg.task, model_kind, data_cfg.window)
    if note:
        say(note)
    data = build_dataset(load_npz(npz_path), data_cfg.task, data_cfg.valid_from_train,
                         data_cfg.norm, str(npz_path))
    return data, npz_path
