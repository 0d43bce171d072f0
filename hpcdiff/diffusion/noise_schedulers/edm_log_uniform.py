"""EDM schedule whose training noise levels are log-uniform on [sigma_min, sigma_max]."""

from __future__ import annotations

import math

import torch

from hpcdiff.diffusion.noise_schedulers.edm import EDMNoiseScheduler


class EDMLogUniformNoiseScheduler(EDMNoiseScheduler):
    """:class:`EDMNoiseScheduler` with ln(sigma) ~ U[ln(sigma_min), ln(sigma_max)] in training.

    Sampling steps, noise injection and loss weight are those of EDM (Karras et al. 2022);
    ``sigma_data`` may again be per channel, shape (C,).

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import EDMLogUniformNoiseScheduler
    >>> t = EDMLogUniformNoiseScheduler(sigma_min=0.002, sigma_max=80.0).sample_time(8)
    >>> bool(((t >= 0.002) & (t <= 80.0)).all())
    True
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sigma_data: float | torch.Tensor = 0.5,
    ) -> None:
        super().__init__(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, sigma_data=sigma_data)

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """sigma = exp(ln sigma_min + u (ln sigma_max - ln sigma_min)), u ~ U[0, 1); (N,)."""
        u = torch.rand(N, device=device, dtype=dtype)
        log_min, log_max = math.log(self.sigma_min), math.log(self.sigma_max)
        return (log_min + u * (log_max - log_min)).exp()
