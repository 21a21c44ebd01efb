"""PID 1 of an emulated node (`python -m raybench.cluster.node RAY_DIR HOSTNAME CGROUP_VIEW --
ray start ...`), inside the node's network, mount, PID and UTS namespaces (cluster.local).

It gives the node its own Ray session directory (RAY_DIR bind-mounted over /tmp/ray, so Ray's
one-IP-per-host session files and the raylet's socket are the node's; every other path is the
host's, so a user's data and --save_dir mean the same inside a node as outside), starts Ray,
and reaps what Ray orphans, as an init must. Killing it kills the whole node: when a PID
namespace's init dies, the kernel kills every process left in it.

Imports nothing of raybench or Ray: it starts before either is needed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

RAY_TMP = "/tmp/ray"


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: python -m raybench.cluster.node RAY_DIR HOSTNAME CGROUP_VIEW -- "
              "COMMAND...   (CGROUP_VIEW: FSTYPE:OPTIONS:TARGET, or -)", file=sys.stderr)
        return 2
    ray_dir, hostname, view, command = argv[0], argv[1], argv[2], argv[4:]
    socket.sethostname(hostname)  # its own UTS namespace: the name its /etc/hosts gives it
    os.makedirs(RAY_TMP, exist_ok=True)
    subprocess.run(["mount", "--bind", ray_dir, RAY_TMP], check=True)
    if view != "-":  # the cluster's CPU accounting, for drivers here (ip netns exec left
        fstype, options, target = view.split(":", 2)  # /sys without any cgroup)
        subprocess.run(["mount", "-t", fstype, "-o", options, fstype, target], check=True)
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
