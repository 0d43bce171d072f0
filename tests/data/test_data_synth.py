"""`hpcdiff data synth`: CF metadata, chunking, coarse = block mean, real land mask, seeded."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest
import torch

from hpcdiff.cli import main
from hpcdiff.config import from_dict, read_yaml
from hpcdiff.data.config import DataConfig
from hpcdiff.data.fields import radial_spectrum
from hpcdiff.data.stream import DataStream
from hpcdiff.data.synth import SynthConfig, _fields, block_mean

ARGS = ["--shape", "32", "48", "--times", "6", "--files", "2", "--coarse-factor", "4"]
ARGS += ["--chunk", "16", "--variables", "t2m", "u10", "v10", "tp", "sst"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    assert main(["data", "synth", "--out", str(out), *ARGS]) == 0
    return out


def read(path: Path, var: str) -> np.ndarray:
    with netCDF4.Dataset(path) as ds:
        return np.ma.filled(ds[var][:].astype(np.float64), np.nan)


def test_files_and_cf_metadata(synth):
    names = sorted(p.name for p in synth.iterdir())
    assert names == [
        "coarse_000.nc", "coarse_001.nc", "data.yaml", "fine_000.nc", "fine_001.nc",
        "static.nc", "stats.json",
    ]  # fmt: skip
    with netCDF4.Dataset(synth / "fine_001.nc") as ds:
        assert ds.Conventions == "CF-1.8" and ds.dimensions["time"].isunlimited()
        t = ds["time"]
        assert (t.axis, t.standard_name, t.calendar) == ("T", "time", "proleptic_gregorian")
        assert t.units == "hours since 2020-06-01 00:00:00" and list(t[:]) == [3.0, 4.0, 5.0]
        assert (ds["lat"].axis, ds["lat"].units, ds["lon"].standard_name) == (
            "Y", "degrees_north", "longitude",
        )  # fmt: skip
        for var, std, units in [
            ("t2m", "air_temperature", "K"),
            ("tp", "lwe_precipitation_rate", "mm h-1"),
        ]:
            v = ds[var]
            assert (v.standard_name, v.units, v.dimensions) == (std, units, ("time", "lat", "lon"))
            assert v.chunking() == [1, 16, 16] and v._FillValue == np.float32(1e20)
            assert v.filters()["zlib"] and v.filters()["shuffle"]


def test_coarse_is_block_mean_and_fields_are_physical(synth):
    for var in ("t2m", "u10", "tp", "sst"):
        fine, coarse = read(synth / "fine_000.nc", var), read(synth / "coarse_000.nc", var)
        assert coarse.shape == (3, 8, 12)
        want = np.stack([block_mean(f, 4) for f in fine])
        np.testing.assert_allclose(coarse, want, rtol=3e-3, atol=2e-3)  # 3 significant digits
    lsm, orog = read(synth / "static.nc", "lsm"), read(synth / "static.nc", "orography")
    sst = read(synth / "fine_000.nc", "sst")
    assert np.array_equal(np.isnan(sst[0]), lsm == 1)  # missing over land only
    assert (orog[lsm == 0] == 0).all() and (orog[lsm == 1] > 0).all()
    tp = read(synth / "fine_000.nc", "tp")
    assert tp.min() == 0 and tp.max() > 0
    t2m = read(synth / "fine_000.nc", "t2m")
    assert 250 < np.nanmin(t2m) and np.nanmax(t2m) < 310


def test_land_sea_mask_is_the_real_one(synth):
    from global_land_mask import globe

    with netCDF4.Dataset(synth / "static.nc") as ds:
        lat, lon, lsm = ds["lat"][:], ds["lon"][:], ds["lsm"][:]
    want = globe.is_land(*np.meshgrid(lat, lon, indexing="ij"))
    assert np.array_equal(lsm == 1, want) and 0.1 < want.mean() < 0.9  # coasts of Denmark


def test_same_seed_same_data_other_seed_other_data(synth, tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path / "a"), *ARGS, "--no-stats"]) == 0
    assert (
        main(["data", "synth", "--out", str(tmp_path / "b"), *ARGS, "--seed", "1", "--no-stats"])
        == 0
    )
    for var in ("t2m", "u10", "tp"):
        same = read(tmp_path / "a" / "fine_001.nc", var)
        np.testing.assert_array_equal(same, read(synth / "fine_001.nc", var))
        assert not np.array_equal(same, read(tmp_path / "b" / "fine_001.nc", var))


def test_wind_spectrum_follows_k_minus_five_thirds():
    psi = _fields(SynthConfig(shape=(256, 256)))["psi"]
    rows = slice(0, 256)
    u, v = -psi.block(rows, 256, 0.0, deriv="y"), psi.block(rows, 256, 0.0, deriv="x")
    k, eu = radial_spectrum(u)
    _, ev = radial_spectrum(v)
    sel = (k > 4 / 256) & (k < 0.15)
    slope = np.polyfit(np.log(k[sel]), np.log((eu + ev)[sel]), 1)[0]
    assert -2.0 < slope < -1.3


def test_written_config_streams(synth, monkeypatch):
    monkeypatch.chdir(synth.parent)
    raw = read_yaml(synth / "data.yaml")
    cfg = from_dict(DataConfig, raw["data"], "data")
    cfg.batch_size, cfg.patch_shape = 2, (16, 16)
    with DataStream(cfg) as stream:
        batch = next(stream)
        patches = stream.cut_patches(batch, torch.Generator().manual_seed(0))
    assert batch.data.shape == (2, 5, 32, 48) and batch.condition.shape == (2, 5, 32, 48)
    assert batch.static.shape == (2, 2, 32, 48) and patches.data.shape == (8, 5, 16, 16)
    assert not batch.mask[:, 4].all() and batch.mask[:, :4].all()  # sst missing over land
    assert torch.isfinite(batch.data).all() and torch.isfinite(batch.condition).all()


def test_help_shows_examples_and_bad_arguments_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "synth", "--help"])
    assert exit_.value.code == 0 and "examples:" in capsys.readouterr().out
    bad = ["data", "synth", "--out", str(tmp_path), "--shape", "30", "30", "--coarse-factor", "4"]
    assert main(bad) == 2
    assert "coarse_factor 4 must divide" in capsys.readouterr().err
