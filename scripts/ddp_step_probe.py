"""What one synchronous data-parallel step costs on this machine, outside raybench's loop.

    python scripts/ddp_step_probe.py WORLD BATCH

WORLD gloo processes at once, each timing for 3 s (after 30 warm-up steps) the seed MLP at
BATCH per process: (a) a plain step (forward, backward, Adam), (b) a plain step followed by an
all-reduce of the gradient's size, (c) the model wrapped in DistributedDataParallel. Set beside
`raybench.scale`'s step times, (c) is the bare DDP floor and (b) what the forecast's probe would
see if it timed whole iterations. Run it alone: it measures the machine.
"""

import os
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from raybench.config import Config
from raybench.models import build_model, loss_fn


def _timed(fn, seconds: float, count: int | None = None) -> list[float]:
    """Steps of fn for `seconds`, or exactly `count` of them: a synchronising step (an
    all-reduce, DDP) must run as many times on every rank, or the ranks wait on each other
    forever."""
    for _ in range(30):
        fn()
    dist.barrier()
    out, end = [], time.perf_counter() + seconds
    while (time.perf_counter() < end) if count is None else (len(out) < count):
        out.append(fn())
    return out


def rank(r: int, world: int, port: int, batch: int, seconds: float, q) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=r, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(Config().model, 1, 60, "regression")
    crit = loss_fn("regression")
    x, y = torch.randn(batch, 60, 1), torch.randn(batch)
    grad = torch.zeros(sum(p.numel() for p in model.parameters()))

    def step(m, opt) -> float:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        crit(m(x).float(), y).backward()
        opt.step()
        return time.perf_counter() - t

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    plain = _timed(lambda: step(model, opt), seconds)
    count = torch.tensor([len(plain)])
    dist.all_reduce(count, op=dist.ReduceOp.MIN)
    count = int(count.item())

    def with_allreduce() -> float:
        t = time.perf_counter()
        step(model, opt)
        dist.all_reduce(grad)
        return time.perf_counter() - t

    iteration = _timed(with_allreduce, seconds, count)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp_opt = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    wrapped = _timed(lambda: step(ddp, ddp_opt), seconds, count)
    q.put((r, *(float(np.mean(v)) for v in (plain, iteration, wrapped))))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    world, batch = int(sys.argv[1]), int(sys.argv[2])
    with socket.socket() as s:  # a free port: two probes in a row must not collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=rank, args=(r, world, port, batch, 3.0, q))
             for r in range(world)]
    for p in procs:
        p.start()
    rows = sorted(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join()
    for r, plain, iteration, wrapped in rows:
        print(f"rank {r}: plain step {plain * 1e3:.3f} ms, step + all-reduce "
              f"{iteration * 1e3:.3f} ms, DDP step {wrapped * 1e3:.3f} ms (means)")


if __name__ == "__main__":
    main()
