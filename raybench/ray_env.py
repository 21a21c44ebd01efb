"""The environment every Ray node raybench configures carries: the local Ray a command starts
(backends.ray_cluster), the emulated cluster's nodes (cluster.local) and the KubeRay pods it
renders (cluster.kuberay). A leaf module: the launchers and the cluster commands both read it,
and neither imports the other."""

from __future__ import annotations

import json
import os

# Ray keeps idle worker processes only up to num_workers_soft_limit (default: the node's CPUs)
# and kills the rest after a second. Ray Train's and Ray Data's actors alone exceed 2, so on a
# small machine every epoch of a streamed run started its read tasks' processes again: 34
# Python processes in a 10-epoch run here, each ~2 s of CPU at niceness 0 while it imports,
# taken from the niceness-15 training worker (docs/data.md). Kept, they are reused.
IDLE_WORKERS_KEPT = 64

NODE_ENV = {"RAY_USAGE_STATS_ENABLED": "0",
            "RAY_num_workers_soft_limit": str(max(IDLE_WORKERS_KEPT, os.cpu_count() or 1))}

# An emulated cluster's nodes (raybench.cluster local) point every process on them, drivers,
# jobs and trials alike, at the cluster's driver.json: its name, each node's address, link rate
# and CPU share as last set, and the counter of the whole cluster's CPU time.
EMULATED_CLUSTER_VAR = "RAYBENCH_EMULATED_CLUSTER"


def emulated_cluster() -> dict | None:
    """The emulated cluster this process runs on, as its driver.json says now; None
    elsewhere."""
    path = os.environ.get(EMULATED_CLUSTER_VAR)
    if not path:
        return None
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None
