"""Training pairs simulated in batches with torch, on the training device (GPU or CPU).

The numpy simulators (:mod:`~napari_cryoden.simulate.thesis`,
:mod:`~napari_cryoden.simulate.tomogram`) make one volume at a time on one CPU core. This module
makes a whole batch of B (noisy, clean) patches of P³ voxels at once with torch operations on the
device the network trains on, drawing every random number from one seeded
:class:`torch.Generator` on that device, so that the data keeps pace with a GPU training step.
The particle maps are copied to the device once (:class:`ParticleBank`).

Two kinds of pairs mirror the numpy streams of :mod:`napari_cryoden.training.data`:

Thesis pairs (:func:`thesis_batch`; van Gijn 2019, section 3.1, as ``ThesisStream``)
    1 particle, centred (probability `p_single`), or 2 to `max_particles` particles at random
    places, each rotated uniformly in SO(3) (batched ``affine_grid`` / ``grid_sample``, linear
    interpolation) and kept apart by bounding spheres; a missing wedge of a ±tilt series about Y
    (a Fourier mask, tilt drawn uniformly from `tilt_range`); white Gaussian noise of variance
    ``var(clean) / snr``, the SNR drawn log-uniformly from `snr_range`.
Realistic pairs (:func:`realistic_batch`, as ``RealisticStream``)
    A crowded box of particles at a volume fraction drawn from `density`, optional lipid
    vesicles and a low-frequency ice background; a single-axis tilt series (3° steps up to a
    maximum tilt drawn from `tilt_range`, beam along Z, tilt axis Y) of ray-driven line integrals;
    the weak-phase image with the CTF of ``torch_ctf`` (defocus drawn from `defocus_um`, 300 kV,
    Cs 2.7 mm, amplitude contrast 0.07) and the radiation-damage filter of Grant & Grigorieff
    (2015, eLife 4:e06980) at each tilt's mid-exposure in a dose-symmetric order (Hagen, Wan &
    Briggs 2017, J. Struct. Biol. 197:191-198), ``dose_total`` (e⁻/Å²) split evenly over the
    tilts, beam attenuation by inelastic scattering; Poisson shot noise drawn as two independent
    half-dose halves (even, odd) whose sum is the full-dose image; phase flipping, R-weighting
    by the discrete Ram-Lak filter rolled off beyond 0.35 cycles/pixel and pixel-driven
    back-projection (Kak & Slaney 1988, Principles of Computerized Tomographic Imaging, ch. 3).
    The clean target is the noiseless reconstruction of the same geometry, CTF and damage.
    Optional ranges widen the pairs toward low dose: the dose drawn log-uniformly
    (``dose_log``), a specimen thickness for the attenuation (``ice_thickness``), and shot noise
    correlated between neighbouring detector pixels (``detector_correlation``, the filter of
    ``physics.correlate_detector_noise``).
    The projector and back-projector are the same ray- and pixel-driven linear-interpolation
    operators as the numpy path's, built once per geometry as torch sparse matrices on the device.

Both are normalised like the numpy streams (``training.data.normalize_pair``): both volumes of a
pair are shifted by the noisy volume's median and divided by its IQR / 1.349 (falling back to its
standard deviation, then 1), and augmented by the same random flips along Z, Y, X and contrast
sign for the two.

Deviations from the numpy simulators (chosen so that a batch costs a few kernels per step)
------------------------------------------------------------------------------------------
* Thesis placement follows ``thesis.place_particles`` (rotated crops of the voxels above 1e-3,
  whole-voxel corners with the crop inside the box, exclusion spheres of ``0.4 * |crop shape|``,
  crops wider than the box left out, one particle centred), except the search for free places:
  numpy tries up to 200 corners for one particle before it moves to the next; here every particle
  draws 32 candidate corners and the particles are placed in 32 rounds (round t: every particle
  not yet placed proposes its candidate t; lower-numbered particles take precedence), and a
  particle with no free candidate is left out.
* Realistic specimen: each pair is its own box of P³ voxels, not a patch cut from a 64×128×128
  tomogram shared by 32 patches (so the pairs of a batch are independent, and the volume fraction
  is met per patch). Particles may hang over every face of the box (the numpy slab keeps them
  inside along Z, but its patches cut them at any face). Particles are kept apart by their
  equivalent-volume spheres (radius ``(3 V / 4 pi)^(1/3)``, V the support voxels), not by
  their voxel supports, so a little overlap of non-spherical supports can occur; they are placed
  in 16 rounds of candidate places as the thesis particles (numpy: 20 tries per particle, and
  placing stops after 60 particles in a row found no place); the particles are drawn until their
  support voxels reach the drawn volume fraction of the box. Vesicles (0 to `max_membranes`) are placed in a virtual tomogram of `shape` voxels
  in which the box lies at a random place, as the numpy patches lie in their tomogram, with the
  same radii (120 Å to 40 % of its lateral size); vesicles are not kept apart from each other,
  and particles are kept off their shells by centre distance. The ice is a periodic Gaussian
  random field of the box (correlation 100 Å) scaled to a standard deviation of 0.08 for an
  unbounded field, not one field of the whole tomogram.
* The beam attenuation uses the thickness of the virtual tomogram (``shape[0] * voxel_size``,
  640 Å by default), as the numpy tomogram's slab, not the box's.
* The tilt series of every item has the tilts of the widest range (±`tilt_range[1]`); the tilts
  beyond an item's own maximum tilt get no dose and are not back-projected, so each item's
  reconstruction is the one of its own range.
* The CTF is applied on a grid padded for the largest defocus of the range (numpy: for the
  tomogram's own defocus); the padding only has to hold the CTF's delocalisation.
* Normalisation uses the statistics of each patch's own noisy volume (numpy's realistic stream:
  of the whole tomogram the patch is cut from).
* Randomness comes from a torch generator, so the pairs are not those of the numpy streams for
  any seed; they follow the same distributions (``tests/simulate/test_batched.py`` compares the
  statistics). On the CPU a seed gives the same batches bit for bit. On CUDA the pasting of
  particles (``index_add_``) and the sparse products add in an order that may vary, so the
  last bits of a batch may differ between runs of one seed.

Arrays are (B, 1, Z, Y, X) float32 tensors; lengths in voxels unless named in Å; defocus in µm,
dose in e⁻/Å², angles in degrees.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from .physics import MAX_DETECTOR_CORRELATION, detector_tap
from .specimen import ICE_SCALE_A, ICE_STD, check_particles

__all__ = [
    "BatchedStream",
    "ParticleBank",
    "realistic_batch",
    "thesis_batch",
]

#: Defaults of the thesis pairs (as ``training.data.ThesisStream`` and the recipes' stream).
THESIS_DEFAULTS = {"p_single": 0.3, "max_particles": 40, "snr_range": (0.1, 2.0), "tilt_range": (50.0, 70.0)}
#: Defaults of the realistic pairs (as ``training.data.RealisticStream``).
REALISTIC_DEFAULTS = {"shape": (64, 128, 128), "density": (0.05, 0.25), "defocus_um": (1.5, 5.0),
                      "dose_total": (40.0, 160.0), "tilt_range": (50.0, 65.0), "max_membranes": 2,
                      "dose_log": False, "ice_thickness": None, "detector_correlation": None}
#: Fixed imaging parameters of the realistic pairs (the defaults of ``simulate_tomogram``).
IMAGING = {"voxel_size": 10.0, "tilt_step": 3.0, "voltage_kv": 300.0, "cs_mm": 2.7, "amplitude_contrast": 0.07,
           "phase_flip": True, "radiation_damage": True, "radial_cutoff": 0.35, "mean_free_path": 3500.0,
           "contrast_volts": 2.0}

_SUPPORT = 0.1  # support threshold of a particle (fraction of its maximum), as specimen._SUPPORT
_THESIS_TRIES = 32
_REALISTIC_TRIES = 16
_LEAFLET_HALF_SPACING, _LEAFLET_SIGMA = 18.0, 5.0  # Å, as specimen.py
_IQR_TO_SIGMA = 1.349


# --------------------------------------------------------------------------------------------
# Parameter checks (one-line ValueErrors naming the parameter)


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _range(name: str, value: Any, lo: float, hi: float, *, open_lo: bool = True, open_hi: bool = False
           ) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
        ok = all(not isinstance(v, bool) and isinstance(v, Real) for v in value)
    except (TypeError, ValueError):
        ok = False
    if ok:
        inside = ((a > lo if open_lo else a >= lo) and (b < hi if open_hi else b <= hi)
                  and math.isfinite(a) and math.isfinite(b) and a <= b)
    if not ok or not inside:
        lb, rb = "(" if open_lo else "[", ")" if open_hi else "]"
        raise ValueError(f"{name} must be a pair (low, high), low <= high, within {lb}{lo:g}, {hi:g}{rb}, got {value!r}")
    return a, b


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# Particles on the device


class ParticleBank:
    """Particle maps copied once to a device, padded to one cube for batched rotation.

    Parameters
    ----------
    particles : dict of name -> (Z, Y, X) array-like
        Positive density maps at the simulation's voxel size (10 Å/voxel for the recipes), e.g.
        :func:`~napari_cryoden.simulate.load_particle_maps`; scaled to a maximum of 1.
    device : str or torch.device, default="cpu"

    Attributes
    ----------
    cubes : (M, 1, D, D, D) float32 tensor
        Each map centred in a cube of odd edge D that holds its bounding sphere.
    radius : (M,) float32 tensor
        Support radius about the map's centre, voxels (as ``specimen.particle_radius``).
    equivalent : (M,) float32 tensor
        Radius of the sphere of the map's support volume (density > 0.1 of the maximum), voxels.
    support : (M,) float32 tensor
        Support voxels of each map.
    names : list of str

    Raises
    ------
    ValueError
        If `particles` is not a non-empty dict of finite 3D maps with positive density.
    """

    def __init__(self, particles: Mapping[str, Any], device: str | torch.device = "cpu"):
        maps = check_particles(dict(particles))  # float32 numpy arrays, max 1 (setup only)
        self.names = list(particles)
        self.device = torch.device(device)
        ts = [torch.as_tensor(m, dtype=torch.float32, device=self.device) for m in maps]
        radius, support = [], []
        for t in ts:
            idx = torch.nonzero(t > 1e-3, as_tuple=False).to(torch.float32)
            centre = (torch.tensor(t.shape, dtype=torch.float32, device=self.device) - 1) / 2
            radius.append(float(((idx - centre) ** 2).sum(1).sqrt().max()) + 1.0)
            support.append(float((t > _SUPPORT).sum()))
        self.D = 2 * int(math.ceil(max(max(radius), max(max(t.shape) for t in ts) / 2))) + 1
        cubes = torch.zeros((len(ts), 1, self.D, self.D, self.D), device=self.device)
        shifts = torch.zeros((len(ts), 3), device=self.device)
        for i, t in enumerate(ts):
            lo = [(self.D - s) // 2 for s in t.shape]
            cubes[i, 0, lo[0]:lo[0] + t.shape[0], lo[1]:lo[1] + t.shape[1], lo[2]:lo[2] + t.shape[2]] = t
            # the map's centre sits at lo + (s-1)/2; the cube's centre at (D-1)/2
            shifts[i] = torch.tensor([l + (s - 1) / 2 - (self.D - 1) / 2 for l, s in zip(lo, t.shape)])
        self.cubes, self.shifts = cubes, shifts
        f32 = {"dtype": torch.float32, "device": self.device}
        self.radius = torch.tensor(radius, **f32)
        self.support = torch.tensor(support, **f32)
        self.equivalent = (3 * self.support / (4 * math.pi)).clamp_min(1.0) ** (1 / 3)

    def __len__(self) -> int:
        return len(self.names)

    def rotated(self, which: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        """Maps `which` (N,) rotated by `rotation` (N, 3, 3) about their centres: (N, 1, D, D, D).

        The output voxel at offset ``d`` (z, y, x) from the cube's centre samples the map at
        offset ``rotation @ d`` from the map's centre (trilinear, zero outside), as
        :func:`~napari_cryoden.simulate.rotate_particle`.
        """
        n = which.numel()
        if n == 0:
            return torch.zeros((0, 1, self.D, self.D, self.D), device=self.device)
        # affine_grid works in (x, y, z) order and normalised coordinates (align_corners=True:
        # -1 and 1 are the centres of the end voxels, the same scale for input and output).
        theta = torch.zeros((n, 3, 4), device=self.device)
        theta[:, :, :3] = rotation.flip(1).flip(2)
        theta[:, :, 3] = self.shifts[which].flip(1) * (2.0 / (self.D - 1))
        grid = F.affine_grid(theta, [n, 1, self.D, self.D, self.D], align_corners=True)
        return F.grid_sample(self.cubes[which], grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def random_rotations(n: int, generator: torch.Generator, device) -> torch.Tensor:
    """`n` rotation matrices (n, 3, 3) uniform in SO(3): normalised Gaussian quaternions."""
    q = torch.randn((n, 4), generator=generator, device=device)
    q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=1).reshape(n, 3, 3)


def _uniform(shape, lo, hi, generator, device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=device)


def _place(centres: torch.Tensor, radii: torch.Tensor, active: torch.Tensor, allowed: torch.Tensor | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping choice among candidate centres, in rounds (random sequential adsorption).

    In round ``t`` every particle not yet placed proposes its candidate ``t``; a proposal is
    accepted when it is allowed and keeps its exclusion sphere clear of every particle placed so
    far and of every lower-numbered particle's proposal of that round (so the order of
    precedence is the particle's number, as when placing them one by one). A particle with no
    accepted candidate after the last round is left out. The cost is a few kernels per round,
    not per particle.

    Parameters
    ----------
    centres : (B, K, T, 3) float tensor
        Candidate centres of K particle slots, T per slot, voxels.
    radii : (B, K) float tensor
        Exclusion radii, voxels: two particles are apart when their centres are farther than
        the sum of their radii.
    active : (B, K) bool tensor
        The slots that hold a particle.
    allowed : (B, K, T) bool tensor or None
        Candidates that are allowed at all (None: every one).

    Returns
    -------
    chosen : (B, K, 3) float tensor
        The accepted centre of each slot (zeros where none).
    placed : (B, K) bool tensor
    """
    b, k_all, t, _ = centres.shape
    dev = centres.device
    chosen = torch.zeros((b, k_all, 3), device=dev)
    placed = torch.zeros((b, k_all), dtype=torch.bool, device=dev)
    used = active.any(0).nonzero()
    k = int(used.max()) + 1 if used.numel() else 0  # slots after the last active one stay empty
    if k == 0:
        return chosen, placed
    centres, radii, pending = centres[:, :k], radii[:, :k], active[:, :k].clone()
    allowed = None if allowed is None else allowed[:, :k]
    reach2 = (radii[:, :, None] + radii[:, None, :]).square()  # (B, K, K)
    lower = torch.ones((k, k), dtype=torch.bool, device=dev).tril(-1)  # [i, j]: j < i
    got, done = chosen[:, :k].clone(), placed[:, :k].clone()

    def dist2(a, c):  # (B, K, 3), (B, K, 3) -> (B, K, K) squared distances, without (B, K, K, 3) temporaries
        return ((a * a).sum(-1)[:, :, None] + (c * c).sum(-1)[:, None, :] - 2 * a @ c.transpose(1, 2)).clamp_min(0)

    for r in range(t):
        prop = centres[:, :, r]  # (B, K, 3)
        ok = pending if allowed is None else pending & allowed[:, :, r]
        near_placed = (dist2(prop, got) <= reach2) & done[:, None, :]
        near_prop = (dist2(prop, prop) <= reach2) & (ok[:, None, :] & lower)
        accept = ok & ~(near_placed | near_prop).any(-1)
        got = torch.where(accept[..., None], prop, got)
        done = done | accept
        pending = pending & ~accept
    chosen[:, :k], placed[:, :k] = got, done
    return chosen, placed

