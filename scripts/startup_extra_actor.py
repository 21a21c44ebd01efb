"""Does one more actor process, started beside a TorchTrainer, delay its workers' first line?

The resident launcher creates its window board (raybench.backends.conductor.window_board) as
it starts Ray Train; the floor (`scale --startup-floor`) does not. Alternates an empty
TorchTrainer alone and with a board created just before it, on one local Ray, and prints the
ratio of the geometric means with its 95% interval (docs/performance.md, Start-up).

    python scripts/startup_extra_actor.py N REPEATS
"""

import sys
import time

import ray
import ray.train
from ray.train.torch import TorchTrainer

from raybench.backends.conductor import window_board
from raybench.backends.ray_train import _floor_fn
from raybench.stats import paired_ratio


def first_line_s(n: int, name: str, board: bool) -> float:
    start = time.time()
    held = window_board(n) if board else None
    out = TorchTrainer(_floor_fn, scaling_config=ray.train.ScalingConfig(
        num_workers=n, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path="/tmp/startup_extra_actor", name=name)).fit()
    if held is not None:
        ray.kill(held)
    time.sleep(2)  # the workers' resources back before the next start
    return out.return_value - start


def main() -> None:
    n, repeats = int(sys.argv[1]), int(sys.argv[2])
    ray.init(num_cpus=2 * n, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    times: dict[bool, list[float]] = {False: [], True: []}
    for r in range(repeats):  # which goes first alternates: the second start finds files warm
        for board in ((False, True) if r % 2 == 0 else (True, False)):
            times[board].append(first_line_s(n, f"{'board' if board else 'alone'}{r}", board))
    ratio = paired_ratio(dict(enumerate(times[True])), dict(enumerate(times[False])))
    print("alone", [round(x, 2) for x in times[False]], "board", [round(x, 2) for x in times[True]])
    print(f"board / alone: {ratio.value:.3f} ({ratio.low:.3f}-{ratio.high:.3f})")

if __name__ == "__main__":
    main()
