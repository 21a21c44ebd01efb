"""--steady-malloc: a training step's memory stays mapped from one step to the next."""

import json
import subprocess
import sys
import textwrap

# The LSTM's training step as a Ray Train rank runs it, on a thread of its own: with glibc's
# defaults its buffers are mapped and faulted in again every step (17,800 minor faults a step
# here, 29 of its 71 ms in the kernel).
STEPS = textwrap.dedent("""
    import json, resource, sys, threading
    import torch
    from torch import nn
    if sys.argv[1] == "steady":
        from raybench.malloc import hold_steady
        print(json.dumps(hold_steady()))
    else:
        print("null")
    torch.set_num_threads(1)
    faults = []
    def steps():
        torch.manual_seed(0)
        lstm, head = nn.LSTM(8, 64, num_layers=2, batch_first=True), nn.Linear(64, 1)
        params = [*lstm.parameters(), *head.parameters()]
        optimizer = torch.optim.Adam(params)
        x, y = torch.randn(256, 60, 8), torch.randn(256, 1)
        def step():
            optimizer.zero_grad()
            nn.functional.mse_loss(head(lstm(x)[0][:, -1]), y).backward()
            optimizer.step()
        for _ in range(3):  # the first steps map the heaps
            step()
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(5):
            step()
        faults.append((resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / 5)
    t = threading.Thread(target=steps)
    t.start()
    t.join()
    print(faults[0])
""")


def _faults_per_step(mode: str) -> tuple[dict | None, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split("\n")
    return json.loads(out[0]), float(out[1])


def test_steady_malloc_keeps_a_steps_buffer_mapped():
    settings, default = _faults_per_step("default")
    assert settings is None
    assert default > 5_000, default
    settings, steady = _faults_per_step("steady")
    assert settings == {"mmap_max": 0, "trim_threshold": 1 << 30, "top_pad": 256 << 20}
    assert steady < default / 20, (steady, default)
