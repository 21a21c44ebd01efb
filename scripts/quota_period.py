"""A CPU quota is a duty cycle, not a slower CPU (raybench/cluster/kernel.py, CFS_PERIOD_US).

Times about 37 ms of CPU work in a process held to a 0.4-core share, once never idle and once
after 120 ms of sleep each time (a DDP step computing after it waited on the link), with a
100 ms and a 10 ms CFS period. Needs root (it makes and removes two cgroups).

    sudo python scripts/quota_period.py
"""

import os
import subprocess
import sys

from raybench.cluster import kernel

CHILD = r"""
import statistics, time

def work(n):
    x = 0
    for i in range(n):
        x += i * i
    return x

t = time.process_time(); work(10**6); per = (time.process_time() - t) / 10**6
n = int(0.037 / per)  # about 37 ms of CPU
for idle in (0.0, 0.12):
    walls = []
    for _ in range(30):
        if idle:
            time.sleep(idle)
        t = time.perf_counter(); work(n); walls.append(time.perf_counter() - t)
    print(f"idle {idle * 1e3:.0f} ms before: compute wall p50 "
          f"{statistics.median(walls) * 1e3:.1f} ms")
"""

JOIN = ("import sys; from raybench.cluster import kernel; "
        "kernel.Cgroups.detect().join(sys.argv[1]); exec(sys.stdin.read())")


def main() -> None:
    groups = kernel.Cgroups.detect()
    for period in (100_000, 10_000):
        kernel.CFS_PERIOD_US = period
        rel = f"rb_quota_period_{period}"
        groups.create(rel)
        try:
            groups.set_cpu(rel, 0.4)
            out = subprocess.run([sys.executable, "-c", JOIN, rel], input=CHILD, text=True,
                                 capture_output=True, check=True).stdout
            print(f"period {period // 1000} ms, 0.4 core:", out.strip().replace("\n", "; "))
        finally:
            for d in groups.dirs(rel):
                os.rmdir(d)


if __name__ == "__main__":
    main()
