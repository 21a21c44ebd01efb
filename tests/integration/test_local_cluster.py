"""The emulated cluster (`raybench.cluster local`) against the kernel's own state and Ray's:
namespaces, qdiscs, cgroup values and processes made by `up`, changed on a running cluster, and
gone after `down`, also after `up` was killed halfway. Root only: skipped with the reason
elsewhere (CI runs as root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raybench.cluster import kernel
from raybench.cluster.local import LocalCluster, clusters_dir, ray_view

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "raybench.cluster", "local"]


def cli(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kw)


def leftovers(name: str) -> list[str]:
    """Everything of cluster `name` the kernel or the file system still holds."""
    found = [ns for ns in kernel.netns_list() if ns.startswith(f"raybench-{name}-")]
    found += kernel.links(f"rbv-{name}-") + kernel.links(f"rbbr-{name}")
    found += [str(d) for d in kernel.Cgroups.detect().dirs(f"raybench/{name}") if d.exists()]
    found += [str(p) for p in [clusters_dir() / name, *Path("/etc/netns").glob(
        f"raybench-{name}-*")] if p.exists()]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(clusters_dir() / name) in cmdline or f"raybench-{name}-" in cmdline:
            found.append(f"pid {proc.name}: {cmdline[:80]}")
    return found


@pytest.fixture
def name():
    problem = kernel.missing()
    if problem:
        pytest.skip(problem)
    name = f"t{os.getpid() % 10**6:06d}"
    yield name
    LocalCluster(name).down(log=lambda _: None)


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_loop(cluster: LocalCluster, node: int) -> subprocess.Popen:
    """A busy loop on a node, as a driver started there would run: in its cgroups."""
    argv, env = cluster.command(node, [sys.executable, "-c", "while True: pass"])
    return subprocess.Popen(argv, env=env)


def child_of(proc: subprocess.Popen) -> int:
    """The busy loop itself (nsenter forks it), once it runs."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if kids:
            return int(kids[0])
        time.sleep(0.05)
    raise AssertionError("the command did not start on the node")


def cores_used(pid: int, seconds: float = 2.0) -> float:
    before = cpu_s(pid)
    time.sleep(seconds)
    return (cpu_s(pid) - before) / seconds


def test_up_status_changes_and_down(name, tmp_path):
    up = cli("up", "--name", name, "--nodes", "3", "--link", "100mbit", "--node-cpus",
             "1,0.5,0.5")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Ray sees all 3 node(s)" in up.stdout and "RAY_ADDRESS=198.1" in up.stdout
    cluster = LocalCluster(name)
    spec = cluster.spec()
    groups = kernel.Cgroups.detect()
    # the kernel's own state: a namespace, a link shaped at both ends and a quota per node
    for node, share in zip(spec.nodes, (1, 0.5, 0.5), strict=True):
        i = node.index
        assert cluster.netns(i) in kernel.netns_list() and cluster.init_pid(i) is not None
        assert kernel.shaped_rate(cluster.host_end(i)) == 100_000_000
        assert kernel.shaped_rate("eth0", cluster.netns(i)) == 100_000_000
        assert groups.cpu_share(cluster.cgroup(i)) == pytest.approx(share)
        addr = kernel.run(["ip", "-n", cluster.netns(i), "-4", "-o", "addr", "show", "eth0"])
        assert f" {node.ip}/24 " in addr and node.ip.startswith(("198.18.", "198.19."))
    # Ray's view: every node alive at its own address with the CPUs it advertises
    view = ray_view(spec.address)
    assert [view[n.ip]["state"] for n in spec.nodes] == ["ALIVE"] * 3
    assert [view[n.ip]["cpus"] for n in spec.nodes] == [1.0, 1.0, 1.0]
    status = cli("status", "--name", name)
    assert status.returncode == 0 and status.stdout.count("ALIVE") == 3, status.stdout
    assert status.stdout.count("100mbit") == 3

    check_exec_writes_as_on_the_host(name, tmp_path)
    check_link_changes(cluster, name)
    check_cpu_share_and_freezing(cluster, name, groups)
    check_kill_and_start(cluster, name, spec)

    down = cli("down", "--name", name)
    assert down.returncode == 0 and "3 node(s)" in down.stdout, down.stderr
    assert leftovers(name) == []
    again = cli("down", "--name", name)  # idempotent
    assert again.returncode == 0 and "Nothing left" in again.stdout


