"""What every command's argument parser shares: a mistake is one line and exit code 2 (never
the usage dump argparse prints before it), and help shows a default only where there is one."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import NoReturn

from raybench.errors import UserError


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; '(default: X)' only for a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, [], argparse.SUPPRESS)
                or action.option_strings == [] or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a UserError (run_cli prints one line, exit 2), and
    whose flags take either spelling: `--batch-size` is canonical (the one help shows),
    `--batch_size` is the same flag (the original training scripts' spelling)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        import sys

        args = list(sys.argv[1:] if args is None else args)
        # after `--` the words are another command's (cluster local exec -- ...): as written
        cut = args.index("--") if "--" in args else len(args)
        args = [self._spelling(a) for a in args[:cut]] + args[cut:]
        return super().parse_known_args(args, namespace)

    def _spelling(self, arg: str) -> str:
        """`--foo_bar[=x]` as `--foo-bar[=x]` when only the hyphenated flag exists (and the
        reverse): one flag, two spellings, one line in help."""
        if not arg.startswith("--") or arg == "--":
            return arg
        name, eq, value = arg.partition("=")
        known = self._option_string_actions
        if name in known:
            return arg
        for other in (name[:2] + name[2:].replace("_", "-"), name[:2] + name[2:].replace("-", "_")):
            if other in known:
                return other + eq + value
        return arg

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")


WORKER_FORMS = ("a count (4), an elastic run's range MIN-MAX (2-4), or a sweep's list of counts "
                "(1,2,4)")


@dataclass(frozen=True)
class Workers:
    """`--workers` as written, in any command: one syntax with one meaning everywhere; each
    command takes the forms it can honour and refuses the others in one line."""

    counts: tuple[int, ...]  # a count, or a sweep's counts (sorted)
    low: int | None = None  # MIN of MIN-MAX (counts is then (MAX,))

    @property
    def is_list(self) -> bool:
        return len(self.counts) > 1

    @property
    def is_range(self) -> bool:
        return self.low is not None


def parse_workers(text: str) -> Workers:
    """'4' -> a count, '2-4' -> an elastic range, '1,2,4' -> a list; ValueError otherwise."""
    text = str(text).strip()
    is_range = "," not in text and "-" in text.lstrip("-")
    parts = text.partition("-")[::2] if is_range else text.split(",")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise ValueError(f"expected {WORKER_FORMS}, got {text!r}") from None
    if min(values) < 1:
        raise ValueError(f"worker counts must be positive, got {text!r}")
    if is_range:
        if values[0] > values[1]:
            raise ValueError(f"the minimum {values[0]} exceeds the maximum {values[1]}")
        return Workers((values[1],), values[0])
    if len(set(values)) != len(values):
        raise ValueError(f"a worker count is given twice in {text!r}")
    return Workers(tuple(sorted(values)))


def worker_counts(text: str) -> list[int]:
    """`--workers` of a command that runs fixed sizes (scale, cluster): a count or a list."""
    try:
        workers = parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if workers.is_range:
        raise argparse.ArgumentTypeError(
            f"{text!r} is an elastic run's range (raybench.run --workers MIN-MAX); this command "
            "measures fixed sizes: give a count or a list, e.g. 1,2,4")
    return list(workers.counts)
