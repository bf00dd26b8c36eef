"""Helpers shared by the CLI commands: argument types and one-line errors."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn, TypeAlias


class CliError(Exception):
    """An error to show the user as one line (exit status ``code``)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised as :class:`CliError`, printed by ``main``)."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{self.prog}: {message} (see --help)")


#: what ``Parser.add_subparsers()`` returns, given to each command's ``add_parser(sub)`` (argparse has no public name)
SubParsers: TypeAlias = "argparse._SubParsersAction[Parser]"


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}") from None
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {what}")
    return values


def numbers_arg(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    """Comma-separated numbers, as many as one of ``counts``."""
    return _numbers(text, counts, what)


def box_arg(text: str) -> list[float]:
    """``"X0,Y0,X1,Y1"`` -> 4 floats (inclusive pixel corners; x = column, y = row)."""
    return _numbers(text, (4,), "X0,Y0,X1,Y1 (four numbers)")


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return v


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return v


def say(msg: str) -> None:
    print(msg, file=sys.stderr)
