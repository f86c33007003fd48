"""Reading ahead: the next batch of tiles is read while the current one runs through the network.

On the tile-by-tile path (volumes too large to be resident on the GPU), a :class:`Prefetcher`
reads and normalises the next batch of tiles on a background thread, and on CUDA copies it to
the device through pinned host memory on a separate CUDA stream, so neither the read nor the
copy waits for the network, nor the network for them. On the CPU the read would compete with
the network's threads for the same cores, so it stays in line there (:data:`PREFETCH_DEVICES`).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Sequence

import numpy as np
import torch

from .tiling import Tile

__all__ = ["PREFETCH_DEVICES", "Prefetcher"]

#: Device types on which the tile-by-tile path reads the next batch of tiles ahead.
PREFETCH_DEVICES = ("cuda",)


class Prefetcher:
    """Reads batches of tiles ahead on one background thread.

    Parameters
    ----------
    load : callable(list of Tile) -> ndarray of float32
        Reads and normalises a batch of tiles on the host: (B, 1, Z, Y, X) (or (B, 1, Y, X) for
        2D), as the network takes it. Called on the background thread.
    dev : torch.device
        Where the batches go; on CUDA through pinned memory on a separate stream.
    """

    def __init__(self, load: Callable[[list[Tile]], np.ndarray], dev: torch.device):
        self.load, self.dev = load, dev
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryoden-tile-reader")
        self._ahead: deque[tuple[tuple[Tile, ...], Future]] = deque()
        self._stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None

    def _read(self, tiles: list[Tile]):
        x = torch.from_numpy(self.load(tiles))
        if self._stream is None:
            return x, None
        pinned = x.pin_memory()
        with torch.cuda.stream(self._stream):
            xt = pinned.to(self.dev, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        return xt, done

    def ahead(self, tiles: Sequence[Tile]) -> None:
        """Start reading `tiles`, unless they are being read already (at most two batches are
        kept ahead; the oldest is dropped)."""
        tiles = list(tiles)
        if not tiles or any(key == tuple(tiles) for key, _ in self._ahead):
            return
        while len(self._ahead) >= 2:
            self._ahead.popleft()[1].cancel()
        self._ahead.append((tuple(tiles), self._pool.submit(self._read, tiles)))

    def take(self, tiles: Sequence[Tile]) -> torch.Tensor | None:
        """The batch of `tiles` on the device if it was read ahead (waiting for it), else None.
        Batches read ahead for other tiles (after an out-of-memory split) are dropped.

        Raises
        ------
        Exception
            What reading the batch raised (e.g. an OSError for a truncated input).
        """
        key = tuple(tiles)
        while self._ahead:
            ahead, future = self._ahead.popleft()
            if ahead != key:
                future.cancel()
                continue
            xt, done = future.result()
            if done is not None:  # the network runs on the current stream: wait for the copy there
                current = torch.cuda.current_stream(self.dev)
                current.wait_event(done)
                xt.record_stream(current)
            return xt
        return None

    def close(self) -> None:
        """Drop what was read ahead and stop the thread."""
        while self._ahead:
            self._ahead.popleft()[1].cancel()
        self._pool.shutdown(wait=True)
