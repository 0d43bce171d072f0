"""Variance-exploding schedule of Song et al. 2021 in EDM's parametrization: sigma(t) = sqrt(t)."""

from __future__ import annotations

import math

import torch

from hpcdiff.diffusion.noise_schedulers._families import (
    UnitSignalMixin,
    check_num_steps,
    check_sigma_range,
)
from hpcdiff.diffusion.noise_schedulers.linear_gaussian import LinearGaussianNoiseScheduler


class VENoiseScheduler(UnitSignalMixin, LinearGaussianNoiseScheduler):
    """VE SDE (Song et al. 2021; Karras et al. 2022, Table 1): sigma(t) = sqrt(t), alpha = 1.

    Sampling steps are geometric in sigma^2 from sigma_max^2 to sigma_min^2; training noise
    levels are log-uniform on [sigma_min, sigma_max], mapped to t = sigma^2.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Noise range (0.02, 100).

    >>> from hpcdiff.diffusion.noise_schedulers import VENoiseScheduler
    >>> VENoiseScheduler(sigma_min=0.1, sigma_max=10.0).timesteps(3)  # sigma^2 = 100, 1, 0.01
    tensor([1.0000e+02, 1.0000e+00, 1.0000e-02, 0.0000e+00])
    """

    def __init__(self, sigma_min: float = 0.02, sigma_max: float = 100.0) -> None:
        check_sigma_range(sigma_min, sigma_max)
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(t)."""
        return t.sqrt()

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t = sigma^2."""
        return sigma**2

    def sigma_dot(self, t: torch.Tensor) -> torch.Tensor:
        """sigma'(t) = 1 / (2 sqrt(t))."""
        return 0.5 / t.sqrt()

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """t_i = sigma_max^2 (sigma_min^2 / sigma_max^2)^(i / (N - 1)), then 0; shape (N + 1,)."""
        check_num_steps(num_steps)
        i = torch.arange(num_steps, device=device, dtype=dtype)
        ratio = self.sigma_min**2 / self.sigma_max**2
        t = self.sigma_max**2 * ratio ** (i / (num_steps - 1))
        return torch.cat([t, torch.zeros(1, device=device, dtype=dtype)])

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """t = sigma^2 with sigma = sigma_min (sigma_max / sigma_min)^u, u ~ U[0, 1); (N,)."""
        u = torch.rand(N, device=device, dtype=dtype)
        sigma = self.sigma_min * torch.exp(u * math.log(self.sigma_max / self.sigma_min))
        return self.sigma_inv(sigma)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = 1 / sigma(t)^2 (Karras et al. 2022, Table 1, VE); (N,)."""
        return 1 / self.sigma(t) ** 2
