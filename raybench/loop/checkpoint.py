"""The checkpoint of the per-worker loop: what a restarted or resumed worker needs to continue
as if nothing happened, written at the end of an epoch and loaded at set-up; and the check that
the storage can hold it before Ray is handed it."""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import shutil
import tempfile
import time
from typing import TYPE_CHECKING

import numpy as np
import torch

from raybench.results import EpochRow, Restore

if TYPE_CHECKING:
    from raybench.loop.steps import TrainState

CKPT_MODEL = "model.pt"
CKPT_STATE = "train_state.pt"
CKPT_BEST = "best_model.pt"



def rng_state() -> dict:
    # Plain tensors, lists and numbers only, so checkpoints load with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_state(saved: dict) -> None:
    torch.set_rng_state(saved["torch"])
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(saved["python"])


def save_checkpoint(state: TrainState, epoch: int, directory: str) -> None:
    """Weights, best weights, optimizer, early-stopping counters, history and RNG states: all a
    restarted worker needs to continue as if nothing happened."""
    torch.save(state.module.state_dict(), os.path.join(directory, CKPT_MODEL))
    torch.save(state.best_state, os.path.join(directory, CKPT_BEST))
    s = state.stopper
    torch.save({"optimizer": state.optimizer.state_dict(), "epoch": epoch, "best": s.best,
                "best_epoch": s.best_epoch, "bad_epochs": s.bad_epochs,
                "history": [row.__dict__ for row in state.history],
                "epoch_times": state.epoch_times, "train_times": state.train_times,
                "samples_seen": state.samples_seen, "rng": rng_state(),
                "restores": [r.__dict__ for r in state.restores],
                "launch_time": state.launch_time, "first_marks": state.first_marks,
                # what the weights were built from: --resume refuses an edited model section
                "model_config": dataclasses.asdict(state.cfg.model)},
               os.path.join(directory, CKPT_STATE))


def resume(state: TrainState, directory: str) -> None:
    """Continue from a checkpoint written by save_checkpoint (any world size: the data is
    sharded for the world this incarnation has)."""
    started = time.perf_counter()
    device = state.session.device
    state.module.load_state_dict(torch.load(os.path.join(directory, CKPT_MODEL),
                                            map_location=device, weights_only=True))
    state.best_state = torch.load(os.path.join(directory, CKPT_BEST), map_location=device,
                                  weights_only=True)
    saved = torch.load(os.path.join(directory, CKPT_STATE), weights_only=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.first_epoch = saved["epoch"] + 1
    state.resumed_from_epoch = saved["epoch"]
    s = state.stopper
    s.best, s.best_epoch, s.bad_epochs = saved["best"], saved["best_epoch"], saved["bad_epochs"]
    state.history = [EpochRow(**row) for row in saved["history"]]
    state.epoch_times, state.train_times = saved["epoch_times"], saved["train_times"]
    state.samples_seen = saved.get("samples_seen", 0)
    state.restores = [Restore(**r) for r in saved.get("restores", [])]
    if saved.get("launch_time") == state.launch_time:  # Ray restarted us within one launch
        state.first_marks = saved.get("first_marks")
    state.restores.append(Restore(from_epoch=saved["epoch"], world_size=state.session.world_size,
                                  restore_s=time.perf_counter() - started))
    set_rng_state(saved["rng"])


def report_epoch(state: TrainState, row: EpochRow, checkpoint: bool,
                 storage_dir: str | None = None) -> None:
    """End of an epoch on every rank: rank 0 attaches a checkpoint when asked, after checking
    that the storage can hold it (a checkpoint cut off by a full disk would take Ray's record of
    the previous, good one with it)."""
    metrics = {k: v for k, v in row.flat().items() if isinstance(v, (int, float))}
    s = state.stopper
    metrics.update(metric=s.metric, best=s.best, best_epoch=s.best_epoch, pid=os.getpid())
    if not (checkpoint and state.session.rank == 0):
        state.session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="raybench-ckpt-") as directory:
        started = time.perf_counter()
        try:
            save_checkpoint(state, row.epoch, directory)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise OSError(errno.ENOSPC, f"no space left on device: {directory} (writing the "
                          f"epoch {row.epoch} checkpoint)") from None
        row.checkpoint_save_s = time.perf_counter() - started
        check_space(storage_dir, directory, row.epoch)
        started = time.perf_counter()
        state.session.report(metrics, directory)
        row.report_s = time.perf_counter() - started


# Besides the checkpoint itself, Ray rewrites its checkpoint list and metadata next to it.
SPACE_MARGIN = 8 << 20


def check_space(storage_dir: str | None, checkpoint_dir: str, epoch: int) -> None:
    """Refuse to hand Ray a checkpoint the storage cannot hold."""
    if not storage_dir or not os.path.isdir(storage_dir):
        return  # a URI (s3://, gs://) or storage Ray has yet to create: nothing to measure
    need = sum(e.stat().st_size for e in os.scandir(checkpoint_dir))
    free = shutil.disk_usage(storage_dir).free
    if free < need + max(SPACE_MARGIN, need // 10):
        raise OSError(errno.ENOSPC, f"no space left on device: {storage_dir} has "
                      f"{free / 2**20:.1f} MiB free, the epoch {epoch} checkpoint needs "
                      f"{need / 2**20:.1f} MiB; the previous checkpoint is intact, free space "
                      "and --resume")


