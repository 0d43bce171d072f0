"""The NoiseScheduler protocol: the six methods training and sampling ask of a schedule."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from hpcdiff.diffusion.base import Denoiser


@runtime_checkable
class NoiseScheduler(Protocol):
    """Minimal interface of a noise schedule (forward process + reverse-process factory).

    Training uses :meth:`sample_time`, :meth:`add_noise` and :meth:`loss_weight`; sampling
    uses :meth:`timesteps`, :meth:`init_latents` and :meth:`get_denoiser`. Any object with
    these six methods satisfies the protocol; no particular form of noise is assumed.

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import NoiseScheduler
    >>> class MyCustomScheduler:
    ...     def sample_time(self, N, *, device=None, dtype=None): ...
    ...     def add_noise(self, x0, time): ...
    ...     def timesteps(self, num_steps, *, device=None, dtype=None): ...
    ...     def init_latents(self, spatial_shape, tN, *, device=None, dtype=None): ...
    ...     def get_denoiser(self, **kwargs): ...
    ...     def loss_weight(self, t): ...
    >>> isinstance(MyCustomScheduler(), NoiseScheduler)
    True
    """

    def sample_time(
        self,
        N: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Draw ``N`` training diffusion times, shape (N,)."""
        ...

    def add_noise(self, x0: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """Corrupt clean data ``x0`` (B, *) at diffusion times ``time`` (B,)."""
        ...

    def timesteps(
        self,
        num_steps: int,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Decreasing sampling times t_0 > ... > t_{N-1} > t_N = 0, shape (N + 1,)."""
        ...

    def init_latents(
        self,
        spatial_shape: tuple[int, ...],
        tN: torch.Tensor,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Initial noisy state x_N at times ``tN`` (B,), shape (B, *spatial_shape)."""
        ...

    def get_denoiser(self, **kwargs: Any) -> Denoiser:
        """Turn a predictor (passed by keyword) into the update function a solver integrates."""
        ...

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample DSM loss weight, shape (N,) or (N, C) for per-channel weights."""
        ...
