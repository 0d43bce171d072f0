"""EDM schedule of Karras et al. 2022: sigma(t) = t, alpha(t) = 1, rho-spaced sampling steps,
log-normal training noise levels."""

from __future__ import annotations

import torch

from hpcdiff.diffusion.noise_schedulers._families import (
    SigmaIsTimeMixin,
    as_sigma_data,
    check_sigma_range,
    edm_loss_weight,
    karras_timesteps,
)
from hpcdiff.diffusion.noise_schedulers.linear_gaussian import LinearGaussianNoiseScheduler


class EDMSchedule(SigmaIsTimeMixin, LinearGaussianNoiseScheduler):
    """The EDM schedule's body (Karras et al. 2022, Table 1): sigma(t) = t, alpha(t) = 1,
    rho-spaced steps, log-normal training levels, EDM loss weight. Shared by
    :class:`EDMNoiseScheduler` and the Student-t variant, which are not subclasses of each
    other (as in the reference package)."""

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sigma_data: float | torch.Tensor = 0.5,
        P_mean: float = -1.2,
        P_std: float = 1.2,
    ) -> None:
        check_sigma_range(sigma_min, sigma_max)
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho
        self.sigma_data = as_sigma_data(sigma_data)
        self.P_mean = P_mean
        self.P_std = P_std

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Karras et al. 2022 eq. 5 steps sigma_max ... sigma_min, then 0; shape (N + 1,)."""
        return karras_timesteps(self.sigma_min, self.sigma_max, self.rho, num_steps, device, dtype)

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Training noise levels ln(sigma) ~ N(P_mean, P_std^2) (Karras et al. 2022, Table 1)."""
        return (torch.randn(N, device=device, dtype=dtype) * self.P_std + self.P_mean).exp()

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2; (N,) or (N, C)."""
        return edm_loss_weight(self.sigma(t), self.sigma_data)


class EDMNoiseScheduler(EDMSchedule):
    """EDM noise schedule (Karras et al. 2022, Table 1): sigma(t) = t, alpha(t) = 1.

    Parameters
    ----------
    sigma_min, sigma_max : float
        Noise range spanned by :meth:`timesteps` (0.002, 80).
    rho : float
        Step-spacing exponent of eq. 5 (7); larger puts more steps at low noise.
    sigma_data : float or Tensor
        Data standard deviation (0.5), a scalar or one value per channel, shape (C,), in
        which case :meth:`loss_weight` returns (N, C).
    P_mean, P_std : float
        ln(sigma) ~ N(P_mean, P_std^2) for training times (-1.2, 1.2).

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> scheduler = EDMNoiseScheduler()
    >>> scheduler.timesteps(4)[[0, 3, 4]]  # sigma_max, sigma_min, 0
    tensor([8.0000e+01, 2.0000e-03, 0.0000e+00])
    >>> EDMNoiseScheduler(sigma_data=torch.tensor([0.3, 0.5, 0.7])).loss_weight(
    ...     torch.ones(4)).shape
    torch.Size([4, 3])
    """
