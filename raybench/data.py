"""Data: the NPZ contract, its sources (S&P 500, synthetic GBM, CSV/Parquet), splits, z-scoring.

NPZ contract: X_train (N_train, T, F) float32, y_train (N_train,), X_test (N_test, T, F) float32,
y_test (N_test,). Regression: y float. Classification: y integer in {0, 1}.
Feature 0 is the price series the target continues; the persistence baseline relies on that.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raybench.errors import UserError, run_cli

KEYS = ("X_train", "y_train", "X_test", "y_test")
# Synthetic prices come as independent GBM paths of this many trading days (about 10 years), so
# prices stay in a realistic range however many samples are asked for.
SYNTH_PATH_DAYS = 2520


# ---------------------------------------------------------------- loading and validation

def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load and validate an NPZ file against the contract (pickles refused)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"NPZ file not found: {path}")
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


def validate_arrays(a: dict[str, np.ndarray], source: str = "data") -> None:
    for split in ("train", "test"):
        X, y = a[f"X_{split}"], a[f"y_{split}"]
        if X.ndim != 3:
            raise UserError(f"{source}: X_{split} must be 3-D (N, T, F), got shape {X.shape}")
        if y.ndim != 1:
            raise UserError(f"{source}: y_{split} must be 1-D (N,), got shape {y.shape}")
        if len(X) != len(y):
            raise UserError(f"{source}: X_{split} has {len(X)} samples but y_{split} has {len(y)}")
        if len(X) == 0:
            raise UserError(f"{source}: X_{split} is empty")
        if not np.issubdtype(X.dtype, np.floating):
            raise UserError(f"{source}: X_{split} must be float32, got {X.dtype}")
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise UserError(f"{source}: y_{split} must be numeric, got {y.dtype}")
        if not np.isfinite(X).all():
            raise UserError(f"{source}: X_{split} contains NaN or inf")
        if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
            raise UserError(f"{source}: y_{split} contains NaN or inf")
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
                            "{0, 1}; use --task classification or float targets")
        return "classification"
    if task == "classification":
        raise UserError(f"{source}: task is classification but y is {y_train.dtype} "
                        "(classification needs integer labels in {0, 1})")
    return "regression"


# ---------------------------------------------------------------- splits and normalization

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


ARRAY_FIELDS = ("X_train", "y_train", "X_valid", "y_valid", "X_test", "y_test", "baseline_valid",
                "baseline_test")


def save_dataset(ds: Dataset, directory: str | Path) -> Path:
    """Write a prepared Dataset as .npy files that other processes can memory-map."""
    import json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ARRAY_FIELDS:
        np.save(directory / f"{name}.npy", getattr(ds, name))
    (directory / "meta.json").write_text(json.dumps({"task": ds.task,
                                                     "norm_stats": ds.norm_stats}))
    return directory


def load_dataset(directory: str | Path) -> Dataset:
    """Memory-map a saved Dataset: processes on one machine share its pages."""
    import json

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


def build_dataset(arrays: dict[str, np.ndarray], task: str | None, valid_ratio: float,
                  norm: str, source: str = "data") -> Dataset:
    task = infer_task(arrays["y_train"], arrays["y_test"], task, source)
    X_all, y_all = arrays["X_train"], arrays["y_train"]
    cut = split_valid(len(X_all), valid_ratio, source)
    X_train, X_valid, X_test = X_all[:cut], X_all[cut:], arrays["X_test"]
    y_dtype = np.float32
    y_train = y_all[:cut].astype(y_dtype)
    y_valid = y_all[cut:].astype(y_dtype)
    y_test = arrays["y_test"].astype(y_dtype)

    n_feat = X_train.shape[2]
    if norm == "zscore":
        mu = X_train.mean(axis=(0, 1), dtype=np.float64)
        sd = X_train.std(axis=(0, 1), dtype=np.float64)
        sd = np.where(sd > 0, sd, 1.0)
    else:
        mu, sd = np.zeros(n_feat), np.ones(n_feat)
    stats: dict = {"mu": mu.tolist(), "sd": sd.tolist()}
    y_mu, y_sd = 0.0, 1.0
    if task == "regression" and norm == "zscore":
        y_mu, y_sd = float(y_train.mean(dtype=np.float64)), float(y_train.std(dtype=np.float64))
        y_sd = y_sd if y_sd > 0 else 1.0
        stats.update(y_mu=y_mu, y_sd=y_sd)

    def scale_x(X: np.ndarray) -> np.ndarray:
        out = np.empty(X.shape, dtype=np.float32)
        np.subtract(X, mu.astype(np.float32), out=out)
        out /= sd.astype(np.float32)
        return out

    def scale_y(y: np.ndarray) -> np.ndarray:
        return ((y - y_mu) / y_sd).astype(np.float32)

    if task == "regression":
        base_valid = scale_y(X_valid[:, -1, 0].astype(np.float64))
        base_test = scale_y(X_test[:, -1, 0].astype(np.float64))
    else:
        majority = float(y_train.mean() >= 0.5)
        base_valid = np.full(len(X_valid), majority, dtype=np.float32)
        base_test = np.full(len(X_test), majority, dtype=np.float32)
    return Dataset(task=task, X_train=scale_x(X_train), y_train=scale_y(y_train),
                   X_valid=scale_x(X_valid), y_valid=scale_y(y_valid),
                   X_test=scale_x(X_test), y_test=scale_y(y_test), norm_stats=stats,
                   baseline_valid=base_valid, baseline_test=base_test)


def check_batches(n_train: int, workers: int, batch_size: int, source: str = "data") -> None:
    """Every worker needs at least one full batch of its shard."""
    shard = n_train // workers
    if shard < batch_size:
        raise UserError(f"{source}: {n_train} training samples over {workers} worker(s) give "
                        f"{shard} per worker, fewer than batch_size {batch_size}; lower "
                        "--batch_size or --workers, or use more data")


# ---------------------------------------------------------------- sources

def window_series(prices: np.ndarray, window: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Sliding windows of `window` prices; target the next price (regression) or its direction."""
    prices = np.asarray(prices, dtype=np.float64)
    if prices.ndim != 1:
        raise UserError(f"price series must be 1-D, got shape {prices.shape}")
    if not np.isfinite(prices).all():
        raise UserError("price series contains NaN or inf")
    n = len(prices) - window
    if n < 2:
        raise UserError(f"{len(prices)} prices are too few for windows of {window}")
    X = np.lib.stride_tricks.sliding_window_view(prices[:-1], window)[:n]
    nxt = prices[window:]
    if task == "regression":
        y = nxt.astype(np.float32)
    else:
        y = (nxt > prices[window - 1:-1]).astype(np.int64)
    return X.astype(np.float32)[:, :, None], y


