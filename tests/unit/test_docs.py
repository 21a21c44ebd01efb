"""The README and docs/ stay honest: every raybench command they show parses with the flags it
shows (each command's own parser, the one users hit), and every config key they name exists."""

import dataclasses
import re
import shlex
from pathlib import Path

import pytest

from raybench import config, probe, report, run, scale, tune
from raybench.cluster.__main__ import build_parser as cluster_parser
from raybench.data.__main__ import build_parser as data_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSERS = {"run": run.build_parser, "scale": scale.build_parser, "tune": tune.build_parser,
           "data": data_parser, "cluster": cluster_parser, "report": report.build_parser,
           "probe": probe.build_parser}


def commands() -> list[tuple[str, str]]:
    """(file, command line) for every `python -m raybench.X ...` in a code block."""
    found = []
    for doc in DOCS:
        block, lines = False, doc.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("```"):
                block = not block
                continue
            if not block or "python -m raybench." not in line:
                continue
            text = line[line.index("python -m raybench."):]
            j = i
            while text.rstrip().endswith("\\"):  # continued lines
                j += 1
                text = text.rstrip()[:-1] + " " + lines[j].strip()
            found.append((doc.name, text.split(" #")[0].split(" && ")[0].split(" | ")[0]))
    return found


@pytest.mark.parametrize("where, line", commands())
def test_every_command_shown_parses(where, line):
    words = shlex.split(line)
    module = words[2].removeprefix("raybench.")
    argv = words[3:]
    if module == "scale" and argv[:1] == ["merge"]:
        return  # its own parser, exercised in test_edges
    args = PARSERS[module]().parse_args(argv)
    if module in ("run", "scale", "tune") and getattr(args, "config", None) is None:
        config.apply_overrides(config.Config(), args)  # the values, not just the flags
    inner = getattr(args, "argv", None) or []  # cluster local exec -- python -m raybench.X
    if module == "cluster" and "raybench." in " ".join(inner):
        test_every_command_shown_parses(where, shlex.join(inner[inner.index("python"):]))


def test_the_docs_show_every_command():
    shown = {shlex.split(line)[2] for _, line in commands()}
    assert shown >= {f"raybench.{m}" for m in PARSERS}


FILE_SUFFIXES = {"pt", "csv", "json", "png", "yaml", "md", "html", "ckpt"}


def _keys() -> set[str]:
    cfg = config.Config()
    return {f"{section.name}.{f.name}" for section in dataclasses.fields(cfg)
            for f in dataclasses.fields(getattr(cfg, section.name))}


def test_every_config_key_named_in_the_docs_exists():
    keys = _keys()
    named = set()
    for doc in DOCS:
        named |= set(re.findall(r"`((?:data|model|train|eval|io|scaling)\.[a-z_]+)",
                                doc.read_text()))
    named = {k for k in named if k.rsplit(".", 1)[1] not in FILE_SUFFIXES}
    assert named and named <= keys, sorted(named - keys)


def test_the_configuration_reference_lists_every_key():
    table = (ROOT / "docs" / "configuration.md").read_text()
    listed = set(re.findall(r"^\| `([a-z]+\.[a-z_]+)`", table, flags=re.M))
    assert listed == _keys(), sorted(_keys() ^ listed)


def test_the_readme_first_screen_is_short_and_links_the_docs():
    lines = (ROOT / "README.md").read_text().splitlines()
    first_link = next(i for i, line in enumerate(lines) if "](docs/" in line)
    assert first_link < 120
    for target in re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines)):
        assert (ROOT / target).is_file(), target
