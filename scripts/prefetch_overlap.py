"""Does cutting windows in a second thread slow the training step? One process, no Ray: the
seed MLP's step (batch 1024, one intra-op thread, as a raybench worker) fed three ways, in
rounds so that a drifting machine meets every way alike:

    python scripts/prefetch_overlap.py DATASET_DIR [ROUNDS]

memory: slices of the whole split in memory (the memory ingest); precut: slices of fetches
cut beforehand by WindowCollate (the streamed layout, nothing running beside the step);
thread: the same fetches cut by a producer thread two fetches ahead (what Ray Data's prefetch
threads do). Prints ms a step (wall) and the training thread's CPU ms a step. Run it alone.
"""

import queue
import sys
import threading
import time
import types

import pyarrow.parquet as pq
import torch

from raybench.data.ingest import MemoryIngest, WindowCollate, batches_of, rows_per_fetch
from raybench.data.parquet import load_memory, load_meta
from raybench.models import MLPRegressor

BATCH = 1024


def collate_for(meta) -> WindowCollate:
    stats = meta.norm_stats
    ingest = types.SimpleNamespace(
        window=meta.window, n_features=meta.features, task=meta.task, meta=meta,
        _mu=torch.tensor(stats["mu"], dtype=torch.float32),
        _sd=torch.tensor(stats["sd"], dtype=torch.float32),
        _y_mu=stats.get("y_mu", 0.0), _y_sd=stats.get("y_sd", 1.0), shuffle=False, seed=0,
        rank=0)
    return WindowCollate(ingest, 1)


def threaded(cut, tables, depth: int = 2):
    fetched: queue.Queue = queue.Queue(depth)

    def produce() -> None:
        for table in tables:
            fetched.put(cut(table))
        fetched.put(None)

    threading.Thread(target=produce, daemon=True).start()
    while (item := fetched.get()) is not None:
        yield item


def main() -> None:
    torch.set_num_threads(1)
    meta = load_meta(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    table = pq.read_table(meta.files("train"))
    rows = rows_per_fetch(BATCH, meta.chunk_windows, 4 * meta.window * meta.features)
    tables = [table.slice(i, rows) for i in range(0, table.num_rows, rows)]
    cut = collate_for(meta)
    memory = MemoryIngest(load_memory(meta), 0, 1, BATCH, torch.device("cpu"))
    model = MLPRegressor(meta.features)
    opt, loss_fn = torch.optim.Adam(model.parameters(), 1e-3), torch.nn.MSELoss()

    def train(batches) -> tuple[float, float, int]:
        n, wall, cpu = 0, time.perf_counter(), time.thread_time()
        for x, y in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
            n += 1
        return (time.perf_counter() - wall) / n * 1e3, (time.thread_time() - cpu) / n * 1e3, n

    for rnd in range(rounds):
        precut = [cut(t) for t in tables]
        for name, batches in (("memory", lambda: memory.train_batches(1)),
                              ("precut", lambda p=precut: batches_of(iter(p), BATCH)),
                              ("thread", lambda: batches_of(threaded(cut, tables), BATCH))):
            train(batches())  # burn-in: an epoch
            wall, cpu, n = train(batches())
            print(f"round {rnd + 1} {name:6s} {wall:.3f} ms a step, training thread CPU "
                  f"{cpu:.3f} ms a step ({n} steps)", flush=True)


if __name__ == "__main__":
    main()
