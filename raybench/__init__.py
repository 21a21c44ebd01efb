"""raybench: one per-worker PyTorch loop, measured under Ray Train from 1 to N workers."""

import time as _time

# The first thing Python runs of raybench: the start of every `time_to_first_step_s` and
# `wall_time_s` of a command. Not the process's start in /proc, which is the shell's when a
# shell execs Python (`bash -c 'pip install ... && python -m raybench.run'`).
START_TIME = _time.time()
_from_cli = False


def command_started() -> float:
    """When the command now running started: the import for a command run from the shell
    (errors.run_cli says so), the call itself for a main() called in-process (tests, notebooks),
    where the import may be long past."""
    global _from_cli
    if _from_cli:
        _from_cli = False  # a second main() in the same process starts its own clock
        return START_TIME
    return _time.time()


def from_cli() -> None:
    global _from_cli
    _from_cli = True

__version__ = "0.2.0"
