"""``python -m napari_cryoden.cli``: the same as the ``cryoden`` command."""

import sys

from .main import main

sys.exit(main())
