"""Fourier shell correlation (FSC) of two volumes and Fourier ring correlation (FRC) of two images.

The FSC of `a` and `b` in the shell of spatial frequency ``k`` is

.. math::

    \\mathrm{FSC}(k) = \\frac{\\operatorname{Re} \\sum_{|q| \\approx k} w_q A(q) B^*(q)}
                           {\\sqrt{\\sum w_q |A(q)|^2 \\; \\sum w_q |B(q)|^2}}

over the real-to-complex FFT (the half spectrum ``rfftn`` keeps), where each Fourier voxel ``q``
is shared between its two nearest shells with linear weights ``w_q`` (the scheme of
``torch-fourier-shell-correlation``, which this module uses where it can). Shells are spaced by
the coarsest Fourier sampling step ``max_i 1 / (n_i d_i)`` (``n_i`` voxels of ``d_i`` Å along axis
``i``) and run from 0 up to the lowest Nyquist frequency ``min_i 1 / (2 d_i)``; for a cube of edge
``n`` and voxel size ``d`` shell ``k`` is at ``k / (n d)`` 1/Å, i.e. a resolution of ``n d / k`` Å.
Shell 0 (the mean) is 1 by convention. A shell where either spectrum is all zero reads 0.

Two back ends compute the same numbers:

``"torch"``
    ``torch_fourier_shell_correlation.fourier_correlation`` on FFTs computed here with
    :func:`scipy.fft.rfftn` (so read-only memory maps and float32 data are not copied). It bins
    in voxel units, so it is used only for isotropic voxels, and it builds several frequency
    grids the size of the half spectrum and loops over shells, so only up to
    :data:`TORCH_MAX_VOXELS` voxels.
``"numpy"``
    The same weighted shell sums, accumulated with :func:`numpy.bincount` one block of planes at
    a time: no whole-volume frequency grid, linear in the number of voxels, and physical
    (1/Å) frequencies, so anisotropic voxel sizes are binned correctly. Used for everything else.

Both need the two half spectra (each as large as a float32 copy of the input); nothing else of
whole-volume size is kept.

References
----------
.. [1] Saxton, W. O. & Baumeister, W. (1982). The correlation averaging of a regularly arranged
   bacterial cell envelope protein. J. Microsc. 127(2), 127-138.
   doi:10.1111/j.1365-2818.1982.tb00405.x
.. [2] Harauz, G. & van Heel, M. (1986). Exact filters for general geometry three dimensional
   reconstruction. Optik 73(4), 146-156.
.. [3] Rosenthal, P. B. & Henderson, R. (2003). Optimal determination of particle orientation,
   absolute hand, and contrast loss in single-particle electron cryomicroscopy. J. Mol. Biol.
   333(4), 721-745. doi:10.1016/j.jmb.2003.07.013
.. [4] van Heel, M. & Schatz, M. (2005). Fourier shell correlation threshold criteria.
   J. Struct. Biol. 151(3), 250-262. doi:10.1016/j.jsb.2005.05.009
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import math

import numpy as np

__all__ = [
    "FSC_THRESHOLDS", "METHODS", "TORCH_MAX_VOXELS", "FSCCurve", "fourier_shell_correlation", "frc_per_slice",
    "median_frc",
]

#: The two thresholds reported: 0.5 (Böttcher et al. 1997) and 0.143 (Rosenthal & Henderson 2003).
FSC_THRESHOLDS = (0.5, 0.143)
#: Accepted values of the `method` argument.
METHODS = ("auto", "torch", "numpy")
#: Largest volume (voxels) that ``method="auto"`` hands to torch-fourier-shell-correlation.
TORCH_MAX_VOXELS = 2**24
#: Elements of the half spectrum processed at once by the NumPy back end.
_BLOCK = 2**20


@dataclass(frozen=True)
class FSCCurve:
    """An FSC (or FRC) curve: one value per shell of spatial frequency.

    Attributes
    ----------
    frequency : (K,) ndarray of float
        Shell centres in 1/Å, ``frequency[k] = k * shell_width``.
    fsc : (K,) ndarray of float
        Correlation per shell; ``fsc[0]`` (the mean) is 1.
    n_voxels : (K,) ndarray of int
        Fourier voxels of the full spectrum whose frequency is nearest to each shell; an FSC of
        independent noise has a standard deviation of about ``1 / sqrt(n_voxels)`` [4]_.
    voxel_size : tuple of float
        Å per voxel, array axis order.

    References
    ----------
    .. [4] van Heel, M. & Schatz, M. (2005). Fourier shell correlation threshold criteria.
       J. Struct. Biol. 151(3), 250-262. doi:10.1016/j.jsb.2005.05.009
    """

    frequency: np.ndarray
    fsc: np.ndarray
    n_voxels: np.ndarray
    voxel_size: tuple[float, ...]

    @property
    def resolution(self) -> np.ndarray:
        """Shell resolutions in Å, ``1 / frequency`` (``inf`` for shell 0)."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.frequency

    @property
    def shell_width(self) -> float:
        """Spacing of the shells in 1/Å."""
        return float(self.frequency[1] - self.frequency[0])

    @property
    def nyquist(self) -> float:
        """Resolution of the last shell in Å (twice the voxel size for an even cube)."""
        return float(1.0 / self.frequency[-1])

    def crossing(self, threshold: float) -> float | None:
        """Resolution (Å) where the curve first falls below `threshold`, or None if it never does.

        The frequency is interpolated linearly between the last shell at or above the threshold
        and the first one below it, then inverted.

        Parameters
        ----------
        threshold : float
            Typically 0.5 or 0.143 (:data:`FSC_THRESHOLDS`).

        Returns
        -------
        float or None
            None when the curve stays at or above `threshold` up to the last shell (the
            resolution is then better than :attr:`nyquist`).
        """
        below = np.flatnonzero(self.fsc[1:] < threshold)
        if below.size == 0:
            return None
        k = int(below[0]) + 1
        f0, f1 = self.frequency[k - 1], self.frequency[k]
        v0, v1 = float(self.fsc[k - 1]), float(self.fsc[k])
        t = (v0 - threshold) / (v0 - v1) if v0 > v1 else 0.0
        return float(1.0 / (f0 + min(max(t, 0.0), 1.0) * (f1 - f0)))

    def pairs(self) -> list[list[float]]:
        """``[resolution_A, fsc]`` for every shell but shell 0 (whose resolution is infinite); a
        value that is not finite is None (JSON ``null``)."""
        return [[float(r), float(v) if math.isfinite(v) else None] for r, v in zip(self.resolution[1:], self.fsc[1:])]


