"""argparse, Docker-flavoured: errors are one line and exit 125, not a usage dump and 2."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

from sandbox.errors import UsageError

__all__ = ["Parser", "parse"]


class Parser(argparse.ArgumentParser):
    def __init__(self, prog: str, description: str, usage: str | None = None,
                 *, short_help: bool = True) -> None:
        super().__init__(prog=f"sandbox {prog}", description=description, usage=usage,
                         allow_abbrev=False, add_help=False)
        flags = ("-h", "--help") if short_help else ("--help",)
        self.add_argument(*flags, action="help", help="Show this help")

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            message = "unknown flag: " + message.removeprefix("unrecognized arguments: ")
        raise UsageError(message, hint=f"see '{self.prog} --help'")


def parse(parser: Parser, argv: list[str]) -> argparse.Namespace:
    return parser.parse_args(argv)
