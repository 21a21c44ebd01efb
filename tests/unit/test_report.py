"""raybench.report over real run/scaling/sweep directories written by the project's writers."""

import json
import re

import pytest
import yaml

from raybench import artifacts, report, scaling_report
from raybench.errors import UserError
from raybench.results import write_doc
from tests.unit.test_scaling_report import RUNS


@pytest.fixture
def dirs(tmp_path, cls_npz):
    """A real run directory from a real (raw) run, a scaling report and a sweep."""
    from tests.report_inputs import a_run, tune_sweep

    run = a_run(tmp_path, cls_npz)
    scale = tmp_path / "scale"
    scaling_report.write_report(scale, environment={}, config={}, runs=RUNS, mode="strong")
    return run, scale, tune_sweep(tmp_path)


@pytest.mark.parametrize("suffix", [".html", ".md"])
def test_report_is_self_contained_with_every_section(dirs, tmp_path, suffix):
    out = tmp_path / f"report{suffix}"
    assert report.main([*map(str, dirs), "--out", str(out)]) == 0
    text = out.read_text()
    if suffix == ".html":  # curves, two confusion matrices, throughput, phases, trials
        assert text.count("data:image/png;base64,") == 6
    else:  # figures beside the Markdown, linked: code hosts strip data: images
        assert "data:image" not in text
        linked = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
        assert len(linked) == 6 and all((tmp_path / p).is_file() for p in linked)
    rate = json.loads((dirs[0] / "timing.json").read_text())["samples_per_sec"]
    for needle in ("run_1", f"{rate:,.0f}", "Scaling sweep scale", "Tune sweep sweep",
                   "stopped early", "95% CI", "Findings", "naive baseline"):
        assert needle in text, needle


def test_report_rejects_unknown_dirs_and_formats(tmp_path):
    with pytest.raises(UserError, match="not a raybench run"):
        report.main([str(tmp_path), "--out", str(tmp_path / "r.html")])
    write_doc(tmp_path / "status.json", {"status": "failed", "error": "boom"})
    with pytest.raises(UserError, match=r"did not complete \(status failed: boom\)"):
        report.main([str(tmp_path), "--out", str(tmp_path / "r.html")])
    with pytest.raises(UserError, match="expected a directory or a .html or .md file"):
        report.main([str(tmp_path), "--out", str(tmp_path / "r.pdf")])


def test_out_is_a_directory_as_in_every_other_command(dirs, tmp_path):
    assert report.main([str(dirs[0]), "--out", str(tmp_path / "reports")]) == 0
    assert (tmp_path / "reports" / "report.html").read_text().startswith("<!doctype html>")
    (tmp_path / "plain").write_text("x")  # a file without a suffix is not a directory
    with pytest.raises(UserError, match="is a file; give a directory"):
        report.main([str(dirs[0]), "--out", str(tmp_path / "plain")])


def test_written_files_are_readable_by_others(tmp_path):
    path = artifacts.write_json(tmp_path / "x.json", {"a": 1})
    assert path.stat().st_mode & 0o044 == 0o044 and json.loads(path.read_text()) == {"a": 1}
    assert yaml.safe_load(artifacts.write_yaml(tmp_path / "x.yaml", {"b": 2}).read_text())


def test_the_regression_gate_flags_what_changed_beyond_the_noise(tmp_path, capsys):
    import dataclasses

    from raybench.report import compare
    from tests.unit.test_scaling_report import rec

    base = [rec("raybench", n, r, v) for n, vals in ((1, (100, 102, 98)), (2, (150, 151, 149)))
            for r, v in zip((1, 2, 3), vals, strict=True)]
    base += [rec("ddp", 2, r, 160.0) for r in (1, 2, 3)]
    slower = [dataclasses.replace(r, samples_per_sec=r.samples_per_sec * (
        0.8 if (r.backend, r.workers) == ("raybench", 2) else 1.0)) for r in base]
    scaling_report.write_report(tmp_path / "base", environment={}, config={}, runs=base,
                                mode="strong")
    scaling_report.write_report(tmp_path / "new", environment={}, config={}, runs=slower,
                                mode="strong")
    args = ["--compare", str(tmp_path / "base"), str(tmp_path / "new")]
    assert report.main([*args, "--fail-if", "change<0.5"]) == 0
    out = capsys.readouterr().out
    assert "CHANGED" in out and "passed: 1 condition(s)" in out
    assert report.main([*args, "--fail-if", "change_high<1", "--fail-if", "vs_ddp<0.9"]) == 1
    out = capsys.readouterr().out
    assert "FAIL change_high<1: raybench N=2" in out and "FAIL vs_ddp<0.9: raybench N=2" in out
    assert "raybench N=1" not in " ".join(line for line in out.splitlines() if "FAIL" in line)
    ci = compare.ratio_interval([80.0, 81.0, 79.0], [100.0, 101.0, 99.0])
    assert ci.value == pytest.approx(0.8) and ci.low < 0.8 < ci.high < 1
    with pytest.raises(UserError, match="expected METRIC<VALUE"):
        report.main([*args, "--fail-if", "vs_ddp"])
    with pytest.raises(UserError, match="unknown metric 'speed'"):
        report.main([*args, "--fail-if", "speed<1"])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "scaling.json").write_text('{"runs": [], "summary": []}')
    with pytest.raises(UserError, match="schema_version 1, but this raybench reads version 2"):
        report.main(["--compare", str(tmp_path / "old"), str(tmp_path / "new")])


def test_noisy_windows_are_one_finding_for_the_sweep_not_one_per_point(tmp_path):
    """Interleaved windows are judged by their IQR over median, said once for the sweep; the
    range of hundreds of windows (their extremes) is not a noise measure."""
    from raybench.report.sections import noise_findings
    from raybench.results import ScalingDoc, read_doc
    from tests.report_inputs import throughput_sweep

    doc = read_doc(throughput_sweep(tmp_path) / "scaling.json", ScalingDoc)
    assert noise_findings("s", doc) == []  # windows within ±1%
    doc.comparisons[0].noise_iqr = {"raybench": 0.26, "raw": 0.05}
    doc.comparisons[2].noise_iqr = {"raybench": 0.14, "ddp": 0.12}
    (line,) = noise_findings("s", doc)
    assert "3 of" in line and "up to 26%" in line and "IQR over median" in line