def check_exec_writes_as_on_the_host(name: str, tmp_path: Path) -> None:
    """A driver on a node sees this directory as the host does: a rename from an absolute path
    to a relative one (each atomic write of a run into ./outputs) works. With nsenter's --wd
    the working directory was the host's mount, and the rename failed with EXDEV."""
    (tmp_path / "a").write_text("x")
    code = f"import os; os.replace({str(tmp_path / 'a')!r}, 'b'); print(os.getcwd())"
    done = subprocess.run([*CLI, "exec", "--name", name, "--", sys.executable, "-c", code],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == str(tmp_path), done.stderr
    assert (tmp_path / "b").read_text() == "x"


def check_link_changes(cluster: LocalCluster, name: str) -> None:
    assert "50mbit" in cli("link", "1", "--rate", "50mbit", "--name", name).stdout
    assert kernel.shaped_rate(cluster.host_end(1)) == 50_000_000
    assert kernel.shaped_rate("eth0", cluster.netns(1)) == 50_000_000
    assert "50mbit" in cli("status", "--name", name).stdout
    assert "down" in cli("link", "2", "--down", "--name", name).stdout
    assert not kernel.link_is_up(cluster.host_end(2))
    assert "DOWN" in cli("status", "--name", name).stdout
    assert cli("link", "2", "--up", "--name", name).returncode == 0
    assert kernel.link_is_up(cluster.host_end(2))


def check_cpu_share_and_freezing(cluster: LocalCluster, name: str,
                                 groups: kernel.Cgroups) -> None:
    """A busy loop on a node runs at its quota, stops entirely while the node is frozen, and
    runs again when it thaws."""
    loop = busy_loop(cluster, 1)
    try:
        pid = child_of(loop)
        assert cli("cpu", "1", "--share", "0.25", "--name", name).returncode == 0
        assert groups.cpu_share(cluster.cgroup(1)) == pytest.approx(0.25)
        assert cores_used(pid) < 0.35  # the quota holds it at a quarter of a core
        assert cli("freeze", "1", "--name", name).returncode == 0
        assert groups.is_frozen(cluster.cgroup(1))
        assert "frozen" in cli("status", "--name", name).stdout
        assert cores_used(pid, 1.0) == 0.0  # not one tick while frozen
        assert cli("thaw", "1", "--name", name).returncode == 0
        assert not groups.is_frozen(cluster.cgroup(1)) and cores_used(pid, 1.0) > 0.1
    finally:
        loop.kill()
        loop.wait()


def check_kill_and_start(cluster: LocalCluster, name: str, spec) -> None:
    """A node killed with everything on it: no process left, Ray marks it dead; it returns."""
    init = cluster.init_pid(2)
    killed = cli("kill", "2", "--name", name)
    assert killed.returncode == 0 and "killed" in killed.stdout
    assert cluster.init_pid(2) is None and kernel.netns_pids(cluster.netns(2)) == []
    assert state(init) in ("gone", "Z")  # nothing of the node runs
    ip = spec.nodes[2].ip
    until(lambda: ray_view(spec.address).get(ip, {}).get("state") == "DEAD", 90)
    assert "killed" in cli("status", "--name", name).stdout
    started = cli("start", "2", "--name", name)
    assert started.returncode == 0, started.stderr
    assert ray_view(spec.address)[ip]["state"] == "ALIVE"


def test_down_after_up_was_killed_halfway_leaves_nothing(name):
    proc = subprocess.Popen([*CLI, "up", "--name", name, "--nodes", "3", "--link", "1gbit"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = LocalCluster(name)
    # killed once the head's Ray runs, before the other nodes have joined
    until(lambda: cluster.init_pid(0) is not None, 60)
    proc.kill()
    proc.wait()
    assert leftovers(name), "up was killed before it made anything: this tests nothing"
    down = cli("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert leftovers(name) == []


def test_down_finds_a_cluster_without_its_state_file(name):
    assert cli("up", "--name", name, "--nodes", "1", "--link", "none").returncode == 0
    (clusters_dir() / name / "state.json").unlink()
    assert cli("down", "--name", name).returncode == 0
    assert leftovers(name) == []


def test_refusals_are_one_line_exit_2_and_leave_nothing(name, tmp_path):
    first = cli("up", "--name", name, "--nodes", "1", "--link", "none")
    assert first.returncode == 0, first.stderr
    subnet = LocalCluster(name).spec().subnet
    again = cli("up", "--name", name, "--nodes", "1")  # a name in use
    assert again.returncode == 2 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    other = f"{name[:7]}x"
    clash = cli("up", "--name", other, "--nodes", "1", "--subnet", subnet)  # addresses in use
    assert clash.returncode == 2 and "already in use" in clash.stderr, clash.stderr
    # a machine without tc: the missing tool is named
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ip", "nsenter", "unshare", "mount"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    no_tc = cli("up", "--name", other, env={**os.environ, "PATH": str(bin_dir)})
    assert no_tc.returncode == 2 and "needs tc" in no_tc.stderr, no_tc.stderr
    # root without CAP_NET_ADMIN: refused before anything is made
    setpriv = shutil.which("setpriv")
    if setpriv:
        no_cap = subprocess.run([setpriv, "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                                 *CLI, "up", "--name", other], capture_output=True, text=True,
                                timeout=60)
        assert no_cap.returncode == 2 and "needs root" in no_cap.stderr, no_cap.stderr
    for refused in (again, clash, no_tc):
        assert "Traceback" not in refused.stderr
    assert leftovers(other) == []


def until(check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)
