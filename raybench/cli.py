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
    """An ArgumentParser whose errors are a UserError: run_cli prints one line, exit 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{self.prog}: {message} (see --help)")
