"""A real tiny scaling sweep: raybench (Ray Train), ddp and raw at 1 and 2 workers."""

import csv
import json

from raybench import scale


def test_tiny_sweep_writes_all_three_files(ray_cluster, tmp_path):
    out = tmp_path / "scale"
    doc = scale.run_sweep(scale.build_parser().parse_args([
        "--workers", "1,2", "--repeats", "1", "--synthetic-samples", "6000", "--window", "20",
        "--batch_size", "128", "--warmup-steps", "5", "--min-steps", "25", "--min-seconds", "0",
        "--allreduce-iters", "20", "--out", str(out), "--quiet"]))
    assert {p.name for p in out.iterdir()} >= {"scaling.json", "scaling.csv", "scaling.png"}
    rows = list(csv.DictReader((out / "scaling.csv").open()))
    points = {(r["backend"], int(r["workers"])) for r in rows}
    assert points == {("raybench", 1), ("raybench", 2), ("ddp", 1), ("ddp", 2), ("raw", 1)}
    for r in rows:
        assert float(r["samples_per_sec"]) > 0
        assert int(r["measured_steps"]) == 25  # the window, cycling over the data
        # strong scaling: the global batch is fixed (--batch_size at the smallest N)
        assert int(r["global_batch_size"]) == 128
        assert int(r["batch_size_per_worker"]) * int(r["workers"]) == 128
    saved = json.loads((out / "scaling.json").read_text())
    assert saved["schema_version"] == 2
    assert saved["environment"]["torch"] and saved["environment"]["ray_nodes"] == 1
    assert saved["config"]["train"]["early_stop_patience"] == 0
    by_point = {(r.backend, r.workers): r for r in doc.summary}
    ray2 = by_point[("raybench", 2)]
    assert ray2.vs_ddp > 0 and by_point[("raybench", 1)].vs_raw > 0
    # two processes all-reduce gradients: the sync phase is measured, not hidden
    assert ray2.sync_share > 0 and by_point[("raybench", 1)].sync_share == 0
    assert by_point[("ddp", 2)].allreduce_ms_p50 > 0
    run2 = [r for r in saved["runs"] if r["backend"] == "raybench" and r["workers"] == 2][0]
    assert len(run2["nodes"]) == 2 and len(run2["peak_rss_mib_per_rank"]) == 2