# --------------------------------------------------------------------------------------------
# Geometry


def _spacing(voxel_size: float | Sequence[float], ndim: int) -> tuple[float, ...]:
    """`voxel_size` as `ndim` positive floats (a scalar is isotropic; a longer tuple keeps its tail)."""
    values = np.atleast_1d(np.asarray(voxel_size, dtype=float)).tolist()
    if len(values) == 1:
        values = values * ndim
    if len(values) < ndim:
        raise ValueError(f"voxel_size {tuple(values)} has fewer than {ndim} values (one per axis)")
    values = values[-ndim:]
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"voxel_size must be positive, got {tuple(values)}")
    return tuple(float(v) for v in values)


def _shells(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, int]:
    """Shell width (1/Å) and number of shells for an array of `shape` with voxel `spacing` (Å)."""
    width = max(1.0 / (n * d) for n, d in zip(shape, spacing))
    nyquist = min(0.5 / d for d in spacing)
    n_shells = int(np.floor(nyquist / width + 1e-9)) + 1
    if n_shells < 3:
        raise ValueError(
            f"shape {tuple(shape)} is too small for a Fourier shell correlation: it needs at least "
            "4 voxels along every axis (use a 2D array, or per-slice FRC, for a single slice)"
        )
    return width, n_shells


def _axis_frequencies(shape: Sequence[int], spacing: Sequence[float]) -> list[np.ndarray]:
    """Squared frequencies (1/Å)² per axis, the last one for the half spectrum, broadcastable."""
    from scipy import fft

    ndim = len(shape)
    out = []
    for axis, (n, d) in enumerate(zip(shape, spacing)):
        f = fft.rfftfreq(n, d) if axis == ndim - 1 else fft.fftfreq(n, d)
        view = [1] * ndim
        view[axis] = f.size
        out.append((f**2).reshape(view))
    return out


