"""Improved DDPM schedule (Nichol & Dhariwal 2021) on EDM's sigma = t axis (Karras et al. 2022,
Table 1): a cosine alpha-bar schedule turned into M + 1 discrete noise levels u_j."""

from __future__ import annotations

import math

import torch

from hpcdiff.diffusion.noise_schedulers._families import (
    SigmaIsTimeMixin,
    check_num_steps,
    check_sigma_range,
)
from hpcdiff.diffusion.noise_schedulers.linear_gaussian import LinearGaussianNoiseScheduler


def iddpm_noise_levels(M: int, C_1: float, C_2: float) -> torch.Tensor:
    """u_M = 0, u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1} / abar_j, C_1) - 1), (M + 1,).

    abar_j = sin^2(pi/2 j / (M (C_2 + 1))) (Karras et al. 2022, Table 1, iDDPM column). The
    recursion runs in float32 so the levels are bit-for-bit those of the reference package.
    """
    u = torch.zeros(M + 1)
    abar = [math.sin(0.5 * math.pi * j / M / (C_2 + 1)) ** 2 for j in range(M + 1)]
    for j in range(M, 0, -1):
        ratio = max(abar[j - 1] / abar[j], C_1)
        u[j - 1] = ((u[j] ** 2 + 1) / ratio - 1).sqrt()
    return u


class IDDPMNoiseScheduler(SigmaIsTimeMixin, LinearGaussianNoiseScheduler):
    """iDDPM schedule: sigma(t) = t, alpha = 1, noise levels restricted to the precomputed u_j.

    Sampling steps pick num_steps levels u_j in [sigma_min, sigma_max] at evenly spaced
    (rounded) indices, largest first; training times are drawn uniformly from those levels.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Range of levels kept (0.002, 81).
    C_1 : float
        Lower clip of abar_{j-1} / abar_j (0.001).
    C_2 : float
        Offset of the cosine schedule (0.008).
    M : int
        Number of discrete levels (1000).

    >>> from hpcdiff.diffusion.noise_schedulers import IDDPMNoiseScheduler
    >>> steps = IDDPMNoiseScheduler().timesteps(5)
    >>> bool((steps[:-1] <= 81.0).all() and (steps[:-1] >= 0.002).all() and steps[-1] == 0)
    True
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 81.0,
        C_1: float = 0.001,
        C_2: float = 0.008,
        M: int = 1000,
    ) -> None:
        check_sigma_range(sigma_min, sigma_max)
        if M < 1:
            raise ValueError(f"M must be a positive integer, got {M}")
        if not 0 < C_1 <= 1:
            raise ValueError(f"C_1 must lie in (0, 1], got {C_1}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        self._u = iddpm_noise_levels(M, C_1, C_2)  # (M + 1,), decreasing

    def _levels(self, device: torch.device | None, dtype: torch.dtype | None) -> torch.Tensor:
        """The levels u_j inside [sigma_min, sigma_max], decreasing; (L,).

        Selected on the host (no device sync), then moved to ``device``.
        """
        u = self._u.to(dtype=dtype)
        levels = u[(u >= self.sigma_min) & (u <= self.sigma_max)]
        if levels.numel() == 0:
            raise ValueError(
                f"no iDDPM noise level lies in [{self.sigma_min}, {self.sigma_max}] (M={self.M})"
            )
        return levels.to(device=device)

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """t_i = u_{k_i}, k_i = round(i (L - 1) / (N - 1)) over the L kept levels, then 0."""
        check_num_steps(num_steps)
        levels = self._levels(device, dtype)
        i = torch.arange(num_steps, device=device, dtype=dtype)
        k = ((len(levels) - 1) / (num_steps - 1) * i).round().to(torch.int64)
        return torch.cat([levels[k], torch.zeros(1, device=device, dtype=dtype)])

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """N levels drawn uniformly (with replacement) from the kept u_j; (N,)."""
        levels = self._levels(device, dtype)
        return levels[torch.randint(0, len(levels), (N,), device=device)]

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = 1 / sigma(t)^2 (Karras et al. 2022, Table 1, iDDPM); (N,)."""
        return 1 / self.sigma(t) ** 2
