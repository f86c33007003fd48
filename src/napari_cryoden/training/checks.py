"""Checks of training settings, one home for every config of the package.

:class:`~.loop.LoopConfig`, :class:`~.supervised.TrainConfig` and
:class:`~.finetune.FineTuneConfig` validate themselves when built with these, so that a bad
setting gives the same one-line :class:`ValueError`, naming the field, wherever it comes from
(the CLI, a widget, a recipe or a script). Torch-free.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["check_betas", "check_choice", "check_number"]


def check_number(name: str, value: Any, *, minimum: float | None = None, integer: bool = False,
                 positive: bool = False, maximum: float | None = None) -> None:
    """Raise unless `value` is a finite real number (not a bool) within the bounds.

    Parameters
    ----------
    name : str
        The setting, for the message.
    value : object
        Python or numpy int or float; with `integer`, a whole value (``3.0`` passes).
    minimum, maximum : float, optional
        Inclusive bounds.
    integer, positive : bool
        Require a whole number; require ``value > 0``.

    Raises
    ------
    ValueError
        One line: ``"<name> must be an integer > 0, got -1"`` and the like.
    """
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(float(value))
    if ok and integer:
        ok = float(value) == int(value)
    if ok and positive:
        ok = value > 0
    if ok and minimum is not None:
        ok = value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        what = "an integer" if integer else "a number"
        cond = " > 0" if positive else (f" >= {minimum}" if minimum is not None else "")
        cond += f" and <= {maximum}" if maximum is not None else ""
        raise ValueError(f"{name} must be {what}{cond}, got {value!r}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    """Raise ValueError (one line) unless `value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_betas(betas: Any) -> tuple[float, float] | None:
    """Adam's ``(beta1, beta2)`` as a tuple of two floats in [0, 1); None stays None.

    Raises
    ------
    ValueError
        For anything else (one line).
    """
    if betas is None:
        return None
    try:
        ok = len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return tuple(float(b) for b in betas)
