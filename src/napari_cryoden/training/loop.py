"""The training loop: one generator that every way of training drives.

:func:`iter_train` runs generator updates (a callable that does one, e.g.
:class:`~napari_cryoden.training.supervised.SupervisedStep` bound to a batch source) until the
planned steps are done, the caller cancels, or a wall-clock budget is spent. It owns what all
training shares: the learning-rate schedule (a half-cosine ramp-down, Lehtinen et al. 2018,
appendix A.1), the step count of a resumed run, the means of the losses between reports, the
cadence of validation, checkpoints and previews, and the one-line errors for a diverged loss
or an exhausted memory. It yields typed events and does nothing else: the caller keeps the best
weights, writes checkpoints, draws previews or prints, each when its event arrives (the loop
waits meanwhile, so a checkpoint written on a :class:`Checkpoint` event holds the state of that
step exactly).

Drivers: :func:`~napari_cryoden.training.supervised.train` (the 3D recipes),
:func:`~napari_cryoden.training.finetune.iter_fine_tune` (fine-tuning on the user's data, the
``cryoden train`` command and the Train widget) and
:func:`~napari_cryoden.recipes.train_micrograph_n2n` (the 2D recipe).

Order of the events of one step: :class:`Step`; then, on a validation step,
:class:`Validation`; then, on a report step, :class:`Losses` (carrying the validation value, if
any); then :class:`Checkpoint`; then :class:`Preview`. The last event is always :class:`Done`;
before it, a run stopped early (cancel or budget) after steps that no checkpoint holds yet gets
one more :class:`Checkpoint`.
"""

from __future__ import annotations

import math
import time
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Sequence

import torch

from ..device import is_out_of_memory
from .checks import check_number

__all__ = ["Checkpoint", "Done", "LoopConfig", "Losses", "Preview", "Step", "TrainingEvent", "Validation",
           "drive", "iter_train", "rampdown_factor"]

#: Why a run ended (:attr:`Done.reason`).
REASONS = ("steps", "cancelled", "budget")


