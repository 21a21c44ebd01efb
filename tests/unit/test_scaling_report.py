import csv
import json

import pytest

from raybench import scaling_report as sr
from raybench.config import Config
from raybench.errors import UserError
from raybench.scale import main as scale_main
from raybench.scale import point_config


def rec(backend, workers, repeat, sps, sync=0.1):
    return {"backend": backend, "mode": "strong", "workers": workers, "repeat": repeat,
            "samples_per_sec": sps, "samples_per_sec_per_worker": sps / workers,
            "step_time_ms_p50": 1.0, "step_time_ms_p90": 2.0, "data_share": 0.01,
            "compute_share": 0.7, "sync_share": sync, "optimizer_share": 0.19,
            "batch_size_per_worker": 1024 // workers, "global_batch_size": 1024,
            "threads_per_worker": 1, "epoch_time_sec": 1.0, "time_to_first_step_sec": 10.0,
            "peak_rss_mb_max": 100.0, "peak_gpu_mem_mb_max": None, "allreduce_ms_p50": None,
            "nodes": ["127.0.0.1"] * workers, "wall_time_sec": 20.0}


RUNS = ([rec("raybench", 1, r, v) for r, v in [(1, 100.0), (2, 110.0), (3, 90.0)]]
        + [rec("raybench", 2, r, v) for r, v in [(1, 150.0), (2, 160.0), (3, 170.0)]]
        + [rec("ddp", 1, r, 105.0) for r in (1, 2, 3)]
        + [rec("ddp", 2, r, 200.0) for r in (1, 2, 3)]
        + [rec("raw", 1, r, 125.0) for r in (1, 2, 3)])


def test_spread_and_interval():
    s = sr.spread([90.0, 100.0, 110.0])
    assert (s["median"], s["min"], s["max"], s["mean"]) == (100.0, 90.0, 110.0, 100.0)
    half = 4.303 * 10.0 / 3 ** 0.5  # t(0.975, df=2) * sd / sqrt(n)
    assert s["ci95_low"] == pytest.approx(100 - half)
    assert s["ci95_high"] == pytest.approx(100 + half)
    assert sr.spread([1.0, 2.0])["ci95_low"] is None


def test_speedup_pairs_repeats_and_efficiency_divides_by_n():
    runs = sr.add_speedups(RUNS)
    r2 = {(r["backend"], r["workers"], r["repeat"]): r for r in runs}
    assert r2[("raybench", 2, 1)]["speedup"] == pytest.approx(1.5)
    assert r2[("raybench", 2, 2)]["speedup"] == pytest.approx(160 / 110)
    assert r2[("raybench", 2, 1)]["efficiency"] == pytest.approx(0.75)
    assert r2[("raw", 1, 1)]["speedup"] == 1.0


def test_summary_ratios_vs_raw_and_ddp():
    rows = {(r["backend"], r["workers"]): r for r in sr.summarize(RUNS)}
    ray1, ray2 = rows[("raybench", 1)], rows[("raybench", 2)]
    assert ray1["samples_per_sec"]["median"] == 100.0
    assert ray2["speedup"] == pytest.approx(1.6) and ray2["efficiency"] == pytest.approx(0.8)
    assert ray1["vs_raw"] == pytest.approx(100 / 125)
    assert ray1["vs_ddp"] == pytest.approx(100 / 105)
    assert ray2["vs_ddp"] == pytest.approx(160 / 200)
    assert ray2["vs_raw"] is None  # raw is a one-worker ceiling only
    assert [k[0] for k in rows][:2] == ["raybench", "raybench"]


def test_report_files_and_merge(tmp_path, capsys):
    a = tmp_path / "a"
    b = tmp_path / "b"
    sr.write_report(a, environment={"host": "x"}, config={"k": 1},
                    runs=[r for r in RUNS if r["workers"] == 1])
    sr.write_report(b, environment={"host": "y"}, config={"k": 1},
                    runs=[r for r in RUNS if r["workers"] == 2])
    for d in (a, b):
        assert {p.name for p in d.iterdir()} == {"scaling.json", "scaling.csv", "scaling.png"}
    rows = list(csv.DictReader((a / "scaling.csv").open()))
    assert set(sr.CSV_COLUMNS) <= rows[0].keys()
    assert {"backend", "mode", "workers", "repeat", "samples_per_sec", "speedup",
            "efficiency", "sync_share"} <= rows[0].keys()
    assert scale_main(["merge", str(a), str(b / "scaling.json"), "--out",
                       str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "scaling.json").read_text())
    assert len(merged["runs"]) == len(RUNS)
    assert merged["environment"] == [{"host": "x"}, {"host": "y"}]
    ray2 = [r for r in merged["summary"] if r["backend"] == "raybench" and r["workers"] == 2][0]
    assert ray2["speedup"] == pytest.approx(1.6)  # computed across the merged inputs
    assert "raybench" in capsys.readouterr().out


def test_merge_refuses_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="no scaling.json"):
        scale_main(["merge", str(tmp_path), "--out", str(tmp_path / "m")])
    (tmp_path / "scaling.json").write_text("{}")
    with pytest.raises(UserError, match="not a raybench scaling.json"):
        scale_main(["merge", str(tmp_path), "--out", str(tmp_path / "m")])


def test_strong_and_weak_batches():
    base = Config()
    base.train.batch_size = 1024
    assert point_config(base, "strong", 4).train.batch_size == 256
    assert point_config(base, "weak", 4).train.batch_size == 1024
    assert point_config(base, "strong", 4).scaling.workers == 4
    with pytest.raises(UserError, match="divisible by 3"):
        point_config(base, "strong", 3)


def test_table_lists_every_point():
    text = sr.table(sr.summarize(RUNS))
    assert len(text.splitlines()) == 2 + 5
