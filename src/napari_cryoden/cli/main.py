"""The ``cryoden`` command: parse arguments, call the core, turn the outcome into an exit status.

The CLI is a thin layer over the core (:mod:`napari_cryoden.io`, :mod:`~napari_cryoden.models`,
:mod:`~napari_cryoden.inference`). This module imports only the standard library at import time;
each subcommand imports what it needs when it runs, so ``cryoden --help`` never imports torch.

Each subcommand is a module of this package (:mod:`.denoise`, :mod:`.models`, :mod:`.metrics`,
:mod:`.sample`, :mod:`.simulate`, :mod:`.train`, :mod:`.benchmark`) with ``HELP``,
``DESCRIPTION``, ``EPILOG``, ``add_arguments(parser)`` and ``run(args)``; :data:`SUBCOMMANDS`
maps names to them. This module assembles the parser, dispatches, and turns signals and
exceptions into exit statuses; what the subcommands share is in :mod:`._common`.

Exit statuses
-------------
0
    Success.
1
    The run failed for a reason outside the arguments (disk full, permission denied, out of
    memory, an unforeseen internal error); one line ``cryoden: error: ...`` on stderr.
2
    Bad input: a missing, non-MRC, corrupt or truncated file, a bad option value, an unknown
    model, an output that exists or is the input. One line ``cryoden: error: ...`` on stderr, no
    traceback, and no output file (nor temporary file) is left behind.
130
    Interrupted (Ctrl-C or SIGTERM); no partial output is left behind.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Sequence

from . import benchmark, denoise, metrics, models, sample, simulate, train  # stdlib-only at import time
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PROG, CliError
from ._common import error as _error
from ._common import one_line as _one_line

__all__ = ["EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "SUBCOMMANDS", "main"]


class _UsageError(Exception):
    """Raised by :class:`_Parser` instead of printing argparse's multi-line usage and exiting."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``cryoden: error: ...``."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# --------------------------------------------------------------------------------------------
# The dispatch table and the entry point


@dataclass(frozen=True)
class Subcommand:
    """One ``cryoden`` subcommand.

    Attributes
    ----------
    help : str
        One line for ``cryoden --help``.
    add_arguments : callable(argparse.ArgumentParser)
        Declares the subcommand's arguments.
    run : callable(argparse.Namespace) -> int
        Does the work and returns the exit status. It imports the core lazily and raises
        :class:`ValueError` (bad input, exit 2) or :class:`OSError` (exit 1) on failure.
    description : str, optional
        Text of ``cryoden <name> --help`` (default: `help`).
    epilog : str, optional
    """

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None


    @classmethod
    def of(cls, module: ModuleType) -> "Subcommand":
        """The subcommand of a module with ``HELP``, ``DESCRIPTION``, ``EPILOG``, ``add_arguments``
        and ``run``."""
        return cls(help=module.HELP, add_arguments=module.add_arguments, run=module.run,
                   description=module.DESCRIPTION, epilog=module.EPILOG)


#: Subcommand name -> :class:`Subcommand`, in the order of ``cryoden --help``.
SUBCOMMANDS: dict[str, Subcommand] = {
    "denoise": Subcommand.of(denoise),
    "models": Subcommand.of(models),
    "metrics": Subcommand.of(metrics),
    "sample": Subcommand.of(sample),
    "simulate": Subcommand.of(simulate),
    "train": Subcommand.of(train),
    "benchmark": Subcommand.of(benchmark),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``cryoden`` argument parser, one subparser per entry of :data:`SUBCOMMANDS`."""
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="Denoise cryo-electron tomograms with neural networks (napari-cryoden).",
        epilog=f"Run '{PROG} <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    for name, cmd in SUBCOMMANDS.items():
        p = sub.add_parser(
            name, help=cmd.help, description=cmd.description or cmd.help, epilog=cmd.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd.add_arguments(p)
    return parser


#: Signals that clean up like Ctrl-C: a batch scheduler's time limit or ``kill`` (SIGTERM), and a
#: closed terminal or SSH session (SIGHUP).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _interrupt_on_sigterm() -> dict | None:
    """Make SIGTERM and SIGHUP clean up like Ctrl-C (:data:`_STOP_SIGNALS`).

    Returns the previous handlers by signal, or None when not in the main thread (signals cannot
    be set there).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryoden`` with `argv` (default: ``sys.argv[1:]``) and return the exit status.

    Parameters
    ----------
    argv : sequence of str, optional

    Returns
    -------
    int
        0 success, 1 failure, 2 bad input or option, 130 interrupted (see the module docstring).
        An interrupt at any point, even while the arguments are parsed, is one line, never a
        traceback.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        _error("interrupted; nothing was written")
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if args.command is None:
        _error(f"choose a command: {', '.join(SUBCOMMANDS)} (see '{PROG} --help')")
        return EXIT_USAGE

    previous = _interrupt_on_sigterm()
    try:
        with warnings.catch_warnings():
            # A run prints its own lines only: library warnings (odd headers, float overflow in
            # statistics) are not the user's to read; what matters is said in notes and errors.
            warnings.simplefilter("ignore")
            return SUBCOMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        _error("interrupted; nothing was written")
        return EXIT_INTERRUPTED
    except (CliError, FileExistsError, ValueError) as exc:  # MrcError and ModelError are ValueErrors
        _error(_one_line(exc))
        return EXIT_USAGE
    except (OSError, MemoryError, RuntimeError) as exc:
        _error(_one_line(exc))
        return EXIT_FAILURE
    except Exception as exc:  # an unforeseen failure still ends with one line, not a traceback
        _error(f"internal error: {type(exc).__name__}: {_one_line(exc)}")
        return EXIT_FAILURE
    finally:
        for sig, handler in (previous or {}).items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