def rampdown_factor(steps: int, fraction: float) -> Callable[[int], float]:
    """Learning-rate multiplier after `done` of `steps` updates: 1, then a half cosine to 0.

    The ramp-down covers the last ``round(fraction * steps)`` updates, as in Noise2Noise
    (Lehtinen et al. 2018, appendix A.1). The rate of an update depends only on its number and
    `steps`, so a resumed run follows the schedule of an uninterrupted one.

    Parameters
    ----------
    steps : int
        Updates planned.
    fraction : float
        In [0, 1]; 0 keeps the rate constant.

    Returns
    -------
    callable(done: int) -> float

    Raises
    ------
    ValueError
        If `fraction` is outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rampdown must be a fraction in [0, 1], got {fraction}")
    ramp = int(round(fraction * steps))

    def factor(done: int) -> float:
        into = done - (steps - ramp)
        return 1.0 if ramp == 0 or into <= 0 else 0.5 * (1.0 + math.cos(math.pi * min(into / ramp, 1.0)))

    return factor


@dataclass(frozen=True)
class LoopConfig:
    """When :func:`iter_train` steps, reports, validates, checkpoints, previews and stops.

    Validated when built (:class:`ValueError`, one line); frozen.

    Attributes
    ----------
    steps : int
        Generator updates planned in all (a resumed run counts those done before).
    rampdown : float, default=0.0
        Fraction of `steps`, at the end, over which every learning rate falls to 0 along a half
        cosine (:func:`rampdown_factor`).
    log_every : int, default=0
        Steps between :class:`Losses` reports (0: only on validation steps and the last step).
    val_every : int, default=0
        Steps between validations (0: never); the last step is always validated when there is a
        validation callable.
    checkpoint_every : int, default=0
        Steps between :class:`Checkpoint` events, and one after the last step (0: none on a
        cadence). A run stopped early after steps no checkpoint holds gets one in any case.
    preview_every : int, default=0
        Steps between :class:`Preview` events (0: never).
    seconds : float, optional
        Wall-clock budget of this session in seconds: no new step starts after it is spent
        (``Done.reason == "budget"``). None: no budget.
    """

    steps: int
    rampdown: float = 0.0
    log_every: int = 0
    val_every: int = 0
    checkpoint_every: int = 0
    preview_every: int = 0
    seconds: float | None = None

    def __post_init__(self) -> None:
        check_number("steps", self.steps, integer=True, positive=True)
        for name in ("log_every", "val_every", "checkpoint_every", "preview_every"):
            check_number(name, getattr(self, name), integer=True, minimum=0)
        for name in ("steps", "log_every", "val_every", "checkpoint_every", "preview_every"):
            object.__setattr__(self, name, int(getattr(self, name)))
        check_number("rampdown", self.rampdown, minimum=0, maximum=1)
        if self.seconds is not None:
            check_number("seconds", self.seconds, positive=True)


@dataclass(frozen=True)
class Step:
    """One generator update done: `step` (1-based, counting a resumed run's earlier steps) and its losses."""

    step: int
    losses: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Validation:
    """The validation callable's value after `step` (a float, or whatever the callable returns)."""

    step: int
    value: Any


@dataclass(frozen=True)
class Losses:
    """A report: the mean of each loss over the `count` steps since the previous report.

    `seconds` is the training time so far (earlier sessions of a resumed run included), `lr`
    the first optimizer's learning rate of the last step, `validation` the value of this step's
    :class:`Validation` (None on other steps).
    """

    step: int
    steps: int
    seconds: float
    means: dict
    count: int
    lr: float
    validation: Any = None


@dataclass(frozen=True)
class Checkpoint:
    """Time to save the state of `step` (the caller writes it while the loop waits)."""

    step: int
    seconds: float


@dataclass(frozen=True)
class Preview:
    """Time to show the network's output after `step`."""

    step: int


@dataclass(frozen=True)
class Done:
    """The run ended after `step` steps: ``reason`` is "steps", "cancelled" or "budget"."""

    step: int
    seconds: float
    reason: str


TrainingEvent = Step | Validation | Losses | Checkpoint | Preview | Done


def iter_train(
    update: Callable[[], dict],
    config: LoopConfig,
    *,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    start: int = 0,
    seconds_before: float = 0.0,
    validate: Callable[[], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
    describe: Callable[[], str] = lambda: "",
) -> Iterator[TrainingEvent]:
    """Run `update` until `config.steps` updates are done; yield what happens.

    Parameters
    ----------
    update : callable() -> dict of float
        One generator update (with the discriminator or critic updates before it); returns its
        losses. A :class:`ValueError` (a non-finite loss) stops the run with ``training stopped
        at step N: ...``; an out-of-memory error becomes a one-line :class:`MemoryError`.
    config : LoopConfig
    optimizers : sequence of torch.optim.Optimizer
        Their learning rates, as found at the start, are scaled by
        ``rampdown_factor(steps, rampdown)(done)`` before every update (``done`` = updates done
        before it, so a resumed run continues the schedule).
    start : int, default=0
        Updates already done (resuming); must be at most ``config.steps``.
    seconds_before : float, default=0.0
        Training time of earlier sessions, added to the reported seconds.
    validate : callable() -> Any, optional
        Called on validation steps (see :class:`LoopConfig`); its value is yielded.
    cancel : callable() -> bool, optional
        Polled before every update; True ends the run (``Done.reason == "cancelled"``).
    describe : callable() -> str, optional
        Words for the out-of-memory message, e.g. ``"batch 8, patch 64"``.

    Yields
    ------
    Step, Validation, Losses, Checkpoint, Preview, Done
        In the order given in the module notes.

    Raises
    ------
    ValueError
        If `start` is outside 0 to ``config.steps``, or training diverged.
    MemoryError
        If an update runs out of memory (CPU or GPU).
    """
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= config.steps:
        raise ValueError(f"the steps already done must be an integer from 0 to {config.steps}, got {start!r}")
    c = config
    rate = rampdown_factor(c.steps, float(c.rampdown))
    base_lr = [[group["lr"] for group in opt.param_groups] for opt in optimizers]
    t0 = time.perf_counter()

    def elapsed() -> float:
        return seconds_before + time.perf_counter() - t0

    step, reason = start, "steps"
    sums: dict[str, float] = {}
    count = 0
    last_checkpoint = start
    while step < c.steps:
        if cancel is not None and cancel():
            reason = "cancelled"
            break
        if c.seconds is not None and time.perf_counter() - t0 >= c.seconds:
            reason = "budget"
            break
        for opt, lrs in zip(optimizers, base_lr):
            for group, lr0 in zip(opt.param_groups, lrs):
                group["lr"] = lr0 * rate(step)
        try:
            losses = update()
        except ValueError as exc:
            raise ValueError(f"training stopped at step {step + 1}: {exc}") from None
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            what = describe()
            raise MemoryError(f"out of memory at training step {step + 1}" + (f" ({what})" if what else "")
                              + "; lower batch or patch") from None
        step += 1
        count += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v
        yield Step(step, dict(losses))
        last = step == c.steps
        value = None
        is_val = validate is not None and ((c.val_every and step % c.val_every == 0) or last)
        if is_val:
            value = validate()
            yield Validation(step, value)
        if is_val or last or (c.log_every and step % c.log_every == 0):
            lr = optimizers[0].param_groups[0]["lr"] if optimizers else math.nan
            yield Losses(step, c.steps, elapsed(), {k: v / count for k, v in sums.items()}, count, lr, value)
            sums, count = {}, 0
        if c.checkpoint_every and (step % c.checkpoint_every == 0 or last):
            last_checkpoint = step
            yield Checkpoint(step, elapsed())
        if c.preview_every and step % c.preview_every == 0:
            yield Preview(step)
    if reason != "steps" and step > last_checkpoint:
        yield Checkpoint(step, elapsed())
    yield Done(step, elapsed(), reason)


def drive(events: Generator[Any, None, Any], handle: Callable[[Any], None]) -> Any:
    """Run the generator `events` to its end in this thread, passing each event to `handle`.

    For callers that want callbacks rather than a generator (``finetune.fine_tune``,
    ``cryoden train``). The generator is closed on the way out, so a ``finally`` in it runs
    when `handle` raises (an interrupt, say).

    Returns
    -------
    object
        The generator's return value (e.g. the ``FineTuneResult`` of ``iter_fine_tune``).
    """
    with closing(events):
        while True:
            try:
                event = next(events)
            except StopIteration as stop:
                return stop.value
            handle(event)
