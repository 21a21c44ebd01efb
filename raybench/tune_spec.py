"""A Tune sweep as typed settings: the sweep YAML (base config, overrides, search space,
scheduler) checked and parsed once, the flags applied on top, and what `sweep.yaml` keeps for
--resume. raybench.tune runs a SweepSpec; nothing downstream reads the argparse namespace."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raybench.config import METRIC_MODES, Config, apply_overrides, from_dict, load_yaml, set_value
from raybench.errors import UserError

KINDS = {"choice": "list", "grid": "list", "uniform": "range", "loguniform": "range",
         "randint": "range"}
SWEEP_KEYS = {"base", "metric", "mode", "num_samples", "max_concurrent", "scheduler",
              "search_space", "overrides"}
SCHEDULER_KEYS = {"max_t", "grace_period", "reduction_factor"}


def parse_space(raw: Any, source: str = "search_space") -> dict[str, tuple[str, list]]:
    """{dotted.key: (kind, args)}; every key must be a real config key, every spec well formed."""
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{source}: expected a mapping of config keys to specs")
    space = {}
    probe = Config()
    for key, spec in raw.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise UserError(f"{source}.{key}: expected one of {{{', '.join(KINDS)}: ...}}, "
                            f"got {spec!r}")
        (kind, args), = spec.items()
        if kind not in KINDS:
            raise UserError(f"{source}.{key}: unknown kind {kind!r} (use {', '.join(KINDS)})")
        if not isinstance(args, list) or not args:
            raise UserError(f"{source}.{key}: {kind} needs a list, got {args!r}")
        if KINDS[kind] == "range":
            if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
                raise UserError(f"{source}.{key}: {kind} needs [low, high], got {args!r}")
            low, high = args
            if not low < high:
                raise UserError(f"{source}.{key}: {kind} needs low < high, got {args!r}")
            if kind == "loguniform" and low <= 0:
                raise UserError(f"{source}.{key}: loguniform needs low > 0, got {args!r}")
            if kind == "randint" and not all(isinstance(a, int) for a in args):
                raise UserError(f"{source}.{key}: randint needs integers, got {args!r}")
            samples = [low, high - 1 if kind == "randint" else high]
        else:
            samples = args
        for value in samples:  # each value must be valid for the key itself
            _set_in(probe, key, value, source)
        space[key] = (kind, list(args))
    return space


def _set_in(cfg: Config, key: str, value: Any, source: str) -> None:
    """set_value, with the file (and section) the value came from in the message."""
    try:
        set_value(cfg, key, value)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def to_tune_space(space: dict[str, tuple[str, list]]) -> dict[str, Any]:
    from ray import tune

    make = {"choice": lambda a: tune.choice(a), "grid": lambda a: tune.grid_search(a),
            "uniform": lambda a: tune.uniform(*a), "loguniform": lambda a: tune.loguniform(*a),
            "randint": lambda a: tune.randint(*a)}
    return {key: make[kind](args) for key, (kind, args) in space.items()}


@dataclass
class Schedule:
    """When trials stop: ASHA over epochs (training_iteration), or every trial to max_t."""

    kind: str = "asha"  # asha | none
    max_t: int | None = None  # epochs a trial may run (None: the base config's epochs)
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: float = 2.0

    def check(self) -> None:
        for key in ("max_t", "grace_period"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"scheduler: {key} must be a positive number of epochs, got "
                                f"{value!r}")
        if self.grace_period > self.max_t:
            raise UserError(f"scheduler: need 1 <= grace_period <= max_t, got max_t="
                            f"{self.max_t}, grace_period={self.grace_period}")
        if self.reduction_factor <= 1:
            raise UserError(f"scheduler: reduction_factor must be > 1, got "
                            f"{self.reduction_factor}")


@dataclass
class SweepSpec:
    """One sweep: what each trial trains, what is searched, how trials are stopped."""

    base: Config
    space: dict[str, tuple[str, list]]
    metric: str | None  # None: by task (auc for classification, val_loss for regression)
    schedule: Schedule
    num_samples: int
    max_concurrent: int | None  # None: as many as the cluster holds

    @property
    def expected_trials(self) -> int:
        grids = [len(values) for kind, values in self.space.values() if kind == "grid"]
        n = self.num_samples
        for size in grids:
            n *= size
        return n

    def batch_sizes(self) -> list[int]:
        """Every batch size a trial may train with (to check the data holds a batch of each)."""
        if "train.batch_size" not in self.space:
            return [self.base.train.batch_size]
        kind, values = self.space["train.batch_size"]
        return values if kind in ("choice", "grid") else [values[1]]

    def to_doc(self) -> dict[str, Any]:
        """sweep.yaml: all --resume needs, in the layout earlier versions wrote."""
        return {"base": self.base.to_dict(), "space": {k: list(v) for k, v in self.space.items()},
                "metric": self.metric, "num_samples": self.num_samples,
                "max_concurrent": self.max_concurrent, "kind": self.schedule.kind,
                "scheduler": {"max_t": self.schedule.max_t,
                              "grace_period": self.schedule.grace_period,
                              "reduction_factor": self.schedule.reduction_factor}}

    @classmethod
    def from_doc(cls, doc: dict[str, Any], where: str) -> SweepSpec:
        try:
            return cls(base=from_dict(doc["base"], where),
                       space={k: tuple(v) for k, v in doc["space"].items()},
                       metric=doc.get("metric"), num_samples=int(doc["num_samples"]),
                       max_concurrent=doc.get("max_concurrent"),
                       schedule=Schedule(kind=doc.get("kind", "asha"), **doc["scheduler"]))
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{where}: not a sweep.yaml raybench wrote ({exc})") from None


def load_sweep(path: str | Path) -> SweepSpec:
    """The sweep YAML, checked: base config resolved relative to the file, overrides applied,
    search space parsed; the scheduler's unset values left at 0 for from_args to fill."""
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping with base, search_space, scheduler, ...")
    _refuse_unknown(raw, SWEEP_KEYS, f"{path}")
    base_cfg = Config()
    if raw.get("base"):
        base_path = (path.parent / raw["base"]).resolve()
        base_cfg = from_dict(load_yaml(base_path), str(base_path))
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise UserError(f"{path}: overrides: expected a mapping of config keys to values")
    for key, value in overrides.items():
        _set_in(base_cfg, key, value, f"{path}: overrides")
    metric = _metric(raw.get("metric"), raw.get("mode"), path)
    scheduler = raw.get("scheduler") or {}
    if not isinstance(scheduler, dict):
        raise UserError(f"{path}: scheduler: expected a mapping of {', '.join(SCHEDULER_KEYS)}")
    _refuse_unknown(scheduler, SCHEDULER_KEYS, f"{path}: scheduler")
    num_samples = raw.get("num_samples", 8)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise UserError(f"{path}: num_samples must be a positive integer, got {num_samples!r}")
    return SweepSpec(base=base_cfg, space=parse_space(raw.get("search_space"),
                                                      f"{path}: search_space"),
                     metric=metric, num_samples=num_samples,
                     max_concurrent=_positive_or_none(raw.get("max_concurrent"),
                                                      f"{path}: max_concurrent"),
                     schedule=Schedule(**scheduler))


