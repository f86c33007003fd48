"""napari reader contribution: MRC tomograms, micrographs, maps and stacks.

Discovery (:func:`get_reader`) only looks at file names and the first 1024 bytes, never raises,
and returns ``None`` for files that are not MRC so napari can try other readers. Reading goes
through :func:`napari_cryoden.io.read_mrc`, which memory-maps large files; the array is handed to
napari as is (no copy, no rescaling), with the voxel size in Å as the layer scale, the header's
origin (Å) as its translate, and Å as its units (so the scale bar reads in Å). Discovery also
checks the header the way reading does (:func:`napari_cryoden.io.mrc.check_mrc_header`), so the
reader never claims a file it cannot read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable

from .io import is_mrc_path, read_mrc
from .io.mrc import MrcError, check_mrc_header

__all__ = ["get_reader", "layer_name", "read_mrc_layers"]

LayerData = tuple[Any, dict, str]
_COMPRESSION_SUFFIXES = (".gz", ".bz2")


def layer_name(path: str | os.PathLike) -> str:
    """Layer name of a file: its name without the MRC extension and any ``.gz``/``.bz2``.

    Examples
    --------
    >>> layer_name("/data/tomo.rec.gz")
    'tomo'
    """
    name = Path(path).name
    for comp in _COMPRESSION_SUFFIXES:
        if name.lower().endswith(comp):
            name = name[: -len(comp)]
            break
    return Path(name).stem


def _as_paths(path: str | os.PathLike | list | tuple) -> list[str | os.PathLike] | None:
    if isinstance(path, (list, tuple)):
        return list(path) if path else None
    return [path]


def get_reader(path: str | os.PathLike | list) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_mrc_layers` if every path is a readable-looking MRC file, else None.

    Parameters
    ----------
    path : path-like or list of path-like

    Returns
    -------
    callable or None
        ``None`` for folders, other extensions, and files whose header is not MRC, so that
        napari tries its other readers. Never raises.
    """
    paths = _as_paths(path)
    if paths is None:
        return None
    try:
        for p in paths:
            if not is_mrc_path(p):
                return None
            check_mrc_header(p)
    except (TypeError, ValueError, OSError, MrcError):
        return None
    return read_mrc_layers


def read_mrc_layers(path: str | os.PathLike | list) -> list[LayerData]:
    """Read one or several MRC files into napari image layer data.

    Parameters
    ----------
    path : path-like or list of path-like

    Returns
    -------
    list of (data, kwargs, "image")
        `data` is the array read by :func:`~napari_cryoden.io.read_mrc` (a read-only memmap for
        large files); `kwargs` holds ``name`` (the file stem), ``scale`` (voxel size (Z, Y, X)
        in Å), ``translate`` (the header's origin in Å, array order; 0 along the image axis of a
        stack), ``units`` (Å) and ``metadata`` (header summary, source ``path``, the notes of
        :func:`~napari_cryoden.io.read_mrc`, which are also shown as one notification per file).

    Raises
    ------
    napari_cryoden.io.MrcError
        If a file is missing, corrupt or truncated; the message names the file.
    """
    layers = []
    for p in _as_paths(path) or []:
        vol = read_mrc(p)
        kwargs = {"name": layer_name(p), "scale": tuple(vol.voxel_size), "translate": _translate(vol),
                  "units": ("angstrom",) * vol.data.ndim, "metadata": vol.metadata}
        layers.append((vol.data, kwargs, "image"))
        for note in vol.metadata.get("notes", ()):
            _notify(note)
    return layers


def _translate(vol) -> tuple[float, ...]:
    """The header's origin (Å) in array order; 0 along the image axis of a stack and where the
    origin is not finite."""
    header = vol.metadata.get("header") or {}
    x, y, z = (float(v) if math.isfinite(float(v)) else 0.0 for v in header.get("origin_xyz_A", (0, 0, 0)))
    if vol.data.ndim == 2:
        return (y, x)
    return (0.0 if header.get("ispg") == 0 else z, y, x)


def _notify(message: str) -> None:
    """One napari notification (a log line where napari is not there)."""
    try:
        from napari.utils.notifications import show_info
    except ImportError:  # pragma: no cover - napari is a dependency of the plugin
        import logging

        logging.getLogger(__name__).info(message)
        return
    show_info(message)
