"""Adapt backbones with other conditioning signatures to the ``DiffusionModel`` interface."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch
from tensordict import TensorDict

from hpcdiff.core import Module


def _takes_unet_labels(model: torch.nn.Module) -> bool:
    """True for SongUNet/DhariwalUNet-style ``forward(x, noise_labels, class_labels, ...)``."""
    inner = getattr(model, "_orig_mod", model)  # look through torch.compile
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False
    return "noise_labels" in params and "class_labels" in params


class ConcatConditionWrapper(Module):
    """``DiffusionModel`` wrapper: image conditions are concatenated to ``x`` along channels,
    vector conditions are routed to the backbone's vector-conditioning argument.

    ``condition`` is a TensorDict with ``image_cond_key`` (B, C_cond, *spatial) and/or
    ``vector_cond_key`` (B, D), a plain tensor (treated as the image condition) or None.
    Backbones whose forward takes ``noise_labels`` and ``class_labels`` (SongUNet family,
    DhariwalUNet) are called as ``model(cat(x, c), noise_labels=t, class_labels=v,
    augment_labels=...)``; any other as ``model(cat(x, c), t, condition=v, **model_kwargs)``.

    >>> class Backbone(Module):
    ...     def forward(self, x, t, condition=None):
    ...         return x[:, :2] * t.view(-1, 1, 1, 1)
    >>> net = ConcatConditionWrapper(Backbone())
    >>> net(torch.ones(3, 2, 4, 4), torch.ones(3), torch.zeros(3, 1, 4, 4)).shape
    torch.Size([3, 2, 4, 4])
    """

    def __init__(
        self,
        model: Module,
        image_cond_key: str = "cond_concat",
        vector_cond_key: str = "cond_vec",
    ) -> None:
        super().__init__()
        self.model = model
        self.image_cond_key = image_cond_key
        self.vector_cond_key = vector_cond_key
        self._unet_style = _takes_unet_labels(model)

    def _split_condition(
        self, condition: torch.Tensor | TensorDict | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(image condition to concatenate, vector condition) from ``condition``."""
        if condition is None:
            return None, None
        if isinstance(condition, TensorDict):
            cond_concat = condition.get(self.image_cond_key, None)
            cond_vec = condition.get(self.vector_cond_key, None)
            if cond_concat is None and cond_vec is None:
                raise ValueError(
                    f"condition TensorDict has neither '{self.image_cond_key}' nor "
                    f"'{self.vector_cond_key}' (keys: {list(condition.keys())}); pass a plain "
                    "tensor for image-only conditioning"
                )
            return cond_concat, cond_vec
        if isinstance(condition, torch.Tensor):
            if (self.image_cond_key, self.vector_cond_key) != ("cond_concat", "cond_vec"):
                warnings.warn(
                    f"ConcatConditionWrapper has custom keys '{self.image_cond_key}' / "
                    f"'{self.vector_cond_key}' but got a plain tensor condition; it is "
                    "concatenated to x as an image condition",
                    stacklevel=3,
                )
            return condition, None
        raise TypeError(
            f"condition must be a torch.Tensor, TensorDict or None, got {type(condition).__name__}"
        )

    @staticmethod
    def _check_shapes(
        x: torch.Tensor, t: torch.Tensor, cond_concat: torch.Tensor | None, cond_vec
    ) -> None:
        B = x.shape[0]
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},) to match x, got {tuple(t.shape)}")
        if cond_vec is not None:
            if cond_vec.shape[0] != B:
                raise ValueError(f"vector condition has batch size {cond_vec.shape[0]}, x has {B}")
            if cond_vec.ndim != 2:
                raise ValueError(
                    f"vector condition must be 2-D (B, D), got shape {tuple(cond_vec.shape)}"
                )
        if cond_concat is not None:
            if cond_concat.shape[0] != B:
                raise ValueError(
                    f"image condition has batch size {cond_concat.shape[0]}, x has {B}"
                )
            if cond_concat.ndim != x.ndim:
                raise ValueError(
                    f"image condition must have {x.ndim} dims like x, got shape "
                    f"{tuple(cond_concat.shape)}"
                )
            if cond_concat.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"image condition spatial shape {tuple(cond_concat.shape[2:])} must match "
                    f"x's {tuple(x.shape[2:])}"
                )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | TensorDict | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """Backbone output for ``x`` (B, C, *spatial) at times ``t`` (B,)."""
        cond_concat, cond_vec = self._split_condition(condition)
        if not torch.compiler.is_compiling():
            self._check_shapes(x, t, cond_concat, cond_vec)
        if cond_concat is not None:
            x = torch.cat([x, cond_concat], dim=1)  # (B, C + C_cond, *spatial)
        if self._unet_style:
            augment_labels = model_kwargs.pop("augment_labels", None)
            return self.model(
                x,
                noise_labels=t,
                class_labels=cond_vec,
                augment_labels=augment_labels,
                **model_kwargs,
            )
        return self.model(x, t, condition=cond_vec, **model_kwargs)
