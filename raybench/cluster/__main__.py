"""`python -m raybench.cluster`: clusters for scaling experiments.

  render    one KubeRay RayJob per worker count (a worker pod per Ray Train worker, shut down
            after the job), each running raybench.scale (or raybench.run) with --workers N
  validate  check RayJob/RayCluster manifests against the KubeRay v1 CRD schemas, strictly,
            plus the operator's admission rules and raybench's policy (non-root, unprivileged,
            requests equal to limits)
  local     an emulated multi-node Ray cluster on this machine (root): each node in its own
            network namespace with its own IP, a rate-limited link and a CPU share; nodes can
            be cut off, slowed, frozen and killed (docs/clusters.md)
"""

from __future__ import annotations

import argparse
import os

from raybench.cli import Parser, worker_counts
from raybench.cluster import kuberay, local
from raybench.errors import UserError, run_cli

EXAMPLE = """examples:
  python -m raybench.cluster render --workers 1,2,4,8 --image registry.example/raybench:0.1.0 \\
      --cpus-per-worker 2 --out cluster/generated/
  python -m raybench.cluster validate cluster/*.yaml cluster/generated/*.yaml
  python -m raybench.cluster local up --nodes 3 --link 1gbit --node-cpus 1,0.5,0.5
  python -m raybench.cluster local exec -- python -m raybench.scale --workers 1,2,3 \\
      --placement-strategy STRICT_SPREAD
  python -m raybench.cluster local down"""

LOCAL_EXAMPLE = """examples:
  python -m raybench.cluster local up --nodes 3 --link 100mbit
  python -m raybench.cluster local exec -- python -m raybench.run --workers 3 \\
      --placement-strategy STRICT_SPREAD
  python -m raybench.cluster local link 2 --rate 50mbit     (or --down, --up)
  python -m raybench.cluster local cpu 1 --share 0.25
  python -m raybench.cluster local freeze 1                 (thaw 1, kill 1, start 1)
  python -m raybench.cluster local status
  python -m raybench.cluster local down"""