def _crop_extent(cubes: torch.Tensor, threshold: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """First voxel and size (N, 3) of the box of voxels above `threshold` of each cube (N, 1, D, D, D).

    As :func:`~napari_cryoden.simulate.rotate_particle` crops; an empty cube keeps its whole box.
    """
    d = cubes.shape[-1]
    above = cubes[:, 0] > threshold
    firsts, sizes = [], []
    for axis in range(3):
        other = tuple(a for a in (1, 2, 3) if a != axis + 1)
        hit = above.any(dim=other).to(torch.uint8)  # (N, D)
        lo = hit.argmax(1)
        hi = d - 1 - hit.flip(1).argmax(1)
        empty = hit.sum(1) == 0
        firsts.append(torch.where(empty, torch.zeros_like(lo), lo))
        sizes.append(torch.where(empty, torch.full_like(lo, d), hi - lo + 1))
    return torch.stack(firsts, 1), torch.stack(sizes, 1)


def _paste(boxes: torch.Tensor, cubes: torch.Tensor, item: torch.Tensor, corner: torch.Tensor) -> None:
    """Add `cubes` (N, 1, D, D, D) into `boxes` (B, Z, Y, X) at integer corners (N, 3); edges clip."""
    n, d = cubes.shape[0], cubes.shape[-1]
    if n == 0:
        return
    b, nz, ny, nx = boxes.shape
    r = torch.arange(d, device=boxes.device)
    z = corner[:, 0, None, None, None] + r[None, :, None, None]
    y = corner[:, 1, None, None, None] + r[None, None, :, None]
    x = corner[:, 2, None, None, None] + r[None, None, None, :]
    inside = (z >= 0) & (z < nz) & (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
    flat = ((item[:, None, None, None] * nz + z.clamp(0, nz - 1)) * ny + y.clamp(0, ny - 1)) * nx + x.clamp(0, nx - 1)
    vals = torch.where(inside, cubes[:, 0], torch.zeros((), device=boxes.device))
    boxes.view(-1).index_add_(0, flat.reshape(-1), vals.reshape(-1))


# --------------------------------------------------------------------------------------------
# Normalisation and augmentation, batched


def robust_normalize(noisy: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Normalise each item with its noisy volume's median and IQR / 1.349 (as ``normalize_pair``).

    Parameters
    ----------
    noisy : (B, 1, Z, Y, X) float tensor
    *others : tensors of the same shape, normalised with `noisy`'s statistics

    Returns
    -------
    tuple of tensors
        ``(noisy, *others)`` normalised. Where the IQR is not a normal float32 number the
        standard deviation is used, then 1 (``inference.normalize.robust_stats``).
    """
    b = noisy.shape[0]
    flat = noisy.reshape(b, -1).float()
    q = torch.tensor([0.25, 0.5, 0.75], device=noisy.device)
    rows = max(1, (1 << 24) // max(flat.shape[1], 1))  # torch.quantile takes at most 2**24 values
    qs = torch.cat([torch.quantile(flat[i:i + rows], q, dim=1) for i in range(0, b, rows)], dim=1)  # (3, B)
    tiny = float(torch.finfo(torch.float32).tiny) * 2**24
    scale = (qs[2] - qs[0]) / _IQR_TO_SIGMA
    std = flat.std(dim=1, unbiased=False)
    scale = torch.where(scale > tiny, scale, torch.where(std > tiny, std, torch.ones_like(std)))
    view = (b,) + (1,) * (noisy.dim() - 1)
    centre, scale = qs[1].reshape(view), scale.reshape(view)
    return tuple((t - centre) / scale for t in (noisy, *others))


def augment(generator: torch.Generator, *volumes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same random flips along Z, Y, X and contrast sign per item for every volume.

    Volumes are (B, 1, Z, Y, X); flips along Z, Y and X keep a tilt axis along Y (as
    ``training.data._augment``).
    """
    b, dev = volumes[0].shape[0], volumes[0].device
    draws = torch.rand((b, 4), generator=generator, device=dev) < 0.5
    out = list(volumes)
    for axis in range(3):
        m = draws[:, axis].reshape(b, 1, 1, 1, 1)
        out = [torch.where(m, v.flip(2 + axis), v) for v in out]
    sign = 1.0 - 2.0 * draws[:, 3].to(volumes[0].dtype).reshape(b, 1, 1, 1, 1)
    return tuple((v * sign).contiguous() for v in out)


# --------------------------------------------------------------------------------------------
# Thesis pairs


def _wedge_mask(shape: tuple[int, int, int], tilt_deg: torch.Tensor) -> torch.Tensor:
    """(B, Z, Y, X//2+1) 0/1 masks ``|kz| <= tan(tilt) |kx|`` on the rfftn grid (as missing_wedge_mask)."""
    dev = tilt_deg.device
    kz = torch.fft.fftfreq(shape[0], device=dev).abs().reshape(1, -1, 1, 1)
    kx = torch.fft.rfftfreq(shape[2], device=dev).reshape(1, 1, 1, -1)
    t = torch.tan(torch.deg2rad(tilt_deg.double())).float().reshape(-1, 1, 1, 1)
    keep = kz <= t * kx + 1e-12
    return keep.expand(-1, -1, shape[1], -1).to(torch.float32)


def thesis_batch(
    bank: ParticleBank,
    n: int,
    patch: int,
    generator: torch.Generator,
    *,
    p_single: float = 0.3,
    max_particles: int = 40,
    snr_range: tuple[float, float] = (0.1, 2.0),
    tilt_range: tuple[float, float] = (50.0, 70.0),
    normalize: bool = True,
    augment_: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` thesis (degraded, clean) pairs (van Gijn 2019, section 3.1), made on `bank`'s device.

    Each item: one centred particle (probability `p_single`) or 2 to `max_particles` placed at
    random without overlap, each map drawn uniformly and rotated uniformly in SO(3); a missing
    wedge of a ±tilt series about Y with tilt uniform in `tilt_range`; white Gaussian noise of
    variance ``var(clean) / snr`` with `snr` log-uniform in `snr_range`. See the module
    docstring for the deviations from :func:`~napari_cryoden.simulate.thesis_pair`.

    Parameters
    ----------
    bank : ParticleBank
    n : int
        Pairs (>= 0).
    patch : int
        Cube edge P in voxels (>= 8).
    generator : torch.Generator
        On `bank`'s device; all randomness comes from it.
    p_single : float, default=0.3
    max_particles : int, default=40
    snr_range : (float, float), default=(0.1, 2.0)
    tilt_range : (float, float), default=(50, 70)
        Degrees, in (0, 90].
    normalize : bool, default=True
        Normalise with the noisy volume's robust statistics (:func:`robust_normalize`).
    augment_ : bool, default=True
        Random flips and contrast sign (:func:`augment`).

    Returns
    -------
    noisy, clean : (n, 1, P, P, P) float32 tensors on `bank`'s device

    Raises
    ------
    ValueError
        On a bad parameter (one line, naming it).
    """
    n, patch = _int("n", n, 0), _int("patch", patch, 8)
    p_single, max_particles = _fraction("p_single", p_single), _int("max_particles", max_particles, 1)
    snr_lo, snr_hi = _range("snr_range", snr_range, 0.0, math.inf, open_hi=True)
    tilt_lo, tilt_hi = _range("tilt_range", tilt_range, 0.0, 90.0)
    dev, g = bank.device, generator
    shape = (patch,) * 3
    if n == 0:
        empty = torch.zeros((0, 1, *shape), device=dev)
        return empty, empty.clone()
    k = max(1, max_particles)
    # number of particles, which maps, rotations
    single = torch.rand(n, generator=g, device=dev) < p_single
    many = torch.randint(2, max_particles + 1, (n,), generator=g, device=dev) if max_particles >= 2 \
        else torch.ones(n, dtype=torch.long, device=dev)
    count = torch.where(single, torch.ones_like(many), many)
    which = torch.randint(len(bank), (n, k), generator=g, device=dev)
    active = torch.arange(k, device=dev)[None] < count[:, None]
    # rotate the particles of every item; their crops (voxels > 1e-3) as rotate_particle's
    bi, ki = active.nonzero(as_tuple=True)
    rot = random_rotations(n * k, g, dev).reshape(n, k, 3, 3)[bi, ki]
    cubes = bank.rotated(which[bi, ki], rot)
    first, size = _crop_extent(cubes)  # (N, 3) each
    # corners: uniform with the crop inside the box (place_particles), or centred for one particle
    m = torch.full((n, k, 3), bank.D, dtype=torch.long, device=dev)
    m[bi, ki] = size
    fits = (m <= patch).all(-1)
    u = torch.rand((n, k, _THESIS_TRIES, 3), generator=g, device=dev)
    room = (patch - m).clamp_min(0)[:, :, None, :]
    lo = torch.floor(u * (room + 1)).clamp_max(room)
    centred = (count == 1)[:, None, None, None]
    lo = torch.where(centred, torch.div(room, 2, rounding_mode="floor").expand_as(lo), lo)
    cand = lo + m[:, :, None, :] / 2  # crop centres
    excl = 0.4 * m.float().norm(dim=-1)  # 0.5 * 0.8 * |crop shape|, as place_particles
    centres, placed = _place(cand, excl, active & fits, None)
    # paste the placed crops: the crop's first voxel at the chosen corner
    keep = placed[bi, ki]
    corner = torch.round(centres[bi, ki] - m[bi, ki] / 2).long() - first
    clean = torch.zeros((n, *shape), device=dev)
    _paste(clean, cubes[keep], bi[keep], corner[keep])
    # missing wedge, noise at the drawn SNR
    tilt = _uniform(n, tilt_lo, tilt_hi, g, dev)
    log_snr = _uniform(n, math.log(snr_lo), math.log(snr_hi), g, dev)
    wedged = torch.fft.irfftn(torch.fft.rfftn(clean, dim=(1, 2, 3)) * _wedge_mask(shape, tilt), s=shape, dim=(1, 2, 3))
    var = clean.reshape(n, -1).var(dim=1, unbiased=False)
    sigma = torch.where(var > 0, (var / torch.exp(log_snr)).sqrt(), torch.ones_like(var))
    noisy = wedged + sigma.reshape(n, 1, 1, 1) * torch.randn((n, *shape), generator=g, device=dev)
    noisy, clean = noisy[:, None], clean[:, None]
    if normalize:
        noisy, clean = robust_normalize(noisy, clean)
    if augment_:
        noisy, clean = augment(g, noisy, clean)
    return noisy.contiguous(), clean.contiguous()


# --------------------------------------------------------------------------------------------
# Realistic pairs: geometry, cached per device


def _fast_len(n: int) -> int:
    """The smallest even 2,3,5-smooth integer >= n (a fast FFT length)."""
    m = max(2, int(n))
    while True:
        if m % 2 == 0:
            r = m
            for p in (2, 3, 5):
                while r % p == 0:
                    r //= p
            if r == 1:
                return m
        m += 1


def _wavelength(voltage_kv: float) -> float:
    v = voltage_kv * 1e3
    return 12.2643247 / math.sqrt(v * (1 + 0.978476e-6 * v))


def _interaction_constant(voltage_kv: float) -> float:
    v, mc2 = voltage_kv * 1e3, 510998.95
    return 2 * math.pi / (_wavelength(voltage_kv) * v) * (mc2 + v) / (2 * mc2 + v)


def _ctf_padding(pixel_size: float, defocus_um: float, voltage_kv: float, cs_mm: float) -> int:
    lam, k = _wavelength(voltage_kv), 0.5 / pixel_size
    deloc = lam * abs(defocus_um) * 1e4 * k + cs_mm * 1e7 * lam**3 * k**3
    return int(math.ceil(deloc / pixel_size)) + 4


class _Geometry:
    """Tilt angles, detector, sparse projector and back-projector of a (P, P, P) box on a device."""

    _cache: dict = {}

    @classmethod
    def get(cls, patch: int, tilt_max: float, step: float, device: torch.device) -> "_Geometry":
        key = (patch, round(tilt_max, 9), round(step, 9), str(device))
        if key not in cls._cache:
            if len(cls._cache) >= 4:
                cls._cache.pop(next(iter(cls._cache)))
            cls._cache[key] = cls(patch, tilt_max, step, device)
        return cls._cache[key]

    def __init__(self, patch: int, tilt_max: float, step: float, device: torch.device):
        nz = nx = patch
        m = int(math.floor(tilt_max / step + 1e-9))
        idx = torch.arange(-m, m + 1, device=device)
        self.angles = step * idx.double()  # degrees, ascending
        # dose-symmetric rank: 0 first, then +step, -step, +2 step, ... (tomogram.dose_symmetric_order)
        self.rank = (2 * idx.abs() - (idx > 0).long()).double()
        th = torch.deg2rad(self.angles)
        need = int(math.ceil(float((nx * th.cos() + nz * th.abs().sin()).max()))) + 2
        need = max(need, nx)
        self.nd = need + ((need - nx) % 2)
        nt = int(math.ceil(math.hypot(nz, nx))) + 2
        self.nt = nt + (nt - nz) % 2
        self.n_tilts = len(self.angles)
        self.proj = self._projector(nz, nx, th, device)
        self.back = self._backprojector(nz, nx, th, device)

    def _projector(self, nz, nx, th, dev) -> torch.Tensor:
        """(T*nd, nz*nx) ray-driven projector: bilinear samples one voxel apart along each ray."""
        nd, nt = self.nd, self.nt
        cz, cx, cu, ct = (nz - 1) / 2, (nx - 1) / 2, (nd - 1) / 2, (nt - 1) / 2
        u = (torch.arange(nd, device=dev, dtype=torch.float64) - cu)[None, None, :]
        t = (torch.arange(nt, device=dev, dtype=torch.float64) - ct)[None, :, None]
        c, s = th.cos()[:, None, None], th.sin()[:, None, None]
        xx, zz = cx + u * c + t * s, cz - u * s + t * c  # (T, nt, nd)
        row = (torch.arange(len(th), device=dev)[:, None, None] * nd + torch.arange(nd, device=dev)).expand_as(xx)
        x0, z0 = xx.floor(), zz.floor()
        fx, fz = xx - x0, zz - z0
        rows, cols, vals = [], [], []
        for dz, dx, w in ((0, 0, (1 - fz) * (1 - fx)), (0, 1, (1 - fz) * fx), (1, 0, fz * (1 - fx)), (1, 1, fz * fx)):
            zi, xi = z0.long() + dz, x0.long() + dx
            ok = (zi >= 0) & (zi < nz) & (xi >= 0) & (xi < nx) & (w > 0)
            rows.append(row[ok]), cols.append(zi[ok] * nx + xi[ok]), vals.append(w[ok].float())
        return self._sparse(rows, cols, vals, (len(th) * nd, nz * nx))

    def _backprojector(self, nz, nx, th, dev) -> torch.Tensor:
        """(nz*nx, T*nd) pixel-driven back-projector, linear interpolation on the detector."""
        nd = self.nd
        cz, cx, cu = (nz - 1) / 2, (nx - 1) / 2, (nd - 1) / 2
        z = (torch.arange(nz, device=dev, dtype=torch.float64) - cz)[:, None]
        x = (torch.arange(nx, device=dev, dtype=torch.float64) - cx)[None, :]
        vox = torch.arange(nz * nx, device=dev)
        rows, cols, vals = [], [], []
        for k, theta in enumerate(th.tolist()):
            uu = (cu + x * math.cos(theta) - z * math.sin(theta)).reshape(-1)
            i0 = uu.floor()
            f = uu - i0
            for di, w in ((0, 1 - f), (1, f)):
                ii = i0.long() + di
                ok = (ii >= 0) & (ii < nd)
                rows.append(vox[ok]), cols.append(k * nd + ii[ok]), vals.append(w[ok].float())
        return self._sparse(rows, cols, vals, (nz * nx, len(th) * nd))

    @staticmethod
    def _sparse(rows, cols, vals, shape) -> torch.Tensor:
        i = torch.stack([torch.cat(rows), torch.cat(cols)])
        return torch.sparse_coo_tensor(i, torch.cat(vals), shape, check_invariants=True).coalesce()


def _ramlak(n: int, cutoff: float | None, device, falloff: float = 0.035) -> torch.Tensor:
    """Discrete Ram-Lak filter on the rfft grid of length `n`, rolled off beyond `cutoff` (Kak & Slaney 1988)."""
    i = torch.arange(n, device=device)
    m = torch.minimum(i, n - i).double()
    h = torch.where(m % 2 == 1, -1.0 / (math.pi * m).clamp_min(1e-9) ** 2, torch.zeros_like(m))
    h[0] = 0.25
    filt = torch.fft.rfft(h).real
    if cutoff is not None:
        k = torch.fft.rfftfreq(n, device=device, dtype=torch.float64)
        filt = filt * torch.where(k > cutoff, torch.exp(-0.5 * ((k - cutoff) / falloff) ** 2), torch.ones_like(k))
    return filt.float()


def _ctf(shape: tuple[int, int], pixel_size: float, defocus_um: torch.Tensor) -> torch.Tensor:
    """(B, H, W//2+1) CTF of torch_ctf on the rfft2 grid (positive first lobe for underfocus)."""
    from torch_ctf import calculate_ctf_2d

    return calculate_ctf_2d(
        defocus=defocus_um.float(), astigmatism=0.0, astigmatism_angle=0.0, voltage=IMAGING["voltage_kv"],
        spherical_aberration=IMAGING["cs_mm"], amplitude_contrast=IMAGING["amplitude_contrast"], phase_shift=0.0,
        pixel_size=pixel_size, image_shape=shape, rfft=True, fftshift=False,
    ).float()


def _freq(shape: tuple[int, int], pixel_size: float, device) -> torch.Tensor:
    """|k| in 1/Å on the rfft2 grid of `shape`."""
    ky = torch.fft.fftfreq(shape[0], device=device)[:, None]
    kx = torch.fft.rfftfreq(shape[1], device=device)[None, :]
    return (ky**2 + kx**2).sqrt() / pixel_size


def _ice(n: int, patch: int, voxel_size: float, g: torch.Generator, dev) -> torch.Tensor:
    """(n, P, P, P) periodic Gaussian random fields, correlation ``ICE_SCALE_A``, std ``ICE_STD``."""
    s = ICE_SCALE_A / voxel_size
    white = torch.randn((n, patch, patch, patch), generator=g, device=dev)
    kz = torch.fft.fftfreq(patch, device=dev).reshape(-1, 1, 1)
    ky = torch.fft.fftfreq(patch, device=dev).reshape(1, -1, 1)
    kx = torch.fft.rfftfreq(patch, device=dev).reshape(1, 1, -1)
    h = torch.exp(-2 * math.pi**2 * s**2 * (kz**2 + ky**2 + kx**2))
    field = torch.fft.irfftn(torch.fft.rfftn(white, dim=(1, 2, 3)) * h, s=(patch,) * 3, dim=(1, 2, 3))
    # variance of unit white noise smoothed by a unit-sum Gaussian of sigma s: (4 pi s^2)^(-3/2)
    return field * (ICE_STD / (4 * math.pi * s * s) ** (-0.75))


def _vesicles(n: int, patch: int, shape: tuple[int, int, int], voxel_size: float, max_membranes: int,
              g: torch.Generator, dev) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vesicle shells of a box placed at random in a virtual tomogram of `shape`.

    Returns the density (n, P, P, P) and, for keeping particles off them, the centres (n, V, 3)
    in box voxels, radii (n, V) and a mask (n, V) of the vesicles that exist.
    """
    v = max(max_membranes, 1)
    count = torch.randint(0, max_membranes + 1, (n,), generator=g, device=dev)
    exists = torch.arange(v, device=dev)[None] < count[:, None]
    full = torch.tensor(shape, dtype=torch.float32, device=dev)
    offset = torch.floor(torch.rand((n, 1, 3), generator=g, device=dev) * (full - patch + 1))
    centres = torch.rand((n, v, 3), generator=g, device=dev) * (full - 1) - offset
    lateral = min(shape[1], shape[2]) * voxel_size
    r_lo, r_hi = 120.0, max(150.0, 0.4 * lateral)
    radii = _uniform((n, v), r_lo, r_hi, g, dev) / voxel_size
    sigma = max(_LEAFLET_SIGMA / voxel_size, 0.7)
    half = _LEAFLET_HALF_SPACING / voxel_size
    r = torch.arange(patch, device=dev, dtype=torch.float32)
    vol = torch.zeros((n, patch, patch, patch), device=dev)
    # only the shells that cross the box: nearest and farthest box voxel from each centre
    near = (centres.clamp(0, patch - 1) - centres).norm(dim=-1)
    far = torch.maximum(centres, patch - 1 - centres).norm(dim=-1)
    reach = half + 4 * sigma
    crosses = exists & (near <= radii + reach) & (far >= radii - reach)
    for j in range(v):
        items = crosses[:, j].nonzero(as_tuple=True)[0]
        if items.numel() == 0:
            continue
        c, rad = centres[items, j], radii[items, j, None, None, None]
        dz, dy, dx = ((r[None, :] - c[:, a, None]) ** 2 for a in range(3))
        d = (dz[:, :, None, None] + dy[:, None, :, None] + dx[:, None, None, :]).sqrt()
        shell = torch.exp(-0.5 * ((d - rad - half) / sigma) ** 2) + torch.exp(-0.5 * ((d - rad + half) / sigma) ** 2)
        vol[items] = torch.maximum(vol[items], 0.9 * shell)
    return vol, centres, radii, exists


def realistic_batch(
    bank: ParticleBank,
    n: int,
    patch: int,
    generator: torch.Generator,
    *,
    shape: tuple[int, int, int] = (64, 128, 128),
    density: tuple[float, float] = (0.05, 0.25),
    defocus_um: tuple[float, float] = (1.5, 5.0),
    dose_total: tuple[float, float] = (40.0, 160.0),
    tilt_range: tuple[float, float] = (50.0, 65.0),
    max_membranes: int = 2,
    dose_log: bool = False,
    ice_thickness: tuple[float, float] | None = None,
    detector_correlation: tuple[float, float] | None = None,
    ice: bool = True,
    voxel_size: float = 10.0,
    normalize: bool = True,
    augment_: bool = True,
    halves: bool = False,
) -> tuple[torch.Tensor, ...]:
    """`n` realistic (noisy, clean) tomogram patches, simulated in one batch on `bank`'s device.

    Each item is a P³ box of crowded particles (volume fraction uniform in `density`), 0 to
    `max_membranes` vesicles and ice, imaged as a dose-symmetric single-axis tilt series (3°
    steps up to a tilt uniform in `tilt_range`) at 300 kV with the CTF (defocus uniform in
    `defocus_um`), radiation damage, attenuation and Poisson shot noise at a total dose uniform
    in `dose_total`, phase flipped and reconstructed by weighted back-projection; the clean
    target is the noiseless reconstruction. The physics and operators are those of
    :func:`~napari_cryoden.simulate.simulate_tomogram`; see the module docstring for the
    deviations.

    Parameters
    ----------
    bank : ParticleBank
        Maps at `voxel_size`.
    n : int
        Pairs (>= 0).
    patch : int
        Cube edge P in voxels (>= 8).
    generator : torch.Generator
        On `bank`'s device.
    shape : (Z, Y, X) tuple of int, default=(64, 128, 128)
        The virtual tomogram the box lies in: its thickness ``Z * voxel_size`` (Å) sets the beam
        attenuation, its lateral size the vesicle radii and the vesicles' positions.
    density, defocus_um, dose_total, tilt_range : (float, float)
        Uniform ranges of the particle volume fraction ([0, 1)), the defocus (µm, positive
        underfocus), the total dose (e⁻/Å²) and the maximum tilt (degrees, (0, 90)).
    max_membranes : int, default=2
    dose_log : bool, default=False
        Draw the total dose log-uniformly in `dose_total`.
    ice_thickness : (float, float), optional
        Uniform range of the specimen thickness (Å) the beam crosses at 0° tilt, at least the
        virtual tomogram's ``shape[0] * voxel_size``; None: that thickness.
    detector_correlation : (float, float), optional
        Uniform range of the shot noise's correlation between neighbouring detector pixels, in
        [0, 0.7] (:func:`~napari_cryoden.simulate.physics.detector_kernel`, applied to each
        half on its own); None: white noise.

    The optional ranges draw no random numbers when they are None, so batches without them are
    the same as before they existed.
    ice : bool, default=True
        Add the low-frequency ice background.
    voxel_size : float, default=10
        Å per voxel.
    normalize : bool, default=True
        Normalise with each item's noisy robust statistics (:func:`robust_normalize`).
    augment_ : bool, default=True
        Random flips and contrast sign.
    halves : bool, default=False
        Also return the even and odd half-dose reconstructions.

    Returns
    -------
    noisy, clean : (n, 1, P, P, P) float32 tensors on `bank`'s device
        With ``halves=True`` also ``even, odd`` (``noisy == (even + odd) / 2`` before
        normalisation). Unnormalised, a fully transferred protein voxel is -1 (protein dark).

    Raises
    ------
    ValueError
        On a bad parameter (one line, naming it).
    """
    n, patch = _int("n", n, 0), _int("patch", patch, 8)
    try:
        shape = tuple(int(s) for s in shape)
        shape_ok = len(shape) == 3 and min(shape) >= patch
    except (TypeError, ValueError):
        shape_ok = False
    if not shape_ok:
        raise ValueError(f"shape must be 3 integers, each at least the patch ({patch}), got {shape!r}")
    dens = _range("density", density, 0.0, 1.0, open_lo=False, open_hi=True)
    dfc = _range("defocus_um", defocus_um, 0.0, math.inf, open_lo=False, open_hi=True)
    dose = _range("dose_total", dose_total, 0.0, math.inf, open_hi=True)
    tilts = _range("tilt_range", tilt_range, 0.0, 90.0, open_hi=True)
    max_membranes = _int("max_membranes", max_membranes, 0)
    slab = shape[0] * float(voxel_size) if isinstance(voxel_size, Real) else 0.0
    thick = None if ice_thickness is None else _range("ice_thickness", ice_thickness, slab - 1e-6, math.inf,
                                                      open_lo=False, open_hi=True)
    corr = None if detector_correlation is None else _range("detector_correlation", detector_correlation, 0.0,
                                                            MAX_DETECTOR_CORRELATION, open_lo=False)
    if isinstance(voxel_size, bool) or not isinstance(voxel_size, Real) or not voxel_size > 0:
        raise ValueError(f"voxel_size must be a positive number, got {voxel_size!r}")
    if tilts[0] < IMAGING["tilt_step"]:
        raise ValueError(f"tilt_range must not go below the tilt step ({IMAGING['tilt_step']:g}), got {tilt_range!r}")
    dev, g, vs = bank.device, generator, float(voxel_size)
    P = patch
    if n == 0:
        return tuple(torch.zeros((0, 1, P, P, P), device=dev) for _ in range(4 if halves else 2))
    geo = _Geometry.get(P, tilts[1], IMAGING["tilt_step"], dev)

    # --- specimen: particles at the drawn volume fraction, vesicles, ice
    frac = _uniform(n, *dens, g, dev)
    goal = frac * P**3  # support voxels wanted
    per = bank.support.mean()
    k = max(1, int(math.ceil(float(dens[1] * P**3 / per * 1.5))) + 4)
    which = torch.randint(len(bank), (n, k), generator=g, device=dev)
    sup = bank.support[which]
    active = (sup.cumsum(1) - sup) < goal[:, None]
    vol, vc, vr, vexists = _vesicles(n, P, shape, vs, max_membranes, g, dev)
    cand = torch.rand((n, k, _REALISTIC_TRIES, 3), generator=g, device=dev) * P - 0.5
    req = bank.equivalent[which]
    # keep particle centres off the vesicle shells (numpy: supports do not overlap them)
    sigma = max(_LEAFLET_SIGMA / vs, 0.7)
    reach = _LEAFLET_HALF_SPACING / vs + 2.2 * sigma
    dist = (cand[:, :, :, None, :] - vc[:, None, None, :, :]).norm(dim=-1)  # (n, k, T, V)
    clear = ((dist - vr[:, None, None, :]).abs() > req[..., None, None] + reach) | ~vexists[:, None, None, :]
    centres, placed = _place(cand, req, active, clear.all(-1))
    bi, ki = placed.nonzero(as_tuple=True)
    rot = random_rotations(n * k, g, dev).reshape(n, k, 3, 3)[bi, ki]
    cubes = bank.rotated(which[bi, ki], rot)
    corner = torch.round(centres[bi, ki] - (bank.D - 1) / 2).to(torch.long)
    _paste(vol, cubes, bi, corner)
    if ice:
        vol = vol + _ice(n, P, vs, g, dev)

    # --- imaging parameters and dose
    defocus = _uniform(n, *dfc, g, dev)
    if dose_log:
        dose_t = torch.exp(_uniform(n, math.log(dose[0]), math.log(dose[1]), g, dev).double())
    else:
        dose_t = _uniform(n, *dose, g, dev).double()
    tmax = _uniform(n, *tilts, g, dev).double()
    step = IMAGING["tilt_step"]
    n_item = 2 * torch.floor(tmax / step + 1e-9) + 1  # tilts of each item
    use = geo.angles.abs()[None, :] <= torch.floor(tmax / step + 1e-9)[:, None] * step + 1e-6  # (n, T)
    dose_tilt = dose_t / n_item  # e-/Å² per tilt
    exposure = (geo.rank[None, :] + 0.5) * dose_tilt[:, None]  # mid-exposure, (n, T)
    cos_t = torch.cos(torch.deg2rad(geo.angles))[None, :]
    if thick is None:
        atten = torch.exp(-(shape[0] * vs) / (IMAGING["mean_free_path"] * cos_t))
    else:
        path = _uniform(n, *thick, g, dev).double()[:, None]  # Å at 0°, (n, 1)
        atten = torch.exp(-path / (IMAGING["mean_free_path"] * cos_t))
    background = (dose_tilt[:, None] * vs**2 * atten).float()  # expected counts per ice pixel, (n, T)

    # --- projection: (n, T, Y, nd) phase images
    sig = _interaction_constant(IMAGING["voltage_kv"])
    scale = sig * IMAGING["contrast_volts"] * vs
    T, nd = geo.n_tilts, geo.nd
    vzx = vol.permute(1, 3, 0, 2).reshape(P * P, n * P)  # (Z*X, n*Y)
    proj = torch.sparse.mm(geo.proj, vzx).reshape(T, nd, n, P).permute(2, 0, 3, 1)
    phase = scale * proj

    # --- image formation: contrast = -2 (CTF * damage) ⊛ phase, on a padded grid
    pad = _ctf_padding(vs, dfc[1], IMAGING["voltage_kv"], IMAGING["cs_mm"])
    fy, fx = _fast_len(P + 2 * pad), _fast_len(nd + 2 * pad)
    transfer = -2.0 * _ctf((fy, fx), vs, defocus)  # (n, fy, fx//2+1)
    k_a = _freq((fy, fx), vs, dev)
    ne = torch.where(k_a > 0, 0.245 * k_a.clamp_min(1e-12) ** -1.665 + 2.81, torch.full_like(k_a, math.inf))
    damage = torch.exp(-exposure.float()[:, :, None, None] / (2 * ne))  # (n, T, fy, fx//2+1)
    spec = torch.fft.rfft2(phase, s=(fy, fx)) * (transfer[:, None] * damage)
    contrast = torch.fft.irfft2(spec, s=(fy, fx))[..., :P, :nd]
    del spec, damage

    # --- shot noise: two independent Poisson halves
    bg = background[:, :, None, None]
    expected = bg * (1.0 + contrast).clamp_min(0.0)
    rho = None if corr is None else _uniform(n, *corr, g, dev)
    even, odd = (_detector(torch.poisson(expected / 2, generator=g), expected / 2, rho) / (bg / 2) - 1.0
                 for _ in range(2))
    channels = [even, odd, contrast] if halves else [(even + odd) / 2, contrast]
    stack = torch.stack(channels)  # (C, n, T, Y, nd)
    del expected, even, odd

    # --- phase flip, R-weighting, back-projection
    fy2, fd = _fast_len(P + 2 * pad), _fast_len(2 * nd)
    filt = _ramlak(fd, IMAGING["radial_cutoff"], dev)[None, None, :]
    filt = torch.sign(_ctf((fy2, fd), vs, defocus)) * filt  # (n, fy2, fd//2+1)
    filtered = torch.fft.irfft2(torch.fft.rfft2(stack, s=(fy2, fd)) * filt[None, :, None], s=(fy2, fd))[..., :P, :nd]
    weight = math.radians(step) / (2.0 * scale)
    filtered = filtered * (use.float() * weight)[None, :, :, None, None]
    c = len(channels)
    q = filtered.permute(2, 4, 0, 1, 3).reshape(T * nd, c * n * P)
    rec = torch.sparse.mm(geo.back, q).reshape(P, P, c, n, P).permute(2, 3, 0, 4, 1)  # (C, n, Z, Y, X)
    rec = rec[:, :, None].contiguous()
    if halves:
        even_r, odd_r, clean = rec[0], rec[1], rec[2]
        noisy = (even_r + odd_r) / 2
        out = (noisy, clean, even_r, odd_r)
    else:
        out = (rec[0], rec[1])
    if normalize:
        out = robust_normalize(*out)
    if augment_:
        out = augment(g, *out)
    return tuple(t.contiguous() for t in out)


def _detector(counts: torch.Tensor, expected: torch.Tensor, rho: torch.Tensor | None) -> torch.Tensor:
    """Counts (n, T, Y, X) whose noise is correlated between neighbouring pixels by rho (n,).

    ``expected + k_y ⊛ k_x ⊛ (counts - expected)`` with each item's 3-tap kernel
    ``(a, 1, a) / sqrt(1 + 2 a²)`` (:func:`~napari_cryoden.simulate.physics.detector_kernel`),
    edges extended by their nearest pixel, as ``physics.correlate_detector_noise``.
    """
    if rho is None:
        return counts
    a = detector_tap(rho.double()).float()[:, None, None, None]
    norm = torch.sqrt(1 + 2 * a * a)
    noise = counts - expected
    for dim in (-1, -2):
        n = noise.shape[dim]
        first, last = noise.narrow(dim, 0, 1), noise.narrow(dim, n - 1, 1)
        before = torch.cat([first, noise.narrow(dim, 0, n - 1)], dim)
        after = torch.cat([noise.narrow(dim, 1, n - 1), last], dim)
        noise = (noise + a * (before + after)) / norm
    return expected + noise


# --------------------------------------------------------------------------------------------
# The stream


class BatchedStream:
    """Endless batches of thesis and realistic pairs made on the training device.

    The counterpart of ``training.data.MixedStream([RealisticStream, ThesisStream],
    [mix, 1 - mix])``: each item of a batch is a realistic pair with probability `mix` and a
    thesis pair otherwise, made by :func:`realistic_batch` and :func:`thesis_batch` from one
    ``torch.Generator`` on `device` seeded with `seed`.

    Parameters
    ----------
    particles : dict of name -> (Z, Y, X) array-like
        Particle maps at `voxel_size` (:func:`~napari_cryoden.simulate.load_particle_maps`),
        copied to `device` once.
    batch_size : int, default=8
    patch : int, default=32
        Cube edge P in voxels (>= 8).
    device : str or torch.device, default="cpu"
    seed : int, default=0
    mix : float, default=0.5
        Probability of a realistic pair, in [0, 1].
    thesis : dict, optional
        ``p_single``, ``max_particles``, ``snr_range``, ``tilt_range`` (default
        :data:`THESIS_DEFAULTS`); other keys are ignored.
    realistic : dict, optional
        ``shape``, ``density``, ``defocus_um``, ``dose_total``, ``tilt_range``,
        ``max_membranes``, ``dose_log``, ``ice_thickness``, ``detector_correlation`` (default
        :data:`REALISTIC_DEFAULTS`); other keys (the recipes'
        ``weight``, ``patches_per_volume``) are ignored.
    voxel_size : float, default=10
        Å per voxel.

    Yields
    ------
    noisy, clean : (batch_size, 1, P, P, P) float32 tensors on `device`

    Raises
    ------
    ValueError
        On a bad parameter (at construction, one line naming it).

    Examples
    --------
    >>> from napari_cryoden.simulate import blob_particle
    >>> import numpy as np
    >>> maps = {"a": blob_particle(np.random.default_rng(0), radius=4)}
    >>> noisy, clean = next(iter(BatchedStream(maps, batch_size=2, patch=16, mix=0.0)))
    >>> tuple(noisy.shape), noisy.dtype
    ((2, 1, 16, 16, 16), torch.float32)
    """

    def __init__(self, particles: Mapping[str, Any], *, batch_size: int = 8, patch: int = 32,
                 device: str | torch.device = "cpu", seed: int = 0, mix: float = 0.5,
                 thesis: Mapping[str, Any] | None = None, realistic: Mapping[str, Any] | None = None,
                 voxel_size: float = 10.0):
        self.batch_size, self.patch = _int("batch_size", batch_size, 1), _int("patch", patch, 8)
        self.seed, self.mix = _int("seed", seed, 0), _fraction("mix", mix)
        th = {**THESIS_DEFAULTS, **{k: v for k, v in (thesis or {}).items() if k in THESIS_DEFAULTS}}
        re_ = {**REALISTIC_DEFAULTS, **{k: v for k, v in (realistic or {}).items() if k in REALISTIC_DEFAULTS}}
        optional = {k: None if re_[k] is None else tuple(re_[k]) for k in ("ice_thickness", "detector_correlation")}
        self.thesis = {"p_single": th["p_single"], "max_particles": th["max_particles"],
                       "snr_range": tuple(th["snr_range"]), "tilt_range": tuple(th["tilt_range"])}
        self.realistic = {"shape": tuple(re_["shape"]), "density": tuple(re_["density"]),
                          "defocus_um": tuple(re_["defocus_um"]), "dose_total": tuple(re_["dose_total"]),
                          "tilt_range": tuple(re_["tilt_range"]), "max_membranes": re_["max_membranes"],
                          "dose_log": bool(re_["dose_log"]), **optional}
        self.voxel_size = voxel_size
        self.device = torch.device(device)
        self.bank = ParticleBank(particles, self.device)
        # check every parameter now, on a batch of none
        g = torch.Generator(device=self.device).manual_seed(0)
        thesis_batch(self.bank, 0, self.patch, g, **self.thesis)
        if self.mix > 0:
            realistic_batch(self.bank, 0, self.patch, g, voxel_size=voxel_size, **self.realistic)

    @classmethod
    def from_recipe(cls, r: Mapping[str, Any], maps: Mapping[str, Any], names: Sequence[str], *,
                    device: str | torch.device = "cpu", seed: int | None = None) -> "BatchedStream":
        """The device stream of a 3D recipe dict (``recipes.RECIPES[name]``).

        Uses ``r["stream"]`` (thesis ranges), ``r["realistic"]`` (its ``weight`` is `mix`;
        absent: thesis pairs only), ``r["patch"]``, ``r["batch_size"]`` and ``r["seed"]``
        (unless `seed` is given), with the maps of `names`.
        """
        re_ = r.get("realistic")
        return cls({k: maps[k] for k in names}, batch_size=r["batch_size"], patch=r["patch"], device=device,
                   seed=r.get("seed", 0) if seed is None else seed, mix=float(re_["weight"]) if re_ else 0.0,
                   thesis=r.get("stream"), realistic=re_)

    def parameters(self) -> dict:
        """A JSON-safe description of the stream, for model cards."""
        return {
            "kind": "batched device stream (napari_cryoden.simulate.batched)",
            "device": str(self.device), "seed": self.seed, "batch_size": self.batch_size, "patch": self.patch,
            "mix_realistic": self.mix, "voxel_size": self.voxel_size, "particles": sorted(self.bank.names),
            "thesis": {k: list(v) if isinstance(v, tuple) else v for k, v in self.thesis.items()},
            "realistic": {**{k: list(v) if isinstance(v, tuple) else v for k, v in self.realistic.items()},
                          **{k: v for k, v in IMAGING.items() if k != "voxel_size"}},
        }

    def batches(self, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches drawn from `generator` (on the stream's device)."""
        b, p, dev = self.batch_size, self.patch, self.device
        while True:
            real = torch.rand(b, generator=generator, device=dev) < self.mix
            n_real = int(real.sum())  # one host sync per batch: the sizes of the two parts
            noisy = torch.empty((b, 1, p, p, p), device=dev)
            clean = torch.empty_like(noisy)
            if n_real:
                x, y = realistic_batch(self.bank, n_real, p, generator, voxel_size=self.voxel_size, **self.realistic)
                noisy[real], clean[real] = x, y
            if n_real < b:
                x, y = thesis_batch(self.bank, b - n_real, p, generator, **self.thesis)
                noisy[~real], clean[~real] = x, y
            yield noisy, clean

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches from a fresh generator seeded with `seed`: every ``iter()`` gives the same run."""
        return self.batches(torch.Generator(device=self.device).manual_seed(self.seed))
