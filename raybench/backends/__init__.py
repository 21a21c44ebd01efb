"""Launchers of the per-worker loop, one module each, behind `base.Backend`:

  raybench  ray_train.py  Ray Train TorchTrainer, N workers on any Ray cluster
  ddp       ddp.py        plain torch DistributedDataParallel, N local processes, no Ray
  raw       raw.py        the loop in this process: the ceiling one worker can reach
  ddp-ray   ray_ddp.py    plain torch DDP in Ray actors placed like Ray Train's workers: the
                          DDP baseline on a multi-node cluster

A new launcher is a module here and one line in MODULES. Connecting to Ray is ray_cluster.py.
"""

from __future__ import annotations

import importlib

from raybench.backends.base import Backend, LaunchContext, Resident

# Backend name -> module defining it (imported on use: the raw launcher needs no Ray).
MODULES = {"raybench": "ray_train", "ddp": "ddp", "raw": "raw", "ddp-ray": "ray_ddp"}
NAMES = tuple(MODULES)
DEFAULT = ("raybench", "ddp", "raw")  # what a scaling sweep runs unless told otherwise
# Launchers that run one worker only.
SINGLE_WORKER = ("raw",)


def backend_class(name: str) -> type[Backend]:
    module = importlib.import_module(f"raybench.backends.{MODULES[name]}")
    return module.BACKEND


__all__ = ["DEFAULT", "NAMES", "SINGLE_WORKER", "Backend", "LaunchContext", "Resident",
           "backend_class"]
