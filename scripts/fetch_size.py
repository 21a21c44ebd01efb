"""What a streamed fetch costs at several sizes: one rank's Ray Data ingest alone (no training) on
a Parquet dataset written by `raybench.data`, an epoch at each number of chunk rows per fetch,
in rounds so that a drifting machine meets every size alike.

    python scripts/fetch_size.py DATASET_DIR ROWS[,ROWS...] [ROUNDS]

Per epoch it prints windows/s, the machine's CPU seconds per million windows (every process:
Ray Data's read tasks and coordinator included, from /proc/stat) and this process's (the
prefetch threads' collate and Ray Data's batching: CPU a training thread would share). The
first epoch on a fresh Ray pays for Ray Data's processes starting; read from the second round.
Run it alone: it measures the machine.
"""

import sys
import time

import ray
import torch

from raybench import interference
from raybench.data import ingest
from raybench.data.parquet import load_meta


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (steal included), as the interleaved
    rounds read it."""
    return interference.sample().busy_s


class OneRank:
    """What RayDataIngest reads of a Session: rank 0 of 1 and its share of the train split."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def __init__(self, shard: object) -> None:
        self.shard = shard

    def dataset_shard(self, name: str) -> object:
        return self.shard


def epoch(meta, rows: int, batch: int = 1024) -> tuple[float, float, float]:
    shard = ingest.read_train_split(meta).streaming_split(1, equal=True)[0]
    stream = ingest.RayDataIngest(meta, OneRank(shard), batch, torch.device("cpu"))
    stream.rows_per_fetch = rows
    stream.prime()  # the pipeline's start and first fetch stay outside the clock, as in a run
    cpu0, own0, t0, windows = machine_cpu_s(), time.process_time(), time.perf_counter(), 0
    for _, y in stream.train_batches(1):
        windows += len(y)
    seconds = time.perf_counter() - t0
    return (windows / seconds, (machine_cpu_s() - cpu0) / windows * 1e6,
            (time.process_time() - own0) / windows * 1e6)


def main(directory: str, sizes: list[int], rounds: int) -> None:
    torch.set_num_threads(1)
    ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
    meta = load_meta(directory)
    for r in range(rounds):
        for rows in sizes:
            rate, machine, own = epoch(meta, rows)
            print(f"round {r + 1} rows {rows:5d} ({rows * meta.chunk_windows:7d} windows a "
                  f"fetch): {rate / 1e6:.3f} M windows/s, machine CPU {machine:.3f} s and this "
                  f"process {own:.3f} s per M windows", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(x) for x in sys.argv[2].split(",")],
         int(sys.argv[3]) if len(sys.argv) > 3 else 3)
