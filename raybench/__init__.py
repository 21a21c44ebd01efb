"""raybench: one per-worker PyTorch loop, measured under Ray Train from 1 to N workers."""

__version__ = "0.1.0"
