"""The environment a figure was measured in: versions, hardware, cluster, commit, date."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import time
from pathlib import Path

from raybench.ray_env import emulated_cluster


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def collect(ray_cluster: bool = True) -> dict:
    import numpy
    import torch

    import raybench

    env = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "raybench": raybench.__version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if cluster := emulated_cluster():  # links and CPU shares of an emulated cluster
        env["emulated_cluster"] = cluster
    try:
        import ray

        env["ray"] = ray.__version__
        if ray_cluster and ray.is_initialized():
            env["ray_cluster_resources"] = ray.cluster_resources()
            env["ray_nodes"] = sum(1 for n in ray.nodes() if n.get("Alive"))
    except ImportError:
        env["ray"] = None
    return env