def build_parser() -> Parser:
    parser = Parser(prog="python -m raybench.cluster", description=__doc__, epilog=EXAMPLE)
    sub = parser.add_subparsers(dest="command", required=True)
    _render_args(sub.add_parser("render", help="one RayJob per worker count"))
    v = sub.add_parser("validate", help="check manifests against the KubeRay v1 CRD schemas")
    v.add_argument("files", nargs="+")
    v.add_argument("--schemas", help="directory with rayjob-v1.schema.json and "
                   "raycluster-v1.schema.json (default: $RAYBENCH_KUBERAY_SCHEMAS, else the "
                   "KubeRay v1.7.0 schemas shipped with raybench)")
    _local_args(sub.add_parser(
        "local", help="an emulated multi-node Ray cluster on this machine (root)",
        description=local.__doc__,
        epilog=LOCAL_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _render_args(r: argparse.ArgumentParser) -> None:
    r.add_argument("--workers", required=True, type=worker_counts, metavar="N,N,...",
                   help="worker counts, one RayJob each, e.g. 1,2,4,8")
    r.add_argument("--image", required=True, help="image with raybench (cluster/Dockerfile)")
    r.add_argument("--cpus-per-worker", type=float, default=1.0)
    r.add_argument("--gpus-per-worker", type=int, default=0)
    r.add_argument("--memory-per-worker", default="4Gi")
    r.add_argument("--results-pvc", default="raybench-results",
                   help="ReadWriteMany PVC mounted at /mnt/results on every pod")
    r.add_argument("--job", choices=("scale", "run"), default="scale",
                   help="entrypoint: raybench.scale (Ray backend) or raybench.run")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--ttl", type=int, default=600, help="ttlSecondsAfterFinished")
    r.add_argument("--extra", default="", help="more flags for the entrypoint, e.g. "
                   "\"--synthetic-samples 1000000 --batch_size 1024\"")
    r.add_argument("--out", default="cluster/generated")
    r.add_argument("--schemas", help="validate what was rendered against these CRD schemas "
                   "(default: the KubeRay schemas shipped with raybench)")


def _node(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a node is its index (0 is the head), got {text!r}"
                                         ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a node index is >= 0, got {value}")
    return value


def _local_args(local: argparse.ArgumentParser) -> None:
    verbs = local.add_subparsers(dest="verb", required=True)
    named = Parser(add_help=False)
    named.add_argument("--name", default="rb", help="the cluster's name: everything it makes "
                       "carries it, so clusters never collide (default rb)")
    up = verbs.add_parser("up", parents=[named], help="start the cluster; wait for every node")
    up.add_argument("--nodes", type=int, default=2, help="nodes, all taking workers; node 0 is "
                    "the head (default 2)")
    up.add_argument("--link", default="1gbit", help="each node's link rate, both directions, "
                    "in tc's units (100mbit, 1gbit) or none (default 1gbit)")
    up.add_argument("--node-cpus", metavar="S,S,...", help="each node's CPU share in cores, "
                    "enforced by a cgroup quota, e.g. 1,0.5,0.5 (default: this machine's cores "
                    "split evenly)")
    up.add_argument("--logical-cpus", metavar="C,C,...", help="CPUs each node advertises to "
                    "Ray (default: its share rounded up, at least 1)")
    up.add_argument("--subnet", help="a /24 inside 198.18.0.0/15 (default: a free one)")
    up.add_argument("--object-store-mib", type=int, default=1024,
                    help="each node's object store (default 1024)")
    for verb, text in (("status", "nodes, addresses, shares, links and Ray's view of each"),
                       ("down", "remove everything the cluster made (idempotent)")):
        verbs.add_parser(verb, parents=[named], help=text)
    ex = verbs.add_parser("exec", parents=[named], help="run a command as a Ray driver on a "
                          "node (RAY_ADDRESS set; the same files and working directory)")
    ex.add_argument("--node", type=_node, default=0, help="node index (default 0, the head)")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    link = verbs.add_parser("link", parents=[named], help="change a node's link")
    link.add_argument("node", type=_node)
    how = link.add_mutually_exclusive_group(required=True)
    how.add_argument("--rate", help="a new rate, both directions (e.g. 50mbit, none)")
    how.add_argument("--down", action="store_true", help="cut the node off")
    how.add_argument("--up", action="store_true", help="plug it back in")
    cpu = verbs.add_parser("cpu", parents=[named], help="change a node's CPU share")
    cpu.add_argument("node", type=_node)
    cpu.add_argument("--share", type=float, required=True, help="cores' worth of CPU time")
    for verb, text in (("freeze", "stop every process of a node (the cgroup freezer)"),
                       ("thaw", "resume a frozen node"),
                       ("kill", "SIGKILL a node with everything on it"),
                       ("start", "start a killed node's Ray again")):
        verbs.add_parser(verb, parents=[named], help=text).add_argument("node", type=_node)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "render":
        return kuberay.render_command(args)
    if args.command == "validate":
        return kuberay.validate_command(args)
    return local_command(args)


def local_command(args: argparse.Namespace) -> int:
    cluster = local.LocalCluster(args.name)
    if args.verb == "up":
        return _up(cluster, args)
    if args.verb == "down":
        cluster.down()
        return 0
    if args.verb == "status":
        print("\n".join(status_lines(cluster)))
        return 0
    if args.verb == "exec":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            raise UserError("local exec: give the command after --, e.g. local exec -- "
                            "python -m raybench.run --workers 2")
        return local.exec_on(cluster, args.node, command)
    change = {
        "link": lambda: cluster.set_link(args.node, rate=args.rate,
                                         up=None if args.rate else args.up),
        "cpu": lambda: cluster.set_cpu(args.node, args.share),
        "freeze": lambda: cluster.freeze(args.node, True),
        "thaw": lambda: cluster.freeze(args.node, False),
        "kill": lambda: cluster.kill(args.node),
        "start": lambda: cluster.start(args.node),
    }[args.verb]
    print(change())
    return 0


def _up(cluster: local.LocalCluster, args: argparse.Namespace) -> int:
    spec = cluster.plan(args.nodes, args.link, args.node_cpus, args.logical_cpus, args.subnet,
                        args.object_store_mib)
    shares = ", ".join(f"{n.cpu_share:g}" for n in spec.nodes)
    print(f"Emulated cluster {spec.name!r}: {len(spec.nodes)} node(s) on {spec.subnet}, links "
          f"{local.rate_text(spec.link_bps)}, CPU shares {shares} of this machine's "
          f"{os.cpu_count()} cores", flush=True)
    took = cluster.up(spec)
    print(f"Ray sees all {len(spec.nodes)} node(s) after {took:.1f}s")
    print(f"  RAY_ADDRESS={spec.address}   (a driver must run on a node: local exec -- CMD)")
    print(f"  dashboard {spec.dashboard}:  RAY_AUTH_MODE=token ray job submit --address "
          f"{spec.dashboard} -- python -m raybench.run ...")
    print(f"  remove it: python -m raybench.cluster local down --name {spec.name}")
    return 0


def status_lines(cluster: local.LocalCluster) -> list[str]:
    spec, rows = cluster.node_status()
    lines = [f"Emulated cluster {spec.name!r} on {spec.subnet}: Ray at {spec.address}, "
             f"dashboard {spec.dashboard}",
             f"{'node':<5}{'role':<8}{'ip':<16}{'cpu share':>10}{'ray CPUs':>9}  "
             f"{'link':<18}{'state':<9}{'ray':<8}{'sent MiB':>10}{'recv MiB':>10}"]
    for r in rows:
        rates = {local.rate_text(r.rate_out_bps), local.rate_text(r.rate_in_bps)}
        link = " / ".join(sorted(rates)) if r.link_up else "DOWN"
        state = "frozen" if r.frozen else "running" if r.running else "killed"
        share = f"{r.cpu_share:g}" if r.cpu_share is not None else "-"
        lines.append(f"{r.spec.index:<5}{r.spec.role:<8}{r.spec.ip:<16}{share:>10}"
                     f"{r.spec.logical_cpus:>9}  {link:<18}{state:<9}{r.ray_state:<8}"
                     f"{r.sent_bytes / 2**20:>10.1f}{r.received_bytes / 2**20:>10.1f}")
    return lines


if __name__ == "__main__":
    run_cli(main)
