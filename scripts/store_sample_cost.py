"""What one object-store sample costs the machine: Ray's get_memory_info_reply as raybench
called it before (a new channel and a node-table read each call) against raybench's
ObjectStoreMonitor (one kept channel), with some idle actors alive (a streamed run keeps 20-30
worker processes; the raylet asks each of them for stats at every sample):

    python scripts/store_sample_cost.py [ACTORS] [ROUNDS]

Prints the whole machine's CPU ms (from /proc/stat) and the wall ms a sample. Run it alone.
"""

import sys
import time

import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address

from raybench import interference
from raybench.backends.ray_cluster import ObjectStoreMonitor


@ray.remote(num_cpus=0.01)
class Idle:
    def ping(self) -> int:
        return 1


def per_sample(sample, n: int = 40) -> tuple[float, float]:
    cpu, wall = interference.sample().busy_s, time.perf_counter()
    for _ in range(n):
        sample()
    return ((interference.sample().busy_s - cpu) / n * 1e3,
            (time.perf_counter() - wall) / n * 1e3)


def main() -> None:
    actors = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    idle = [Idle.remote() for _ in range(actors)]
    ray.get([a.ping.remote() for a in idle])
    time.sleep(5)  # the actors' processes settle

    def before() -> None:
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        get_memory_info_reply(state, timeout_seconds=5)

    monitor = ObjectStoreMonitor()
    for rnd in range(rounds):
        for name, sample in (("Ray's helper", before), ("kept channel", monitor._sample)):
            cpu, wall = per_sample(sample)
            print(f"round {rnd + 1} {name}: {cpu:.1f} ms of the machine's CPU, {wall:.1f} ms "
                  f"wall a sample ({actors} idle actors)", flush=True)


if __name__ == "__main__":
    main()
