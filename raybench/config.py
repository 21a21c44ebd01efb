"""One typed config tree: dataclasses per section, loaded from YAML, overridden from the CLI.

Unknown keys and bad values raise UserError with a one-line message naming the key.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raybench.errors import UserError, missing_file

TASKS = ("regression", "classification")
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # package.module:callable
MODELS = ("mlp", "lstm", "gru", "transformer")
# Metric to early-stop on, and whether larger is better.
METRIC_MODES = {"val_loss": "min", "mse": "min", "mae": "min", "r2": "max", "auc": "max",
                "accuracy": "max", "f1": "max"}
CLASSIFICATION_METRICS = ("auc", "accuracy", "f1", "val_loss")
REGRESSION_METRICS = ("r2", "mse", "mae", "val_loss")


def _choice(*options: str) -> dict:
    return {"choices": options}


def _positive() -> dict:
    return {"min": 0, "strict": True}


# The commands a config flag belongs to: each command shows and accepts only the flags it honours.
ALL = frozenset({"run", "scale", "tune"})
RUN = frozenset({"run"})
NOT_TUNE = frozenset({"run", "scale"})
NOT_SCALE = frozenset({"run", "tune"})


@dataclass(frozen=True)
class Flag:
    """How a config key appears on the command line: the field carries its own flag, so the
    command-line layer is derived from this tree (no second table to keep in step)."""

    help: str
    commands: frozenset[str]
    name: str | None = None  # the flag when it is not the key's name (--hidden-dim: model.hidden)
    aliases: tuple[str, ...] = ()  # the original training CLIs' spellings: accepted, not shown
    const: bool | None = None  # a switch: the flag sets the key to this value


def cli(help_text: str, commands: frozenset[str] = ALL, **how: Any) -> dict:
    return {"flag": Flag(help_text, commands, **how)}


@dataclass
class DataConfig:
    npz_path: str | None = field(default=None, metadata=cli(
        "NPZ file (default: S&P 500 prepared into the cache)"))
    task: str | None = field(default=None, metadata={**_choice(*TASKS), **cli(
        "regression|classification (default: inferred from y)")})
    window: int = field(default=60, metadata={**_positive(), **cli(
        "window length of the auto-prepared / synthetic data")})
    valid_from_train: float = field(default=0.1, metadata={
        "min": 0, "max": 1, "strict": True,
        **cli("chronological tail of train used for validation", name="valid_ratio",
              aliases=("valid_from_train",))})
    shuffle_train: bool = field(default=False, metadata=cli(
        "shuffle training batches every epoch", const=True))
    norm: str = field(default="zscore", metadata={**_choice("zscore", "none"),
                                                  **cli("zscore|none")})
    # A Parquet dataset directory (python -m raybench.data prepare --format parquet) instead of
    # an NPZ; its window, splits and normalisation were fixed when it was prepared.
    parquet_dir: str | None = field(default=None, metadata=cli(
        "Parquet dataset directory (raybench.data prepare --format parquet)"))
    # memory: the data in memory, sliced per rank; ray_data: a Parquet dataset streamed by Ray
    # Data into each worker. scale takes a list of its own (--ingest memory,ray_data).
    ingest: str = field(default="memory", metadata={**_choice("memory", "ray_data"), **cli(
        "memory|ray_data (ray_data streams --parquet_dir)", NOT_SCALE)})
    prefetch_batches: int = field(default=2, metadata={"min": 0, **cli(
        "Ray Data batches each worker prefetches")})
    # ray_data only: read the train split once into Ray's object store (Dataset.materialize,
    # as Ray's docs advise for data that fits) and stream every epoch from there, instead of
    # reading the Parquet files again each epoch. Off by default: a benchmark on a sample that
    # fits would otherwise flatter a job whose real data does not.
    cache_train: bool = field(default=False, metadata=cli(
        "ray_data: read the train split once into Ray's object store, not every epoch",
        const=True))


@dataclass
class ModelConfig:
    # A built-in model, or your own: "package.module:factory", called as
    # factory(n_features=F, window=T, task=..., **params) -> nn.Module mapping (B, T, F) to (B,).
    kind: str = field(default="mlp", metadata={
        "choices": MODELS, "or_factory": True,
        **cli("mlp|lstm|gru|transformer, or your own package.module:factory", name="model")})
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments for a factory
    input_dim: int | None = None  # None: taken from the data (F)
    hidden: int = field(default=64, metadata={**_positive(), **cli(
        "hidden size", name="hidden_dim", aliases=("hidden",))})
    layers: int = field(default=1, metadata={**_positive(), **cli("recurrent/encoder layers")})
    dropout: float = field(default=0.1, metadata={"min": 0, "max": 1,
                                                  **cli("dropout probability")})
    heads: int = field(default=4, metadata=_positive())  # transformer only


@dataclass
class TrainConfig:
    epochs: int = field(default=25, metadata={**_positive(), **cli("maximum epochs", NOT_TUNE)})
    batch_size: int = field(default=64, metadata={**_positive(), **cli("batch size per worker")})
    # At most float32's largest / 10: Adam's first step divides lr by its bias correction
    # (0.1), and beyond this the step overflows float32 inside the optimizer (1e308 did).
    lr: float = field(default=1e-3, metadata={**_positive(), "max": 3.4e37,
                                              **cli("learning rate")})
    weight_decay: float = field(default=0.0, metadata={"min": 0, **cli("L2 weight decay")})
    early_stop_metric: str | None = field(default=None, metadata={
        **_choice(*METRIC_MODES), **cli("val_loss|auc|r2|...", RUN)})
    early_stop_patience: int = field(default=5, metadata={"min": 0, **cli(
        "early-stopping patience in epochs (0: off)", RUN, name="patience")})
    seed: int = field(default=42, metadata=cli("random seed"))
    device: str = field(default="auto", metadata={**_choice("auto", "cpu", "cuda", "mps"),
                                                  **cli("auto|cpu|cuda|mps")})
    warmup_epochs: int = field(default=1, metadata={"min": 0, **cli(
        "epochs excluded from throughput", RUN)})
    precision: str = field(default="fp32", metadata={**_choice("fp32", "bf16"), **cli(
        "fp32|bf16 (bf16: autocast for forward and loss)")})
    compile: bool = field(default=False, metadata=cli("torch.compile the model", const=True))


@dataclass
class EvalConfig:
    threshold: float = field(default=0.5, metadata={"min": 0, "max": 1})
    save_cm: bool = True


@dataclass
class IOConfig:
    save_dir: str = field(default="./outputs", metadata=cli(
        "directory that receives run_YYYYMMDD_HHMMSS/ (as --out of the other commands; "
        "--save_dir is the same flag)", RUN, name="out", aliases=("save_dir",)))
    run_name: str | None = field(default=None, metadata={"plain_name": True, **cli(
        "run directory name instead of the timestamp", RUN)})
    # Where Ray Train keeps checkpoints and where the driver copies the run's artifacts: a path
    # every node can reach (NFS) or a URI pyarrow understands (s3://, gs://). None: the run dir.
    storage_path: str | None = field(default=None, metadata=cli(
        "shared directory or URI (s3://, gs://) for checkpoints and a copy of the run's "
        "artifacts", RUN))
    # rank 0 writes TensorBoard event files into <run dir>/tensorboard
    tensorboard: bool = field(default=True, metadata=cli(
        "write no TensorBoard event files", RUN, name="no_tensorboard", const=False))
    mlflow_uri: str | None = field(default=None, metadata=cli(
        "MLflow tracking URI: metrics, params and the best weights "
        "(pip install 'raybench[mlflow]')", RUN, name="mlflow"))
    mlflow_experiment: str = "raybench"


@dataclass
class ScalingConfig:
    # Ray Train workers; `MIN-MAX` (CLI) or [min, max] (YAML) runs elastically: the run goes on
    # with as few as min_workers when nodes are lost and grows back to `workers` when they return.
    # scale and cluster take a list of their own (--workers 1,2,4).
    workers: int = field(default=1, metadata={**_positive(), "range_of": "min_workers", **cli(
        "Ray Train workers; MIN-MAX runs elastically", RUN)})
    min_workers: int | None = field(default=None, metadata=_positive())
    # How often a healthy elastic run looks for room to grow (Ray's default: 60 s).
    elastic_resize_interval_s: float = field(default=60.0, metadata=_positive())
    use_gpu: bool = field(default=False, metadata=cli("one GPU per worker (nccl)", const=True))
    cpus_per_worker: float = field(default=1.0, metadata={**_positive(), **cli(
        "logical CPUs reserved per worker")})
    threads_per_worker: int | None = field(default=None, metadata={**_positive(), **cli(
        "torch intra-op threads (default: the worker's CPU share)")})
    # Pin each rank's training thread (and its intra-op threads) to cores of its own, by local
    # rank: a Ray worker's ~35 other threads otherwise move it between cores (measured here:
    # 12 migrations a second against 0.4 for a plain process).
    pin_threads: bool = field(default=False, metadata=cli(
        "pin each rank's training thread to cores of its own (by local rank)", const=True))
    # Keep each rank's freed memory for its next step (glibc's mallopt: no mmap, a 1 GiB trim
    # threshold, a 256 MiB top pad) instead of the kernel faulting it in again every step:
    # raybench.malloc says what it cost here. Off: the figures are those of a job with glibc's
    # defaults.
    steady_malloc: bool = field(default=False, metadata=cli(
        "keep each rank's freed memory for its next step (glibc mallopt: no mmap, no trim) "
        "instead of the kernel faulting it in again", const=True))
    address: str | None = field(default=None, metadata=cli(
        "Ray cluster to join (default: RAY_ADDRESS, else local)"))
    placement_strategy: str = field(default="PACK", metadata={
        **_choice("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
        **cli("PACK|SPREAD|STRICT_PACK|STRICT_SPREAD")})
    max_failures: int = field(default=0, metadata={"min": -1, **cli(
        "worker-group restarts from the last checkpoint (-1: unlimited)", NOT_SCALE)})
    # Seconds a rank may make no progress (a stopped or frozen process, a node gone quiet, a
    # rank stuck in a read while the others wait in an all-reduce) before the run fails over to
    # Ray Train's restart path (max_failures). None: 60 s for an unresponsive process, and for a
    # collective 20x the longest healthy stretch measured between two (at least 60 s; 300 s
    # until the first epoch is measured). loop.hang says how each is applied.
    hang_timeout_s: float | None = field(default=None, metadata={"min": 5, **cli(
        "seconds a rank may make no progress before the run fails over to a restart "
        "(default: 60, or 20x the measured step when longer)", NOT_TUNE,
        name="hang_timeout_s")})
    # A local Ray's object store, MiB (None: Ray's default, 30% of memory); cap it to test data
    # larger than memory, which Ray Data then streams and spills. 80 MiB is Ray's least.
    object_store_mib: int | None = field(default=None, metadata={"min": 80, **cli(
        "object store of a local Ray in MiB (default: Ray's)")})
    # On an autoscaling cluster: how long to wait for nodes to place the workers before giving
    # up (None: the cluster as it is must hold them; checked at once).
    wait_for_workers_s: float | None = field(default=None, metadata={"min": 0, **cli(
        "seconds an autoscaling cluster gets to add nodes for the workers (default: place them "
        "now or fail)", name="wait_for_workers")})


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    io: IOConfig = field(default_factory=IOConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def early_stop(self, task: str) -> tuple[str, str]:
        """The metric early stopping watches and its mode, defaulting by task."""
        metric = self.train.early_stop_metric or ("auc" if task == "classification" else "val_loss")
        check_metric(metric, task, "train.early_stop_metric")
        return metric, METRIC_MODES[metric]


def metric_mode(metric: str) -> str:
    """'min' or 'max': whether a smaller or a larger value of the metric is better."""
    return METRIC_MODES[metric]


def check_metric(metric: str, task: str, what: str) -> None:
    """Refuse a metric the task does not report (e.g. auc on regression)."""
    allowed = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    if metric not in allowed:
        raise UserError(f"{what}: {metric!r} does not apply to {task}; use one of "
                        f"{', '.join(allowed)}")


def resolve(cfg: Config, *, npz_path: str | Path | None = None, task: str | None = None) -> Config:
    """The resolved copy of a config, as saved with a run: the data path actually used, the
    task inferred from the data, and the early-stopping metric the task defaults to."""
    out = copy.deepcopy(cfg)
    if npz_path is not None:
        out.data.npz_path = str(npz_path)
    if task is not None:
        out.data.task = task
        out.train.early_stop_metric = out.early_stop(task)[0]
    return out


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check one value against its annotation; YAML and CLI strings are converted where exact."""
    args = typing.get_args(annotation)
    optional = type(None) in args and (typing.get_origin(annotation) in (typing.Union,
                                                                         types.UnionType))
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
        if optional:
            return None
        raise UserError(f"{key}: must not be null")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise UserError(f"{key}: expected an integer, got {value!r}") from None
    if base is float:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise UserError(f"{key}: must be a finite number, got {value!r}")
        return number
    if base is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if typing.get_origin(base) is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"unsupported config type {annotation} for {key}")


