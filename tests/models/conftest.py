"""Tiny models gain nothing from intra-op threads, and on a shared machine spinning OpenMP
threads stall for seconds when the cores are busy: run these tests single-threaded."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
