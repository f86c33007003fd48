"""napari writer contribution: save one image layer as a float32 MRC file.

napari asks the user before replacing an existing file, so the writer overwrites; but it never
writes over the file the layer was read from (or, for a denoised layer, the file its input was
read from). A layer read from an MRC file (or denoised from one) keeps that file's header fields:
origin, start indices, labels, extended header (:class:`napari_cryoden.io.mrc.HeaderFields`),
and a voxel size the header did not know stays unknown.
"""

from __future__ import annotations

import os
from typing import Any

from .io import same_file, write_mrc
from .io.mrc import HeaderFields

__all__ = ["write_single_image"]

#: Layer metadata keys naming files that a save must never replace.
PROTECTED_METADATA_KEYS = ("path", "source_path")


def write_single_image(path: str | os.PathLike, data: Any, meta: dict) -> list[str]:
    """Write an image layer to `path` as float32 MRC, with the layer scale as voxel size.

    Parameters
    ----------
    path : path-like
        Output file (``.mrc .rec .map .mrcs``; a ``.gz``/``.bz2`` suffix compresses).
    data : (Z, Y, X) or (Y, X) array-like of real dtype
        The layer data (the first level of a multiscale layer).
    meta : dict
        Layer attributes from napari: ``scale`` (Å per voxel, array axis order), ``name`` and
        ``metadata`` (whose ``path`` / ``source_path`` entries are protected, and whose MRC
        ``header`` summary and ``extended_header_bytes`` are carried into the file).

    Returns
    -------
    list of str
        ``[path]``.

    Raises
    ------
    PermissionError
        If `path` is the layer's source file. Not a ``ValueError``: napari turns those into a
        vague "not a valid writer" warning and the reason would be lost.
    napari_cryoden.io.MrcError
        If `data` is not 2D/3D real data.
    """
    if meta.get("multiscale"):
        data = data[0]
    scale = meta.get("scale")
    voxel_size = tuple(float(s) for s in scale) if scale is not None else 1.0
    layer_meta = meta.get("metadata") or {}
    protect = tuple(str(layer_meta[k]) for k in PROTECTED_METADATA_KEYS if layer_meta.get(k))
    name = meta.get("name")
    for source in protect:
        if os.path.exists(path) and same_file(path, source):
            what = f"layer {name!r}" if name else "this layer"
            raise PermissionError(
                f"{path}: is the file {what} was read from; napari-cryoden never overwrites "
                "an input file, save under another name"
            )
    label = f"napari-cryoden: {name}" if name else "napari-cryoden"
    header = HeaderFields.from_metadata(layer_meta)
    if header is not None and layer_meta.get("voxel_size_known") is False:
        voxel_size = None  # the header's own value (0, say), never the placeholder scale of 1
    out = write_mrc(path, data, voxel_size, overwrite=True, protect=protect, label=label, header=header)
    return [str(out)]
