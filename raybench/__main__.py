"""`raybench <command>` / `python -m raybench <command>`: each command is also its own module."""

from __future__ import annotations

import importlib
import sys

from raybench.errors import run_cli

COMMANDS = {
    "run": ("raybench.run", "train one model on N Ray Train workers"),
    "data": ("raybench.data.__main__", "prepare an NPZ (S&P 500, synthetic, CSV/Parquet)"),
    "tune": ("raybench.tune", "Ray Tune sweep with ASHA early stopping over the same loop"),
    "scale": ("raybench.scale", "measure 1 -> N workers vs plain DDP and a raw loop; merge"),
    "cluster": ("raybench.cluster.__main__", "KubeRay manifests; an emulated multi-node "
                "cluster on this machine"),
    "probe": ("raybench.probe", "the network between a run's ranks: gloo all-reduce sweep"),
    "report": ("raybench.report", "one HTML/Markdown file comparing runs, scalings, sweeps"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8} {desc}" for name, (_, desc) in COMMANDS.items()]
        print("usage: raybench <command> [options]\n\ncommands:\n" + "\n".join(lines) +
              "\n\n`raybench <command> --help` lists each command's flags.")
        sys.exit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    run_cli(module.main, argv[1:])


if __name__ == "__main__":
    main()
