"""Variance-preserving schedule of Song et al. 2021 with linear beta(t) = beta_min + beta_d t."""

from __future__ import annotations

import torch

from hpcdiff.diffusion.noise_schedulers._families import check_num_steps
from hpcdiff.diffusion.noise_schedulers.linear_gaussian import LinearGaussianNoiseScheduler


class VPNoiseScheduler(LinearGaussianNoiseScheduler):
    """VP SDE (Song et al. 2021, eq. 11): alpha(t) = exp(-(beta_d t^2 / 2 + beta_min t) / 2),
    sigma(t) = sqrt(1 - alpha(t)^2), so that f = -beta(t) x / 2 and g^2 = beta(t).

    Sampling steps are linear from ``t_max`` to ``epsilon_s``; training times are uniform on
    [epsilon_s, t_max].

    Parameters
    ----------
    beta_min, beta_d : float
        Linear noise rate beta(t) = beta_min + beta_d t (0.1, 19.1).
    epsilon_s : float
        Smallest diffusion time (1e-3).
    t_max : float
        Largest diffusion time (1.0).

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import VPNoiseScheduler
    >>> vp = VPNoiseScheduler()
    >>> t = torch.tensor([0.5])
    >>> torch.allclose(vp.diffusion(torch.zeros(1, 3), t), vp.beta_min + vp.beta_d * t)
    True
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_d: float = 19.1,
        epsilon_s: float = 1e-3,
        t_max: float = 1.0,
    ) -> None:
        if beta_min < 0 or beta_d <= 0:
            raise ValueError(f"need beta_min >= 0 and beta_d > 0, got {beta_min}, {beta_d}")
        if not 0 < epsilon_s < t_max:
            raise ValueError(f"need 0 < epsilon_s < t_max, got {epsilon_s}, {t_max}")
        self.beta_min = beta_min
        self.beta_d = beta_d
        self.epsilon_s = epsilon_s
        self.t_max = t_max

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t) = exp(-(beta_d t^2 / 2 + beta_min t) / 2)."""
        return torch.exp(-0.5 * (0.5 * self.beta_d * t**2 + self.beta_min * t))

    def alpha_dot(self, t: torch.Tensor) -> torch.Tensor:
        """alpha'(t) = -beta(t) alpha(t) / 2."""
        return -0.5 * (self.beta_min + self.beta_d * t) * self.alpha(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(1 - alpha(t)^2)."""
        return torch.sqrt(1 - self.alpha(t) ** 2)

    def sigma_dot(self, t: torch.Tensor) -> torch.Tensor:
        """sigma'(t) = -alpha(t) alpha'(t) / sigma(t)."""
        return -self.alpha(t) * self.alpha_dot(t) / self.sigma(t)

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """Positive root t of beta_d t^2 / 2 + beta_min t = -ln(1 - sigma^2 + 1e-8).

        The 1e-8 (the reference package's guard) keeps sigma = 1 finite.
        """
        a = -torch.log(1 - sigma**2 + 1e-8)
        disc = self.beta_min**2 + 2 * self.beta_d * a
        return (torch.sqrt(disc.clamp(min=0)) - self.beta_min) / self.beta_d

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """t_i = t_max + i / (N - 1) (epsilon_s - t_max), then 0; shape (N + 1,)."""
        check_num_steps(num_steps)
        i = torch.arange(num_steps, device=device, dtype=dtype)
        t = self.t_max + i / (num_steps - 1) * (self.epsilon_s - self.t_max)
        return torch.cat([t, torch.zeros(1, device=device, dtype=dtype)])

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """t ~ U[epsilon_s, t_max); (N,)."""
        u = torch.rand(N, device=device, dtype=dtype)
        return self.epsilon_s + u * (self.t_max - self.epsilon_s)

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = alpha(t)^2 / sigma(t)^2 (Karras et al. 2022, Table 1, VP); (N,)."""
        return (self.alpha(t) / self.sigma(t)) ** 2
