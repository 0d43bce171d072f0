"""Closed-form pieces shared by several schedules: alpha(t) = 1, and sigma(t) = t on top of it."""

from __future__ import annotations

import torch


class UnitSignalMixin:
    """alpha(t) = 1, alpha'(t) = 0: no signal attenuation (VE, EDM, iDDPM families)."""

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t) = 1."""
        return torch.ones_like(t)

    def alpha_dot(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'(t) = 0."""
        return torch.zeros_like(t)


class SigmaIsTimeMixin(UnitSignalMixin):
    """sigma(t) = t and alpha(t) = 1: time is the noise level (Karras et al. 2022, sec. 3)."""

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = t."""
        return t

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t = sigma."""
        return sigma

    def sigma_dot(self, t: torch.Tensor) -> torch.Tensor:
        """sigma'(t) = 1."""
        return torch.ones_like(t)


def check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    """Reject noise ranges a schedule cannot span (0 < sigma_min < sigma_max)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def check_num_steps(num_steps: int) -> None:
    """A discretization needs at least its two end points t_0 and t_{N-1} before t_N = 0."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")


def as_sigma_data(sigma_data: float | torch.Tensor) -> torch.Tensor:
    """sigma_data as a 0-D (shared) or 1-D (C,) per-channel tensor; floats become float32."""
    if not isinstance(sigma_data, torch.Tensor):
        sigma_data = torch.as_tensor(sigma_data, dtype=torch.float32)
    if sigma_data.ndim > 1:
        raise ValueError(
            f"sigma_data must be a scalar or a 1-D (C,) tensor, got shape {tuple(sigma_data.shape)}"
        )
    if not bool((sigma_data > 0).all()):
        raise ValueError(f"sigma_data must be positive, got {sigma_data}")
    return sigma_data


def karras_timesteps(
    sigma_min: float,
    sigma_max: float,
    rho: float,
    num_steps: int,
    device: torch.device | None,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """Karras et al. 2022 eq. 5 steps, with sigma_N = 0 appended; shape (N + 1,).

    sigma_i = (smax^(1/rho) + i / (N - 1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N.
    """
    check_num_steps(num_steps)
    i = torch.arange(num_steps, device=device, dtype=dtype)
    smax_rho, smin_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (smax_rho + i / (num_steps - 1) * (smin_rho - smax_rho)) ** rho
    return torch.cat([sigmas, torch.zeros(1, device=device, dtype=dtype)])


def edm_loss_weight(sigma: torch.Tensor, sigma_data: torch.Tensor) -> torch.Tensor:
    """Karras et al. 2022 eq. 8 weight (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

    ``sigma`` (N,); returns (N,) for a 0-D ``sigma_data`` and (N, C) for a (C,) one.
    """
    sd = sigma_data.to(device=sigma.device, dtype=sigma.dtype)
    if sd.ndim == 1:
        sigma, sd = sigma.unsqueeze(-1), sd.unsqueeze(0)  # (N, 1), (1, C)
    return (sigma**2 + sd**2) / (sigma * sd) ** 2
