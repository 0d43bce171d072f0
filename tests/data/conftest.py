"""Fixtures: the small NetCDF datasets of :mod:`ncfiles`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the test modules import the `ncfiles` helpers

from ncfiles import write_dataset


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> dict:
    """The shared test dataset (read-only: tests that break files write their own)."""
    return write_dataset(tmp_path_factory.mktemp("nc") / "ds")


@pytest.fixture()
def make_dataset(tmp_path):
    """A private copy of the test dataset, for tests that modify files."""
    return lambda: write_dataset(tmp_path / "ds")
