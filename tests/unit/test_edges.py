"""Edges found by trying raybench as a new user would: nothing overwritten, no vacuous pass, one
line for a mistake (issue 25). Each test here failed before its fix."""

import dataclasses

import pytest
import yaml

from raybench import report, run, scale, scaling_report
from raybench.cluster import kuberay as cluster
from raybench.cluster.__main__ import main as cluster_main
from raybench.data.__main__ import main as data_main
from raybench.data.ingest import check_cache_fits
from raybench.errors import UserError, run_cli
from tests.unit.test_scaling_report import rec

SCHEMAS = cluster.default_schema_dir()


def one_line_error(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(fn, argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    assert "usage:" not in err and "Traceback" not in err
    return err


def test_an_argument_mistake_is_one_line_without_a_usage_dump(capsys):
    err = one_line_error(capsys, scale.main, ["--workers", "1,,2"])
    assert "a sweep's list of counts (1,2,4), got '1,,2'" in err
    err = one_line_error(capsys, data_main, ["prepare", "--format", "csv", "--out", "x"])
    assert "invalid choice: 'csv'" in err


def test_workers_has_one_syntax_and_each_command_refuses_the_forms_it_cannot_run(capsys):
    from raybench import run
    from raybench.cli import Workers, parse_workers

    assert parse_workers("4") == Workers((4,))
    assert parse_workers(" 2-4 ") == Workers((4,), 2)
    assert parse_workers("4,1,2") == Workers((1, 2, 4))
    for bad in ("0", "4-2", "1,1", "x", "1-", ""):
        with pytest.raises(ValueError):
            parse_workers(bad)
    # a run trains at one count or elastically; a list is a sweep's, and says where to go
    err = one_line_error(capsys, run.main, ["--workers", "1,2,4"])
    assert "raybench.scale" in err
    # a sweep (scale, cluster render) runs fixed sizes; a range is an elastic run's
    for main, argv in ((scale.main, []), (cluster_main, ["render", "--image", "x"])):
        err = one_line_error(capsys, main, [*argv, "--workers", "2-4"])
        assert "elastic run's range (raybench.run --workers MIN-MAX)" in err
    assert scale.build_parser().parse_args(["--workers", "4,1"]).workers == [1, 4]
    assert scale.build_parser().parse_args(["--workers", "2"]).workers == [2]


def test_prepare_never_replaces_a_dataset_unless_asked(tmp_path, capsys):
    out = tmp_path / "d.npz"
    common = ["prepare", "--source", "synthetic", "--samples", "300", "--window", "10"]
    assert data_main([*common, "--out", str(out)]) == 0
    before = out.read_bytes()
    err = one_line_error(capsys, data_main, [*common, "--seed", "7", "--out", str(out)])
    assert "already exists; pass --overwrite" in err and out.read_bytes() == before
    assert data_main([*common, "--seed", "7", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != before
    pq = tmp_path / "pq"
    pq_args = [*common, "--format", "parquet", "--chunk-windows", "8", "--out", str(pq)]
    assert data_main(pq_args) == 0
    assert "already exists" in one_line_error(capsys, data_main, pq_args)
    assert data_main([*pq_args, "--overwrite"]) == 0


def _report(tmp_path, name, factor=1.0):
    runs = [rec("raybench", n, r, v * factor) for n, vals in ((1, (100, 102, 98)),
                                                            (2, (150, 151, 149)))
            for r, v in zip((1, 2, 3), vals, strict=True)]
    scaling_report.write_report(tmp_path / name, environment={}, config={}, runs=runs,
                                mode="strong")
    return str(tmp_path / name)


def test_merge_never_counts_a_report_twice_or_writes_over_an_input(tmp_path):
    a, b = _report(tmp_path, "a"), _report(tmp_path, "b")
    with pytest.raises(UserError, match="same report"):
        scale.main(["merge", a, a + "/scaling.json", "--out", str(tmp_path / "m")])
    with pytest.raises(UserError, match="is one of the inputs"):
        scale.main(["merge", a, b, "--out", a])
    assert scale.main(["merge", a, b, "--out", str(tmp_path / "m")]) == 0
    with pytest.raises(UserError, match="already holds a scaling report"):
        scale.main(["merge", a, b, "--out", str(tmp_path / "m")])


def test_a_gate_that_checks_nothing_fails(tmp_path):
    base, new = _report(tmp_path, "base"), _report(tmp_path, "new", 0.99)
    with pytest.raises(UserError, match="no point of NEW has vs_ddp"):
        report.main(["--compare", base, new, "--fail-if", "vs_ddp<0.95"])
    with pytest.raises(UserError, match="--fail-if gates a comparison"):
        report.main([base, "--out", str(tmp_path / "r.html"), "--fail-if", "change<1"])
    with pytest.raises(UserError, match="the same report twice"):
        report.main(["--compare", base, base + "/scaling.json"])


def test_the_gate_fails_only_beyond_the_interval(tmp_path, capsys):
    """vs_ddp 0.94 whose interval reaches 0.97 does not fail 'vs_ddp<0.95': not decided."""
    base = [rec("raybench", 2, r, v) for r, v in zip((1, 2, 3), (94.0, 97.0, 91.0), strict=True)]
    base += [rec("ddp", 2, r, 100.0) for r in (1, 2, 3)]
    scaling_report.write_report(tmp_path / "b", environment={}, config={}, runs=base,
                                mode="strong")
    scaling_report.write_report(tmp_path / "n", environment={}, config={},
                                runs=[dataclasses.replace(r) for r in base], mode="strong")
    args = ["--compare", str(tmp_path / "b"), str(tmp_path / "n")]
    assert report.main([*args, "--fail-if", "vs_ddp<0.95"]) == 0
    out = capsys.readouterr().out
    assert "not decided vs_ddp<0.95" in out and "straddles 0.95" in out and "FAIL" not in out
    assert report.main([*args, "--fail-if", "vs_ddp<1.05"]) == 1  # the whole interval < 1.05
    assert "smallest detectable" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("apiVersion: ray.io/v1\nkind: RayJb\nspec: {}\n", "kind 'RayJb' is not a KubeRay"),
    ("", "no Kubernetes documents"),
    ("train: {lr: 0.01}\n", "not a Kubernetes resource"),
])
def test_validate_refuses_what_is_not_a_kuberay_manifest(tmp_path, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    (errors,) = cluster.validate_files([str(path)], SCHEMAS).values()
    assert errors and message in errors[0]


def test_render_refuses_flags_the_entrypoint_would_not_take(tmp_path):
    with pytest.raises(UserError, match="raybench.scale does not take --bogus-flag"):
        cluster_main(["render", "--workers", "1,2", "--image", "img", "--extra",
                      "--bogus-flag 3", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.yaml"))
    assert cluster_main(["render", "--workers", "1", "--image", "img", "--extra",
                         "--synthetic-samples 1000", "--out", str(tmp_path)]) == 0
    assert yaml.safe_load((tmp_path / "rayjob-scale-n1.yaml").read_text())["kind"] == "RayJob"


def test_scale_refuses_a_sweep_that_would_measure_nothing():
    with pytest.raises(UserError, match="include 1 in --workers"):
        scale.run_sweep(scale.build_parser().parse_args(["--workers", "2", "--backends", "raw"]))
    with pytest.raises(UserError, match="--predict forecasts from the N=1 point"):
        scale.run_sweep(scale.build_parser().parse_args(["--workers", "2", "--predict", "8"]))
    with pytest.raises(UserError, match="add ray_data to --ingest"):
        scale.run_sweep(scale.build_parser().parse_args(["--workers", "1", "--ingest-ceiling"]))
    with pytest.raises(UserError, match="--cache-train keeps the streamed launcher's"):
        scale.run_sweep(scale.build_parser().parse_args(
            ["--workers", "1", "--cache-train", "--synthetic-samples", "1000"]))


def test_cache_train_needs_a_stream_and_room_in_the_store(reg_npz, tmp_path):
    with pytest.raises(UserError, match="--cache-train keeps a streamed train split"):
        run.main(["--cache-train", "--npz_path", str(reg_npz), "--save_dir", str(tmp_path)])
    check_cache_fits(100 * 2**20, 201 * 2**20)  # fits in half the store
    with pytest.raises(UserError, match=r"train split \(300 MiB\) does not fit in half of "
                                        r"Ray's object store \(400 MiB\)"):
        check_cache_fits(300 * 2**20, 400 * 2**20)


@pytest.fixture
def full_disk(tmp_path):
    """A tiny filesystem of its own (tmpfs), filled to the last block and the last inode."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=16", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(mount):
    """Every inode and every block taken (the filler file first, while an inode is free)."""
    filler = mount / "filler"
    filler.write_bytes(b"")
    for i in range(64):
        try:
            (mount / f"inode{i}").write_bytes(b"")
        except OSError:
            break
    import os

    fd = os.open(filler, os.O_WRONLY | os.O_APPEND)  # no O_CREAT: there is no inode to spare
    try:
        while True:
            os.write(fd, b"x" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_disk_cannot_leave_the_status_at_running(full_disk, cpu_burner):
    from raybench.results import RunStatus, read_status, write_status

    write_status(full_disk, RunStatus("running"))
    _fill(full_disk)
    with pytest.raises(OSError):
        (full_disk / "another").write_bytes(b"x" * 8192)
    write_status(full_disk, RunStatus("failed", "\x1b[31mno space left on device\x1b[0m"))
    status = read_status(full_disk)
    assert status.status == "failed" and status.error == "no space left on device"


def test_a_path_that_cannot_be_read_says_why(tmp_path, capsys):
    from raybench import run

    loop = tmp_path / "loop.npz"
    loop.symlink_to(loop)
    err = one_line_error(capsys, run.main, ["--npz_path", str(loop)])
    assert "symlink loop" in err
    dangling = tmp_path / "gone.npz"
    dangling.symlink_to(tmp_path / "nowhere.npz")
    assert "broken symlink" in one_line_error(capsys, run.main, ["--npz_path", str(dangling)])
    binary = tmp_path / "prices.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    err = one_line_error(capsys, data_main, ["prepare", "--source", "csv", "--path", str(binary),
                                             "--out", str(tmp_path / "x.npz")])
    assert "cannot read it as CSV" in err and all(c.isprintable() for c in err)
