"""Config rules shared by sections, and rules that need a fact known only at run time.

Section ``validate()`` methods check what the YAML alone decides (with
:func:`check_relative_path` where several sections need the same rule); the other helpers
are called once the grid (first file opened) or the launcher's world size is known, still
before any model is built. Each raises :class:`ConfigError` naming the key and what would
be allowed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePath

from hpcdiff.config.loader import ConfigError


def check_relative_path(value: str, key: str) -> None:
    """ConfigError unless ``value`` names a directory below the one it is joined to: a
    non-empty relative path without ``..`` components (nothing is written outside it).

    >>> check_relative_path("exp/a", "run.name")
    >>> check_relative_path("../a", "run.name")
    Traceback (most recent call last):
    ...
    hpcdiff.config.loader.ConfigError: config key 'run.name': '../a' has a '..' component; \
allowed: a relative path without '..', e.g. 'exp1' or 'group/exp1'
    """
    path = PurePath(value)
    parts = [p for p in path.parts if p != "."]
    problem = (
        "is absolute" if path.is_absolute()
        else "has a '..' component" if ".." in parts
        else "names no directory" if not parts
        else "contains a NUL character" if "\0" in value
        else None
    )  # fmt: skip
    if problem:
        raise ConfigError(
            f"config key '{key}': {value!r} {problem}; allowed: a relative path without '..', "
            "e.g. 'exp1' or 'group/exp1'"
        )


def check_patch_fits(
    patch_shape: Sequence[int], grid_shape: Sequence[int], key: str = "data.patch_shape"
) -> None:
    """ConfigError unless a (rows, cols) patch fits inside the (H, W) data grid.

    >>> check_patch_fits((64, 64), (128, 96))
    >>> check_patch_fits((64, 128), (128, 96))
    Traceback (most recent call last):
    ...
    hpcdiff.config.loader.ConfigError: config key 'data.patch_shape': [64, 128] is larger than \
the data grid [128, 96]; allowed: rows <= 128 and cols <= 96
    """
    rows, cols = int(grid_shape[0]), int(grid_shape[1])
    if int(patch_shape[0]) > rows or int(patch_shape[1]) > cols:
        raise ConfigError(
            f"config key '{key}': {[int(p) for p in patch_shape]} is larger than the data grid "
            f"{[rows, cols]}; allowed: rows <= {rows} and cols <= {cols}"
        )


def check_patch_grid(
    patch_shape: Sequence[int], overlap_pix: int, boundary_pix: int, prefix: str = "sample"
) -> None:
    """ConfigError unless multi-diffusion's patch grid exists: ``overlap_pix, boundary_pix
    >= 0`` and each patch side > ``overlap_pix + 2 * boundary_pix`` (GridPatching2D's rule).

    >>> check_patch_grid((32, 32), overlap_pix=8, boundary_pix=4)
    """
    for name, value in (("overlap_pix", overlap_pix), ("boundary_pix", boundary_pix)):
        if value < 0:
            raise ConfigError(f"config key '{prefix}.{name}' must be >= 0, got {value}")
    side = min(int(p) for p in patch_shape)
    if side <= overlap_pix + 2 * boundary_pix:
        raise ConfigError(
            f"config key '{prefix}.overlap_pix': overlap_pix + 2 * boundary_pix = "
            f"{overlap_pix} + 2 * {boundary_pix} must be smaller than the patch side {side} "
            f"(data.patch_shape {[int(p) for p in patch_shape]})"
        )


def check_domain_grid(
    domain_grid: Sequence[int],
    world: int,
    grid_shape: Sequence[int] | None = None,
    key: str = "sample.domain_grid",
) -> int:
    """Ranks per domain group, py x px; ConfigError unless they divide the ``world`` ranks
    and (given ``grid_shape``) each tile gets at least one row and column of the (H, W) grid.

    >>> check_domain_grid((2, 2), 8, (128, 128))
    4
    >>> check_domain_grid((2, 2), 6, (128, 128))
    Traceback (most recent call last):
    ...
    hpcdiff.config.loader.ConfigError: config key 'sample.domain_grid': [2, 2] = 4 ranks per \
domain group does not divide the world size 6; allowed: py * px in [1, 2, 3, 6]
    """
    py, px = int(domain_grid[0]), int(domain_grid[1])
    if py < 1 or px < 1:
        raise ConfigError(f"config key '{key}' must be [py, px] >= 1, got {[py, px]}")
    if world % (py * px):
        divisors = [d for d in range(1, world + 1) if world % d == 0]
        raise ConfigError(
            f"config key '{key}': {[py, px]} = {py * px} ranks per domain group does not "
            f"divide the world size {world}; allowed: py * px in {divisors}"
        )
    if grid_shape is not None:
        rows, cols = int(grid_shape[0]), int(grid_shape[1])
        if py > rows or px > cols:
            raise ConfigError(
                f"config key '{key}': {[py, px]} tiles do not fit the grid {[rows, cols]}; "
                f"allowed: py <= {rows} and px <= {cols}"
            )
    return py * px
