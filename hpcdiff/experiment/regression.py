"""Regression training: a deterministic backbone that learns the conditional mean E[x | condition]
with an MSE loss (the first stage of CorrDiff, Mardani et al. 2024).

The backbone keeps the diffusion backbone's signature ``(x, t, condition)`` and is built by
the same builder, so patches, positional embeddings, ZeRO, EMA, checkpoints, multi-diffusion
fusing and tiled sampling apply unchanged: :class:`RegressionNet` feeds it x = 0 and t = 0
(CorrDiff's regression UNet sees a zero image in place of the noisy state), and the mean over
a domain is one call of the multi-diffusion predictor (:func:`regression_mean`).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D, MultiDiffusionPredictor
from hpcdiff.experiment.build import PatchObjective


class RegressionNet(Module):
    """``(x, t, condition) -> net(0, 0, condition)``: the conditional mean, blind to x and t."""

    def __init__(self, net: Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition=None, **kw) -> torch.Tensor:
        return self.net(torch.zeros_like(x), torch.zeros_like(t), condition, **kw)


class RegressionObjective(PatchObjective):
    """Per-patch weighted squared error ``weight (f(condition) - x0)^2`` of a regression
    ``model`` (MultiDiffusionModel2D around a :class:`RegressionNet`) on windows of the global
    grid; the module a DeepSpeed engine wraps.

    ``forward(x0, weight, condition, origin)`` takes what
    :class:`~hpcdiff.experiment.build.DiffusionObjective` takes and returns the loss map
    (P B, C, Hp, Wp) of ``patches_per_sample`` random patches per window.
    """

    def patch_loss(
        self, x0_p: torch.Tensor, weight_p: torch.Tensor, cond_p: TensorDict | None
    ) -> torch.Tensor:
        t = torch.zeros(x0_p.shape[0], device=x0_p.device, dtype=x0_p.dtype)
        mean = self.model(x0_p, t, condition=cond_p, x_is_patched=True, t_is_patched=True,
                          condition_is_patched=True)  # fmt: skip
        return weight_p * (mean.float() - x0_p.float()) ** 2


def fused_predictor(
    model: MultiDiffusionModel2D, patching: dict, condition: TensorDict | None = None
) -> MultiDiffusionPredictor:
    """The multi-diffusion predictor of ``model`` on the patch grid ``patching``
    (overlap_pix, boundary_pix, window, chunk_size; the dict of
    :func:`~hpcdiff.experiment.residual.sampling_patching`)."""
    predictor = MultiDiffusionPredictor(model, condition=condition,
                                        chunk_size=patching["chunk_size"])  # fmt: skip
    predictor.set_patching(patching["overlap_pix"], patching["boundary_pix"],
                           window=patching["window"])  # fmt: skip
    return predictor


@torch.no_grad()
def regression_mean(
    model: MultiDiffusionModel2D,
    condition: torch.Tensor | None,
    channels: int,
    shape: tuple[int, int],
    patching: dict,
) -> torch.Tensor:
    """Mean (B, C, H, W) over the whole grid ``shape`` from the condition (B, Cc, H, W):
    the fused grid patches of ``patching`` (overlap_pix, boundary_pix, window, chunk_size),
    the fuse :class:`~hpcdiff.generate.tiled.TiledMultiDiffusionPredictor` reproduces on
    tiles."""
    B = 1 if condition is None else condition.shape[0]
    cond = None if condition is None else TensorDict({"condition": condition}, batch_size=[B])
    predictor = fused_predictor(model, patching, cond)
    device = next(model.parameters()).device
    x = torch.zeros(B, channels, *shape, device=device)
    return predictor(x, torch.zeros(B, device=device))
