"""What every command's argument parser shares: a mistake is one line and exit code 2 (never
the usage dump argparse prints before it), and help shows a default only where there is one."""

from __future__ import annotations

import argparse
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
        return super().parse_known_args([self._spelling(a) for a in args], namespace)

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
