"""The NPZ contract: X_train (N_train, T, F) float32, y_train (N_train,), X_test (N_test, T, F)
float32, y_test (N_test,). Regression: y float. Classification: y integer in {0, 1}.
Feature 0 is the series the target continues; the persistence baseline relies on that."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from raybench.errors import UserError, missing_file

KEYS = ("X_train", "y_train", "X_test", "y_test")


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate an NPZ file against the contract (pickles refused)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"NPZ path {path} is a directory, not an NPZ file")
    if not path.is_file():
        raise missing_file(path, "NPZ file")
    with path.open("rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # np.load would take any other file for a pickle
            raise UserError(f"{path}: not an NPZ file (expected a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in KEYS if k not in npz.files]
            if missing:
                raise UserError(f"{path}: missing key {missing[0]!r} (an NPZ needs "
                                f"{', '.join(KEYS)}; found {', '.join(npz.files) or 'none'})")
            arrays = {k: npz[k] for k in KEYS}
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable NPZ file ({exc})") from None
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise UserError(f"{path}: {exc}") from None
    validate_arrays(arrays, str(path))
    return arrays


def _validate_split(X: np.ndarray, y: np.ndarray, split: str, source: str) -> None:
    if X.ndim != 3:
        raise UserError(f"{source}: X_{split} must be 3-D (N, T, F), got shape {X.shape}")
    if y.ndim != 1:
        raise UserError(f"{source}: y_{split} must be 1-D (N,), got shape {y.shape}")
    if len(X) != len(y):
        raise UserError(f"{source}: X_{split} has {len(X)} samples but y_{split} has {len(y)}")
    if len(X) == 0:
        raise UserError(f"{source}: X_{split} is empty")
    if 0 in X.shape[1:]:
        raise UserError(f"{source}: X_{split} windows are (T, F) = {X.shape[1:]}; a window needs "
                        "at least one time step and one feature")
    if not np.issubdtype(X.dtype, np.floating):
        raise UserError(f"{source}: X_{split} must be float32, got {X.dtype}")
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
        raise UserError(f"{source}: y_{split} must be numeric, got {y.dtype}")
    if not np.isfinite(X).all():
        raise UserError(f"{source}: X_{split} contains NaN or inf")
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise UserError(f"{source}: y_{split} contains NaN or inf")


def validate_arrays(a: dict[str, np.ndarray], source: str = "data") -> None:
    for split in ("train", "test"):
        _validate_split(a[f"X_{split}"], a[f"y_{split}"], split, source)
    if a["X_train"].shape[1:] != a["X_test"].shape[1:]:
        raise UserError(f"{source}: X_train windows are (T, F) = {a['X_train'].shape[1:]} but "
                        f"X_test windows are {a['X_test'].shape[1:]}; T and F must match")


def infer_task(y_train: np.ndarray, y_test: np.ndarray, task: str | None,
               source: str = "data") -> str:
    """Integer (or bool) labels mean classification, floats regression; a task that contradicts
    y is an error."""
    integer = all(np.issubdtype(y.dtype, np.integer) or y.dtype == bool for y in (y_train, y_test))
    if integer:
        for name, y in (("y_train", y_train), ("y_test", y_test)):
            bad = np.setdiff1d(np.unique(y), [0, 1])
            if bad.size:
                raise UserError(f"{source}: {name} holds labels {bad[:5].tolist()} outside "
                                "{0, 1}; classification needs binary labels")
        if task == "regression":
            raise UserError(f"{source}: task is regression but y holds integer class labels "
                            "{0, 1}; regression needs float targets (or use --task "
                            "classification)")
        return "classification"
    if task == "classification":
        raise UserError(f"{source}: task is classification but y is {y_train.dtype} "
                        "(classification needs integer labels in {0, 1})")
    return "regression"


def save_npz(arrays: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write atomically: a partial file never sits at `out`."""
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path ending in .npz")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out}: {out.parent} is a file, not a directory") from None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
