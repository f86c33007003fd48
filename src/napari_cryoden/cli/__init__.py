"""The ``cryoden`` command line (``napari_cryoden.cli:main``): parse arguments, call the core.

Importing this package imports only the standard library, so ``cryoden --help`` stays fast and
never loads torch; the subcommands import the core when they run. A Ctrl-C while it is imported
(the first tens of milliseconds of a ``cryoden`` run, before anything is written) ends the
process with one line and exit status 130 instead of a traceback.
"""

import signal as _signal
import threading as _threading


def _quiet_interrupt(signum, frame):  # nothing is written yet: leave at once, in one line
    import os
    import sys

    sys.stderr.write("cryoden: error: interrupted; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


_guard = (_threading.current_thread() is _threading.main_thread()
          and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler)
if _guard:
    _signal.signal(_signal.SIGINT, _quiet_interrupt)
try:
    from .main import main
finally:
    if _guard:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)

__all__ = ["main"]
