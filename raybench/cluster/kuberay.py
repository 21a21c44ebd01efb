"""KubeRay manifests for scaling experiments: one RayJob per worker count (`render`), and
checks of RayJob/RayCluster manifests against the KubeRay v1 CRD schemas, strictly (unknown
keys are errors), plus the rules the operator enforces at admission and raybench's own policy
(non-root, unprivileged, requests equal to limits) (`validate`). Rendering imports no torch."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from raybench.errors import UserError, missing_file, printable
from raybench.ray_env import IDLE_WORKERS_KEPT

RAY_VERSION = "2.60.0"
# An image reference as the distribution spec reads one: [registry[:port]/]name[:tag][@digest],
# name components lowercase; what a kubelet would refuse to pull is refused here.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    rf"(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?")
SUBMISSION_MODES = ("K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode")
RESULTS_MOUNT = "/mnt/results"


# ------------------------------------------------------------------ rendering


def _security() -> dict:
    return {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100,
            "allowPrivilegeEscalation": False, "privileged": False,
            "capabilities": {"drop": ["ALL"]}}


def _pod(image: str, name: str, cpu: str, memory: str, gpus: int, pvc: str) -> dict:
    resources = {"cpu": cpu, "memory": memory}
    if gpus:
        resources["nvidia.com/gpu"] = str(gpus)
    return {
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 100},
            "containers": [{
                "name": name,
                "image": image,
                # Requests equal to limits: Guaranteed QoS, so a benchmark's CPUs are its own.
                "resources": {"requests": dict(resources), "limits": dict(resources)},
                "securityContext": _security(),
                # Keep idle Ray worker processes for reuse: past the soft limit (default: the
                # pod's CPUs) Ray kills them after a second, and a streamed run's next epoch
                # starts its read tasks' Python processes again on the training CPUs.
                "env": [{"name": "RAY_num_workers_soft_limit", "value": str(IDLE_WORKERS_KEPT)}],
                "volumeMounts": [{"name": "results", "mountPath": RESULTS_MOUNT},
                                 {"name": "dshm", "mountPath": "/dev/shm"}],
            }],
            "volumes": [
                {"name": "results", "persistentVolumeClaim": {"claimName": pvc}},
                # Ray's object store lives in /dev/shm; the container default (64 MiB) is tiny.
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def cluster_spec(image: str, workers: int, cpus_per_worker: float, gpus_per_worker: int,
                 memory_per_worker: str, pvc: str, head_cpu: str = "2",
                 head_memory: str = "8Gi") -> dict:
    """Head pod schedules no training (num-cpus 0); one worker pod per Ray Train worker."""
    cpu = f"{cpus_per_worker:g}"
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
            "template": _pod(image, "ray-head", head_cpu, head_memory, 0, pvc),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu-workers" if gpus_per_worker else "cpu-workers",
            "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
            "rayStartParams": {},
            "template": _pod(image, "ray-worker", cpu, memory_per_worker, gpus_per_worker, pvc),
        }],
    }


def render_rayjob(n: int, *, image: str, cpus_per_worker: float, gpus_per_worker: int,
                  memory_per_worker: str, pvc: str, command: str, repeats: int,
                  extra: list[str], ttl: int) -> dict:
    flags = [f"--workers {n}", f"--cpus-per-worker {cpus_per_worker:g}"]
    if gpus_per_worker:
        flags.append("--use-gpu")
    if command == "scale":
        # Only the Ray backend: the driver runs on the head pod, which holds no training CPUs.
        entry = (f"python -m raybench.scale --backends raybench --repeats {repeats} "
                 f"--out {RESULTS_MOUNT}/scale/n{n} " + " ".join(flags) + " " + shlex.join(extra))
    else:
        entry = (f"python -m raybench.run --save_dir {RESULTS_MOUNT}/runs --run_name n{n} "
                 + " ".join(flags) + " " + shlex.join(extra))
    spec = cluster_spec(image, n, cpus_per_worker, gpus_per_worker, memory_per_worker, pvc)
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": f"raybench-{command}-n{n}",
                     "labels": {"app.kubernetes.io/name": "raybench",
                                "raybench/workers": str(n)}},
        "spec": {
            "entrypoint": entry.strip(),
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": ttl,
            "backoffLimit": 0,
            "rayClusterSpec": spec,
            "submitterPodTemplate": {"spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                "containers": [{
                    "name": "ray-job-submitter", "image": image,
                    "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                  "limits": {"cpu": "500m", "memory": "1Gi"}},
                    "securityContext": _security()}]}},
        },
    }


def render(workers: list[int], out: str | Path, **kwargs: Any) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in workers:
        path = out / f"rayjob-{kwargs['command']}-n{n}.yaml"
        path.write_text(f"# Rendered by `python -m raybench.cluster render`: {n} worker(s).\n"
                        + yaml.safe_dump(render_rayjob(n, **kwargs), sort_keys=False))
        paths.append(path)
    return paths


# ------------------------------------------------------------------ validation


def _strict(schema: Any) -> Any:
    """Close every object that lists its properties (the CRD schemas leave them open), except
    where Kubernetes itself keeps unknown fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def default_schema_dir() -> Path:
    """The KubeRay v1.7.0 schemas shipped inside the package (RAYBENCH_KUBERAY_SCHEMAS or
    --schemas point at other copies)."""
    env = os.environ.get("RAYBENCH_KUBERAY_SCHEMAS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "kuberay"


def load_schemas(directory: str | Path) -> dict[str, dict]:
    directory = Path(directory)
    files = {"RayJob": "rayjob-v1.schema.json", "RayCluster": "raycluster-v1.schema.json"}
    missing = [f for f in files.values() if not (directory / f).is_file()]
    if missing:
        raise UserError(f"KubeRay schemas not found in {directory} (need {', '.join(missing)}); "
                        "pass --schemas DIR")
    return {kind: _strict(json.loads((directory / f).read_text())) for kind, f in files.items()}


def _pods(kind: str, doc: dict) -> list[tuple[str, dict]]:
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") if kind == "RayJob" else spec
    pods = []
    if isinstance(cluster, dict):
        head = (cluster.get("headGroupSpec") or {}).get("template")
        if head:
            pods.append(("headGroupSpec.template", head))
        for i, group in enumerate(cluster.get("workerGroupSpecs") or []):
            if group.get("template"):
                pods.append((f"workerGroupSpecs[{i}].template", group["template"]))
    if kind == "RayJob" and spec.get("submitterPodTemplate"):
        pods.append(("submitterPodTemplate", spec["submitterPodTemplate"]))
    return pods


def _groups(kind: str, doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    cluster = spec.get("rayClusterSpec") if kind == "RayJob" else spec
    return list((cluster or {}).get("workerGroupSpecs") or [])


def operator_rules(kind: str, doc: dict) -> list[str]:
    """What KubeRay checks at admission/reconcile time that its schema does not, and the
    security and resource policy raybench holds its manifests to."""
    errors = []
    spec = doc.get("spec") or {}
    if kind == "RayJob":
        has_spec, has_selector = "rayClusterSpec" in spec, bool(spec.get("clusterSelector"))
        if has_spec == has_selector:
            errors.append("spec: exactly one of rayClusterSpec and clusterSelector must be set")
        mode = spec.get("submissionMode", "K8sJobMode")
        if mode not in SUBMISSION_MODES:
            errors.append(f"spec.submissionMode: {mode!r} is not one of "
                          f"{', '.join(SUBMISSION_MODES)}")
        ttl = spec.get("ttlSecondsAfterFinished", 0)
        if isinstance(ttl, int) and ttl < 0:
            errors.append("spec.ttlSecondsAfterFinished: must be >= 0")
        if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
            errors.append("spec.suspend: needs shutdownAfterJobFinishes: true")
        if not spec.get("entrypoint") and mode != "InteractiveMode":
            errors.append("spec.entrypoint: required unless submissionMode is InteractiveMode")
    for i, group in enumerate(_groups(kind, doc)):
        lo, n, hi = group.get("minReplicas", 0), group.get("replicas"), group.get("maxReplicas")
        if not all(isinstance(v, int) for v in (lo, n, hi) if v is not None):
            continue  # the schema check reports the wrong type
        if n is not None and hi is not None and not lo <= n <= hi:
            errors.append(f"workerGroupSpecs[{i}]: need minReplicas <= replicas <= maxReplicas, "
                          f"got {lo} <= {n} <= {hi}")
        elif hi is not None and lo > hi:
            errors.append(f"workerGroupSpecs[{i}]: minReplicas {lo} > maxReplicas {hi}")
    for where, pod in _pods(kind, doc):
        pod_spec = pod.get("spec") or {}
        pod_sc = pod_spec.get("securityContext") or {}
        for c in pod_spec.get("containers") or []:
            sc = {**pod_sc, **(c.get("securityContext") or {})}
            name = f"{where}.containers[{c.get('name')}]"
            if isinstance(c.get("image"), str) and not IMAGE.fullmatch(c["image"]):
                errors.append(f"{name}.image: {c['image']!r} is not an image reference")
            if not sc.get("runAsNonRoot") or sc.get("runAsUser", 1000) == 0:
                errors.append(f"{name}: must run as non-root (runAsNonRoot: true, runAsUser != 0)")
            if sc.get("privileged") or sc.get("allowPrivilegeEscalation", True):
                errors.append(f"{name}: must be unprivileged (privileged: false, "
                              "allowPrivilegeEscalation: false)")
            res = c.get("resources") or {}
            req, lim = res.get("requests") or {}, res.get("limits") or {}
            for key in ("cpu", "memory"):
                if key not in lim or str(req.get(key)) != str(lim.get(key)):
                    errors.append(f"{name}: resources.requests.{key} must equal limits.{key} "
                                  f"(got {req.get(key)!r} / {lim.get(key)!r})")
    return errors


def validate_doc(doc: Any, schemas: dict[str, dict]) -> list[str]:
    from jsonschema import Draft7Validator

    if not isinstance(doc, dict):
        return ["not a mapping"]
    kind, api = doc.get("kind"), str(doc.get("apiVersion") or "")
    if not kind or not api:
        return ["not a Kubernetes resource (no apiVersion and kind): a RayJob or RayCluster "
                "manifest was expected"]
    if kind not in schemas:
        if api.startswith("ray.io/"):
            return [f"kind {kind!r} is not a KubeRay resource this validates (RayJob, "
                    "RayCluster)"]
        return []  # another Kubernetes resource (a PersistentVolumeClaim, say): not ours
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"expected apiVersion ray.io/v1 and kind RayJob or RayCluster, got "
                f"{doc.get('apiVersion')!r} / {kind!r}"]
    errors = []
    for err in sorted(Draft7Validator(schemas[kind]).iter_errors(doc), key=lambda e: e.path):
        where = ".".join(str(p) for p in err.absolute_path) or "(root)"
        errors.append(f"{where}: {err.message}")
    return errors + operator_rules(kind, doc)


def validate_files(paths: list[str], schema_dir: str | Path) -> dict[str, list[str]]:
    schemas = load_schemas(schema_dir)
    report = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise missing_file(path, "manifest")
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except UnicodeDecodeError:
            report[str(path)] = ["not a UTF-8 text file (a binary file or another encoding)"]
            continue
        except yaml.YAMLError as exc:
            report[str(path)] = [f"malformed YAML: {printable(str(exc))}"]
            continue
        if not docs:
            report[str(path)] = ["no Kubernetes documents in the file"]
            continue
        errors = []
        for i, doc in enumerate(docs):
            prefix = f"document {i + 1}: " if len(docs) > 1 else ""
            errors += [prefix + e for e in validate_doc(doc, schemas)]
        report[str(path)] = errors
    return report


# ------------------------------------------------------------------ commands


def render_command(args: argparse.Namespace) -> int:
    """Write one RayJob per worker count and validate each against the schemas."""
    if args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        raise UserError("--cpus-per-worker must be positive, --gpus-per-worker >= 0")
    if not IMAGE.fullmatch(args.image):
        raise UserError(f"--image {args.image!r} is not an image reference (REGISTRY/NAME:TAG, "
                        "e.g. registry.example/raybench:0.2)")
    try:
        extra = shlex.split(args.extra)
    except ValueError as exc:
        raise UserError(f"--extra {args.extra!r}: {exc}") from None
    check_extra(args.job, extra)
    paths = render(args.workers, args.out, image=args.image,
                   cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                   memory_per_worker=args.memory_per_worker, pvc=args.results_pvc,
                   command=args.job, repeats=args.repeats, extra=extra, ttl=args.ttl)
    report = validate_files([str(p) for p in paths], args.schemas or default_schema_dir())
    for path in paths:
        errors = report.get(str(path), [])
        print(f"wrote {path}" + (f"  INVALID: {errors[0]}" if errors else "  (valid)"))
    return 1 if any(report.values()) else 0


# What render sets in each RayJob's entrypoint itself: given again in --extra, the later one
# would win on the cluster while the pods were sized for the first.
RENDERED = {"scale": {"workers", "cpus_per_worker", "use_gpu", "backends", "repeats", "out"},
            "run": {"workers", "cpus_per_worker", "use_gpu", "save_dir", "out", "run_name"}}


def check_extra(job: str, extra: list[str]) -> None:
    """--extra flags are parsed here by the entrypoint's own parser: a flag it does not take,
    a bad value, or one render sets for each RayJob is refused now, not when the RayJob runs
    on the cluster."""
    from raybench import run, scale

    parser = scale.build_parser() if job == "scale" else run.build_parser()
    _, unknown = parser.parse_known_args(extra)
    if unknown:
        raise UserError(f"--extra: raybench.{job} does not take {' '.join(unknown)}")
    for word in extra:
        flag = parser._spelling(word.split("=", 1)[0]) if word.startswith("--") else None
        action = parser._option_string_actions.get(flag) if flag else None
        if action is not None and action.dest.rsplit(":", 1)[-1] in RENDERED[job]:
            raise UserError(f"--extra: {flag} is what render sets for each RayJob (--workers "
                            "N sizes its worker pods); leave it out of --extra")


def validate_command(args: argparse.Namespace) -> int:
    report = validate_files(args.files, args.schemas or default_schema_dir())
    bad = 0
    for path, errors in report.items():
        if errors:
            bad += 1
            print(f"{path}: INVALID")
            for e in errors:
                print(f"  - {e}")
        else:
            print(f"{path}: valid")
    return 1 if bad else 0

