"""File input and output: MRC maps, tomograms, micrographs and stacks (no Qt)."""

from .atomic import atomic_path, same_file
from .mrc import MRC_EXTENSIONS, MrcError, MrcRowWriter, MrcVolume, is_mrc_path, looks_like_mrc, read_mrc, write_mrc

__all__ = [
    "MRC_EXTENSIONS", "MrcError", "MrcRowWriter", "MrcVolume", "atomic_path", "is_mrc_path", "looks_like_mrc",
    "read_mrc", "same_file", "write_mrc",
]
