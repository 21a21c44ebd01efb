"""How repeatable the forecast's probe is: `raybench.backends.ddp.loaded_step_sweep` (the probe
`raybench.scale` runs before its N >= 2 points) several times in a row for the seed MLP.

    python scripts/lockstep_probe_repeat.py REPEATS

Each repeat runs the probe at N=1 (batch 64), N=2 (32 a rank) and N=4 (16 a rank) and prints
the means it measured: rank 0's step alone (and its two halves), all at once, the lockstep
steps' work and sync, and how many lockstep steps it took to get there. Run it alone: it
measures the machine.
"""

import statistics
import sys
import time

from raybench.backends.ddp import loaded_step_sweep
from raybench.config import Config


def main(repeats: int) -> None:
    cfg = Config()
    shape = (1, cfg.data.window, cfg.data.task)
    for rep in range(repeats):
        for n, batch in ((1, 64), (2, 32), (4, 16)):
            started = time.perf_counter()
            row = loaded_step_sweep(n, cfg, shape, batch, solo_batch=64)
            took = time.perf_counter() - started
            if n == 1:
                print(f"repeat {rep} N=1: step alone {statistics.fmean(row['work_s']) * 1e3:.3f} "
                      f"ms ({took:.1f} s)", flush=True)
                continue
            work = statistics.fmean(row["synced_work_s"]) * 1e3
            sync = statistics.fmean(row["synced_allreduce_s"]) * 1e3
            solo = row["solo_s"]
            k = max(1, len(solo) * 2 // 5)  # about each half's steps (they run on both sides
            # of the phase all at once)
            print(f"repeat {rep} N={n}: rank 0 alone {statistics.fmean(solo) * 1e3:.3f} ms "
                  f"(first {statistics.fmean(solo[:k]) * 1e3:.3f}, last "
                  f"{statistics.fmean(solo[-k:]) * 1e3:.3f}); all at once "
                  f"{statistics.fmean(row['work_s']) * 1e3:.3f} ms; lockstep work {work:.3f} + "
                  f"sync {sync:.3f} = {work + sync:.3f} ms "
                  f"({len(row['synced_work_s']) // n} steps a rank, {took:.1f} s)", flush=True)


if __name__ == "__main__":  # the probe spawns processes: the main module must be guarded
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
