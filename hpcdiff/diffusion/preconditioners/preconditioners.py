"""Affine preconditioners D = c_skip x + c_out F(c_in x, c_noise) (Karras et al. 2022, Table 1).

Shapes: x (B, *), t (B,); coefficients are (B, 1, ..., 1), or (B, C, 1, ..., 1) for a per-channel
EDM ``sigma_data``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion._tensor import per_sample
from hpcdiff.diffusion.noise_schedulers.iddpm import iddpm_noise_levels

Coefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class BaseAffinePreconditioner(Module, ABC):
    """Wraps a network F as D(x, t) = c_skip(s) x + c_out(s) F(c_in(s) x, c_noise(s)), s = sigma(t).

    Subclasses implement :meth:`compute_coefficients` (returning ``c_in, c_noise, c_out, c_skip``)
    and, when noise level and diffusion time differ, :meth:`sigma`. The result is itself a
    :class:`~hpcdiff.diffusion.DiffusionModel` with F's signature ``(x, t, condition=None, **kw)``.

    Parameters
    ----------
    model : DiffusionModel
        The wrapped network F (usually an :class:`hpcdiff.core.Module`, so the preconditioner
        can be saved and re-created with it).
    meta : object, optional
        Free-form model metadata kept as ``self.meta``.

    Examples
    --------
    >>> import torch
    >>> class Identity(BaseAffinePreconditioner):
    ...     def compute_coefficients(self, sigma):
    ...         one = torch.ones_like(sigma)
    ...         return one, sigma, one, 0 * one
    >>> net = lambda x, t, condition=None: 2 * x
    >>> Identity(net)(torch.ones(2, 3), torch.tensor([0.1, 0.2]))[0]
    tensor([2., 2., 2.])
    """

    def __init__(self, model: Module, meta: Any = None) -> None:
        super().__init__()
        self.meta = meta
        self.model = model

    @abstractmethod
    def compute_coefficients(self, t: torch.Tensor, /) -> Coefficients:
        """Return ``(c_in, c_noise, c_out, c_skip)`` for ``sigma(t)`` of shape (B, 1, ..., 1)."""

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level sigma(t) for diffusion time t (B,); identity unless overridden."""
        return t

    def _validate_input(self, x: torch.Tensor) -> None:
        """Hook for subclass checks on ``x``; skipped while ``torch.compile`` traces."""

    def _validate(
        self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor | TensorDict | None
    ) -> None:
        B = x.shape[0]
        if t.shape != (B,):
            raise ValueError(
                f"Expected t to have shape ({B},) matching batch size of x, but got {t.shape}."
            )
        if isinstance(condition, TensorDict):
            if condition.batch_size and condition.batch_size[0] != B:
                raise ValueError(
                    f"Condition TensorDict has batch size {condition.batch_size[0]} "
                    f"but expected {B} to match x."
                )
        elif isinstance(condition, torch.Tensor) and condition.shape[0] != B:
            raise ValueError(
                f"Condition tensor has batch size {condition.shape[0]} but expected {B} to match x."
            )
        self._validate_input(x)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | TensorDict | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """D(x, t) for x (B, *) at diffusion time t (B,); same shape as F's output."""
        if not torch.compiler.is_compiling():
            self._validate(x, t, condition)
        sigma = per_sample(self.sigma(t), x)  # (B, 1, ..., 1)
        c_in, c_noise, c_out, c_skip = self.compute_coefficients(sigma)
        if condition is not None:
            model_kwargs["condition"] = condition
        F_x = self.model(c_in * x, c_noise.flatten(), **model_kwargs)
        D_x = c_skip * x + c_out * F_x
        return D_x