def _check_range(key: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if meta.get("plain_name") and (not value.strip() or "/" in value or "\\" in value
                                   or value in (".", "..")):
        raise UserError(f"{key}: {value!r} must be a plain directory name (no slashes)")
    if meta.get("or_factory") and FACTORY.match(str(value)):
        return
    if "choices" in meta and value not in meta["choices"]:
        raise UserError(f"{key}: {value!r} is not one of {', '.join(meta['choices'])}")
    if "min" in meta:
        low = meta["min"]
        if value < low or (meta.get("strict") and value == low):
            relation = ">" if meta.get("strict") else ">="
            raise UserError(f"{key}: must be {relation} {low}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise UserError(f"{key}: must be <= {meta['max']}, got {value!r}")


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.key` on cfg after checking the key exists and the value fits."""
    section_name, _, key = dotted.partition(".")
    if section_name not in SECTIONS or not key:
        raise UserError(f"unknown config key {dotted!r} (sections: {', '.join(SECTIONS)})")
    section = getattr(cfg, section_name)
    fields = {f.name: f for f in dataclasses.fields(section)}
    name, _, inner = key.partition(".")
    if inner and name in fields and typing.get_origin(_field_types(type(section))[name]) is dict:
        getattr(section, name)[inner] = value  # model.params.depth=3
        return
    if key not in fields:
        raise UserError(f"unknown config key {dotted!r} (known in {section_name}: "
                        f"{', '.join(fields)})")
    meta = dict(fields[key].metadata)
    low = None
    if "range_of" in meta:  # a count, or a range whose low end goes to another key
        low, value = _worker_range(dotted, value)
        setattr(section, meta["range_of"], None)
    coerced = _coerce(dotted, value, _field_types(type(section))[key])
    _check_range(dotted, coerced, meta)
    setattr(section, key, coerced)
    if low is not None:
        set_value(cfg, f"{section_name}.{meta['range_of']}", low)
    if section_name == "scaling" and key in ("workers", "min_workers"):
        _check_workers(cfg.scaling)


def _worker_range(key: str, value: Any) -> tuple[Any, Any]:
    """'2-4' or [2, 4] -> (2, 4); a plain count -> (None, value); a sweep's list is refused."""
    from raybench.cli import parse_workers

    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise UserError(f"{key}: expected [min, max], got {value!r}")
        return value[0], value[1]
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        # (a plain number, even 0 or -1, is a count: the range check says what is wrong)
        try:
            workers = parse_workers(value)
        except ValueError as exc:
            raise UserError(f"{key}: {exc}") from None
        if workers.is_list:
            raise UserError(f"{key}: {value!r} is a sweep's list of sizes, which "
                            "raybench.scale measures; a run trains at one count, or "
                            "elastically within MIN-MAX")
        return workers.low, workers.counts[0]
    return None, value


def _check_workers(s: ScalingConfig) -> None:
    if s.min_workers is not None and s.min_workers > s.workers:
        raise UserError(f"scaling.workers: the minimum {s.min_workers} exceeds the maximum "
                        f"{s.workers}")


def elastic(cfg: Config) -> bool:
    """Whether the run may shrink and grow (scaling.min_workers below scaling.workers)."""
    return cfg.scaling.min_workers is not None and cfg.scaling.min_workers < cfg.scaling.workers


def from_dict(raw: dict[str, Any] | None, source: str = "config") -> Config:
    cfg = Config()
    if raw is None:
        return cfg
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    for section_name, values in raw.items():
        if section_name not in SECTIONS:
            raise UserError(f"{source}: unknown section {section_name!r} "
                            f"(sections: {', '.join(SECTIONS)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise UserError(f"{source}: section {section_name!r} must be a mapping")
        for key, value in values.items():
            set_value(cfg, f"{section_name}.{key}", value)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (plain YAML keeps the last,
    so a second `train:` section would silently replace the first)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config {path} is a directory, not a YAML file")
    if not path.is_file():
        raise missing_file(path, "config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (a YAML config is text)") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


def load_config(path: str | Path | None) -> Config:
    return from_dict(load_yaml(path), str(path)) if path else Config()


def add_config_args(parser: argparse.ArgumentParser, command: str) -> None:
    """Add --config, --set and the override flags `command` honours; unset flags leave the YAML
    value alone."""
    parser.add_argument("--config", help="YAML config (sections data, model, train, eval, io, "
                        "scaling)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.lr=0.01 (repeatable)")
    group = parser.add_argument_group(
        "config overrides", "each sets one config key; without --config the default shown "
        "applies")
    defaults = Config()
    for key, flag in config_flags(command):
        section, field_name = key.split(".")
        name = flag.name or field_name
        if flag.const is not None:  # a switch
            group.add_argument(f"--{name.replace('_', '-')}", dest=f"cfg:{key}:{name}",
                               action="store_const", const=flag.const, default=None,
                               help=flag.help)
            continue
        default = getattr(getattr(defaults, section), field_name)
        # the hyphenated spelling is the flag; cli.Parser takes `--batch_size` for it too
        for spelling, shown in [(name, f"{flag.help} [{key}, default {default}]"),
                                *((alias, argparse.SUPPRESS) for alias in flag.aliases)]:
            group.add_argument(f"--{spelling.replace('_', '-')}", dest=f"cfg:{key}:{spelling}",
                               default=None, help=shown, metavar=field_name.upper())


def config_flags(command: str) -> list[tuple[str, Flag]]:
    """(key, flag) for every config key `command` takes a flag for, in the tree's order."""
    found = []
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(section.default_factory()):
            flag = f.metadata.get("flag")
            if flag is not None and command in flag.commands:
                found.append((f"{section.name}.{f.name}", flag))
    return found


def config_from_args(args: argparse.Namespace) -> Config:
    """YAML (if any), then --set overrides, then the named flags (the most specific wins)."""
    return apply_overrides(load_config(args.config), args)


def apply_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply --set items, then the named flags that were given, to cfg. A key given twice on
    the command line (two --set, a --set and a flag, two spellings of one flag) is refused:
    which one was meant cannot be told."""
    given: dict[str, str] = {}

    def once(key: str, how: str) -> None:
        if key in given:
            raise UserError(f"{key} is given twice on the command line ({given[key]} and {how})")
        given[key] = how

    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=0.01")
        once(key.strip(), f"--set {item}")
        set_value(cfg, key.strip(), parse_value(f"--set {item}", value) if value else None)
    for dest, value in vars(args).items():
        if dest.startswith("cfg:") and value is not None:
            _, key, name = dest.split(":")
            once(key, f"--{name}")
            set_value(cfg, key, value)
    return cfg


def parse_value(where: str, text: str) -> Any:
    """A --set value read as YAML (so numbers, booleans and lists work), one line on error."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not a valid value"
        raise UserError(f"{where}: cannot read the value ({problem})") from None
