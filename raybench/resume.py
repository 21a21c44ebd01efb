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
from collections.abc import Callable
from pathlib import Path

import torch

from raybench.config import Config, ModelConfig
from raybench.errors import UserError
from raybench.loop.checkpoint import CKPT_BEST, CKPT_MODEL, CKPT_STATE

SNAPSHOT = "checkpoint_manager_snapshot.json"


def checkpoints(train_dir: Path) -> list[Path]:
    """Complete raybench checkpoints in a Ray Train run directory, newest first."""
    found = [p for p in train_dir.glob("checkpoint_*") if p.is_dir() and all(
        (p / f).is_file() and (p / f).stat().st_size > 0 for f in (CKPT_MODEL, CKPT_STATE,
                                                                     CKPT_BEST))]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _loads(path: Path) -> dict | None:
    """The checkpoint's training state if all of it loads (weights, best weights, state)."""
    try:
        for name in (CKPT_MODEL, CKPT_BEST):
            torch.load(path / name, map_location="cpu", weights_only=True)
        return torch.load(path / CKPT_STATE, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 (a cut-off or damaged file: not a usable checkpoint)
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


def prepare_resume(train_dir: Path, cfg: Config,
                   say: Callable[[str], None] = print) -> Path | None:
    """Check a run's checkpoints against its config; returns a checkpoint directory the trainer
    must start from when Ray's own record is unusable (None: Ray's snapshot decides): its
    snapshot is cut off, or the newest checkpoint does not load, in which case the newest that
    does is used, and said."""
    found = checkpoints(train_dir)
    usable = [(p, state) for p in found if (state := _loads(p)) is not None]
    if found and usable and usable[0][0] != found[0]:
        bad = [p.name for p in found[:found.index(usable[0][0])]]
        say(f"--resume: checkpoint {', '.join(bad)} does not load; resuming from "
            f"{usable[0][0].name} (epoch {usable[0][1].get('epoch')}) instead")
        _set_aside(train_dir)
        return usable[0][0]
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
    _set_aside(train_dir)
    return usable[0][0] if usable else None


def _set_aside(train_dir: Path) -> None:
    """Ray's record of the run's checkpoints, renamed so that Ray starts clean and the loop
    loads the checkpoint raybench chose."""
    snapshot = train_dir / SNAPSHOT
    if snapshot.exists():
        snapshot.rename(snapshot.with_name(SNAPSHOT + ".unreadable"))
