"""napari reader contribution: MRC tomograms, micrographs, maps and stacks.

Discovery (:func:`get_reader`) only looks at file names and the first 1024 bytes, never raises,
and returns ``None`` for files that are not MRC so napari can try other readers. Reading goes
through :func:`napari_cryoden.io.read_mrc`, which memory-maps large files; the array is handed to
napari as is (no copy, no rescaling), with the voxel size in Å as the layer scale.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .io import is_mrc_path, looks_like_mrc, read_mrc

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
        ok = all(is_mrc_path(p) and looks_like_mrc(p) for p in paths)
    except (TypeError, ValueError, OSError):
        return None
    return read_mrc_layers if ok else None


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
        in Å) and ``metadata`` (header summary and source ``path``).

    Raises
    ------
    napari_cryoden.io.MrcError
        If a file is missing, corrupt or truncated; the message names the file.
    """
    layers = []
    for p in _as_paths(path) or []:
        vol = read_mrc(p)
        kwargs = {"name": layer_name(p), "scale": tuple(vol.voxel_size), "metadata": vol.metadata}
        layers.append((vol.data, kwargs, "image"))
    return layers
