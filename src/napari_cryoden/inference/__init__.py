"""Tiled, seam-free network inference (no Qt)."""

from .cluster import map_denoise_files, split_denoise_file
from .engine import (
    Cancelled, denoise, denoise_tiles, input_mode, iter_denoise, plan_geometry, receptive_margin, resolve_device,
    resolve_precision,
)
from .normalize import robust_stats
from .preview import iter_denoise_preview, iter_denoise_slab
from .stream import FileResult, denoise_file, iter_denoise_file
from .tiling import Geometry, Tile, auto_geometry, plan_tiles, read_tile, waste_ratio

__all__ = [
    "Cancelled", "FileResult", "Geometry", "Tile", "auto_geometry", "denoise", "denoise_file", "denoise_tiles",
    "input_mode", "iter_denoise", "iter_denoise_file", "iter_denoise_preview", "iter_denoise_slab",
    "map_denoise_files", "plan_geometry", "plan_tiles", "read_tile", "receptive_margin", "resolve_device", "resolve_precision",
    "robust_stats", "split_denoise_file", "waste_ratio",
]