def _positive_or_none(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{where} must be a positive integer, got {value!r}")
    return value


def _refuse_unknown(given: dict, known: set[str], where: str) -> None:
    unknown = set(given) - known
    if unknown:
        raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: "
                        f"{', '.join(sorted(known))})")


def _metric(metric: Any, mode: Any, path: Path) -> str | None:
    """The sweep's metric; a `mode` is only accepted where it agrees with the metric's own
    direction (it used to be read and ignored)."""
    if metric is not None and metric not in METRIC_MODES:
        raise UserError(f"{path}: metric {metric!r} is unknown (known: "
                        f"{', '.join(sorted(METRIC_MODES))})")
    if mode is not None:
        if mode not in ("min", "max"):
            raise UserError(f"{path}: mode must be min or max, got {mode!r}")
        if metric is None or METRIC_MODES[metric] != mode:
            raise UserError(f"{path}: mode {mode!r} does not follow from the metric "
                            f"({metric or 'by task'}: "
                            f"{METRIC_MODES.get(metric, 'min or max')}); leave mode out")
    return metric


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    """The sweep YAML with the command's flags on top, checked: what a new sweep runs."""
    if not args.config:
        raise UserError("--config SWEEP.yaml is required (see configs/tune/)")
    spec = load_sweep(args.config)
    apply_overrides(spec.base, args)  # --lr, --npz_path, --set ... as in raybench.run
    given = {k: getattr(args, k) for k in ("max_t", "grace_period", "reduction_factor")
             if getattr(args, k) is not None}
    spec.schedule = dataclasses.replace(spec.schedule, kind=args.scheduler, **given)
    if spec.schedule.max_t is None:
        spec.schedule.max_t = spec.base.train.epochs
    spec.schedule.check()
    if args.workers_per_trial < 1:
        raise UserError(f"--workers-per-trial must be >= 1, got {args.workers_per_trial}")
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise UserError(f"--num-samples must be >= 1, got {args.num_samples}")
        spec.num_samples = args.num_samples
    if args.metric:
        spec.metric = args.metric
    if args.max_concurrent is not None:
        spec.max_concurrent = _positive_or_none(args.max_concurrent, "--max-concurrent")
    spec.base.scaling.workers = args.workers_per_trial
    spec.base.train.epochs = spec.schedule.max_t
    spec.base.train.early_stop_patience = 0  # the scheduler decides when a trial stops
    return spec
