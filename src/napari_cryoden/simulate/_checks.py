"""Parameter checks shared by the tomogram and micrograph simulators.

Each raises ``ValueError`` with a one-line message that names the parameter.
"""

from __future__ import annotations

import math
from numbers import Integral, Real


def positive(name: str, value: float) -> float:
    """`value` as a float; ValueError (naming `name`) unless a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def non_negative(name: str, value: float) -> float:
    """`value` as a float; ValueError (naming `name`) unless a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def optional_positive(name: str, value: float | None) -> float | None:
    """None, or :func:`positive`."""
    return None if value is None else positive(name, value)


def check_integer(name: str, value: int) -> None:
    """ValueError (naming `name`) unless `value` is an integer >= 0 (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """ValueError (naming `name`) unless ``0 <= value < 1``."""
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_imaging(
    voltage_kv: float, dose_total: float, contrast_volts: float, defocus_um: float, cs_mm: float
) -> tuple[float, float, float, float, float]:
    """The imaging parameters both simulators share, checked and as floats, in this order."""
    return (positive("voltage_kv", voltage_kv), positive("dose_total", dose_total),
            positive("contrast_volts", contrast_volts), non_negative("defocus_um", defocus_um),
            non_negative("cs_mm", cs_mm))


def check_shape(shape, ndim: int, *, minimum: int) -> tuple[int, ...]:
    """`shape` as a tuple of `ndim` ints, each at least `minimum`; ValueError otherwise."""
    try:
        out = tuple(int(s) for s in shape)
        ok = len(out) == ndim and all(o == s for o, s in zip(out, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok or min(out) < minimum:
        raise ValueError(f"shape must be {ndim} integers >= {minimum}, got {shape!r}")
    return out


def density_target(density: float | int, what: str) -> tuple[str, float]:
    """``("count", n)`` for an integer `density`, ``("fraction", f)`` for a float in [0, 1).

    `what` names the fraction in the error message (``"volume"`` or ``"area"``).
    """
    if isinstance(density, bool) or not isinstance(density, Real):
        raise ValueError(f"density must be a {what} fraction in [0, 1) or a particle count, got {density!r}")
    if isinstance(density, Integral):
        if density < 0:
            raise ValueError(f"density (a particle count) must be >= 0, got {density}")
        return "count", float(density)
    if not 0 <= density < 1:
        raise ValueError(f"density must be a {what} fraction in [0, 1) or an integer count, got {density}")
    return "fraction", float(density)
