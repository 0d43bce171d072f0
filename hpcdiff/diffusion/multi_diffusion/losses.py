"""Patch-based denoising score matching (Karras et al. 2022, Eq. 2, on patches): the losses of
:mod:`hpcdiff.diffusion.metrics` applied to random patches of x0, one diffusion time per patch:
L = w(t_pb) (x0_hat(x_t, t_pb) - x0_pb)^2 for patch p of sample b."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from tensordict import TensorDict

from hpcdiff.diffusion.base import PredictorType
from hpcdiff.diffusion.metrics import MSEDSMLoss, WeightedMSEDSMLoss
from hpcdiff.diffusion.multi_diffusion.models import MultiDiffusionModel2D
from hpcdiff.diffusion.utils.utils import _unwrap_module

if TYPE_CHECKING:
    from hpcdiff.diffusion.noise_schedulers import NoiseScheduler

Tensor = torch.Tensor
ToX0Fn = Callable[[Tensor, Tensor, Tensor], Tensor]


class _PatchedModel:
    """``model`` called on already patched x (P B, ...) and t (P B,), global condition."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def __call__(
        self, x: Tensor, t: Tensor, condition: Tensor | TensorDict | None = None, **kw: Any
    ) -> Tensor:
        return self.model(x, t, condition=condition, x_is_patched=True, t_is_patched=True, **kw)


class _MultiDiffusionLoss:
    """Shared set-up: unwrap the MultiDiffusionModel2D, build the plain DSM loss on patches."""

    _loss_cls: type = MSEDSMLoss

    def __init__(
        self,
        model: MultiDiffusionModel2D,
        noise_scheduler: NoiseScheduler,
        prediction_type: PredictorType = "x0",
        score_to_x0_fn: ToX0Fn | None = None,
        epsilon_to_x0_fn: ToX0Fn | None = None,
        reduction: Literal["none", "mean", "sum"] = "mean",
    ) -> None:
        self.model = model
        self._md_model = _unwrap_module(model, MultiDiffusionModel2D)
        self.noise_scheduler = noise_scheduler
        self._loss = self._loss_cls(
            _PatchedModel(model),
            noise_scheduler,
            prediction_type=prediction_type,
            score_to_x0_fn=score_to_x0_fn,
            epsilon_to_x0_fn=epsilon_to_x0_fn,
            reduction=reduction,
        )

    def _patch(self, x0: Tensor, reset_patch_indices: bool, t: Tensor | None):
        """Redraw positions if asked, patch x0 and draw one time per patch."""
        if reset_patch_indices:
            self._md_model.reset_patch_indices()
        x0_patched = self._md_model.patch_x(x0)  # (P B, C, Hp, Wp)
        if t is None:
            t = self.noise_scheduler.sample_time(
                x0_patched.shape[0], device=x0.device, dtype=x0.dtype
            )
        return x0_patched, t


class MultiDiffusionMSEDSMLoss(_MultiDiffusionLoss):
    """:class:`~hpcdiff.diffusion.metrics.MSEDSMLoss` on random patches of a
    :class:`MultiDiffusionModel2D` (random patching must be set): each call redraws the patch
    positions (unless ``reset_patch_indices=False``) and draws one time per patch.

    Parameters are those of :class:`~hpcdiff.diffusion.metrics.MSEDSMLoss`; ``model`` may be
    wrapped (DDP, ``torch.compile``).

    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> # Net: any DiffusionModel; here a 1x1 convolution (defined in conftest.py)
    >>> md = MultiDiffusionModel2D(Net(), global_spatial_shape=(16, 16))
    >>> md.set_random_patching(patch_shape=(8, 8), patch_num=4)
    >>> loss_fn = MultiDiffusionMSEDSMLoss(md, EDMNoiseScheduler(), reduction="none")
    >>> loss_fn(torch.randn(2, 3, 16, 16)).shape
    torch.Size([8, 3, 8, 8])
    """

    def __call__(
        self,
        x0: Tensor,
        condition: Tensor | TensorDict | None = None,
        reset_patch_indices: bool = True,
        t: Tensor | None = None,
        **model_kwargs: Any,
    ) -> Tensor:
        """Loss for clean global data x0 (B, C, H, W); ``t`` (P B,) is drawn when None.
        Shape (P B, C, Hp, Wp) for reduction "none", else a scalar."""
        x0_patched, t = self._patch(x0, reset_patch_indices, t)
        return self._loss(x0_patched, t=t, condition=condition, **model_kwargs)


class MultiDiffusionWeightedMSEDSMLoss(_MultiDiffusionLoss):
    """:class:`~hpcdiff.diffusion.metrics.WeightedMSEDSMLoss` on random patches: like
    :class:`MultiDiffusionMSEDSMLoss` with an element weight m (B, C, H, W) patched with x0,
    L = w(t) m (x0_hat - x0)^2.

    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> # Net: any DiffusionModel; here a 1x1 convolution (defined in conftest.py)
    >>> md = MultiDiffusionModel2D(Net(), global_spatial_shape=(16, 16))
    >>> md.set_random_patching(patch_shape=(8, 8), patch_num=4)
    >>> loss_fn = MultiDiffusionWeightedMSEDSMLoss(md, EDMNoiseScheduler(), reduction="sum")
    >>> loss_fn(torch.randn(2, 3, 16, 16), weight=torch.zeros(2, 3, 16, 16)).detach()
    tensor(0.)
    """

    _loss_cls = WeightedMSEDSMLoss

    def __call__(
        self,
        x0: Tensor,
        weight: Tensor,
        condition: Tensor | TensorDict | None = None,
        reset_patch_indices: bool = True,
        t: Tensor | None = None,
        **model_kwargs: Any,
    ) -> Tensor:
        """Weighted loss for x0 and ``weight`` (B, C, H, W); see
        :meth:`MultiDiffusionMSEDSMLoss.__call__`."""
        if not torch.compiler.is_compiling() and weight.shape != x0.shape:
            raise ValueError(
                f"weight shape {tuple(weight.shape)} must match x0 shape {tuple(x0.shape)}."
            )
        x0_patched, t = self._patch(x0, reset_patch_indices, t)
        weight_patched = self._md_model.patch_x(weight)
        return self._loss(x0_patched, weight_patched, t=t, condition=condition, **model_kwargs)
