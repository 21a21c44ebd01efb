"""Ray Train's own start-up floor on this machine, and what it spends the CPU on.

    python scripts/trainer_start_floor.py REPEATS [ENV=VALUE ...]

On one local Ray (started here, as the test suite's is), REPEATS times for N=1 and N=2: a
`TorchTrainer` whose loop only returns the time, with the wall time to that first line and to
`fit()` returning, and the machine's CPU seconds used meanwhile. Then the processes that did
the work, with their CPU seconds (sampled every 0.2 s). ENV=VALUE pairs are set before Ray
starts, e.g. RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0. Run it alone: it measures the machine.
"""

import os
import sys
import threading
import time

import psutil


def sample_processes(seen: dict, stop: threading.Event) -> None:
    """The CPU seconds of every process created after this started, by (pid, start time)."""
    since = time.time()
    while not stop.is_set():
        for proc in psutil.process_iter(["pid", "cmdline", "name", "cpu_times", "create_time"]):
            info = proc.info
            if info["cpu_times"] is None or info["create_time"] < since:
                continue
            name = " ".join(info["cmdline"] or [info["name"]]).strip()[:60]
            seen[(info["pid"], info["create_time"])] = (name, sum(info["cpu_times"][:2]))
        stop.wait(0.2)


def first_line() -> float:
    """The whole training loop: when a worker got here."""
    return time.time()


def main(repeats: int) -> None:
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    started = time.time()
    ray.init(address="local", num_cpus=4, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="error")
    print(f"ray.init {time.time() - started:.1f} s", flush=True)
    seen, stop = {}, threading.Event()
    threading.Thread(target=sample_processes, args=(seen, stop), daemon=True).start()
    for rep in range(repeats):
        for n in (1, 2):
            cpu0, t0 = psutil.cpu_times(), time.time()
            result = TorchTrainer(
                first_line, scaling_config=ray.train.ScalingConfig(num_workers=n),
                run_config=ray.train.RunConfig(name=f"floor_{rep}_{n}_{int(t0)}",
                                               storage_path="/tmp/raybench_floor")).fit()
            cpu1 = psutil.cpu_times()
            busy = sum(cpu1[:3]) - sum(cpu0[:3])  # user, nice, system
            print(f"N={n}: first line after {result.return_value - t0:.1f} s, fit returned after "
                  f"{time.time() - t0:.1f} s, {busy:.1f} CPU-seconds of the machine", flush=True)
    stop.set()
    print("processes started meanwhile, by CPU seconds:")
    for name, cpu in sorted(seen.values(), key=lambda row: -row[1])[:15]:
        print(f"  {cpu:6.2f} s  {name}")
    ray.shutdown()


if __name__ == "__main__":
    for pair in sys.argv[2:]:
        key, _, value = pair.partition("=")
        os.environ[key] = value
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
