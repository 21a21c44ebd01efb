"""Price sources for NPZ files: S&P 500 closes (shipped with `arch`), synthetic geometric
Brownian motion, a user's CSV/Parquet price column; windowing and the chronological test split."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from raybench.data.npz import save_npz
from raybench.errors import UserError, missing_file, printable

# Synthetic prices come as independent GBM paths of this many trading days (about 10 years), so
# prices stay in a realistic range however many samples are asked for.
SYNTH_PATH_DAYS = 2520


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
        raise missing_file(path, "price file")
    try:
        table = pq.read_table(path) if path.suffix in (".parquet", ".pq") else pacsv.read_csv(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as "
                        f"{'Parquet' if path.suffix in ('.parquet', '.pq') else 'CSV'} "
                        f"({printable(exc)})") from None
    if column not in table.column_names:
        raise UserError(f"{path}: no column {column!r} (columns: {', '.join(table.column_names)})")
    try:
        values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    except (ValueError, TypeError, pa.ArrowInvalid):
        raise UserError(f"{path}: column {column!r} is not numeric") from None
    if not np.isfinite(values).all():
        raise UserError(f"{path}: column {column!r} has missing or non-finite values")
    return values


def synthetic_lengths(samples: int, window: int) -> list[int]:
    """Lengths of the GBM paths that give `samples` windows: full paths of SYNTH_PATH_DAYS
    windows, the last one shorter."""
    if samples < 2:
        raise UserError(f"--samples must be at least 2, got {samples}")
    full, rest = divmod(samples, SYNTH_PATH_DAYS)
    return [SYNTH_PATH_DAYS + window] * full + ([rest + window] if rest else [])


def synthetic_series(samples: int, window: int, seed: int) -> Iterator[np.ndarray]:
    """Independent geometric-Brownian-motion price paths, one at a time, with equity-like drift
    and volatility per day."""
    rng = np.random.default_rng(seed)
    mu, sigma = 0.07 / 252, 0.18 / np.sqrt(252)
    for length in synthetic_lengths(samples, window):
        yield 100.0 * np.exp(np.cumsum(rng.normal(mu - sigma**2 / 2, sigma, size=length)))


def synthetic(samples: int, window: int, task: str, seed: int,
              test_ratio: float) -> dict[str, np.ndarray]:
    """Windows of independent GBM paths, written straight into the output arrays one path at
    a time so peak memory stays near the output size."""
    X = np.empty((samples, window, 1), dtype=np.float32)
    y = np.empty(samples, dtype=np.float32 if task == "regression" else np.int64)
    filled = 0
    for prices in synthetic_series(samples, window, seed):
        Xp, yp = window_series(prices, window, task)
        X[filled:filled + len(Xp)] = Xp
        y[filled:filled + len(yp)] = yp
        filled += len(Xp)
    return split_test(X, y, test_ratio)


def source_series(source: str, *, samples: int | None, window: int, seed: int,
                  path: str | None, column: str) -> tuple[Iterator[np.ndarray], list[int], str]:
    """A price source as series produced one at a time, their lengths, and a label."""
    if source == "synthetic":
        if samples is None:
            raise UserError("--source synthetic needs --samples N")
        return (synthetic_series(samples, window, seed), synthetic_lengths(samples, window),
                f"synthetic:{samples}:seed{seed}")
    if source == "sp500":
        prices, label = sp500_prices(), "sp500"
    elif source == "csv":
        if not path:
            raise UserError("--source csv needs --path FILE (.csv or .parquet)")
        prices, label = file_prices(path, column), f"file:{path}:{column}"
    else:
        raise UserError(f"unknown --source {source!r} (sp500, synthetic, csv)")
    return iter([prices]), [len(prices)], label


def prepare(source: str, task: str, window: int, test_ratio: float, out: str | Path, *,
            samples: int | None = None, seed: int = 0, path: str | None = None,
            column: str = "Close") -> Path:
    """Write an NPZ of windows from a price source."""
    _check_prepare(task, window, test_ratio)
    if source == "synthetic":
        if samples is None:
            raise UserError("--source synthetic needs --samples N")
        arrays = synthetic(samples, window, task, seed, test_ratio)
    else:
        series, _, _ = source_series(source, samples=samples, window=window, seed=seed,
                                     path=path, column=column)
        arrays = split_test(*window_series(next(series), window, task), test_ratio)
    return save_npz(arrays, out)


def prepare_parquet(source: str, task: str, window: int, test_ratio: float, out: str | Path, *,
                    shards: int, chunk_windows: int, valid_ratio: float,
                    samples: int | None = None, seed: int = 0, path: str | None = None,
                    column: str = "Close", compression: str = "snappy"):
    """Write a chunked Parquet dataset (data/parquet.py) from a price source, one series at a
    time."""
    from raybench.data.parquet import write_dataset

    _check_prepare(task, window, test_ratio)
    if shards < 1 or chunk_windows < 1:
        raise UserError(f"--shards and --chunk-windows must be positive, got {shards} and "
                        f"{chunk_windows}")
    if not 0 < valid_ratio < 1:
        raise UserError(f"--valid-ratio must be in (0, 1), got {valid_ratio}")
    series, lengths, label = source_series(source, samples=samples, window=window, seed=seed,
                                           path=path, column=column)
    return write_dataset(series, lengths, task=task, window=window, out=out, shards=shards,
                         chunk=chunk_windows, valid_ratio=valid_ratio, test_ratio=test_ratio,
                         source=label, compression=compression)


def _check_prepare(task: str, window: int, test_ratio: float) -> None:
    if task not in ("regression", "classification"):
        raise UserError(f"--task must be regression or classification, got {task!r}")
    if window < 1:
        raise UserError(f"--window must be positive, got {window}")
    if not 0 < test_ratio < 1:
        raise UserError(f"--test-ratio must be in (0, 1), got {test_ratio}")


def cache_dir() -> Path:
    return Path(os.environ.get("RAYBENCH_CACHE", Path.home() / ".cache" / "raybench"))


def default_npz(task: str, window: int) -> tuple[Path, bool]:
    """The S&P 500 NPZ for a task, prepared once into the cache; returns (path, newly made)."""
    path = cache_dir() / f"sp500_{task}_w{window}.npz"
    if path.is_file():
        return path, False
    return prepare("sp500", task, window, 0.2, path), True


def default_task(model_kind: str) -> str:
    """Without data or a task: the recurrent and Transformer models classify the next day's
    direction, the MLP (and a user's model) regresses the next close."""
    return "classification" if model_kind in ("lstm", "gru", "transformer") else "regression"


def resolve_npz(npz_path: str | None, task: str | None, model_kind: str,
                window: int) -> tuple[Path, str | None]:
    """The NPZ to train on and, when it was just prepared, a note saying where it went.
    Without a path the model decides the task: the MLP regresses the next close, the recurrent
    and Transformer models classify the next day's direction."""
    if npz_path:
        return Path(npz_path), None
    task = task or default_task(model_kind)
    path, made = default_npz(task, window)
    verb = "prepared" if made else "using cached"
    return path, f"{verb} S&P 500 {task} data (arch, 1999-2018, window {window}) at {path}"