def split_test(X: np.ndarray, y: np.ndarray, test_ratio: float) -> dict[str, np.ndarray]:
    """Chronological split: the last `test_ratio` of samples is the test set."""
    if not 0 < test_ratio < 1:
        raise UserError(f"--test-ratio must be in (0, 1), got {test_ratio}")
    cut = len(X) - int(round(len(X) * test_ratio))
    if cut < 1 or cut >= len(X):
        raise UserError(f"test ratio {test_ratio} of {len(X)} samples leaves an empty split")
    return {"X_train": X[:cut], "y_train": y[:cut], "X_test": X[cut:], "y_test": y[cut:]}


def sp500_prices() -> np.ndarray:
    """Daily S&P 500 closes 1999-2018, shipped inside the `arch` package (no download)."""
    try:
        from arch.data import sp500
    except ImportError:
        raise UserError("the S&P 500 data ships with the 'arch' package: pip install arch"
                        ) from None
    return sp500.load()["Close"].to_numpy(dtype=np.float64)


def file_prices(path: str | Path, column: str) -> np.ndarray:
    """One price column of a user's CSV or Parquet file, in file order (oldest first)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"price file not found: {path}")
    try:
        table = pq.read_table(path) if path.suffix in (".parquet", ".pq") else pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None
    if column not in table.column_names:
        raise UserError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
    try:
        values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    except (ValueError, TypeError, pa.ArrowInvalid):
        raise UserError(f"{path}: column {column!r} is not numeric") from None
    if not np.isfinite(values).all():
        raise UserError(f"{path}: column {column!r} has missing or non-finite values")
    return values


def synthetic(samples: int, window: int, task: str, seed: int,
              test_ratio: float) -> dict[str, np.ndarray]:
    """Windows of independent geometric-Brownian-motion paths, written straight into the output
    arrays one path at a time so peak memory stays near the output size."""
    if samples < 2:
        raise UserError(f"--samples must be at least 2, got {samples}")
    rng = np.random.default_rng(seed)
    per_path = SYNTH_PATH_DAYS
    X = np.empty((samples, window, 1), dtype=np.float32)
    y = np.empty(samples, dtype=np.float32 if task == "regression" else np.int64)
    mu, sigma = 0.07 / 252, 0.18 / np.sqrt(252)  # equity-like drift and volatility per day
    filled = 0
    while filled < samples:
        take = min(per_path, samples - filled)
        steps = rng.normal(mu - sigma**2 / 2, sigma, size=take + window)
        prices = 100.0 * np.exp(np.cumsum(steps))
        Xp, yp = window_series(prices, window, task)
        X[filled:filled + take] = Xp[:take]
        y[filled:filled + take] = yp[:take]
        filled += take
    return split_test(X, y, test_ratio)


def save_npz(arrays: dict[str, np.ndarray], out: str | Path) -> Path:
    """Write atomically: a partial file never sits at `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def prepare(source: str, task: str, window: int, test_ratio: float, out: str | Path, *,
            samples: int | None = None, seed: int = 0, path: str | None = None,
            column: str = "Close") -> Path:
    if task not in ("regression", "classification"):
        raise UserError(f"--task must be regression or classification, got {task!r}")
    if window < 1:
        raise UserError(f"--window must be positive, got {window}")
    if source == "synthetic":
        if samples is None:
            raise UserError("--source synthetic needs --samples N")
        arrays = synthetic(samples, window, task, seed, test_ratio)
    else:
        if source == "sp500":
            prices = sp500_prices()
        elif source == "csv":
            if not path:
                raise UserError("--source csv needs --path FILE (.csv or .parquet)")
            prices = file_prices(path, column)
        else:
            raise UserError(f"unknown --source {source!r} (sp500, synthetic, csv)")
        arrays = split_test(*window_series(prices, window, task), test_ratio)
    return save_npz(arrays, out)


def cache_dir() -> Path:
    return Path(os.environ.get("RAYBENCH_CACHE", Path.home() / ".cache" / "raybench"))


def default_npz(task: str, window: int) -> tuple[Path, bool]:
    """The S&P 500 NPZ for a task, prepared once into the cache; returns (path, newly made)."""
    path = cache_dir() / f"sp500_{task}_w{window}.npz"
    if path.is_file():
        return path, False
    return prepare("sp500", task, window, 0.2, path), True


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m raybench.data",
        description="Prepare an NPZ of price windows (X_train, y_train, X_test, y_test).",
        epilog="example: python -m raybench.data prepare --source sp500 --task classification "
               "--out data/sp500_cls.npz",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write an NPZ from a price source",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", choices=("sp500", "synthetic", "csv"), default="sp500")
    p.add_argument("--task", choices=("regression", "classification"), default="regression")
    p.add_argument("--window", type=int, default=60, help="timesteps per sample (T)")
    p.add_argument("--test-ratio", type=float, default=0.2, help="chronological test tail")
    p.add_argument("--out", required=True, help="output .npz path")
    p.add_argument("--samples", type=int, help="synthetic: number of windows")
    p.add_argument("--seed", type=int, default=0, help="synthetic: random seed")
    p.add_argument("--path", help="csv: a .csv or .parquet price file")
    p.add_argument("--column", default="Close", help="csv: price column")
    args = parser.parse_args(argv)
    out = prepare(args.source, args.task, args.window, args.test_ratio, args.out,
                  samples=args.samples, seed=args.seed, path=args.path, column=args.column)
    arrays = load_npz(out)
    print(f"wrote {out}: X_train {arrays['X_train'].shape}, X_test {arrays['X_test'].shape}, "
          f"task {args.task}")
    return 0


if __name__ == "__main__":
    run_cli(main)


def resolve_npz(npz_path: str | None, task: str | None, model_kind: str,
                window: int) -> tuple[Path, str | None]:
    """The NPZ to train on and, when it was just prepared, a note saying where it went.
    Without a path, the seeds' pairing decides the task: the MLP regresses, the others classify."""
    if npz_path:
        return Path(npz_path), None
    task = task or ("regression" if model_kind == "mlp" else "classification")
    path, made = default_npz(task, window)
    verb = "prepared" if made else "using cached"
    return path, f"{verb} S&P 500 {task} data (arch, 1999-2018, window {window}) at {path}"


def load_configured(data_cfg, model_kind: str, say=print) -> Dataset:
    """The Dataset a config asks for (a DataConfig): its NPZ, or the S&P 500 NPZ prepared once
    into the cache. Records the resolved path and task back into the config."""
    npz_path, note = resolve_npz(data_cfg.npz_path, data_cfg.task, model_kind, data_cfg.window)
    if note:
        say(note)
    data = build_dataset(load_npz(npz_path), data_cfg.task, data_cfg.valid_from_train,
                         data_cfg.norm, str(npz_path))
    data_cfg.npz_path, data_cfg.task = str(npz_path), data.task
    return data
