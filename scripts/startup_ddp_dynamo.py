"""What does wrapping a model in DistributedDataParallel cost a fresh process, and how much of
it is torch importing torch._dynamo?

DistributedDataParallel.__init__ reads `torch._dynamo.utils.get_optimize_ddp_mode()`
unconditionally (torch/nn/parallel/distributed.py), so the first DDP wrap in a process imports
torch._dynamo, compiled or not; an empty TorchTrainer loop never wraps a model. Starts fresh
processes in alternation, each timing `DDP(model)` on a one-rank gloo group, half of them with
torch._dynamo imported first (timed apart), and prints the medians (docs/performance.md,
Start-up).

    python scripts/startup_ddp_dynamo.py REPEATS
"""

import json
import statistics
import subprocess
import sys

ONE = r"""
import json, os, sys, time
import torch, torch.distributed as dist
from torch import nn
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
dist.init_process_group("gloo", rank=0, world_size=1)
t0 = time.perf_counter()
if sys.argv[1] == "first":
    import torch._dynamo  # noqa: F401
t1 = time.perf_counter()
nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 1)))
t2 = time.perf_counter()
print(json.dumps({"dynamo_s": t1 - t0, "wrap_s": t2 - t1}))
dist.destroy_process_group()
"""


def once(mode: str, port: int) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE, mode, str(port)], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(repeats: int) -> None:
    cold, warm = [], []
    for i in range(repeats):
        # alternate which goes first: the second process of a pair finds the files cached
        order = ("cold", "first") if i % 2 == 0 else ("first", "cold")
        for mode in order:
            (cold if mode == "cold" else warm).append(once(mode, 29600 + i))
    wrap_cold = statistics.median(r["wrap_s"] for r in cold)
    wrap_warm = statistics.median(r["wrap_s"] for r in warm)
    dynamo = statistics.median(r["dynamo_s"] for r in warm)
    print(f"{repeats} processes each, alternating:")
    print(f"  DDP(model), torch._dynamo not yet imported: median {wrap_cold:.3f} s")
    print(f"  import torch._dynamo on its own:            median {dynamo:.3f} s")
    print(f"  DDP(model) after it:                        median {wrap_warm:.3f} s")
    print(f"  the first wrap's cost beyond a warm one, over the import: "
          f"{(wrap_cold - wrap_warm) / dynamo:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8)
