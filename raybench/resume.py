"""Continuing a stopped run (`raybench.run --resume RUN_DIR`): checked on the driver before any
worker starts.

- The checkpoint must fit the config: a model section edited since the checkpoint was written
  is refused with the keys that differ (instead of a size-mismatch traceback in a worker).
- Ray Train's `checkpoint_manager_snapshot.json` lists the run's checkpoints. A disk that filled
  while Ray rewrote it leaves it empty or cut off, and Ray cannot resume from it; it is set aside
  and the loop starts from the newest complete checkpoint instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raybench.config import Config, ModelConfig
from raybench.errors import UserError
from raybench.loop.steps import CKPT_BEST, CKPT_MODEL, CKPT_STATE

SNAPSHOT = "checkpoint_manager_snapshot.json"


def checkpoints(train_dir: Path) -> list[Path]:
    """Complete raybench checkpoints in a Ray Train run directory, newest first."""
    found = [p for p in train_dir.glob("checkpoint_*") if p.is_dir() and all(
        (p / f).is_file() and (p / f).stat().st_size > 0 for f in (CKPT_MODEL, CKPT_STATE,
                                                                     CKPT_BEST))]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _loads(path: Path) -> dict | None:
    try:
        return torch.load(path / CKPT_STATE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (a cut-off file: not a usable checkpoint)
        return None


def snapshot_ok(train_dir: Path) -> bool:
    try:
        json.loads((train_dir / SNAPSHOT).read_text())
        return True
    except FileNotFoundError:
        return True  # no snapshot: Ray starts clean, nothing to repair
    except (OSError, ValueError):
        return False


def model_differences(saved: dict, cfg: ModelConfig) -> list[str]:
    now = cfg.__dict__
    return [f"model.{k}: {saved[k]!r} in the checkpoint, {now.get(k)!r} now"
            for k in sorted(saved) if k in now and saved[k] != now[k]]


def prepare_resume(train_dir: Path, cfg: Config) -> Path | None:
    """Check a run's checkpoints against its config; returns a checkpoint directory the trainer
    must start from when Ray's own snapshot is unusable (None: Ray's snapshot decides)."""
    usable = [(p, state) for p in checkpoints(train_dir) if (state := _loads(p)) is not None]
    if usable:
        saved = usable[0][1].get("model_config")
        if saved:
            diff = model_differences(saved, cfg.model)
            if diff:
                raise UserError(f"--resume {train_dir.parent}: config.yaml no longer matches the "
                                f"checkpoint ({'; '.join(diff)}); restore those keys or start a "
                                "new run")
    if snapshot_ok(train_dir):
        return None
    broken = train_dir / SNAPSHOT
    broken.rename(broken.with_name(SNAPSHOT + ".unreadable"))
    return usable[0][0] if usable else None