class EDMPreconditioner(BaseAffinePreconditioner):
    """EDM preconditioning (Karras et al. 2022, Tab. 1), sigma(t) = t.

    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sd^2 + sigma^2), c_noise = ln(sigma) / 4, with sd = ``sigma_data``.

    Parameters
    ----------
    model : DiffusionModel
        The wrapped network F.
    sigma_data : float, sequence of float or 1-D tensor, default 0.5
        Data standard deviation; one value per channel (dim 1 of x) makes c_skip, c_out, c_in
        per-channel (c_noise stays per-sample).

    Examples
    --------
    >>> import torch
    >>> p = EDMPreconditioner(lambda x, t, condition=None: 0 * x, sigma_data=[0.5, 1.0])
    >>> p(torch.ones(1, 2, 3), torch.tensor([1.0]))[0, :, 0]
    tensor([0.2000, 0.5000])
    """

    def __init__(
        self, model: Module, sigma_data: float | Sequence[float] | torch.Tensor = 0.5
    ) -> None:
        super().__init__(model)
        if isinstance(sigma_data, torch.Tensor):
            sd = sigma_data.detach().to(dtype=torch.float32).reshape(-1)
        elif isinstance(sigma_data, Sequence) and not isinstance(sigma_data, str):
            sd = torch.as_tensor(list(sigma_data), dtype=torch.float32)
        else:
            sd = torch.as_tensor(float(sigma_data))
        if sd.ndim > 0 and sd.numel() == 1:
            sd = sd.squeeze()
        self.register_buffer("sigma_data", sd)
        # Channel count as a Python int: checked in forward without reading the buffer.
        self._sigma_data_channels: int = sd.numel() if sd.ndim > 0 else 0

    def _validate_input(self, x: torch.Tensor) -> None:
        C = self._sigma_data_channels
        if C > 0 and x.ndim >= 2 and x.shape[1] != C:
            raise ValueError(
                f"EDMPreconditioner has per-channel sigma_data with {C} channels, but input x "
                f"has {x.shape[1]} channels (shape {tuple(x.shape)})."
            )

    def compute_coefficients(self, t: torch.Tensor) -> Coefficients:
        """EDM coefficients at sigma = t (B, 1, ..., 1); per-channel ones are (B, C, 1, ..., 1)."""
        sigma = t
        sigma_data = self.sigma_data
        if self._sigma_data_channels > 0:
            sigma_data = sigma_data.view(1, -1, *([1] * (sigma.ndim - 2)))  # (1, C, 1, ..., 1)
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
        c_in = 1 / (sigma_data**2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_in, c_noise, c_out, c_skip


class VPPreconditioner(BaseAffinePreconditioner):
    """Variance-preserving preconditioning (Song et al. 2021; Karras et al. 2022, Tab. 1).

    sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1); c_skip = 1, c_out = -sigma,
    c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) sigma^-1(sigma).

    Examples
    --------
    >>> import torch
    >>> p = VPPreconditioner(lambda x, t, condition=None: x)
    >>> s = p.sigma(torch.tensor([0.5]))
    >>> bool(torch.allclose(p.compute_coefficients(s)[1], torch.tensor([999 * 0.5])))
    True
    """

    def __init__(
        self, model: Module, beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000
    ) -> None:
        super().__init__(model)
        self.register_buffer("beta_d", torch.tensor(beta_d))
        self.register_buffer("beta_min", torch.tensor(beta_min))
        self.register_buffer("M", torch.tensor(M))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), t of shape (B,)."""
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def compute_coefficients(self, sigma: torch.Tensor) -> Coefficients:
        """VP coefficients at noise level sigma (B, 1, ..., 1)."""
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        # t = sigma^-1(sigma): the positive root of beta_d t^2 / 2 + beta_min t = ln(1 + sigma^2).
        t = (
            (self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min
        ) / self.beta_d
        c_noise = (self.M - 1) * t
        return c_in, c_noise, c_out, c_skip


class VEPreconditioner(BaseAffinePreconditioner):
    """Variance-exploding preconditioning (Song et al. 2021; Karras et al. 2022, Tab. 1).

    sigma(t) = t; c_skip = 1, c_out = sigma, c_in = 1, c_noise = ln(sigma / 2).

    Examples
    --------
    >>> import torch
    >>> p = VEPreconditioner(lambda x, t, condition=None: torch.ones_like(x))
    >>> p(torch.zeros(1, 2), torch.tensor([3.0]))
    tensor([[3., 3.]])
    """

    def __init__(self, model: Module) -> None:
        super().__init__(model)

    def compute_coefficients(self, t: torch.Tensor) -> Coefficients:
        """VE coefficients at sigma = t (B, 1, ..., 1)."""
        sigma = t
        c_skip = torch.ones_like(sigma)
        c_out = sigma
        c_in = torch.ones_like(sigma)
        c_noise = (0.5 * sigma).log()
        return c_in, c_noise, c_out, c_skip


class IDDPMPreconditioner(BaseAffinePreconditioner):
    """Improved-DDPM preconditioning (Nichol & Dhariwal 2021; Karras et al. 2022, Tab. 1).

    sigma(t) = t; c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1),
    c_noise = M - 1 - argmin_j |sigma - u_j| (an integer tensor), with the iDDPM noise levels
    u_{j-1} = sqrt((u_j^2 + 1) / max(abar_{j-1} / abar_j, C_1) - 1), u_M = 0,
    abar_j = sin^2(pi j / (2 M (C_2 + 1))).

    Examples
    --------
    >>> import torch
    >>> p = IDDPMPreconditioner(lambda x, t, condition=None: x, M=10)
    >>> p.compute_coefficients(p.u[[0, 9]].reshape(2, 1))[1].flatten()
    tensor([9, 0])
    """

    def __init__(
        self, model: Module, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000
    ) -> None:
        super().__init__(model)
        self.register_buffer("C_1", torch.tensor(C_1))
        self.register_buffer("C_2", torch.tensor(C_2))
        self.register_buffer("M", torch.tensor(M))
        self.register_buffer("u", iddpm_noise_levels(M, C_1, C_2))  # (M + 1,), decreasing

    def compute_coefficients(self, t: torch.Tensor) -> Coefficients:
        """iDDPM coefficients at sigma = t (B, 1, ..., 1)."""
        sigma = t
        c_skip = torch.ones_like(sigma)
        c_out = -sigma
        c_in = 1 / (sigma**2 + 1).sqrt()
        # Index of the nearest tabulated level; cdist over (1, B, 1) x (1, M + 1, 1).
        dist = torch.cdist(sigma.reshape(1, -1, 1), self.u.reshape(1, -1, 1))
        j = dist.argmin(2).reshape(sigma.shape)
        c_noise = self.M - 1 - j
        return c_in, c_noise, c_out, c_skip
