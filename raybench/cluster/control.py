"""The cluster's control socket: the faults a driver schedules (`scale --chaos freeze-node`,
`cut-link`, `slow-node`, `kill-node`) carried out on the host.

A driver runs inside a node's namespaces: it cannot see the host's end of another node's link,
nor another node's processes (each node has its own PID namespace), so it cannot cut, freeze
or kill a node itself. `local up` leaves one small process on the host serving a UNIX socket
in the cluster's directory (a path every node shares; a UNIX socket crosses network
namespaces). It does what `python -m raybench.cluster local freeze|thaw|link|cpu|kill|start`
would, and `revive` (start a node again that Ray declared dead while it was frozen or cut off),
one request at a time, for root only (the socket is 0600); it exits when the cluster is removed.

The protocol is one JSON object a line each way: {"op": "freeze", "node": 2, "on": true} ->
{"ok": true, "said": "node 2: frozen ..."} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
from pathlib import Path

from raybench.cluster.local import CONTROL_SOCKET, LocalCluster
from raybench.errors import UserError

OPS = ("freeze", "link", "cpu", "kill", "start", "revive")
_ASK_TIMEOUT_S = 240.0  # `start` waits for Ray to see the node again (up to 180 s)


def ask(socket_path: str | Path, op: str, node: int, **args: object) -> str:
    """One change of a node through the cluster's control socket; what was done, in words.
    UserError when the cluster refused it or is gone."""
    request = json.dumps({"op": op, "node": node, **args}) + "\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_ASK_TIMEOUT_S)
            conn.connect(str(socket_path))
            conn.sendall(request.encode())
            reply = conn.makefile().readline()
    except OSError as exc:
        raise UserError(f"the emulated cluster's control socket {socket_path} did not answer "
                        f"({exc}); is the cluster still up?") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise UserError(f"the emulated cluster's control socket gave no answer to {op} of "
                        f"node {node}") from None
    if not answer.get("ok"):
        raise UserError(str(answer.get("error", "refused")))
    return str(answer.get("said", ""))


def carry_out(cluster: object, request: dict) -> str:
    """What one request does to the cluster (a LocalCluster)."""
    op, node = request.get("op"), request.get("node")
    if op not in OPS or not isinstance(node, int) or isinstance(node, bool):
        raise UserError(f"unknown request {request!r}: op one of {', '.join(OPS)}, node an int")
    if op == "freeze":
        return cluster.freeze(node, bool(request.get("on", True)))
    if op == "link":
        if "rate" in request:
            return cluster.set_link(node, rate=str(request["rate"]))
        return cluster.set_link(node, up=bool(request.get("up", True)))
    if op == "cpu":
        return cluster.set_cpu(node, float(request["share"]))
    if op == "kill":
        return cluster.kill(node)
    if op == "revive":
        return cluster.revive(node, float(request.get("settle_s", 60.0)))
    return cluster.start(node)


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            said = carry_out(self.server.cluster, json.loads(line))
            answer = {"ok": True, "said": said}
        except (UserError, ValueError, KeyError, TypeError, OSError) as exc:
            answer = {"ok": False, "error": str(exc).splitlines()[0] if str(exc) else
                      type(exc).__name__}
        with contextlib.suppress(OSError):
            self.wfile.write((json.dumps(answer) + "\n").encode())


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(name: str) -> None:
    """Serve the cluster's socket until its state file is gone (`down` removed it)."""
    cluster = LocalCluster(name)
    path = cluster.dir / CONTROL_SOCKET
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    old = os.umask(0o177)  # the socket is root's: it freezes and kills nodes
    try:
        server = _Server(str(path), _Handler)
    finally:
        os.umask(old)
    server.cluster = cluster
    thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
    thread.start()
    stop = threading.Event()
    while not stop.wait(1.0):
        if not cluster.state_file.exists():  # removed under it: nothing left to control
            break
    server.shutdown()
    with contextlib.suppress(OSError):
        path.unlink()


if __name__ == "__main__":
    serve(sys.argv[1])
