"""Price sources for NPZ files: S&P 500 closes (shipped with `arch`), synthetic geometric
Brownian motion, a user's CSV/Parquet price column; windowing and the chronological test split."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from raybench.data.npz import save_npz
from raybench.errors import UserError

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


def resolve_npz(npz_path: str | None, task: str | None, model_kind: str,
                window: int) -> tuple[Path, str | None]:
    """The NPZ to train on and, when it was just prepared, a note saying where it went.
    Without a path the model decides the task: the MLP regresses the next close, the recurrent
    and Transformer models classify the next day's direction."""
    if npz_path:
        return Path(npz_path), None
    task = task or ("regression" if model_kind == "mlp" else "classification")
    path, made = default_npz(task, window)
    verb = "prepared" if made else "using cached"
    return path, f"{verb} S&P 500 {task} data (arch, 1999-2018, window {window}) at {path}"
