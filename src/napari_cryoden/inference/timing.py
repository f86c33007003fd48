"""Where the time of a denoising run goes: seconds per stage, for benchmarks and tuning.

A :class:`Stages` adds the wall-clock time of each stage of a run (reading, statistics, host to
device copies, network, device to host copies, stitching, writing) to a dict the caller owns.
Without a dict it measures nothing and costs nothing; with one it synchronises the CUDA device
around every stage, so that asynchronous GPU work is charged to the stage that queued it (this
slows a GPU run a little, so only benchmarks pass a dict).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["STAGES", "Stages"]

#: The stages in the order of a run, as the keys of the dict.
STAGES = ("read", "stats", "h2d", "network", "d2h", "stitch", "write")


class Stages:
    """Accumulates seconds per stage into `sink` (a dict; None measures nothing).

    Parameters
    ----------
    sink : dict of str to float, optional
        Receives ``sink[stage] += seconds``; created keys start at 0.
    device : torch.device, optional
        A CUDA device is synchronised before and after each stage when `sink` is given.
    """

    def __init__(self, sink: dict | None = None, device=None):
        self.sink = sink
        self.device = device

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    def _sync(self) -> None:
        if self.device is not None and getattr(self.device, "type", None) == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the body as `stage`."""
        if self.sink is None:
            yield
            return
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.sink[stage] = self.sink.get(stage, 0.0) + time.perf_counter() - start
