"""Adapters giving backbones with other call signatures the ``DiffusionModel`` signature."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hpcdiff.core import Module
from hpcdiff.models.conditioning import split_condition


class SongUNetDiffusionModel(Module):
    """``(x, t, condition) -> net(cat[x, images], t, vectors)`` for a SongUNet-family ``net``.

    Image conditions (tensor or TensorDict entries of shape (B, C, H, W), the patch
    ``"positional_embedding"`` last) are concatenated to ``x``; vector conditions (B, d) are
    concatenated into ``class_labels``. ``image_keys`` / ``vector_keys`` fix which TensorDict
    entries are used and their order (default: by rank, sorted by key; see
    :mod:`hpcdiff.models.conditioning`). Extra keyword arguments (``augment_labels``,
    ``global_index``, ``embedding_selector``) go to ``net``.

    >>> from hpcdiff.models import SongUNet
    >>> from tensordict import TensorDict
    >>> unet = SongUNet(img_resolution=8, in_channels=1 + 2 + 4, out_channels=1, label_dim=3,
    ...                 model_channels=16, channel_mult=[1], num_blocks=1)
    >>> model = SongUNetDiffusionModel(unet)
    >>> cond = TensorDict({"coarse": torch.randn(2, 2, 8, 8), "labels": torch.randn(2, 3),
    ...                    "positional_embedding": torch.randn(2, 4, 8, 8)}, batch_size=[2])
    >>> model(torch.randn(2, 1, 8, 8), torch.rand(2), cond).shape
    torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        net: Module,
        image_keys: Sequence[str] | None = None,
        vector_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.image_keys = list(image_keys) if image_keys is not None else None
        self.vector_keys = list(vector_keys) if vector_keys is not None else None

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | Mapping | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        images, labels = split_condition(condition, self.image_keys, self.vector_keys)
        if images:
            x = torch.cat([x, *(i.to(x.dtype) for i in images)], dim=1)  # (B, C_in, H, W)
        return self.net(x, t, labels, **model_kwargs)


class DiffusionModelAdapter(Module):
    """``DiffusionModel`` view of any ``nn.Module`` whose call signature names things differently.

    Calls ``net(x, **{time_arg: t, condition_arg: condition}, **model_kwargs)``. With
    ``concat_keys`` or ``condition_keys`` a TensorDict condition is unpacked instead: entries
    in ``concat_keys`` are concatenated to ``x`` along channels (in that order), and each
    ``condition_keys`` entry ``key -> argument`` is passed as ``argument=condition[key]``.
    ``condition_arg=None`` drops a plain condition. To save the adapter, ``net`` must be an
    hpcdiff ``Module`` (wrap plain classes with ``Module.from_torch``).

    >>> net = torch.nn.Bilinear(3, 2, 3)
    >>> model = DiffusionModelAdapter(net, time_arg=None, condition_arg="input2")
    >>> model(torch.randn(4, 3), torch.rand(4), torch.randn(4, 2)).shape
    torch.Size([4, 3])
    """

    def __init__(
        self,
        net: nn.Module,
        time_arg: str | None = "t",
        condition_arg: str | None = "condition",
        concat_keys: Sequence[str] | None = None,
        condition_keys: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.time_arg, self.condition_arg = time_arg, condition_arg
        self.concat_keys = list(concat_keys or [])
        self.condition_keys = dict(condition_keys or {})

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | Mapping | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        kwargs = dict(model_kwargs)
        if self.time_arg is not None:
            kwargs[self.time_arg] = t
        unpack = self.concat_keys or self.condition_keys
        if unpack and condition is not None:
            if isinstance(condition, torch.Tensor):
                raise TypeError(
                    "this adapter unpacks TensorDict conditions (concat_keys/condition_keys); "
                    "got a plain tensor"
                )
            if self.concat_keys:
                x = torch.cat([x, *(condition[k].to(x.dtype) for k in self.concat_keys)], dim=1)
            kwargs.update({arg: condition[key] for key, arg in self.condition_keys.items()})
        elif self.condition_arg is not None:
            kwargs[self.condition_arg] = condition
        return self.net(x, **kwargs)
