"""Training patches: one augmentation, one batch stacker, and the sampler of the user's data.

Every training stream augments with :func:`apply_symmetry` and makes batches with
:func:`stack_batch`; each draws its own symmetries, because each keeps what its data needs
(drawn in a fixed order, so seeded streams repeat exactly):

- thesis and realistic tomograms (:mod:`~napari_cryoden.training.data`): flips along Z, Y and X
  (:func:`draw_flips`; they keep the tilt axis along Y) and a random contrast sign;
- the user's tomograms and micrographs (:class:`PatchSampler`): the 8 symmetries of the Y/X
  square (:func:`draw_square`; a 90° turn moves the tilt axis from Y to X, so the network sees
  missing wedges about both);
- simulated micrographs (:class:`~napari_cryoden.training.data.MicrographPairs`): the square's
  symmetries and a random contrast sign.

Each symmetry applied to input and target alike keeps E[target | input] (Lehtinen et al. 2018,
section 2), so it is valid for Noise2Noise as for supervised pairs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .n2v import n2v_manipulate, noise_correlation_mask

if TYPE_CHECKING:
    from .finetune import FineTuneConfig, _Plan

__all__ = ["PatchSampler", "apply_symmetry", "draw_flips", "draw_square", "stack_batch"]


def draw_flips(rng: np.random.Generator, ndim: int) -> tuple[int, ...]:
    """Axes to flip, each with probability 1/2 (one ``rng.random()`` per axis, in axis order)."""
    return tuple(a for a in range(ndim) if rng.random() < 0.5)


def draw_square(rng: np.random.Generator) -> tuple[int, bool]:
    """One of the 8 symmetries of the square: quarter turns ``k`` in 0-3 and a flip, drawn in that order."""
    return int(rng.integers(4)), bool(rng.integers(2))


def apply_symmetry(arrays: Sequence[np.ndarray | None], *, k: int = 0, flip: bool = False,
                   flips: Sequence[int] = (), sign: float = 1.0) -> list[np.ndarray | None]:
    """The same symmetry applied to each array: C-contiguous float32 copies (None stays None).

    Parameters
    ----------
    arrays : sequence of ndarray or None
        Patches of one shape, (Z, Y, X) or (Y, X), any real dtype.
    k : int, default=0
        Quarter turns in the plane of the last two axes (Y, X), from Y towards X.
    flip : bool, default=False
        After the turns, reverse the last axis (X).
    flips : sequence of int, default=()
        Then reverse each of these axes.
    sign : {1.0, -1.0}, default=1.0
        Contrast sign: -1 makes dark particles bright.

    Returns
    -------
    list of ndarray or None
    """
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        a = np.rot90(a, k, axes=(-2, -1)) if k % 4 else a
        if flip:
            a = a[..., ::-1]
        for axis in flips:
            a = np.flip(a, axis)
        if sign != 1.0:
            a = sign * a
        out.append(np.ascontiguousarray(a, dtype=np.float32))
    return out


def stack_batch(samples: Sequence[Sequence[np.ndarray | None]]) -> tuple:
    """Stack samples of k arrays into k tensors of shape (N, 1, ...) (a None field stays None).

    Parameters
    ----------
    samples : sequence of tuples of ndarray
        N samples, each e.g. (input, target) or (input, target, mask), patches of one shape.

    Returns
    -------
    tuple of torch.Tensor or None
        Sharing memory with fresh stacked arrays, dtype of the patches (float32 for every stream).
    """
    return tuple(None if samples[0][i] is None else torch.from_numpy(np.stack([s[i] for s in samples])[:, None])
                 for i in range(len(samples[0])))


class PatchSampler:
    """Patches of the user's data for :func:`~napari_cryoden.training.finetune.fine_tune`.

    Random training patches outside the validation slab (augmented with :func:`draw_square`
    and :func:`apply_symmetry`; for Noise2Noise the halves swapped at random; for Noise2Void
    blind spots by :func:`~napari_cryoden.training.n2v.n2v_manipulate`), and fixed, seeded
    validation patches inside it. Patches are read from the (possibly memory-mapped) arrays
    one at a time and normalised with the plan's median and IQR / 1.349; NaN/Inf become 0.
    """

    def __init__(self, source, target, config: FineTuneConfig, plan: _Plan):
        self.source, self.target, self.c, self.plan = source, target, config, plan
        self.p = int(plan.patch)
        self.ndim = len(plan.shape)
        self.offsets = None
        if config.mode == "n2v" and config.n2v_blind == 0 and config.n2v_mask == "auto":
            self.offsets = noise_correlation_mask(source)

    def _read(self, arr, corner) -> np.ndarray:
        sl = tuple(slice(int(o), int(o) + self.p) for o in corner)
        block = np.array(arr[sl], dtype=np.float32, copy=True)
        block -= np.float32(self.plan.center)
        block /= np.float32(self.plan.scale)
        block[~np.isfinite(block)] = 0.0  # NaN/Inf -> the median, as inference does
        return block

    def _corner(self, rng, z_ranges) -> list[int]:
        """A patch corner whose start along the validation axis is in `z_ranges` (inclusive)."""
        lengths = [hi - lo + 1 for lo, hi in z_ranges]
        k = int(rng.integers(sum(lengths)))
        for (lo, _), n in zip(z_ranges, lengths):
            if k < n:
                z = lo + k
                break
            k -= n
        return [z if a == self.plan.axis else int(rng.integers(n - self.p + 1))
                for a, n in enumerate(self.plan.shape)]

    def _sample(self, rng, z_ranges, *, train: bool):
        """One (input, target, mask or None) triple of arrays."""
        corner = self._corner(rng, z_ranges)
        mode = self.c.mode
        src = self._read(self.source, corner)
        tgt = self._read(self.target, corner) if self.target is not None else None
        if train and mode == "n2n" and rng.random() < 0.5:
            src, tgt = tgt, src
        if train and self.c.augment:
            k, flip = draw_square(rng)
            src, tgt = apply_symmetry((src, tgt), k=k, flip=flip)
        if mode == "n2v":
            masked, mask = n2v_manipulate(src, rng, fraction=self.c.n2v_fraction, radius=self.c.n2v_radius,
                                          blind=self.c.n2v_blind, offsets=self.offsets)
            return masked, src, mask
        return src, tgt, None

    def batch(self, rng: np.random.Generator) -> tuple:
        return stack_batch([self._sample(rng, self.plan.starts, train=True) for _ in range(int(self.c.batch))])

    def validation(self) -> list[tuple]:
        rng = np.random.default_rng([int(self.c.seed), 7919])  # fixed, apart from the training stream
        v0, v1 = self.plan.val_slab
        samples = [self._sample(rng, [(v0, v1 - self.p)], train=False) for _ in range(int(self.c.val_patches))]
        b = int(self.c.batch)
        return [stack_batch(samples[i : i + b]) for i in range(0, len(samples), b)]
