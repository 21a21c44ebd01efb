"""PID 1 of an emulated node (`python -m raybench.cluster.node RAY_DIR -- ray start ...`), run
inside the node's network, mount and PID namespaces (raybench.cluster.local starts it).

It gives the node its own Ray session directory (RAY_DIR bind-mounted over /tmp/ray, so Ray's
one-IP-per-host session files and the raylet's socket are the node's; every other path is the
host's, so a user's data and --save_dir mean the same inside a node as outside), starts Ray,
and reaps what Ray orphans, as an init must. Killing it kills the whole node: when a PID
namespace's init dies, the kernel kills every process left in it.

Imports nothing of raybench or Ray: it starts before either is needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

RAY_TMP = "/tmp/ray"


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m raybench.cluster.node RAY_DIR -- COMMAND...", file=sys.stderr)
        return 2
    ray_dir, command = argv[0], argv[2:]
    os.makedirs(RAY_TMP, exist_ok=True)
    subprocess.run(["mount", "--bind", ray_dir, RAY_TMP], check=True)
    child = subprocess.Popen(command)
    # `ray start --block` stops its processes on SIGTERM; anything it leaves dies with us.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    code = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return code
        except InterruptedError:
            continue
        if pid == child.pid:
            code = os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
