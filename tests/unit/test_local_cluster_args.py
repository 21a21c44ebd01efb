"""The emulated cluster's arguments, refused or read before anything is made (no root needed)."""

import pytest

from raybench.cluster import local
from raybench.cluster.__main__ import build_parser, main
from raybench.errors import UserError


@pytest.mark.parametrize("text, bps", [("100mbit", 100_000_000), ("1gbit", 1_000_000_000),
                                       ("2.5Gbit", 2_500_000_000), ("500kbit", 500_000),
                                       ("1gbit/s", 1_000_000_000), ("none", None)])
def test_link_rates_read_in_tc_units(text, bps):
    assert local.parse_rate(text) == bps
    if bps:
        assert local.parse_rate(local.rate_text(bps)) == bps


@pytest.mark.parametrize("text", ["fast", "100", "100mb", "-1mbit", "50kbit"])
def test_bad_link_rates_are_refused(text):
    with pytest.raises(UserError, match="link rate"):
        local.parse_rate(text)


def test_cpu_shares_default_to_an_even_split_and_are_checked():
    assert local.parse_shares(None, 4, 2) == [0.5] * 4
    assert local.parse_shares("1,0.5,0.5", 3, 2) == [1.0, 0.5, 0.5]
    assert local.parse_shares("0.25", 3, 2) == [0.25] * 3
    for text, message in (("1,1", "2 shares for 3 nodes"), ("3,1,1", "between"),
                          ("0.01", "between"), ("x", "expected numbers"), ("nan", "between")):
        with pytest.raises(UserError, match=message):
            local.parse_shares(text, 3, 2)


def test_logical_cpus_round_each_share_up():
    assert local._logical(None, [1.0, 0.5, 0.67, 2.0]) == [1, 1, 1, 2]
    assert local._logical("2", [0.5, 0.5]) == [2, 2]
    assert local._logical("0,1", [0.5, 0.5]) == [0, 1]  # a head that takes no worker
    for bad in ("1,2,3", "-1,1"):
        with pytest.raises(UserError, match="one count"):
            local._logical(bad, [0.5, 0.5])


@pytest.mark.parametrize("name", ["", "UPPER", "has-dash", "waytoolongname", "a b"])
def test_cluster_names_fit_interface_names(name):
    with pytest.raises(UserError, match="--name"):
        local.LocalCluster(name)


def test_every_name_carries_the_clusters_name():
    c = local.LocalCluster("abc12345")
    names = [c.netns(15), c.host_end(15), c.bridge, f"rbn-{c.name}-15", c.cgroup(15)]
    assert all("abc12345" in n for n in names)
    assert max(len(n) for n in (c.host_end(15), c.bridge, f"rbn-{c.name}-15")) <= 15


@pytest.mark.parametrize("argv, message", [
    (["local", "up", "--nodes", "0"], "--nodes 0"),
    (["local", "up", "--link", "fast"], "link rate"),
    (["local", "up", "--nodes", "2", "--node-cpus", "1,1,1"], "3 shares for 2 nodes"),
    (["local", "up", "--subnet", "10.0.0.0/24"], "198.18.0.0/15"),
    (["local", "up", "--subnet", "198.18.0.0/25"], "/24 or wider"),
    (["local", "link", "x", "--down"], "a node is its index"),
    (["local", "link", "1"], "one of the arguments"),
    (["local", "exec", "--name", "nope00"], "give the command after --"),
])
def test_local_cluster_mistakes_are_one_line(argv, message, capsys):
    with pytest.raises((UserError, SystemExit)) as err:
        main(argv)
    text = str(err.value) if err.type is UserError else capsys.readouterr().err
    assert message in text


def test_status_of_a_cluster_that_is_not_up_says_how_to_start_one(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYBENCH_CLUSTERS_DIR", str(tmp_path))
    with pytest.raises(UserError, match="no emulated cluster named 'nope00' is up"):
        main(["local", "status", "--name", "nope00"])


def test_exec_keeps_flags_after_the_double_dash_as_written():
    args = build_parser().parse_args(["local", "exec", "--node", "1", "--", "python", "-m",
                                      "raybench.run", "--batch_size", "8", "--name", "x"])
    assert args.node == 1 and args.name == "rb"
    assert args.argv[1:] == ["python", "-m", "raybench.run", "--batch_size", "8", "--name", "x"]


def test_a_node_share_is_a_quota_in_a_10_ms_period_longer_only_under_a_tenth_of_a_core():
    """A 100 ms period let a node's compute after a wait run at full speed (kernel.py):
    10 ms, and the kernel's 1 ms smallest quota kept by lengthening the period."""
    from raybench.cluster.kernel import quota_of

    assert quota_of(0.4) == (4_000, 10_000)
    assert quota_of(1.5) == (15_000, 10_000)
    assert quota_of(0.1) == (1_000, 10_000)
    assert quota_of(0.05) == (1_000, 20_000)
    assert quota_of(None) == (-1, 10_000)
