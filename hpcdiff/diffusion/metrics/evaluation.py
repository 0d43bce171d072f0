"""Evaluation metrics for generated ensembles: CRPS (Gneiting & Raftery 2007) and the
azimuthally averaged power spectrum of 2-D fields."""

from __future__ import annotations

import math

import numpy as np
import torch

_CRPS_METHODS = ("kernel", "sort", "histogram")


def kcrps(pred: torch.Tensor, obs: torch.Tensor, dim: int = 0, biased: bool = True) -> torch.Tensor:
    """Ensemble CRPS, E|X - y| - E|X - X'| / 2, in O(m log m) (Gneiting & Raftery 2007, eq. 21).

    With x sorted, sum_{i,j} |x_i - x_j| = 2 sum_i (2 i - m - 1) x_(i); ``biased=False`` divides
    that sum by m (m - 1) instead of m^2 (the fair estimator of Zamo & Naveau 2018).
    ``pred`` holds the m members along ``dim``; ``obs`` broadcasts against the other dims.

    >>> import torch
    >>> kcrps(torch.tensor([[0.0], [2.0]]), torch.tensor([1.0]))  # 1 - 2 / 4
    tensor([0.5000])
    """
    pred = torch.movedim(pred, dim, -1)  # (*, m)
    m = pred.shape[-1]
    skill = (pred - obs[..., None]).abs().mean(-1)
    i = torch.arange(1, m + 1, device=pred.device, dtype=pred.dtype)
    denom = m * m if biased else m * (m - 1)
    spread = ((2 * i - m - 1) / denom * pred.sort(dim=-1).values).sum(-1)
    return skill - spread


def _crps_histogram(pred: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """CRPS = int (F(x) - 1[x >= y])^2 dx with F a histogram CDF; pred (m, *), obs (*)."""
    if pred.shape[1:] != obs.shape:
        raise ValueError(
            "Expected bins and observations to have compatible broadcasting dimensions but "
            f"have shapes {pred.shape[1:]} and {obs.shape}."
        )
    m = pred.shape[0]
    num_bins = max(int(math.sqrt(m)), 100)
    # num_bins equal bins spanning each element's ensemble range: edges (num_bins + 1, *).
    low, high = pred.min(0).values, pred.max(0).values
    steps = torch.arange(num_bins + 1, dtype=torch.float32, device=pred.device) / num_bins
    edges = low[None] + steps.view(-1, *([1] * low.ndim)) * (high - low)[None]
    # Cumulative counts #{x < upper edge}; the last bin holds everything.
    members = pred.movedim(0, -1).sort(dim=-1).values.contiguous()  # (*, m)
    inner = edges[1:num_bins].movedim(0, -1).contiguous()  # (*, num_bins - 1)
    below = torch.searchsorted(members, inner).movedim(-1, 0)  # (num_bins - 1, *)
    counts = torch.cat([below, torch.full_like(below[:1], m)])
    cdf = counts / counts[-1]
    mids = 0.5 * (edges[1:] + edges[:-1])
    step = (mids >= obs).int()
    return ((cdf - step).abs() ** 2 * (edges[1] - edges[0])).sum(0)


def crps(
    pred: torch.Tensor, obs: torch.Tensor | np.ndarray, dim: int = 0, method: str = "kernel"
) -> torch.Tensor:
    """Pointwise CRPS of the ensemble ``pred`` (members along ``dim``) against ``obs``.

    ``"kernel"`` and ``"sort"`` give the exact ensemble CRPS E|X - y| - E|X - X'| / 2 of
    :func:`kcrps`; ``"histogram"`` integrates (F - 1[x >= y])^2 over a per-point CDF of
    max(sqrt(m), 100) equal bins spanning the ensemble range.

    >>> import torch
    >>> crps(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1.0, 1.0]))
    tensor([0.5000, 0.0000])
    """
    if method not in _CRPS_METHODS:
        raise ValueError("Method must either be 'kernel', 'sort' or 'histogram'.")
    obs = torch.as_tensor(obs, device=pred.device, dtype=pred.dtype)
    if method != "histogram":
        return kcrps(pred, obs, dim=dim)
    return _crps_histogram(torch.movedim(pred, dim, 0), obs)


def power_spectrum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuthally averaged power |FFT(x)|^2 (orthonormal) of the last two dims (H, W).

    Power is averaged over min(H, W) // 2 - 1 equal-width bins of the radial wavenumber
    |k| = hypot(k_y - H // 2, k_x - W / 2) (FFT-shifted grid) spanning [0, max|k| + 1).
    Returns the bin centres (nbins,) and the spectra (*, nbins) in float32.

    >>> import torch
    >>> k, power = power_spectrum(torch.ones(2, 8, 8))
    >>> k.shape, power.shape
    (torch.Size([3]), torch.Size([2, 3]))
    """
    *leading, H, W = x.shape
    power_2d = torch.fft.fftn(x.reshape(-1, H, W), dim=(-2, -1), norm="ortho").abs() ** 2
    power_2d = torch.fft.fftshift(power_2d, dim=(-2, -1)).to(torch.float32).flatten(1)  # (N, HW)
    ky, kx = torch.meshgrid(
        torch.arange(H, device=x.device), torch.arange(W, device=x.device), indexing="ij"
    )
    k = torch.hypot(ky - H // 2, kx - W / 2).to(torch.float32).flatten()  # (HW,)
    nbins = min(H // 2, W // 2) - 1
    k_max = k.max()
    bin_index = torch.div(k * nbins, k_max + 1, rounding_mode="floor").long()  # (HW,)
    total = power_2d.new_zeros(power_2d.shape[0], nbins).index_add_(1, bin_index, power_2d)
    count = torch.bincount(bin_index, minlength=nbins).to(torch.float32)
    edges = torch.linspace(0, float(k_max) + 1, nbins + 1, device=x.device)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres, (total / count).reshape(*leading, nbins)
