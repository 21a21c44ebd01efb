"""This machine's own limits, measured once per host and cached: the matmul FLOP/s one core
achieves (a square fp32 matmul large enough to be compute-bound, and at the model's own layer
shapes), and the memory bandwidth of a large copy. A point's achieved FLOP/s over the first is
its CPU MFU: how far a compute-bound run is from what the cores can do.

The peak is the faster of torch's two CPU matmul kernels: the BLAS one (`torch.mm`, MKL in the
wheels) and oneDNN's (what torch's fused LSTM and mkldnn tensors run). They differ by 2x on some
CPUs: MKL takes its AVX2 path on AMD's AVX-512 cores (about 100 GFLOP/s a core on the Zen 5 VM
here) while oneDNN uses AVX-512 (about 210), and a model whose layers run on oneDNN would
otherwise show an MFU over 100%.

Cached in the raybench cache directory (RAYBENCH_CACHE, default ~/.cache/raybench) per host,
CPU model and torch version; `raybench.scale --recalibrate` measures again.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path

import torch

from raybench.data.sources import cache_dir

SQUARE = 512  # a matmul this size is compute-bound on a CPU core (not memory-bound)
COPY_MIB = 256  # a copy this large does not fit in any cache


def _best_seconds(fn, repeats: int = 5, min_s: float = 0.05) -> float:
    """The fastest of `repeats` timings of fn, each run long enough to be timed well."""
    fn()  # warm
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_s / once))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def matmul_gflops(m: int, k: int, n: int) -> float:
    """Achieved GFLOP/s of an (m x k) @ (k x n) fp32 matmul on one thread."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    return 2 * m * k * n / _best_seconds(lambda: torch.mm(a, b)) / 1e9


def onednn_gflops(m: int, k: int, n: int) -> float | None:
    """Achieved GFLOP/s of the same matmul through oneDNN on one thread (None where torch was
    built without it)."""
    if not torch.backends.mkldnn.is_available():
        return None
    a, w = torch.randn(m, k).to_mkldnn(), torch.randn(n, k).to_mkldnn()
    return 2 * m * k * n / _best_seconds(lambda: torch._C._nn.mkldnn_linear(a, w)) / 1e9


def copy_gbps() -> float:
    """Memory bandwidth of a large copy: bytes read plus bytes written per second."""
    src = torch.ones(COPY_MIB * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: dst.copy_(src), repeats=3, min_s=0.0) / 1e9


def _key() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{socket.gethostname()}|{cpu}|torch {torch.__version__}"


def _path() -> Path:
    return cache_dir() / "calibration.json"


def calibrate(shapes: list[tuple[int, int, int]] = (), recalibrate: bool = False) -> dict:
    """The machine's peak (cached per host), with the model's layer shapes (m, k, n) measured
    where they are not cached yet."""
    path = _path()
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    entry = {} if recalibrate else dict(cache.get(_key(), {}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # An entry cached before oneDNN was measured holds the BLAS figure only: measure again.
        if "onednn_gflops_per_core" not in entry:
            entry["blas_gflops_per_core"] = matmul_gflops(SQUARE, SQUARE, SQUARE)
            entry["onednn_gflops_per_core"] = onednn_gflops(SQUARE, SQUARE, SQUARE)
            entry["matmul_gflops_per_core"] = max(entry["blas_gflops_per_core"],
                                                  entry["onednn_gflops_per_core"] or 0.0)
            entry["copy_gbps"] = copy_gbps()
            entry["measured"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        at = entry.setdefault("at_shapes", {})
        for m, k, n in shapes:
            at.setdefault(f"{m}x{k}x{n}", matmul_gflops(m, k, n))
    finally:
        torch.set_num_threads(threads)
    cache[_key()] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache costs a re-measurement next time, never the run
    return {"host": _key(), **entry}


def linear_shapes(model: torch.nn.Module, batch: int, window: int) -> list[tuple[int, int, int]]:
    """(rows, in, out) of each Linear layer's forward matmul at a batch (rows: the batch, or
    batch x window for layers applied per time step, which a shape probe cannot tell apart:
    the batch is used)."""
    return sorted({(batch, m.in_features, m.out_features) for m in model.modules()
                   if isinstance(m, torch.nn.Linear)})
