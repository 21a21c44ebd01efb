"""Ray Train workers import torch's compiler stack while Ray is still starting them.

Every PyTorch training loop imports `torch._dynamo` before its first step, compiled or not:
`DistributedDataParallel.__init__` reads `torch._dynamo.utils` and the first
`Optimizer.add_param_group` goes through `torch._disable_dynamo`, each importing it on first
use (1.0-1.4 s of Python a process on this machine). An empty `TorchTrainer` never does, and
in a raybench worker it sat on the critical path after the worker entered its loop, where every
rank was busy. Ray calls this hook as each Train worker process starts (set for those workers
only, through `RunConfig(worker_runtime_env=...)`: see `worker_runtime_env`); the import
runs on a thread while the process waits for its placement group, its siblings and the process
group's rendezvous. Nothing else changes: the same modules are imported, only earlier; the
loop's first use joins the thread through Python's import lock if it has not finished.

Off unless `RAYBENCH_WARM_IMPORTS=1`: on this 2-core machine it moved the import from after
the loop's entry (0.9-2.7 s less there) to before it (the entry 0.2 s to 2 s later), and time
to first step changed by 1.02x (0.88-1.18), 0.90x (0.79-1.03) and 0.96x (0.85-1.08) at N=1, 2,
4: no gain shown where every core is busy while Ray starts the workers (docs/performance.md,
Start-up). It is for nodes with idle cores while their workers start.

This module imports nothing heavy itself: Ray imports it in every Train worker at start.
"""

from __future__ import annotations

import os
import threading

HOOK = "raybench.backends.warm_imports.start"
SWITCH_ENV = "RAYBENCH_WARM_IMPORTS"  # "1" turns the hook on
# ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: what a worker process reads its hook from.
HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"


def enabled() -> bool:
    """Whether the driver asks Ray Train's workers to warm their imports
    (`RAYBENCH_WARM_IMPORTS=1`)."""
    return os.environ.get(SWITCH_ENV, "0") == "1"


def worker_runtime_env(job_runtime_env: dict | None) -> dict | None:
    """The Train workers' runtime environment that runs `start` as each one starts, or None
    when switched off or when the job already has a setup hook of its own (the user's hook
    must run; one process has one hook).

    Ray turns a `worker_process_setup_hook` into this environment variable only for the job's
    runtime environment (`ray.init`); an actor's own `runtime_env` passes the variable to its
    process as is, and the worker runs the hook it names (ray/_private/workers/
    default_worker.py, Ray 2.60)."""
    job = job_runtime_env or {}
    if not enabled() or job.get("worker_process_setup_hook") or \
            HOOK_ENV in (job.get("env_vars") or {}):
        return None
    return {"env_vars": {HOOK_ENV: HOOK}}


def _import() -> None:
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401


def start() -> None:
    """The setup hook: start the imports on a daemon thread and return at once, so Ray's own
    start of the worker is not held up by them."""
    threading.Thread(target=_import, name="raybench-warm-imports", daemon=True).start()
