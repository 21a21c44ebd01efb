"""backends.warm_imports: which runtime environment the Train workers get."""

from __future__ import annotations

import subprocess
import sys

from raybench.backends import warm_imports


def test_the_hook_is_named_in_the_variable_ray_workers_read(monkeypatch):
    monkeypatch.setenv(warm_imports.SWITCH_ENV, "1")
    from ray._private import ray_constants

    assert warm_imports.HOOK_ENV == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    assert warm_imports.worker_runtime_env({}) == {"env_vars": {warm_imports.HOOK_ENV:
                                                                warm_imports.HOOK}}
    assert warm_imports.worker_runtime_env(None) is not None


def test_off_by_default_and_a_users_own_hook_leaves_the_workers_alone(monkeypatch):
    monkeypatch.delenv(warm_imports.SWITCH_ENV, raising=False)
    assert warm_imports.worker_runtime_env({}) is None
    monkeypatch.setenv(warm_imports.SWITCH_ENV, "0")
    assert warm_imports.worker_runtime_env({}) is None
    monkeypatch.setenv(warm_imports.SWITCH_ENV, "1")
    assert warm_imports.worker_runtime_env({"worker_process_setup_hook": "mine.setup"}) is None
    assert warm_imports.worker_runtime_env(
        {"env_vars": {warm_imports.HOOK_ENV: "mine.setup"}}) is None


def test_the_hook_returns_at_once_and_imports_on_a_thread():
    # The hook's own call against the imports it starts (about 2 s of Python): a hook that
    # imported in the caller's thread would hold Ray's start of the worker for all of it.
    code = ("import sys, time; from raybench.backends import warm_imports as w; t = time.time();"
            " w.start(); took = time.time() - t; import threading;"
            " [th.join() for th in threading.enumerate() if th.name == 'raybench-warm-imports'];"
            " print(took < 0.25 * (time.time() - t), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["True", "True"]
