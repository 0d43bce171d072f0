"""Names the docstring examples of ``hpcdiff`` share (pytest runs them with --doctest-modules)."""

import pytest
import torch

from hpcdiff.core import Module


class Net(Module):
    """The examples' ``DiffusionModel``: a 1x1 convolution of x over ``channels`` channels;
    t and the condition are ignored."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(channels, channels, 1)

    def forward(self, x, t, condition=None):
        return self.net(x)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace["Net"] = Net
