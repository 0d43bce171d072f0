"""EDM schedule with Student-t instead of Gaussian noise (Pandey et al. 2024, heavy-tailed
diffusion): x_t = x_0 + sigma(t) n, n ~ t_nu scaled per sample."""

from __future__ import annotations

import math

import torch

from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.noise_schedulers._families import edm_loss_weight
from hpcdiff.diffusion.noise_schedulers.edm import EDMSchedule


class StudentTEDMNoiseScheduler(EDMSchedule):
    """EDM schedule (sigma = t, alpha = 1) whose noise is Student-t with ``nu`` > 2 dof.

    Each sample's noise is n = z / sqrt(kappa), z ~ N(0, I) and kappa ~ chi^2_nu / nu shared
    by all elements of the sample, so n is multivariate t_nu with covariance nu / (nu - 2) I.
    Only :meth:`add_noise`, :meth:`init_latents` and :meth:`loss_weight` (which uses the
    effective level sigma sqrt(nu / (nu - 2))) differ from :class:`EDMNoiseScheduler`; the
    conversions and denoiser keep their Gaussian form, as in the reference package.

    Parameters
    ----------
    sigma_min, sigma_max, rho, sigma_data, P_mean, P_std
        As in :class:`EDMNoiseScheduler` (0.002, 80, 7, 0.5, -1.2, 1.2).
    nu : int
        Degrees of freedom, > 2 (10); the Gaussian case is nu -> infinity.

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import StudentTEDMNoiseScheduler
    >>> scheduler = StudentTEDMNoiseScheduler(nu=10)
    >>> scheduler.init_latents((3, 8, 8), torch.full((4,), 80.0)).shape
    torch.Size([4, 3, 8, 8])
    """

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        nu: int = 10,
        sigma_data: float | torch.Tensor = 0.5,
        P_mean: float = -1.2,
        P_std: float = 1.2,
    ) -> None:
        if nu <= 2:
            raise ValueError(f"nu must be > 2, got {nu}")
        super().__init__(
            sigma_min=sigma_min,
            sigma_max=sigma_max,
            rho=rho,
            sigma_data=sigma_data,
            P_mean=P_mean,
            P_std=P_std,
        )
        self.nu = nu

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """EDM weight at the effective level sigma sqrt(nu / (nu - 2)); (N,) or (N, C)."""
        return edm_loss_weight(self.sigma(t) * math.sqrt(self.nu / (self.nu - 2)), self.sigma_data)

    def _student_t(
        self, shape: tuple[int, ...], device: torch.device | None, dtype: torch.dtype | None
    ) -> torch.Tensor:
        """z / sqrt(kappa): z ~ N(0, I) of ``shape`` (B, *), kappa ~ chi^2_nu / nu of (B, 1, ..)."""
        z = torch.randn(*shape, device=device, dtype=dtype)
        # torch's gamma sampler has no half-precision kernels: draw kappa in float32 there.
        wide = dtype if dtype in (None, torch.float32, torch.float64) else torch.float32
        nu = torch.tensor(float(self.nu), device=device, dtype=wide)
        chi2 = torch.distributions.Chi2(df=nu, validate_args=False).sample(
            (shape[0],) + (1,) * (len(shape) - 1)
        )
        return z / torch.sqrt(chi2 / nu).to(z.dtype)

    def add_noise(self, x0: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """x_t = x0 + sigma(t) n with per-sample Student-t noise n; (B, *)."""
        n = self._student_t(tuple(x0.shape), x0.device, x0.dtype)
        return x0 + self.sigma(per_sample(time, x0)) * n

    def init_latents(
        self,
        spatial_shape: tuple[int, ...],
        tN: torch.Tensor,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """x_N = sigma(t_N) n with per-sample Student-t noise n; (B, *spatial_shape)."""
        device = tN.device if device is None else device
        n = self._student_t((tN.shape[0], *spatial_shape), device, dtype)
        return self.sigma(per_sample(tN, n)) * n
