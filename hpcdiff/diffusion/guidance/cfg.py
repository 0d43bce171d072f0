"""Classifier-free guidance (Ho & Salimans 2022) as a combinator of two predictors."""

from __future__ import annotations

from numbers import Real

import torch

from hpcdiff.diffusion.base import Predictor


class ClassifierFreeGuidancePredictor(Predictor):
    """CFG predictor: D(x, t) = D_u(x, t) + scale * (D_c(x, t) - D_u(x, t)).

    ``scale`` is Ho & Salimans' 1 + w: 0 gives the unconditional prediction, 1 the conditional
    one, > 1 extrapolates towards the condition. The combination is affine with weights summing
    to one, so it commutes with the x0 <-> score <-> epsilon conversions at fixed (x, t): wrap
    predictors of any (the same) prediction type. ``scale`` is a number or a tensor that
    broadcasts to the prediction (e.g. per channel (1, C, 1, 1)). With a number equal to 0 or 1
    only the predictor that matters is evaluated.

    >>> cfg = ClassifierFreeGuidancePredictor(
    ...     cond_pred=lambda x, t: x + 1.0, uncond_pred=lambda x, t: x, scale=3.0
    ... )
    >>> cfg(torch.zeros(1, 2), torch.ones(1))
    tensor([[3., 3.]])
    """

    def __init__(
        self,
        cond_pred: Predictor,
        uncond_pred: Predictor,
        scale: float | torch.Tensor,
    ) -> None:
        for name, pred in (("cond_pred", cond_pred), ("uncond_pred", uncond_pred)):
            if not callable(pred):
                raise TypeError(f"{name} must be a callable (x, t), got {type(pred).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (Real, torch.Tensor)):
            raise TypeError(f"scale must be a real number or a tensor, got {scale!r}")
        self.cond_pred = cond_pred
        self.uncond_pred = uncond_pred
        self.scale = float(scale) if isinstance(scale, Real) else scale

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Guided prediction for ``x`` (B, *) at times ``t`` (B,)."""
        if isinstance(self.scale, float):
            if self.scale == 0.0:
                return self.uncond_pred(x, t)
            if self.scale == 1.0:
                return self.cond_pred(x, t)
        D_u = self.uncond_pred(x, t)
        D_c = self.cond_pred(x, t)
        scale = self.scale
        if isinstance(scale, torch.Tensor):
            scale = scale.to(dtype=D_u.dtype, device=D_u.device)
        return torch.lerp(D_u, D_c, scale)  # D_u + scale * (D_c - D_u), one fused pass
