"""KubeRay manifests: rendered and shipped ones validate; strictness and operator rules bite."""

import copy
from pathlib import Path

import pytest
import yaml

from raybench.cluster import kuberay as cluster
from raybench.cluster.__main__ import main as cluster_main
from raybench.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = cluster.default_schema_dir()


@pytest.fixture(scope="module")
def schemas():
    return cluster.load_schemas(SCHEMAS)


def job(n=2, **kw):
    args = dict(image="raybench:test", cpus_per_worker=2, gpus_per_worker=0,
                memory_per_worker="4Gi", pvc="results", command="scale", repeats=3, extra=[],
                ttl=600)
    args.update(kw)
    return cluster.render_rayjob(n, **args)


def test_shipped_manifests_are_valid():
    files = sorted(str(p) for p in (ROOT / "cluster").glob("*.yaml"))
    assert len(files) >= 2
    report = cluster.validate_files(files, SCHEMAS)
    assert all(not errors for errors in report.values()), report


@pytest.mark.parametrize("gpus", [0, 1])
def test_render_one_valid_rayjob_per_worker_count(tmp_path, gpus):
    paths = cluster.render([1, 2, 4, 8], tmp_path, image="img", cpus_per_worker=2,
                           gpus_per_worker=gpus, memory_per_worker="4Gi", pvc="results",
                           command="scale", repeats=3, extra=["--synthetic-samples", "1000"],
                           ttl=300)
    assert [p.name for p in paths] == [f"rayjob-scale-n{n}.yaml" for n in (1, 2, 4, 8)]
    report = cluster.validate_files([str(p) for p in paths], SCHEMAS)
    assert all(not e for e in report.values()), report
    doc = yaml.safe_load(paths[2].read_text())
    group = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    assert doc["spec"]["ttlSecondsAfterFinished"] == 300
    assert "--workers 4" in doc["spec"]["entrypoint"]
    assert "--synthetic-samples 1000" in doc["spec"]["entrypoint"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["cpu"] == "2" and limits.get("nvidia.com/gpu") == ("1" if gpus else None)
    assert ("--use-gpu" in doc["spec"]["entrypoint"]) == bool(gpus)
    for pod in (group, doc["spec"]["rayClusterSpec"]["headGroupSpec"]):
        env = pod["template"]["spec"]["containers"][0]["env"]
        assert {"name": "RAY_num_workers_soft_limit", "value": "64"} in env


def mutate(doc, path, value):
    doc = copy.deepcopy(doc)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


WG = ["spec", "rayClusterSpec", "workerGroupSpecs", 0]
CONTAINER = [*WG, "template", "spec", "containers", 0]


@pytest.mark.parametrize("path, value, message", [
    ([*WG, "replica"], 3, "Additional properties are not allowed ('replica' was unexpected)"),
    ([*WG, "replicas"], 9, "need minReplicas <= replicas <= maxReplicas"),
    (["spec", "submissionMode"], "BatchMode", "submissionMode: 'BatchMode' is not one of"),
    (["spec", "clusterSelector"], {"ray.io/cluster": "x"}, "exactly one of rayClusterSpec"),
    (["spec", "rayClusterSpec"], KeyError, "exactly one of rayClusterSpec"),
    (["spec", "ttlSecondsAfterFinished"], -1, "ttlSecondsAfterFinished: must be >= 0"),
    (["spec", "shutdownAfterJobFinishes"], False, None),
    ([*CONTAINER, "securityContext", "runAsUser"], 0, "must run as non-root"),
    ([*CONTAINER, "securityContext", "privileged"], True, "must be unprivileged"),
    ([*CONTAINER, "resources", "requests", "cpu"], "1", "requests.cpu must equal limits.cpu"),
    ([*WG, "minReplicas"], "two", "is not of type 'integer'"),
])
def test_rule_violations_are_reported(schemas, path, value, message):
    doc = mutate(job(), path, value)
    errors = cluster.validate_doc(doc, schemas)
    if message is None:
        assert errors == []  # shutdown off is allowed while not suspended
        errors = cluster.validate_doc(mutate(doc, ["spec", "suspend"], True), schemas)
        message = "suspend: needs shutdownAfterJobFinishes"
    assert any(message in e for e in errors), errors


def test_validate_cli(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(job()))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate(job(), [*WG, "replica"], 1)))
    assert cluster_main(["validate", str(good), "--schemas", str(SCHEMAS)]) == 0
    assert cluster_main(["validate", str(good), str(bad), "--schemas", str(SCHEMAS)]) == 1
    out = capsys.readouterr().out
    assert f"{good}: valid" in out and f"{bad}: INVALID" in out
    with pytest.raises(UserError, match="schemas not found"):
        cluster_main(["validate", str(good), "--schemas", str(tmp_path)])


def test_validate_uses_the_schemas_shipped_in_the_package(tmp_path):
    """After a plain install, from any directory, with no schema path given."""
    import os
    import subprocess
    import sys

    manifest = ROOT / "cluster" / "rayjob.yaml"
    env = {k: v for k, v in os.environ.items() if k != "RAYBENCH_KUBERAY_SCHEMAS"}
    proc = subprocess.run([sys.executable, "-m", "raybench.cluster", "validate", str(manifest)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{manifest}: valid" in proc.stdout
    assert "v1.7.0" in (SCHEMAS / "README.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--image", ""], "--image '' is not an image reference"),
    (["--image", "bad image name with spaces"], "is not an image reference"),
    (["--image", "Registry/UPPER:1"], "is not an image reference"),
    (["--extra", "--set 'model.kind=lstm"], "No closing quotation"),
    # what render sets for each RayJob, given again: the later would win on the cluster
    (["--extra", "--workers 3"], "--workers is what render sets for each RayJob"),
    (["--extra=--cpus_per_worker=4"], "--cpus-per-worker is what render sets"),
    (["--job", "run", "--extra", "--save-dir /x"], "--save-dir is what render sets"),
    (["--extra", "--out /elsewhere"], "--out is what render sets"),
])
def test_render_refuses_what_could_not_run_as_rendered(tmp_path, argv, message):
    with pytest.raises(UserError, match=message):
        cluster_main(["render", "--workers", "1", "--out", str(tmp_path), "--image", "img",
                      *argv])
    assert not list(tmp_path.glob("*.yaml"))


def test_validate_names_a_bad_image_and_a_file_that_is_not_text(tmp_path):
    doc = job(image="bad image")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    (errors,) = cluster.validate_files([str(path)], SCHEMAS).values()
    assert any("'bad image' is not an image reference" in e for e in errors), errors
    binary = tmp_path / "latin.yaml"
    binary.write_bytes(b"kind: RayJob  # caf\xe9\n\xff\xfe")
    (errors,) = cluster.validate_files([str(binary)], SCHEMAS).values()
    assert errors == ["not a UTF-8 text file (a binary file or another encoding)"]


def test_render_keeps_quoted_extra_flags_quoted(tmp_path):
    cluster_main(["render", "--workers", "1", "--out", str(tmp_path), "--image", "img",
                  "--extra", "--set 'io.run_name=a b'"])
    doc = yaml.safe_load(next(tmp_path.glob("*.yaml")).read_text())
    assert "--set 'io.run_name=a b'" in doc["spec"]["entrypoint"]
