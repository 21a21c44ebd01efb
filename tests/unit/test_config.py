from pathlib import Path

import pytest

from raybench import artifacts, config
from raybench.errors import UserError
from raybench.run import build_parser

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def parse(*argv):
    return config.config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_match_the_seed_notes():
    cfg = config.Config()
    assert (cfg.train.batch_size, cfg.train.lr, cfg.train.early_stop_patience) == (64, 1e-3, 5)
    assert (cfg.model.hidden, cfg.model.layers, cfg.model.dropout) == (64, 1, 0.1)
    assert (cfg.data.valid_from_train, cfg.data.norm, cfg.data.shuffle_train) == (0.1, "zscore",
                                                                                   False)
    assert cfg.io.save_dir == "./outputs" and cfg.eval.threshold == 0.5


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = config.load_config(path)
    assert cfg.model.kind in config.MODELS


def test_seed_flags_override_yaml(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("model: {kind: gru, hidden: 128, layers: 2}\ntrain: {epochs: 50, lr: 0.0005}\n")
    cfg = parse("--config", str(yml), "--lr", "0.01", "--hidden_dim", "32", "--shuffle_train",
                "--valid_ratio", "0.2", "--patience", "3", "--set", "model.dropout=0.3")
    assert cfg.model.kind == "gru" and cfg.model.layers == 2 and cfg.train.epochs == 50
    assert cfg.train.lr == 0.01 and cfg.model.hidden == 32 and cfg.data.shuffle_train
    assert cfg.data.valid_from_train == 0.2 and cfg.train.early_stop_patience == 3
    assert cfg.model.dropout == 0.3


def test_both_spellings_of_flags():
    assert parse("--batch-size", "8").train.batch_size == 8
    assert parse("--hidden", "16").model.hidden == 16
    assert parse("--cpus-per-worker", "0.5").scaling.cpus_per_worker == 0.5
    assert parse("--cpus_per_worker", "0.5").scaling.cpus_per_worker == 0.5  # either spelling
    assert parse("--out", "runs").io.save_dir == parse("--save_dir", "runs").io.save_dir == "runs"


@pytest.mark.parametrize("yaml_text, message", [
    ("train: {epochz: 3}", "unknown config key 'train.epochz'"),
    ("trian: {epochs: 3}", "unknown section 'trian'"),
    ("train: {epochs: three}", "train.epochs: expected an integer"),
    ("train: {lr: -0.1}", "train.lr: must be > 0"),
    ("train: {lr: 0}", "train.lr: must be > 0"),
    ("train: {epochs: 0}", "train.epochs: must be > 0"),
    ("train: {batch_size: -4}", "train.batch_size: must be > 0"),
    ("scaling: {workers: 0}", "scaling.workers: must be > 0"),
    ("model: {kind: cnn}", "model.kind: 'cnn' is not one of"),
    ("data: {shuffle_train: maybe}", "data.shuffle_train: expected true or false"),
    ("data: {valid_from_train: 1.5}", "data.valid_from_train: must be <= 1"),
    ("train: [1, 2]", "section 'train' must be a mapping"),
    ("train: {epochs: 3", "malformed YAML"),
])
def test_bad_config_is_one_line_user_error(tmp_path, yaml_text, message):
    yml = tmp_path / "bad.yaml"
    yml.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        config.load_config(yml)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_flags():
    with pytest.raises(UserError, match="train.lr: must be > 0"):
        parse("--lr", "-1")
    with pytest.raises(UserError, match=r"scaling.workers: expected a count \(4\), an elastic "
                       r"run's range MIN-MAX \(2-4\), or a sweep's list .*got 'two'"):
        parse("--workers", "two")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse("--set", "train.lr")
    with pytest.raises(UserError, match="config file not found"):
        parse("--config", "/nonexistent.yaml")


@pytest.mark.parametrize("flags", [
    ("--set", "train.lr=0.1", "--set", "train.lr=0.2"),
    ("--hidden", "64", "--hidden_dim", "32"),
    ("--set", "train.lr=0.1", "--lr", "0.2"),
])
def test_a_key_given_twice_is_refused(flags):
    with pytest.raises(UserError, match="given twice on the command line"):
        parse(*flags)


def test_every_flag_is_listed_once_in_help_and_takes_either_spelling():
    from raybench import run, scale

    text = run.build_parser().format_help()
    assert "--compile, --compile" not in text and "--compile " in text
    assert "--batch-size" in text and "--batch_size" not in text
    args = scale.build_parser().parse_args(["--synthetic_samples", "100", "--min_pairs=3"])
    assert (args.synthetic_samples, args.min_pairs) == (100, 3)


def test_early_stop_metric_must_fit_task():
    cfg = config.Config()
    assert cfg.early_stop("classification") == ("auc", "max")
    assert cfg.early_stop("regression") == ("val_loss", "min")
    cfg.train.early_stop_metric = "auc"
    with pytest.raises(UserError, match="does not apply to regression"):
        cfg.early_stop("regression")


def test_round_trip_through_yaml(tmp_path):
    cfg = parse("--model", "transformer", "--workers", "3")
    path = tmp_path / "resolved.yaml"
    artifacts.write_yaml(path, cfg.to_dict())  # as every run saves its resolved config
    assert config.load_config(path) == cfg


SEED_CONFIG = """
data:
  npz_path: "/path/to/data.npz"
  valid_from_train: 0.1
  norm: "zscore"

model:
  kind: "gru"
  hidden: 128
  layers: 2
  dropout: 0.2

train:
  epochs: 50
  batch_size: 128
  lr: 0.0005
  early_stop_patience: 10
"""


def test_the_seed_notes_config_file_loads_verbatim(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(SEED_CONFIG)
    cfg = config.load_config(path)
    assert (cfg.model.kind, cfg.model.hidden, cfg.model.layers, cfg.model.dropout) == (
        "gru", 128, 2, 0.2)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr) == (50, 128, 0.0005)
    assert cfg.train.early_stop_patience == 10 and cfg.data.npz_path == "/path/to/data.npz"


def _flags(parser):
    return {s for action in parser._actions for s in action.option_strings}


def test_each_command_shows_only_the_flags_it_honours():
    from raybench import run, scale, tune

    run_flags = _flags(run.build_parser())
    scale_flags = _flags(scale.build_parser())
    tune_flags = _flags(tune.build_parser())
    assert {"--patience", "--save-dir", "--run-name", "--workers", "--max-failures"} <= run_flags
    # scale runs without early stopping, writes to --out and takes a list of worker counts
    for flag in ("--patience", "--save-dir", "--run-name", "--early-stop-metric",
                 "--storage-path", "--warmup-epochs"):
        assert flag not in scale_flags, flag
    assert {"--global-batch-size", "--min-steps", "--min-seconds", "--batch-size"} <= scale_flags
    # tune: ASHA decides when a trial stops, max_t its epochs, --out where it writes
    for flag in ("--patience", "--epochs", "--save-dir", "--run-name", "--workers"):
        assert flag not in tune_flags, flag
    assert {"--workers-per-trial", "--max-t", "--placement-strategy"} <= tune_flags


def test_resolve_is_pure_and_fills_what_the_data_decides():
    cfg = config.Config()
    out = config.resolve(cfg, npz_path="/d/x.npz", task="classification")
    assert (out.data.npz_path, out.data.task, out.train.early_stop_metric) == (
        "/d/x.npz", "classification", "auc")
    assert cfg.data.npz_path is None and cfg.data.task is None  # the input is untouched
    assert cfg.train.early_stop_metric is None


@pytest.mark.parametrize("yaml_text, message", [
    ("train: {lr: .nan}", "train.lr: must be a finite number"),
    ("train: {lr: .inf}", "train.lr: must be a finite number"),
    ("train: {lr: 0.1}\ntrain: {epochs: 2}", "key 'train' given twice"),
    ("train: {lr: 0.1, lr: 0.2}", "key 'lr' given twice"),
    ("io: {run_name: a/b}", "io.run_name: 'a/b' must be a plain directory name"),
])
def test_non_finite_duplicates_and_path_names_are_refused(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError, match=message):
        config.load_config(path)


def test_unreadable_config_paths_say_what_is_wrong(tmp_path):
    with pytest.raises(UserError, match="is a directory, not a YAML file"):
        config.load_config(tmp_path)
    binary = tmp_path / "c.yaml"
    binary.write_bytes(b"\xff\xfe\x00train")
    with pytest.raises(UserError, match="not a UTF-8 text file"):
        config.load_config(binary)
    with pytest.raises(UserError, match=r"--set train.lr=\[1: cannot read the value"):
        parse("--set", "train.lr=[1")
    with pytest.raises(UserError, match="train.lr: must be a finite number"):
        parse("--lr", "nan")


def test_flags_are_derived_from_the_config_tree_and_set_the_field_they_sit_on():
    """Every field that carries a Flag gets one, with its help and the key's default, and the
    flag (and each alias) sets that very field; nothing else on the parser writes config."""
    from raybench import config as c
    from raybench import run

    parser = run.build_parser()
    help_text = " ".join(parser.format_help().split())
    for key, flag in c.config_flags("run"):
        section, name = key.split(".")
        assert f"[{key}, default" in help_text or flag.const is not None, key
        value = {"int": "3", "float": "0.25"}.get(type(getattr(c.Config(), section).__dict__[
            name]).__name__, None)
        if flag.const is not None or value is None:
            continue
        for spelling in (flag.name or name, *flag.aliases):
            cfg = c.config_from_args(parser.parse_args([f"--{spelling.replace('_', '-')}",
                                                        value]))
            assert str(getattr(getattr(cfg, section), name)) in (value, "0.25"), spelling
    dests = {a.dest.split(":")[1] for a in parser._actions if a.dest.startswith("cfg:")}
    assert dests == {key for key, _ in c.config_flags("run")}
