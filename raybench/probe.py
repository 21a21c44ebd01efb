"""`python -m raybench.probe network`: what the network between a run's ranks carries.

Gloo all-reduces of 4 KiB to 64 MiB between --workers ranks placed as Ray Train would place
them (--placement-strategy, STRICT_SPREAD by default: one rank per node), reported as
nccl-tests reports them (time, algorithm and bus bandwidth), with the ring fitted to them:
latency per hop and bus bandwidth. Compare busbw with the link's rate; on a real cluster run it
through `ray job submit`, on this machine on an emulated one (`raybench.cluster local exec`).
`raybench.scale --probe-network` puts the same table in scaling.json.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from raybench.artifacts import Output
from raybench.backends.ray_cluster import start_ray
from raybench.backends.ray_network import MIN_ITERS, SECONDS_PER_SIZE, SIZES, probe
from raybench.cli import Parser
from raybench.config import Config
from raybench.console import Console
from raybench.errors import UserError, run_cli
from raybench.report.sections import network_table
from raybench.results import write_doc

EXAMPLE = """examples:
  python -m raybench.cluster local exec -- python -m raybench.probe network --workers 2
  RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- \\
      python -m raybench.probe network --workers 4 --out /mnt/results/network"""
STRATEGIES = ("STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m raybench.probe", description=__doc__, epilog=EXAMPLE)
    sub = parser.add_subparsers(dest="probe", required=True)
    net = sub.add_parser("network", help="gloo all-reduces between ranks on different nodes")
    net.add_argument("--workers", type=int, default=2, help="ranks (default 2)")
    net.add_argument("--placement-strategy", choices=STRATEGIES, default="STRICT_SPREAD",
                     help="how Ray places the ranks (default STRICT_SPREAD: one per node)")
    net.add_argument("--cpus-per-worker", type=float, default=1.0,
                     help="CPUs each rank holds, as a run's worker would (default 1)")
    net.add_argument("--max-bytes", type=int, default=SIZES[-1],
                     help=f"largest all-reduce (default {SIZES[-1]:,}, 64 MiB)")
    net.add_argument("--seconds-per-size", type=float, default=SECONDS_PER_SIZE,
                     help="timed all-reduces of a size last at least this long, and at least "
                     f"{MIN_ITERS} (default {SECONDS_PER_SIZE:g})")
    net.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a "
                     "local Ray on 127.0.0.1, where the ranks talk over loopback)")
    net.add_argument("--out", help="also write network.json in this directory")
    return parser


def config_of(args: argparse.Namespace) -> Config:
    if args.workers < 2:
        raise UserError(f"--workers {args.workers}: an all-reduce needs at least 2 ranks")
    if not (math.isfinite(args.cpus_per_worker) and args.cpus_per_worker > 0):
        raise UserError(f"--cpus-per-worker must be positive, got {args.cpus_per_worker}")
    if not (math.isfinite(args.seconds_per_size) and args.seconds_per_size > 0):
        raise UserError(f"--seconds-per-size must be positive, got {args.seconds_per_size}")
    if args.max_bytes < SIZES[0]:
        raise UserError(f"--max-bytes must be at least {SIZES[0]:,}, got {args.max_bytes:,}")
    cfg = Config()
    cfg.scaling.workers, cfg.scaling.cpus_per_worker = args.workers, args.cpus_per_worker
    cfg.scaling.placement_strategy, cfg.scaling.address = args.placement_strategy, args.address
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_of(args)
    out = Console()
    output = Output(args.out) if args.out else None
    handle = start_ray(cfg, out.log)
    try:
        t0 = time.perf_counter()
        result = probe(cfg, [b for b in SIZES if b <= args.max_bytes],
                       args.seconds_per_size)
    finally:
        handle.shutdown()
    print(network_table(result).text())
    print(f"({time.perf_counter() - t0:.0f}s)")
    if output is not None:
        output.local.mkdir(parents=True, exist_ok=True)
        write_doc(Path(output.local) / "network.json", result)
        print(f"Saved → {output.publish()}")
    return 0


if __name__ == "__main__":
    run_cli(main)
