"""What a rank waiting in a gloo barrier costs the machine: the forecast probe times rank 0's
step alone while the other ranks wait in one, so they must not spin.

    python scripts/barrier_wait_cpu.py WORLD

WORLD gloo processes; rank 0 sleeps 4 s before the barrier the others are already in. Each
rank prints the CPU seconds and wall seconds it spent there.
"""

import os
import socket
import sys
import time

import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank: int, world: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dist.barrier()
    cpu, wall = time.process_time(), time.perf_counter()
    if rank == 0:
        time.sleep(4)
    dist.barrier()
    results.put((rank, time.process_time() - cpu, time.perf_counter() - wall))
    dist.destroy_process_group()


if __name__ == "__main__":
    world = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=rank_main, args=(r, world, port, results)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    while not results.empty():
        rank, cpu, wall = results.get()
        print(f"rank {rank}: {cpu:.3f} s of CPU in {wall:.2f} s")
