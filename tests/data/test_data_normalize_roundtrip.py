"""Normalizer.denormalize inverts normalization, including the log1p transform."""

import numpy as np

from hpcdiff.data.normalize import Normalizer


def test_denormalize_inverts_normalize_with_log1p():
    stats = {
        "t2m": {"mean": 280.0, "std": 5.0},
        "tp": {"mean": 0.4, "std": 0.6, "transform": "log1p"},
    }
    norm = Normalizer(["t2m", "tp"], stats, log1p=["tp"])
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(280, 5, (3, 4)), rng.gamma(0.5, 2.0, (3, 4))]).astype(np.float32)
    z = norm(x.copy(), axis=0)
    assert abs(float(z[0].mean())) < 2.0
    np.testing.assert_allclose(norm.denormalize(z, axis=0), x, rtol=1e-5, atol=1e-5)
