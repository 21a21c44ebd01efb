"""The network terms of the forecast, by hand: DDP's bucket layout (against a real DDP model's
own), the ring, and how much of the bucketed all-reduce backward hides."""

import pytest
import torch
import torch.distributed as dist
from torch import nn

from raybench.scaling_model import CommModel, bucketed_allreduce, ddp_buckets, ring_s

MIB = 1 << 20


def test_buckets_fill_in_reverse_order_first_1_mib_then_25():
    # registration order 0.5, 0.75, 30, 2 MiB; backward gives 2 (>= 1: closes), 30 (>= 25:
    # closes), then 0.75 + 0.5 (the rest)
    layout = ddp_buckets([MIB // 2, 3 * MIB // 4, 30 * MIB, 2 * MIB])
    assert layout == [2 * MIB, 30 * MIB, MIB // 2 + 3 * MIB // 4]
    assert ddp_buckets([100, 200]) == [300]  # a small model: one bucket


def test_the_exposed_allreduce_is_what_backward_could_not_hide():
    # two 1 MiB buckets, backward 1 s, 0.4 s a bucket on the link: bucket 1 ready at 0.5,
    # done 0.9; bucket 2 ready at 1.0, done 1.4 -> exposed 0.4
    o = bucketed_allreduce([MIB, MIB], 1.0, [0.4, 0.4])
    assert (o.allreduce_s, o.exposed_s, o.buckets) == (pytest.approx(0.8), pytest.approx(0.4), 2)
    # 0.8 s a bucket: bucket 2 waits for bucket 1 (done 1.3), done 2.1 -> exposed 1.1
    assert bucketed_allreduce([MIB, MIB], 1.0, [0.8, 0.8]).exposed_s == pytest.approx(1.1)
    assert bucketed_allreduce([MIB], 1.0, [0.0]).exposed_s == 0.0  # one rank: no sync


def test_the_ring_is_2_n_minus_1_hops_and_2_n_minus_1_over_n_of_the_bytes():
    beta = 0.4 / MIB
    assert ring_s(2, MIB, 0.0, beta) == pytest.approx(0.4)
    assert ring_s(4, MIB, 1e-3, beta) == pytest.approx(0.006 + 0.6)  # 6 hops, 1.5 x the bytes
    assert ring_s(1, MIB, 1e-3, beta) == 0.0


def test_the_ring_fit_recovers_its_own_terms_on_relative_errors():
    alpha, beta = 200e-6, 8 / 1e8  # 200 us a hop, 100 Mbit/s
    sizes = [4096 * 4**k for k in range(8)]
    measured = {(2, m): 2 * alpha + m * beta for m in sizes}
    ring = CommModel.fit(measured, relative=True)
    assert ring.alpha_s == pytest.approx(alpha, rel=1e-6)
    assert ring.beta_s_per_byte == pytest.approx(beta, rel=1e-6)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 1))


def _ddp_rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model())
        for _ in range(3):  # buckets are rebuilt in arrival order after the first iteration
            ddp(torch.randn(8, 64)).sum().backward()
        if rank == 0:
            with open(out, "w") as fh:
                fh.write(str(ddp._get_ddp_logging_data()["rebuilt_bucket_sizes"]))
    finally:
        dist.destroy_process_group()


def test_the_layout_is_the_one_a_real_ddp_model_builds(tmp_path):
    """Two gloo ranks: DDP's own log of the buckets it rebuilt after the first iteration (the
    steady state a step runs in) is the reference."""
    import torch.multiprocessing as mp

    out = tmp_path / "buckets"
    mp.spawn(_ddp_rank, args=(str(tmp_path / "store"), str(out)), nprocs=2)
    real = [int(x) for x in out.read_text().split(",")]
    ours = ddp_buckets([p.numel() * p.element_size() for p in _model().parameters()])
    assert ours == real and len(ours) > 1, (ours, real)


def _probe(gbps: float, latency_us: float, links: list[str]):
    from raybench.results import NetworkProbe

    return NetworkProbe(rows=[], workers=2, latency_us=latency_us, bandwidth_gbps=gbps,
                        link={"name": "rb", "nodes": [{"link": x} for x in links]})


def test_the_link_is_measured_or_assumed_and_says_which():
    from raybench.network_forecast import link_of

    measured = link_of(_probe(0.0925, 350.0, ["100mbit"] * 2), None, None)
    assert measured.source == "measured" and measured.gbps == pytest.approx(0.0925)
    assert measured.alpha_s == pytest.approx(350e-6)
    # a network not measured: the given rate, the probe's latency if there is one
    what_if = link_of(_probe(0.0925, 350.0, ["100mbit"] * 2), 25.0, None)
    assert what_if.source == "assumed" and what_if.gbps == pytest.approx(25.0)
    assert what_if.alpha_s == pytest.approx(350e-6)
    assert link_of(None, 25.0, 10.0).alpha_s == pytest.approx(10e-6)
    assert link_of(None, 25.0, None).alpha_s == pytest.approx(50e-6)  # assumed, said so
    assert link_of(None, None, None) is None


