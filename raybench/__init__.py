"""raybench: one per-worker PyTorch loop, measured under Ray Train from 1 to N workers."""

import time as _time

# The first thing Python runs of raybench: the start of every `time_to_first_step_s` and
# `wall_time_s` of a command. Not the process's start in /proc, which is the shell's when a
# shell execs Python (`bash -c 'pip install ... && python -m raybench.run'`).
START_TIME = _time.time()

__version__ = "0.2.0"
