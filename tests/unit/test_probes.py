"""Probes: model FLOPs, GPU peaks and MFU, and where a command's clock starts."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from raybench import probes
from raybench.config import ModelConfig
from raybench.models import build_model, flops_per_sample


def test_flops_of_the_mlp_and_a_fused_lstm_by_hand():
    mlp = build_model(ModelConfig(kind="mlp", hidden=64), 1, 60)
    # FlopCounterMode counts matmuls: forward Linear(1,64) 2*64 and Linear(64,1) 2*64 per
    # sample; backward the input- and weight-gradients of the second (2 x 128) and the weight
    # gradient of the first (128): 640 in all.
    assert flops_per_sample(mlp, 1, 60) == 640
    lstm = build_model(ModelConfig(kind="lstm", hidden=64, layers=2), 1, 60)
    gates = 2 * 4 * 64 * (1 + 64) * 60 + 2 * 4 * 64 * (64 + 64) * 60  # two layers, 60 steps
    assert flops_per_sample(lstm, 1, 60) == pytest.approx(3 * gates, rel=1e-3)


def test_flop_counting_leaves_the_model_and_the_rng_alone():
    model = build_model(ModelConfig(kind="gru", hidden=8), 1, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    flops_per_sample(model, 1, 10)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@dataclasses.dataclass
class _Rank:
    device_name: str | None


@dataclasses.dataclass
class _Timing:
    samples_per_sec: float | None
    ranks: list
    model_flops_per_sample: float | None = None
    achieved_tflops: float | None = None
    peak_tflops: float | None = None
    mfu: float | None = None


def test_mfu_against_the_peak_table_and_none_where_unknown():
    gpu = _Timing(1e6, [_Rank("NVIDIA H100 80GB HBM3"), _Rank("NVIDIA H100 80GB HBM3")])
    probes.annotate_flops(gpu, 2e8, "bf16")
    assert gpu.achieved_tflops == pytest.approx(200.0)  # 2e8 FLOPs x 1e6 samples/s
    assert gpu.peak_tflops == 2 * 989.0 and gpu.mfu == pytest.approx(200 / 1978)
    assert probes.peak_tflops("NVIDIA H100 PCIe", "fp32") == 51.0
    cpu = _Timing(1e6, [_Rank(None)])
    probes.annotate_flops(cpu, 2e8, "fp32")
    assert cpu.achieved_tflops == pytest.approx(200.0) and cpu.mfu is None
    unmeasured = _Timing(None, [_Rank(None)])
    probes.annotate_flops(unmeasured, 2e8, "fp32")
    assert unmeasured.achieved_tflops is None and unmeasured.model_flops_per_sample == 2e8


def test_the_clock_starts_when_python_imports_raybench_not_when_the_shell_started():
    """`bash -c 'slow step && python -m raybench.run'` execs Python in the shell's process:
    /proc says the process started before the slow step; raybench's clock must not."""
    script = ("import time, os, raybench;"
              "tick = os.sysconf('SC_CLK_TCK');"
              "start = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]);"
              "up = float(open('/proc/uptime').read().split()[0]);"
              "print(up - start / tick, time.time() - raybench.START_TIME)")
    out = subprocess.run(["bash", "-c", f"sleep 2; exec {sys.executable} -c \"{script}\""],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    proc_age, ours = map(float, out.split())
    assert proc_age >= 1.9  # what the old /proc-based clock counted
    assert ours < 1.0


def _block_rank(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    from raybench.backends.ddp import _deliver, _process_group, agreed_block

    with _process_group(rank, world, port, "gloo"):
        # rank 1's steps twice as slow as rank 0's: alone it would ask for half the block
        block = agreed_block(0.1, 0.001 * (rank + 1))
        everyone = [None] * world
        dist.all_gather_object(everyone, block)
        if rank == 0:
            _deliver(results, everyone)


@pytest.mark.integration  # spawns a real gloo process group: ~6 s, the full suite runs it
def test_every_rank_runs_lockstep_blocks_of_one_length():
    """Each rank's own step time once gave two ranks blocks of 24 and 25 steps on a busy
    machine; their collectives crossed and the probe died. The block is agreed: the smallest."""
    from raybench.backends.ddp import _spawn

    blocks, failed = _spawn(2, _block_rank)
    assert not failed and blocks == [5, 5]


@pytest.mark.integration  # spawns a real gloo process group: ~7 s, the full suite runs it
def test_the_lockstep_probe_times_ddp_steps_alike_on_every_rank():
    """Two plain gloo processes (no Ray): the lockstep phase runs the model under DDP as the
    loop does, every rank the same number of steps, each step split into work and sync (the
    last bucket's launch to the end of backward), and the communication alone (the shortest
    sync of each step over the ranks) is no longer than the ranks' median sync."""
    import statistics

    from raybench.backends.ddp import loaded_step_sweep
    from raybench.config import Config

    cfg = Config()
    row = loaded_step_sweep(2, cfg, (1, cfg.data.window, cfg.data.task), 16, seconds=0.3)
    work, sync = row["synced_work_s"], row["synced_allreduce_s"]
    assert len(work) == len(sync) > 0 and len(work) % 2 == 0  # both ranks, as many steps
    assert all(w > 0 for w in work) and all(s > 0 for s in sync)
    # each step's shortest sync is no longer than any rank's: its median no more than theirs
    assert 0 < row["allreduce_s"] <= statistics.median(sync)
    assert len(row["work_s"]) >= 2 * 20  # the unsynchronised phase of both ranks
    # rank 0 alone (at the batch given, 16 here), on both sides of that phase
    assert len(row["solo_s"]) >= 2 and all(t > 0 for t in row["solo_s"])
