"""`python -m raybench.data prepare ...`: write a dataset of price windows."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from raybench.cli import Parser
from raybench.data.npz import load_npz
from raybench.data.parquet import describe
from raybench.data.sources import prepare, prepare_parquet
from raybench.errors import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m raybench.data",
        description="Prepare a dataset of price windows: an NPZ (X_train, y_train, X_test, "
        "y_test) or a chunked Parquet directory for streaming ingest.",
        epilog="examples:\n  python -m raybench.data prepare --source sp500 --task "
               "classification --out data/sp500_cls.npz\n  python -m raybench.data prepare "
               "--source synthetic --samples 100000000 --format parquet --shards 64 "
               "--out /data/synth_100m")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write an NPZ or a Parquet dataset from a price source")
    p.add_argument("--format", choices=("npz", "parquet"), default="npz",
                   help="npz: one file, loaded into memory; parquet: a directory of shards, "
                   "windowed while reading (--ingest ray_data)")
    p.add_argument("--shards", type=int, default=8, help="parquet: files in the train split")
    p.add_argument("--chunk-windows", type=int, default=256,
                   help="parquet: windows per row (1: whole windows, each value stored T times)")
    p.add_argument("--compression", choices=("snappy", "zstd", "none"), default="snappy",
                   help="parquet: column compression (snappy finds much of the overlap between "
                   "whole windows; none stores them as they are in memory)")
    p.add_argument("--valid-ratio", type=float, default=0.1,
                   help="parquet: chronological tail of train kept for validation")
    p.add_argument("--source", choices=("sp500", "synthetic", "csv"), default="sp500")
    p.add_argument("--task", choices=("regression", "classification"), default="regression")
    p.add_argument("--window", type=int, default=60, help="timesteps per sample (T)")
    p.add_argument("--test-ratio", type=float, default=0.2, help="chronological test tail")
    p.add_argument("--out", required=True, help="output .npz file, or a new directory for "
                   "--format parquet")
    p.add_argument("--samples", type=int, help="synthetic: number of windows")
    p.add_argument("--seed", type=int, default=42,
                   help="synthetic: random seed (42, as every other command's)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out (refused otherwise)")
    p.add_argument("--path", help="csv: a .csv or .parquet price file")
    p.add_argument("--column", default="Close", help="csv: price column")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_out(Path(args.out), args.format, args.overwrite)
    if args.format == "parquet":
        meta = prepare_parquet(args.source, args.task, args.window, args.test_ratio, args.out,
                               shards=args.shards, chunk_windows=args.chunk_windows,
                               compression=args.compression,
                               valid_ratio=args.valid_ratio, samples=args.samples,
                               seed=args.seed, path=args.path, column=args.column)
        print(f"wrote {describe(meta)}")
        return 0
    out = prepare(args.source, args.task, args.window, args.test_ratio, args.out,
                  samples=args.samples, seed=args.seed, path=args.path, column=args.column)
    arrays = load_npz(out)
    print(f"wrote {out}: X_train {arrays['X_train'].shape}, X_test {arrays['X_test'].shape}, "
          f"task {args.task}")
    return 0


def _check_out(out: Path, fmt: str, overwrite: bool) -> None:
    """An existing dataset is never replaced unless asked: a typo in --out must not cost a
    dataset that took an hour to write."""
    exists = out.is_file() if fmt == "npz" else (out.is_dir() and any(out.iterdir()))
    if not exists:
        return
    if not overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it, or give "
                        "another path")
    if fmt == "parquet":
        shutil.rmtree(out)


if __name__ == "__main__":
    run_cli(main)