def test_a_probe_well_under_the_links_rate_says_the_cpus_bound_it():
    from raybench.network_forecast import cpu_bound

    assert "the CPUs bound the all-reduce" in cpu_bound(_probe(0.6, 300.0, ["1gbit"] * 2))
    assert cpu_bound(_probe(0.0925, 300.0, ["100mbit", "100mbit"])) is None
    assert cpu_bound(_probe(0.6, 300.0, ["unshaped"])) is None


def test_a_network_forecast_is_the_slowest_work_plus_what_backward_did_not_hide():
    from raybench.network_forecast import Link, network_forecast

    # 100 ms of work, 80% forward+backward, backward half of that: 40 ms; one 1 MiB bucket
    # that takes 100 ms on the link: ready at 40 ms, done at 140 -> 100 ms exposed
    link = Link(0.0, 0.1 / MIB, "measured")
    f = network_forecast("raybench", 2, 64, [0.1], 0.8, 0.5, [MIB], link)
    assert f.backward_ms == pytest.approx(40.0) and f.allreduce_ms == pytest.approx(100.0)
    assert f.exposed_ms == pytest.approx(100.0) and f.step_ms == pytest.approx(200.0)
    assert f.predicted_samples_per_sec == pytest.approx(2 * 64 / 0.2)
    assert f.wait_ms == 0.0 and "measured" in f.link and f.buckets == 1


def test_the_gradient_allreduce_benchmark_is_bounded_by_time(tmp_path):
    """200 timed all-reduces (and 20 warm-up) of a 16.8 MB gradient over 100 Mbit/s took 6.6
    minutes a point: the counts now fit a time budget, at least 3 timed."""
    from raybench.probes import allreduce_latency

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        tight = allreduce_latency(1 << 16, torch.device("cpu"), iters=200, budget_s=1e-9)
        roomy = allreduce_latency(1 << 10, torch.device("cpu"), iters=50, budget_s=5.0)
    finally:
        dist.destroy_process_group()
    assert tight.iters == 3 and roomy.iters == 50


def test_a_measured_link_uses_the_probes_own_time_at_each_size():
    """Probe at 4 ranks: 1 MiB in 132 ms, 16 MiB in 2.28 s (its bandwidth falls with size),
    a hop 581 us. At N=2, 16 MiB is the probe's time less its 6 hops, times (2(2-1)/2) /
    (2(4-1)/4) = 2/3, plus N=2's 2 hops."""
    from raybench.network_forecast import Link

    alpha = 581e-6
    link = Link(alpha, 8 / 0.101e9, "measured", ((MIB, 0.132), (16 * MIB, 2.28)), 4)
    assert link.allreduce_s(2, 16 * MIB) == pytest.approx(2 * alpha + (2.28 - 6 * alpha) * 2 / 3)
    assert link.allreduce_s(4, 16 * MIB) == pytest.approx(2.28)
    # between two sizes: linear in log(bytes); 4 MiB is halfway from 1 to 16
    assert link.allreduce_s(4, 4 * MIB) == pytest.approx(0.132 + 0.5 * (2.28 - 0.132))
    assert link.allreduce_s(4, 32 * MIB) == pytest.approx(2 * 2.28)  # beyond: its bandwidth
    assert link.allreduce_s(1, 16 * MIB) == 0.0


def test_a_probe_among_n_ranks_is_used_as_measured_at_that_n():
    """scale --probe-network probes each smaller N too: at N=2 the 2-rank probe's own time,
    not the 4-rank probe scaled by the ring; N=3 (not probed) still scales the 4-rank one."""
    from raybench.network_forecast import Link, link_of
    from raybench.results import NetworkProbe, NetworkRow

    def probe(ranks, rows):
        return NetworkProbe(rows=[NetworkRow(bytes=b, time_s=t, algbw_gbps=0.0, busbw_gbps=0.0,
                                             iters=3) for b, t in rows],
                            workers=ranks, latency_us=581.0, bandwidth_gbps=0.101)

    four = probe(4, [(MIB, 0.132), (16 * MIB, 2.28)])
    four.at_other_n = [probe(2, [(MIB, 0.095), (4 * MIB, 0.36)])]
    link = link_of(four, None, None)
    assert link.at == {2: ((MIB, 0.095), (4 * MIB, 0.36))}
    assert link.allreduce_s(2, 2 * MIB) == pytest.approx(0.095 + 0.5 * (0.36 - 0.095))
    assert link.allreduce_s(4, 16 * MIB) == pytest.approx(2.28)
    alpha = 581e-6
    scaled = Link(alpha, 8 / 0.101e9, "measured", ((MIB, 0.132), (16 * MIB, 2.28)), 4)
    assert link.allreduce_s(3, 16 * MIB) == pytest.approx(scaled.allreduce_s(3, 16 * MIB))
    assert "probed among 2/4 ranks" in link.text()


