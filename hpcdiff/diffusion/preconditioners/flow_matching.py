"""EDM-style preconditioning of a velocity network on the rectified-flow path x_t = (1 - t) x0 +
t eps (Karras et al. 2022, sec. 5 / appendix B.6, derived for the target v = eps - x0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpcdiff.core import Module
from hpcdiff.diffusion.preconditioners.preconditioners import Coefficients, EDMPreconditioner


class FlowMatchingPreconditioner(EDMPreconditioner):
    """Velocity preconditioner v_hat = c_skip x + c_out F(c_in x, c_noise) for rectified flow.

    With x0 of standard deviation sd (``sigma_data``) and D(t) = (1 - t)^2 sd^2 + t^2, the
    EDM recipe (unit-variance input and target, c_skip minimizing the target variance) applied
    to v = eps - x0 gives c_in = 1 / sqrt(D), c_skip = (t - (1 - t) sd^2) / D,
    c_out = sd / sqrt(D); c_noise = ln(t / (1 - t)) / 4 is EDM's label at the equivalent noise
    level sigma = t / (1 - t). The output is a velocity: use it with
    ``get_denoiser(velocity_predictor=...)`` and the DSM losses' ``prediction_type="velocity"``.

    Parameters
    ----------
    model : DiffusionModel
        The wrapped network F.
    sigma_data : float, sequence of float or 1-D tensor, default 1.0
        Data standard deviation, scalar or one value per channel (dim 1 of x).

    Examples
    --------
    >>> import torch
    >>> p = FlowMatchingPreconditioner(lambda x, t, condition=None: 0 * x)
    >>> p(torch.ones(1, 2), torch.tensor([0.5]))  # c_skip = 0 at t = 1/2 when sd = 1
    tensor([[0., 0.]])
    """

    def __init__(
        self, model: Module, sigma_data: float | Sequence[float] | torch.Tensor = 1.0
    ) -> None:
        super().__init__(model, sigma_data=sigma_data)

    def compute_coefficients(self, t: torch.Tensor) -> Coefficients:
        """Coefficients at times t (B, 1, ..., 1); per-channel ones are (B, C, 1, ..., 1)."""
        sigma_data = self.sigma_data
        if self._sigma_data_channels > 0:
            sigma_data = sigma_data.view(1, -1, *([1] * (t.ndim - 2)))  # (1, C, 1, ..., 1)
        D = ((1 - t) * sigma_data) ** 2 + t**2
        c_skip = (t - (1 - t) * sigma_data**2) / D
        c_out = sigma_data / D.sqrt()
        c_in = 1 / D.sqrt()
        c_noise = torch.log(t / (1 - t)) / 4
        return c_in, c_noise, c_out, c_skip
