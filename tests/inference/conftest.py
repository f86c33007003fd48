"""Fixtures shared by the inference tests."""

import pytest
import torch


class Fussy(torch.nn.Module):
    """Wraps a network; raises CUDA's out-of-memory error for inputs above `limit` voxels."""

    stride = 8

    def __init__(self, net, limit):
        super().__init__()
        self.net, self.limit, self.sizes = net, limit, []

    def forward(self, x):
        self.sizes.append(x.numel())
        if x.numel() > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.numel() * 4} bytes")
        return self.net(x)


@pytest.fixture
def fussy_net():
    """:class:`Fussy`: wrap a network so that it runs out of (CUDA) memory above a size."""
    return Fussy
