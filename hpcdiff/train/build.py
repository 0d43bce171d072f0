"""Build the trained model from config sections: backbone -> preconditioner -> patch wrapper.

The DeepSpeed engine wraps a :class:`DiffusionObjective`, whose ``forward`` returns the
per-patch DSM loss map, so every forward (and ZeRO's parameter gathering) goes through
``engine(...)``. Its ``model`` attribute is the inference model: a ``MultiDiffusionModel2D``
around the preconditioned backbone, usable with ``MultiDiffusionPredictor`` and ``sample()``.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

from hpcdiff.core import Module
from hpcdiff.diffusion import noise_schedulers as ns
from hpcdiff.diffusion import preconditioners as pc
from hpcdiff.diffusion.multi_diffusion import (
    MultiDiffusionModel2D,
    MultiDiffusionWeightedMSEDSMLoss,
)
from hpcdiff.models import SongUNetDiffusionModel, create_model
from hpcdiff.models.registry import model_config

_SCHEDULERS = {
    "edm": ns.EDMNoiseScheduler,
    "edm_log_uniform": ns.EDMLogUniformNoiseScheduler,
    "ve": ns.VENoiseScheduler,
    "vp": ns.VPNoiseScheduler,
    "iddpm": ns.IDDPMNoiseScheduler,
    "student_t_edm": ns.StudentTEDMNoiseScheduler,
}


def build_scheduler(name: str, args: dict[str, Any]) -> ns.LinearGaussianNoiseScheduler:
    try:
        return _SCHEDULERS[name](**args)
    except TypeError as err:
        raise ValueError(f"config key 'diffusion.scheduler_args': {err}") from None


def _precondition(name: str, backbone: Module, sigma_data: float) -> Module:
    if name == "edm":
        return pc.EDMPreconditioner(backbone, sigma_data=sigma_data)
    return {"ve": pc.VEPreconditioner, "vp": pc.VPPreconditioner,
            "iddpm": pc.IDDPMPreconditioner}[name](backbone)  # fmt: skip


def build_inference_model(
    model_cfg: dict[str, Any],
    diffusion_cfg: dict[str, Any],
    grid_shape: tuple[int, int],
    patch_shape: tuple[int, int],
    channels: int,
    condition_channels: int,
) -> MultiDiffusionModel2D:
    """MultiDiffusionModel2D(preconditioner(backbone)) for ``channels`` target variables.

    The backbone sees [x, condition, positional embedding] stacked along channels.
    """
    pe = model_cfg.get("positional_embedding")
    c_pe = model_cfg.get("channels_positional_embedding", 4) if pe else 0
    if pe == "linear":
        c_pe = 2
    in_channels = channels + condition_channels + c_pe
    family, _ = model_config(model_cfg["name"])
    backbone = create_model(
        model_cfg["name"], resolution=list(patch_shape), in_channels=in_channels,
        out_channels=channels, **model_cfg.get("args", {}),
    )  # fmt: skip
    if family == "SongUNet":
        backbone = SongUNetDiffusionModel(backbone)
    precond = _precondition(
        diffusion_cfg["preconditioner"], backbone, float(diffusion_cfg.get("sigma_data", 1.0))
    )
    model = MultiDiffusionModel2D(
        precond,
        global_spatial_shape=tuple(grid_shape),
        positional_embedding=pe,
        channels_positional_embedding=c_pe or 4,
        condition_patch=True,
    )
    model.set_random_patching(patch_shape=tuple(patch_shape), patch_num=1)
    return model


class DiffusionObjective(Module):
    """Per-patch weighted DSM loss of ``model`` (the module a DeepSpeed engine wraps).

    ``forward(x0, weight, condition)`` with x0, weight (B, C, H, W) and condition
    (B, Cc, H, W) or None returns the loss map (P B, C, Hp, Wp).
    """

    def __init__(
        self,
        model: MultiDiffusionModel2D,
        scheduler: str = "edm",
        scheduler_args: dict | None = None,
        patch_shape: tuple[int, int] = (64, 64),
        patches_per_sample: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.scheduler = build_scheduler(scheduler, scheduler_args or {})
        model.set_random_patching(patch_shape=tuple(patch_shape), patch_num=patches_per_sample)
        self.loss = MultiDiffusionWeightedMSEDSMLoss(model, self.scheduler, reduction="none")

    def forward(
        self, x0: torch.Tensor, weight: torch.Tensor, condition: torch.Tensor | None = None
    ) -> torch.Tensor:
        cond = None
        if condition is not None:
            cond = TensorDict({"condition": condition}, batch_size=[x0.shape[0]])
        return self.loss(x0, weight=weight, condition=cond)
