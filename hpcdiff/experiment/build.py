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
from hpcdiff.diffusion.metrics import WeightedMSEDSMLoss
from hpcdiff.diffusion.multi_diffusion import MultiDiffusionModel2D
from hpcdiff.experiment.config import DiffusionConfig, ModelConfig
from hpcdiff.experiment.tiling import draw_corners, gather_patches
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
    model_cfg: ModelConfig,
    diffusion_cfg: DiffusionConfig,
    grid_shape: tuple[int, int],
    patch_shape: tuple[int, int],
    channels: int,
    condition_channels: int,
    kind: str = "diffusion",
) -> MultiDiffusionModel2D:
    """MultiDiffusionModel2D(preconditioner(backbone)) for ``channels`` target variables, or
    MultiDiffusionModel2D(RegressionNet(backbone)) for ``kind`` regression.

    The backbone sees [x, condition, positional embedding] stacked along channels.
    """
    pe = model_cfg.positional_embedding
    c_pe = model_cfg.channels_positional_embedding if pe else 0
    if pe == "linear":
        c_pe = 2
    in_channels = channels + condition_channels + c_pe
    family, _ = model_config(model_cfg.name)
    backbone = create_model(
        model_cfg.name, resolution=list(patch_shape), in_channels=in_channels,
        out_channels=channels, **model_cfg.args,
    )  # fmt: skip
    if family == "SongUNet":
        backbone = SongUNetDiffusionModel(backbone)
    if kind == "regression":
        from hpcdiff.experiment.regression import RegressionNet

        wrapped = RegressionNet(backbone)
    else:
        sigma_data = float(diffusion_cfg.sigma_data)
        wrapped = _precondition(diffusion_cfg.preconditioner, backbone, sigma_data)
    model = MultiDiffusionModel2D(
        wrapped,
        global_spatial_shape=tuple(grid_shape),
        positional_embedding=pe,
        channels_positional_embedding=c_pe or 4,
        condition_patch=True,
    )
    model.set_random_patching(patch_shape=tuple(patch_shape), patch_num=1)
    return model


class _OnPatches:
    """``model`` called on inputs that are already patches (x, t and condition: (P B, ...))."""

    def __init__(self, model: MultiDiffusionModel2D) -> None:
        self.model = model

    def __call__(self, x: torch.Tensor, t: torch.Tensor, condition=None) -> torch.Tensor:
        return self.model(
            x, t, condition=condition, x_is_patched=True, t_is_patched=True,
            condition_is_patched=True,
        )  # fmt: skip


class PatchObjective(Module):
    """What every training objective shares: the inference ``model`` (a MultiDiffusionModel2D)
    and ``patches_per_sample`` random patches of ``patch_shape`` per window.

    :meth:`patches` turns windows x0, weight (B, C, h, w) and condition (B, Cc, h, w) or None,
    whose top-left corners on the global grid are ``origin`` (B, 2) (default: the whole grid),
    into (P B, C, Hp, Wp) patches, the condition as sampling lays it out ({"condition": ...});
    the model's patch indices are set to the patches' global positions (their positional
    embedding). ``forward(x0, weight, condition, origin)`` returns the subclass's
    :meth:`patch_loss` of those patches, a loss map (P B, C, Hp, Wp)."""

    def __init__(
        self,
        model: MultiDiffusionModel2D,
        patch_shape: tuple[int, int] = (64, 64),
        patches_per_sample: int = 1,
    ) -> None:
        super().__init__()
        self.model = model
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        self.patches_per_sample = int(patches_per_sample)
        model.set_random_patching(patch_shape=self.patch_shape, patch_num=self.patches_per_sample)

    def patches(self, x0, weight, condition, origin) -> tuple:
        B, shape = x0.shape[0], self.patch_shape
        corners = draw_corners(x0.shape[-2:], shape, self.patches_per_sample, B)
        offset = torch.zeros(B, 2, dtype=torch.long) if origin is None else origin.cpu()
        self.model.set_patch_indices((corners + offset).reshape(-1, 2))  # global (P B, 2)
        x0_p = gather_patches(x0, corners, shape)  # (P B, C, Hp, Wp)
        weight_p = gather_patches(weight, corners, shape)
        cond_p = None
        if condition is not None:
            patches = gather_patches(condition, corners, shape)
            cond_p = TensorDict({"condition": patches}, batch_size=[patches.shape[0]])
        return x0_p, weight_p, cond_p

    def forward(
        self,
        x0: torch.Tensor,
        weight: torch.Tensor,
        condition: torch.Tensor | None = None,
        origin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.patch_loss(*self.patches(x0, weight, condition, origin))

    def patch_loss(
        self, x0_p: torch.Tensor, weight_p: torch.Tensor, cond_p: TensorDict | None
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define patch_loss")


class DiffusionObjective(PatchObjective):
    """Per-patch weighted DSM loss of ``model`` on windows of the global grid (the module a
    DeepSpeed engine wraps).

    ``forward(x0, weight, condition, origin)``: x0 and weight (B, C, h, w), condition
    (B, Cc, h, w) or None are windows whose top-left corners on the global grid are ``origin``
    (B, 2) (default: the whole grid). ``patches_per_sample`` patch corners are drawn uniformly
    in each window, independently per sample; the positional embedding is taken at the
    patches' global positions. Returns the loss map (P B, C, Hp, Wp).
    """

    def __init__(
        self,
        model: MultiDiffusionModel2D,
        scheduler: str = "edm",
        scheduler_args: dict | None = None,
        patch_shape: tuple[int, int] = (64, 64),
        patches_per_sample: int = 1,
    ) -> None:
        super().__init__(model, patch_shape, patches_per_sample)
        self.scheduler = build_scheduler(scheduler, scheduler_args or {})
        self.loss = WeightedMSEDSMLoss(_OnPatches(model), self.scheduler, reduction="none")

    def patch_loss(
        self, x0_p: torch.Tensor, weight_p: torch.Tensor, cond_p: TensorDict | None
    ) -> torch.Tensor:
        t = self.scheduler.sample_time(x0_p.shape[0], device=x0_p.device, dtype=x0_p.dtype)
        return self.loss(x0_p, weight_p, t=t, condition=cond_p)
