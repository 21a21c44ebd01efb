"""What a new epoch of a streamed Ray Data split costs, outside raybench.

    python scripts/epoch_restart_probe.py PARQUET_DIR [EPOCHS]
    RAY_DATA_USE_DATASOURCE_V2=0 python scripts/epoch_restart_probe.py PARQUET_DIR

Reads PARQUET_DIR (e.g. a raybench dataset's train/ directory) with `ray.data.read_parquet`,
splits it with `streaming_split(1, equal=True)` as a TorchTrainer does, and iterates EPOCHS
epochs of `iter_torch_batches`: per epoch, the wait for the first batch and the whole epoch.
Ray 2.60's default (V2) Parquet reader starts a pool of FooterReader actors at every execution,
i.e. every epoch; setting RAY_DATA_USE_DATASOURCE_V2=0 reads with V1, as raybench does. Run it
alone: it measures the machine.
"""

import sys
import time

import ray


def main() -> None:
    path, epochs = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5
    ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="error")
    ray.data.DataContext.get_current().enable_progress_bars = False
    (split,) = ray.data.read_parquet(path).streaming_split(1, equal=True)
    for epoch in range(epochs):
        start, first, batches = time.perf_counter(), None, 0
        for _ in split.iter_torch_batches(batch_size=32):
            first = time.perf_counter() - start if first is None else first
            batches += 1
        print(f"epoch {epoch}: {batches} batches, first batch after {first:.2f} s, "
              f"epoch {time.perf_counter() - start:.2f} s", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
