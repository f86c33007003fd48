"""The ``cryoden`` command line (``napari_cryoden.cli:main``): parse arguments, call the core.

Importing this package imports only the standard library, so ``cryoden --help`` stays fast and
never loads torch; the subcommands import the core when they run.
"""

from .main import main

__all__ = ["main"]
