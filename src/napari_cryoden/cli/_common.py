"""Small helpers shared by the ``cryoden`` subcommands (standard library only)."""

from __future__ import annotations

import argparse
from typing import Callable


def int_at_least(minimum: int, what: str, *, not_int: str | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= `minimum`.

    Errors read ``expected <what>, got <value>``; text that is not an integer at all reads
    ``expected <not_int>, got '<text>'`` (`what` when `not_int` is None).
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {not_int or what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


def format_seconds(seconds: float) -> str:
    """``'m:ss'``, or ``'h:mm:ss'`` from an hour on (rounded to whole seconds, never negative)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def printable(text: str) -> str:
    """`text` with its control characters (newline, carriage return, ESC, ...) written as Python
    escapes (``\\n``, ``\\x1b``), so a message naming any path or card prints on one line and
    cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))