def _multiplicity(n_last: int) -> np.ndarray:
    """How often each index of the half spectrum's last axis appears in the full spectrum."""
    m = np.full(n_last // 2 + 1, 2.0)
    m[0] = 1.0
    if n_last % 2 == 0:
        m[-1] = 1.0
    return m


def _blocks(shape: Sequence[int]):
    """Slices of the first axis of a half spectrum, each about :data:`_BLOCK` elements."""
    plane = int(np.prod(shape[1:-1], dtype=np.int64)) * (shape[-1] // 2 + 1)
    step = max(1, _BLOCK // max(plane, 1))
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def _shell_coordinates(freq2: list[np.ndarray], block: slice, width: float) -> np.ndarray:
    """Continuous shell coordinate ``|q| / width`` for the planes `block` of the half spectrum."""
    total = freq2[0][block]
    for f2 in freq2[1:]:
        total = total + f2
    return np.sqrt(total) / width


def _shell_counts(shape: Sequence[int], spacing: Sequence[float], width: float, n_shells: int) -> np.ndarray:
    """Full-spectrum voxels nearest to each shell (geometry only, one block of planes at a time)."""
    freq2 = _axis_frequencies(shape, spacing)
    mult = _multiplicity(shape[-1])
    counts = np.zeros(n_shells + 1)
    for block in _blocks(shape):
        c = _shell_coordinates(freq2, block, width)
        nearest = np.minimum(np.floor(c + 0.5).astype(np.intp), n_shells)
        counts += np.bincount(nearest.ravel(), np.broadcast_to(mult, c.shape).ravel(), minlength=n_shells + 1)
    return counts[:n_shells].astype(np.int64)


# --------------------------------------------------------------------------------------------
# Back ends


def _as_real(array, name: str) -> np.ndarray:
    """`array` as float32/float64 without a copy when it already is one (memmaps stay mapped)."""
    array = np.asarray(array)
    if np.iscomplexobj(array) or array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a real-valued array, got dtype {array.dtype}")
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float32)
    return array


def _rfft(array: np.ndarray, axes) -> np.ndarray:
    from scipy import fft

    return fft.rfftn(array, axes=axes, workers=-1)


def _numpy_sums(fa: np.ndarray, fb: np.ndarray, shape, spacing, width: float, n_shells: int) -> np.ndarray:
    """FSC per shell from two half spectra with linear shell weights, one block at a time."""
    freq2 = _axis_frequencies(shape, spacing)
    sums = np.zeros((3, n_shells + 1))
    for block in _blocks(shape):
        c = _shell_coordinates(freq2, block, width)
        lower = np.floor(c)
        upper_w = (c - lower).ravel()
        lower = np.minimum(lower.astype(np.intp), n_shells).ravel()
        upper = np.minimum(lower + 1, n_shells)
        a, b = fa[block], fb[block]
        terms = (
            (a.real * b.real + a.imag * b.imag).ravel().astype(np.float64),
            (a.real**2 + a.imag**2).ravel().astype(np.float64),
            (b.real**2 + b.imag**2).ravel().astype(np.float64),
        )
        for i, t in enumerate(terms):
            sums[i] += np.bincount(lower, t * (1.0 - upper_w), minlength=n_shells + 1)
            sums[i] += np.bincount(upper, t * upper_w, minlength=n_shells + 1)
    cross, pa, pb = sums[:, :n_shells]
    denom = np.sqrt(pa * pb)
    out = np.divide(cross, denom, out=np.zeros(n_shells), where=denom > 0)
    out[0] = 1.0
    return out


def _torch_fsc(fa: np.ndarray, fb: np.ndarray, image_shape) -> np.ndarray:
    """torch-fourier-shell-correlation on precomputed half spectra; leading axes are a batch."""
    import torch
    from torch_fourier_shell_correlation import fourier_correlation

    out = fourier_correlation(torch.from_numpy(fa), torch.from_numpy(fb), tuple(image_shape), rfft=True)
    return out.numpy().astype(np.float64)


def _choose(method: str, spacing: Sequence[float], n_voxels: int) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    isotropic = np.allclose(spacing, spacing[0], rtol=1e-6, atol=0)
    if method == "torch" and not isotropic:
        raise ValueError(
            f"method='torch' needs isotropic voxels, got voxel_size {tuple(spacing)}; use method='numpy'"
        )
    if method == "auto":
        return "torch" if isotropic and n_voxels <= TORCH_MAX_VOXELS else "numpy"
    return method


def _check_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_real(a, "image"), _as_real(b, "reference")
    if a.shape != b.shape:
        raise ValueError(f"image shape {a.shape} differs from reference shape {b.shape}")
    return a, b


# --------------------------------------------------------------------------------------------
# Public functions


def fourier_shell_correlation(
    image, reference, *, voxel_size: float | Sequence[float] = 1.0, method: str = "auto"
) -> FSCCurve:
    """Fourier shell correlation of two volumes, or Fourier ring correlation of two images.

    Parameters
    ----------
    image, reference : (Z, Y, X) or (Y, X) array_like of real dtype, same shape
        Non-cubic shapes are fine. float32 and float64 arrays (and read-only memory maps) are
        not copied; other dtypes are cast to float32.
    voxel_size : float or sequence of float, default=1.0
        Å per voxel, array axis order (a scalar means isotropic); sets the resolution axis.
    method : {"auto", "torch", "numpy"}, default="auto"
        ``"torch"`` uses torch-fourier-shell-correlation (isotropic voxels only); ``"numpy"`` the
        block-wise NumPy implementation; ``"auto"`` takes torch for isotropic volumes of at most
        :data:`TORCH_MAX_VOXELS` voxels. Both give the same curve (see the module docstring).

    Returns
    -------
    FSCCurve
        Frequencies in 1/Å, values, voxel counts per shell; ``curve.crossing(0.143)`` gives a
        resolution in Å.

    Raises
    ------
    ValueError
        If the shapes differ, the arrays are not 2D or 3D, an axis has fewer than 4 voxels, the
        voxel size is not positive, or `method` is unknown.

    References
    ----------
    .. [1] Harauz, G. & van Heel, M. (1986). Exact filters for general geometry three dimensional
       reconstruction. Optik 73(4), 146-156.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> vol = rng.normal(size=(16, 24, 20)).astype(np.float32)
    >>> curve = fourier_shell_correlation(vol, vol, voxel_size=10.0)
    >>> bool(np.allclose(curve.fsc, 1.0)), curve.crossing(0.5)
    (True, None)
    >>> round(curve.nyquist, 1)   # shell 8 of a 16-voxel axis at 10 Å/voxel
    20.0
    """
    a, b = _check_pair(image, reference)
    if a.ndim not in (2, 3):
        raise ValueError(f"FSC needs a 2D image or a 3D volume, got an array of shape {a.shape}")
    spacing = _spacing(voxel_size, a.ndim)
    width, n_shells = _shells(a.shape, spacing)
    backend = _choose(method, spacing, a.size)
    fa = _rfft(a, axes=tuple(range(a.ndim)))
    fb = _rfft(b, axes=tuple(range(a.ndim)))
    if backend == "torch":
        values = _torch_fsc(fa, fb, a.shape)
    else:
        values = _numpy_sums(fa, fb, a.shape, spacing, width, n_shells)
    del fa, fb
    return FSCCurve(
        frequency=np.arange(n_shells) * width,
        fsc=np.clip(values, -1.0, 1.0),  # float32 rounding can step past 1 for identical data
        n_voxels=_shell_counts(a.shape, spacing, width, n_shells),
        voxel_size=spacing,
    )


def frc_per_slice(
    image, reference, *, voxel_size: float | Sequence[float] = 1.0, method: str = "auto"
) -> list[FSCCurve]:
    """Fourier ring correlation of every slice of two (N, Y, X) stacks.

    Parameters
    ----------
    image, reference : (N, Y, X) array_like of real dtype, same shape
        Slices along the first axis (a tilt series, a stack of micrographs or the Z slices of a
        tomogram).
    voxel_size : float or sequence of float, default=1.0
        Å per pixel; of a (Z, Y, X) triple only (Y, X) is used.
    method : {"auto", "torch", "numpy"}, default="auto"
        As in :func:`fourier_shell_correlation`; ``"torch"`` runs all slices as one batch, ``"numpy"`` one slice at a
        time (so only one slice's spectra are held).

    Returns
    -------
    list of FSCCurve
        One curve per slice.

    Raises
    ------
    ValueError
        As :func:`fourier_shell_correlation`, and if the arrays are not 3D.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> stack = rng.normal(size=(3, 32, 40))
    >>> curves = frc_per_slice(stack, stack, voxel_size=(10.0, 2.0, 2.0))
    >>> len(curves), round(curves[0].nyquist, 1)
    (3, 4.0)
    """
    a, b = _check_pair(image, reference)
    if a.ndim != 3:
        raise ValueError(f"per-slice FRC needs an (N, Y, X) stack, got an array of shape {a.shape}")
    spacing = _spacing(voxel_size, 2)
    shape2 = a.shape[1:]
    width, n_shells = _shells(shape2, spacing)
    backend = _choose(method, spacing, a.size)
    frequency = np.arange(n_shells) * width
    counts = _shell_counts(shape2, spacing, width, n_shells)
    if backend == "torch":
        values = _torch_fsc(_rfft(a, axes=(1, 2)), _rfft(b, axes=(1, 2)), shape2)
    else:
        values = np.stack([
            _numpy_sums(_rfft(a[i], axes=(0, 1)), _rfft(b[i], axes=(0, 1)), shape2, spacing, width, n_shells)
            for i in range(a.shape[0])
        ])
    values = np.clip(values, -1.0, 1.0)
    return [FSCCurve(frequency=frequency, fsc=row, n_voxels=counts, voxel_size=spacing) for row in values]


def median_frc(
    image, reference, *, voxel_size: float | Sequence[float] = 1.0, method: str = "auto"
) -> FSCCurve:
    """The median, shell by shell, of the Fourier ring correlations of the images of two (N, Y, X)
    stacks (particles, sub-tilts, micrographs): the FRC a stack of 2D images has, where a 3D FSC
    across it would correlate unrelated images.

    Parameters and errors as :func:`frc_per_slice`.

    Returns
    -------
    FSCCurve
        Its ``n_voxels`` are those of all the images together.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> stack = rng.normal(size=(5, 32, 32))
    >>> float(median_frc(stack, stack, voxel_size=(1.0, 2.0, 2.0)).fsc[-1])
    1.0
    """
    curves = frc_per_slice(image, reference, voxel_size=voxel_size, method=method)
    first = curves[0]
    values = np.median(np.stack([c.fsc for c in curves]), axis=0)
    return FSCCurve(frequency=first.frequency, fsc=values, n_voxels=first.n_voxels * len(curves),
                    voxel_size=first.voxel_size)
