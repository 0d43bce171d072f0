"""Ensemble evaluation metrics: CRPS (kernel/sort/histogram) and radial power spectra."""

import math

import numpy as np
import pytest
import torch

from hpcdiff.diffusion.metrics import crps, kcrps, power_spectrum


def _brute_force_crps(pred, obs, biased=True):
    """E|X - y| - sum_{i,j} |x_i - x_j| / (2 m^2) (or / (2 m (m - 1))), members on dim 0."""
    m = pred.shape[0]
    skill = (pred - obs).abs().mean(0)
    pair_sum = (pred[:, None] - pred[None, :]).abs().sum((0, 1))
    return skill - pair_sum / (2 * (m * m if biased else m * (m - 1)))


def _gaussian_crps(mu, sigma, y):
    """Closed-form CRPS of N(mu, sigma^2) at y (Gneiting et al. 2005, eq. 5)."""
    z = (y - mu) / sigma
    cdf = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return sigma * (z * (2 * cdf - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def test_kcrps_hand_values():
    # Members {0, 2}, y = 1: E|X - y| = 1, E|X - X'| = (0 + 2 + 2 + 0) / 4 = 1 -> 0.5.
    torch.testing.assert_close(
        kcrps(torch.tensor([0.0, 2.0]), torch.tensor(1.0)), torch.tensor(0.5)
    )
    # A one-member ensemble reduces to the absolute error.
    torch.testing.assert_close(
        kcrps(torch.tensor([[3.0]]), torch.tensor([1.0])), torch.tensor([2.0])
    )
    # Fair estimator: pair sum 4 / (2 * 2 * 1) = 1 -> 1 - 1 = 0.
    fair = kcrps(torch.tensor([0.0, 2.0]), torch.tensor(1.0), biased=False)
    torch.testing.assert_close(fair, torch.tensor(0.0))


@pytest.mark.parametrize("biased", [True, False])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_kcrps_matches_pairwise_formula(biased, dim):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(9, 4, 5, dtype=torch.float64, generator=g).round(decimals=1)  # with ties
    obs = torch.randn(4, 5, dtype=torch.float64, generator=g)
    expected = _brute_force_crps(pred, obs, biased)
    torch.testing.assert_close(kcrps(pred.movedim(0, dim), obs, dim=dim, biased=biased), expected)


@pytest.mark.parametrize("method", ["kernel", "sort"])
def test_crps_exact_methods_and_inputs(method):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(3, 6, 7, generator=g)
    obs = torch.randn(3, 7, generator=g)
    expected = _brute_force_crps(pred.movedim(1, 0), obs)
    torch.testing.assert_close(crps(pred, obs, dim=1, method=method), expected)
    torch.testing.assert_close(crps(pred, obs.numpy(), dim=1, method=method), expected)
    assert crps(pred.double(), np.asarray(obs), dim=1).dtype == torch.float64


def test_crps_converges_to_gaussian_closed_form():
    torch.manual_seed(0)
    mu, sigma = 0.5, 2.0
    pred = mu + sigma * torch.randn(20000, 3, dtype=torch.float64)
    ys = [-3.0, 0.5, 4.0]
    obs = torch.tensor(ys, dtype=torch.float64)
    expected = torch.tensor([_gaussian_crps(mu, sigma, y) for y in ys], dtype=torch.float64)
    torch.testing.assert_close(kcrps(pred, obs, biased=False), expected, atol=0.05, rtol=0)
    torch.testing.assert_close(crps(pred, obs), expected, atol=0.05, rtol=0)


def test_crps_histogram_close_to_exact_and_dims():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(5, 400, 4, generator=g, dtype=torch.float64)
    obs = torch.tensor([-1.5, 0.0, 0.3, 2.0], dtype=torch.float64).expand(5, 4)
    exact = crps(pred, obs, dim=1)
    hist = crps(pred, obs, dim=1, method="histogram")
    assert hist.shape == (5, 4)
    # Inside the ensemble range the histogram CDF is off by at most one bin width (range / 100).
    width = (pred.amax(1) - pred.amin(1)) / 100
    assert bool(((hist - exact).abs() <= width).all())
    # It integrates over the ensemble range only: an observation beyond it adds nothing more.
    far = crps(pred, obs + 100, dim=1, method="histogram")
    torch.testing.assert_close(far, crps(pred, obs + 200, dim=1, method="histogram"))


def test_crps_validation():
    pred = torch.randn(4, 3)
    with pytest.raises(ValueError, match="Method must either be 'kernel', 'sort' or 'histogram'"):
        crps(pred, pred[0], method="energy")
    with pytest.raises(ValueError, match="compatible broadcasting dimensions"):
        crps(pred, torch.zeros(1), method="histogram")


def test_power_spectrum_plane_wave_peaks_at_its_wavenumber():
    H = W = 32
    k0 = 5
    j = torch.arange(W, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * k0 * j / W).expand(H, W)
    k, power = power_spectrum(wave[None, None] * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))
    nbins = min(H, W) // 2 - 1
    assert k.shape == (nbins,) and power.shape == (2, 1, nbins) and power.dtype == torch.float32
    peak = int(power[0, 0].argmax())
    width = float(k[1] - k[0])
    assert abs(float(k[peak]) - k0) <= width
    others = torch.cat([power[0, 0, :peak], power[0, 0, peak + 1 :]])
    assert float(others.abs().max()) < 1e-6 * float(power[0, 0, peak])
    torch.testing.assert_close(power[1], 9 * power[0])  # quadratic in amplitude


def test_power_spectrum_white_noise_is_flat_at_the_variance():
    torch.manual_seed(0)
    x = 1.5 * torch.randn(64, 32, 48)
    k, power = power_spectrum(x)
    assert power.shape == (64, 15)
    assert bool((k[1:] > k[:-1]).all())
    # Orthonormal FFT: E|X_k|^2 = variance at every wavenumber (few modes in the corner bins).
    torch.testing.assert_close(power.mean(0), torch.full((15,), 2.25), rtol=0.2, atol=0)
    torch.testing.assert_close(power.mean(), torch.tensor(2.25), rtol=0.03, atol=0)
