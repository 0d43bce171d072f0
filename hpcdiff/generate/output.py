"""Write generated ensembles: a CF-compliant NetCDF file and quick-look PNGs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hpcdiff.data.cf import EPOCH


def write_netcdf(
    path: Path, ens: np.ndarray, truth: np.ndarray, times: list[int], variables: list[str],
    source,
) -> Path:  # fmt: skip
    """``ens`` (E, T, C, H, W) and ``truth`` (T, C, H, W) to ``path`` atomically.

    Each variable ``v`` is written as ``v`` (member, time, y, x) and ``v_truth`` (time, y, x);
    coordinates and time come from the target files (``source``: a ``GridSource``).
    """
    import netCDF4

    tmp = path.with_name(f".{path.name}.tmp")
    E, T, _, H, W = ens.shape
    try:
        with netCDF4.Dataset(tmp, "w") as nc:
            nc.Conventions = "CF-1.8"
            nc.title = "hpcdiff generated ensemble"
            for name, size in (("member", E), ("time", T), ("y", H), ("x", W)):
                nc.createDimension(name, size)
            t = nc.createVariable("time", "f8", ("time",))
            t.units, t.calendar, t.standard_name = EPOCH, source.calendar, "time"
            t[:] = source.times[np.asarray(times)]
            for axis, coord in (("y", source.y_coord), ("x", source.x_coord)):
                var = nc.createVariable(axis, "f8", (axis,))
                var.axis = axis.upper()
                var[:] = np.arange(H if axis == "y" else W) if coord is None else coord
            nc.createVariable("member", "i4", ("member",))[:] = np.arange(E)
            for c, name in enumerate(variables):
                v = nc.createVariable(name, "f4", ("member", "time", "y", "x"), zlib=True,
                                      chunksizes=(1, 1, min(H, 256), min(W, 256)))  # fmt: skip
                v.long_name = f"generated {name}"
                v[:] = ens[:, :, c]
                tv = nc.createVariable(f"{name}_truth", "f4", ("time", "y", "x"), zlib=True,
                                       fill_value=np.float32(np.nan))  # fmt: skip
                tv.long_name = f"target {name}"
                tv[:] = truth[:, c]
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind
        raise
    return path


def plot_samples(out_dir: Path, ens: np.ndarray, truth: np.ndarray, variables: list[str]):
    """One PNG per variable: truth, two members, ensemble mean and std of the first time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for c, name in enumerate(variables):
        panels = [("truth", truth[0, c])]
        panels += [(f"member {e}", ens[e, 0, c]) for e in range(min(2, ens.shape[0]))]
        panels += [("ensemble mean", ens[:, 0, c].mean(0)), ("ensemble std", ens[:, 0, c].std(0))]
        lo, hi = np.nanpercentile(truth[0, c], [1, 99])
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2))
        for ax, (title, field) in zip(axes, panels):
            if title == "ensemble std":
                im = ax.imshow(field, origin="lower", cmap="magma")
            else:
                im = ax.imshow(field, origin="lower", cmap="viridis", vmin=lo, vmax=hi)
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
