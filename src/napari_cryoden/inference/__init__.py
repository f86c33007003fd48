"""Tiled, seam-free network inference (no Qt)."""

from .engine import Cancelled, default_geometry, denoise, iter_denoise, resolve_device, resolve_precision
from .normalize import robust_stats
from .tiling import Tile, plan_tiles, read_tile

__all__ = [
    "Cancelled", "Tile", "default_geometry", "denoise", "iter_denoise", "plan_tiles", "read_tile",
    "resolve_device", "resolve_precision", "robust_stats",
]
