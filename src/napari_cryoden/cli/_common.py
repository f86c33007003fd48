"""What the ``cryoden`` subcommands share (standard library only): the exit statuses, the error
type, one-line notes and errors, the number parsers and the progress bar."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable, Sequence, TextIO

PROG = "cryoden"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# --------------------------------------------------------------------------------------------
# Value parsers: argparse types that also check --config values (TOML numbers and strings)


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A refused option value: argparse reports it as the option's error, and being a
    :class:`ValueError` it is bad input (exit status 2) wherever else it is raised."""


def int_at_least(minimum: int, what: str | None = None, *, not_int: str | None = None) -> Callable[[Any], int]:
    """A parser of integers >= `minimum`, from text or an int (not a bool).

    Errors (:class:`BadValue`) read ``expected <what>, got <value>``, `what` being ``an integer >=
    <minimum>`` when None; a value that is not an integer at all reads ``expected <not_int>, got
    '<text>'`` (`what` when `not_int` is None).
    """
    what = what or f"an integer >= {minimum}"

    def parse(value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise BadValue(f"expected {not_int or what}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise BadValue(f"expected {not_int or what}, got {value!r}") from None
        if number < minimum:
            raise BadValue(f"expected {what}, got {number}")
        return number

    return parse


def float_where(ok: Callable[[float], bool], what: str, *, not_float: str | None = None) -> Callable[[Any], float]:
    """A parser of finite numbers for which `ok` holds, from text or a number (not a bool).

    Errors (:class:`BadValue`) read ``expected <what>, got '<text>'``; a value that is not a number
    at all reads ``expected <not_float>, got '<text>'`` (`what` when `not_float` is None).
    """

    def parse(value) -> float:
        try:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError
            number = float(value)
        except ValueError:
            raise BadValue(f"expected {not_float or what}, got {value!r}") from None
        if not (math.isfinite(number) and ok(number)):
            raise BadValue(f"expected {what}, got {value!r}")
        return number

    return parse


positive_int = int_at_least(1, "a positive integer")
non_negative_int = int_at_least(0, "an integer >= 0")
positive_float = float_where(lambda v: v > 0, "a positive number")


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


class CliError(Exception):
    """A problem with the user's input, found by the CLI itself: exit status 2."""


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (name of the exception type when it has none).

    Bad-input messages (ours, naming paths) keep their newlines as ``\\n``, so a path with a
    newline stays recognisable; others (multi-line library messages) are joined with spaces.
    """
    if isinstance(exc, (CliError, ValueError, FileExistsError)):
        text = printable(str(exc).strip())
    else:
        text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        name = printable(exc.filename) if exc.filename is not None else ""
        text = f"{name}: {exc.strerror}" if name else exc.strerror
    return text or type(exc).__name__


def error(message: str, stream: TextIO | None = None) -> None:
    print(f"{PROG}: error: {printable(message)}", file=stream or sys.stderr, flush=True)


def note(message: str) -> None:
    print(f"{PROG}: note: {printable(message)}", file=sys.stderr, flush=True)


def format_voxel_size(voxel_size: Sequence[float]) -> str:
    """``'10.52 Å'`` when isotropic, else ``'(12, 10, 10) Å (Z, Y, X)'``."""
    values = [float(v) for v in voxel_size]
    if len(set(values)) == 1:
        return f"{values[0]:g} Å"
    axes = "ZYX"[-len(values):] if len(values) <= 3 else None
    joined = ", ".join(f"{v:g}" for v in values)
    return f"({joined}) Å" + (f" ({', '.join(axes)})" if axes else "")


class ProgressBar:
    """A small textual progress bar for ``(done, total)`` reports, written to a stream.

    On a terminal the bar is redrawn in place (at most ten times a second); otherwise a line is
    written each time another tenth of the work is done, so log files stay short. Bars of other
    reports (``cryoden train``'s steps and losses) build on :meth:`bar`, :meth:`times` and
    :meth:`show`.

    Parameters
    ----------
    label : str
        Written before the bar.
    stream : text stream, optional
        Default: ``sys.stderr``.
    width : int, default=30
        Characters of the bar itself.
    unit : str, default="tiles"
        What is counted, written after ``done/total``.
    """

    def __init__(self, label: str, stream: TextIO | None = None, *, width: int = 30, unit: str = "tiles"):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.unit = unit
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self._start = time.perf_counter()
        self._last_draw = -1.0
        self._last_tenth = 0
        self._open = False  # a line without its newline is on a terminal
        self._drawn = 0  # length of the text on that line

    def bar(self, done: int, total: int) -> str:
        """``'<label> [####------] done/total <unit>'``."""
        frac = done / total if total else 1.0
        filled = int(round(self.width * frac))
        return f"{self.label} [{'#' * filled}{'-' * (self.width - filled)}] {done}/{total} {self.unit}"

    @staticmethod
    def times(seconds: float, done: int, total: int) -> str:
        """``'  m:ss'`` elapsed, then ``' (~m:ss left)'`` while unfinished."""
        text = f"  {format_seconds(seconds)}"
        if 0 < done < total:
            text += f" (~{format_seconds(seconds * (total - done) / done)} left)"
        return text

    def _text(self, done: int, total: int) -> str:
        frac = done / total if total else 1.0
        return f"{self.bar(done, total)} {100 * frac:3.0f}%{self.times(time.perf_counter() - self._start, done, total)}"

    def show(self, render: Callable[[], str], *, now: bool, line: bool) -> None:
        """Write the text `render` returns (called only when something is written): on a terminal
        redrawn in place, skipped when the last draw is under 0.1 s old unless `now`; otherwise as
        a line of its own when `line`."""
        if self.tty:
            clock = time.perf_counter()
            if not now and clock - self._last_draw < 0.1:
                return
            self._last_draw = clock
            text = render()
            self.stream.write("\r" + text.ljust(self._drawn))  # blank what a longer line left
            self._drawn = len(text)
            self._open = True
        elif line:
            self.stream.write(render() + "\n")
        self.stream.flush()

    def update(self, done: int, total: int) -> None:
        """Report that `done` of `total` tiles are finished."""
        tenth = 10 * done // total if total else 10
        line = not self.tty and tenth > self._last_tenth
        if line:
            self._last_tenth = tenth
        self.show(lambda: self._text(done, total), now=done >= total, line=line)
        if self.tty and done >= total:
            self.close()

    def close(self) -> None:
        """End the bar's line (call it before printing anything else to the stream)."""
        if self._open:
            self.stream.write("\n")
            self._drawn = 0
            self.stream.flush()
            self._open = False