def test_nodes_computing_at_once_slow_the_work_term_and_the_forecast_says_so():
    """The LSTM on 5 emulated nodes of 0.4 core: 190 ms a step at N=1, 229-275 ms at N=2-4
    with an all-reduce of 3-5 ms. The probe's ranks alone and all at once give the slowdown;
    the work term is N=1's work times it, and the forecast names the points it bound."""
    from raybench.backends.ray_network import node_work
    from raybench.network_forecast import Link, cores_bind, network_forecast, node_slowdowns
    from raybench.results import NetworkProbe

    # each rank's own ratio (1.2 and 1.5: a slower node alone is not contention): geometric
    # mean sqrt(1.2 x 1.5)
    w = node_work(256, [0.100, 0.200], [0.120, 0.300])
    assert w.alone_ms == pytest.approx([100.0, 200.0]) and w.loaded_ms == [120.0, 300.0]
    assert w.slowdown == pytest.approx((1.2 * 1.5) ** 0.5)

    four = NetworkProbe(rows=[], workers=4, latency_us=None, bandwidth_gbps=None,
                        work=node_work(256, [0.19] * 4, [0.247] * 4))
    four.at_other_n = [NetworkProbe(rows=[], workers=2, latency_us=None, bandwidth_gbps=None,
                                    work=node_work(256, [0.19] * 2, [0.195] * 2))]
    slow = node_slowdowns(four)
    assert slow == pytest.approx({4: 1.3, 2: 0.195 / 0.19})
    assert node_slowdowns(None) == {}
    # 1.03 at N=2 is within a step's own variation: only N=4 is named
    note = cores_bind(slow)
    assert "1.30x as long with 4 nodes" in note and "with 2" not in note
    assert cores_bind({2: 1.01}) is None

    # 190 ms of work, 80% forward+backward, backward half: no link time to speak of
    link = Link(0.0, 1e-12, "measured")
    f = network_forecast("raybench", 4, 256, [0.19], 0.8, 0.5, [MIB], link, slowdown=1.3)
    assert f.work_ms == pytest.approx(247.0) and f.slowdown == 1.3
    assert f.backward_ms == pytest.approx(247.0 * 0.4)
    assert f.step_ms == pytest.approx(247.0, rel=1e-4)
    alone = network_forecast("raybench", 4, 256, [0.19], 0.8, 0.5, [MIB], link)
    assert alone.slowdown == 1.0 and alone.work_ms == pytest.approx(190.0)


def test_buckets_timed_after_a_step_are_the_ring_on_busy_nodes():
    """On nodes whose CPU share the step spends, each hop also waits for a peer's quota: the
    LSTM's 200 KB bucket took 4-5 ms among idle ranks and 32-45 ms as DDP ran it. The
    all-reduce timed right after a step at that N wins over the idle probe; other N keep it."""
    from raybench.backends.ray_network import node_work
    from raybench.network_forecast import link_of
    from raybench.results import NetworkProbe, NetworkRow

    def probe(ranks, rows, after=None):
        return NetworkProbe(rows=[NetworkRow(bytes=b, time_s=t, algbw_gbps=0.0, busbw_gbps=0.0,
                                             iters=3) for b, t in rows],
                            workers=ranks, latency_us=800.0, bandwidth_gbps=0.95,
                            work=node_work(256, [0.19] * ranks, [0.2] * ranks, ranks, after))

    kb200 = 200 * 1024
    four = probe(4, [(65536, 0.0067), (262144, 0.0051), (MIB, 0.0136)], {kb200: (12, 0.040)})
    four.at_other_n = [probe(2, [(65536, 0.0037), (262144, 0.0040)])]
    (row,) = four.work.allreduce_after_step
    # nccl-tests' convention on the busy ring too: busbw = algbw x 2(n-1)/n
    assert row.bytes == kb200 and row.iters == 12
    assert row.busbw_gbps == pytest.approx(kb200 * 8 / 0.040 / 1e9 * 1.5)
    link = link_of(four, None, None)
    assert link.after_step == {4: ((kb200, 0.040),)}
    assert link.allreduce_s(4, kb200) == pytest.approx(0.040)
    assert link.allreduce_s(2, 262144) == pytest.approx(0.0040)  # idle probe: none after a step
    assert "buckets timed after a step among 4" in link.text()
    assert link_of(four, 25.0, 10.0).after_step == {}  # a given link is not this one
