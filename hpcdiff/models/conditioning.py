"""How backbones read a ``condition``: image channels to concatenate, vectors to embed.

A condition is ``None``, a tensor, or a TensorDict (any mapping of names to tensors). Tensors
of shape (B, C, H, W) are image conditions, concatenated to ``x`` along channels; tensors of
shape (B, d) (or (B,), read as (B, 1)) are vector conditions, concatenated along features.
TensorDict entries are taken in sorted key order, except :data:`POSITIONAL_EMBEDDING_KEY`
(the patch's global positional embedding injected by the multi-diffusion wrapper), which
always comes last.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

POSITIONAL_EMBEDDING_KEY = "positional_embedding"


def _ordered_keys(condition: Mapping) -> list[str]:
    keys = list(condition.keys())  # (TensorDicts of some versions refuse `key in td`)
    last = [POSITIONAL_EMBEDDING_KEY] if POSITIONAL_EMBEDDING_KEY in keys else []
    return sorted(k for k in keys if k != POSITIONAL_EMBEDDING_KEY) + last


def _as_vector(name: str, v: torch.Tensor) -> torch.Tensor:
    if v.ndim == 1:
        return v[:, None]
    if v.ndim == 2:
        return v
    raise ValueError(f"condition {name!r}: expected a (B, d) vector, got shape {tuple(v.shape)}")


def split_condition(
    condition: torch.Tensor | Mapping | None,
    image_keys: Sequence[str] | None = None,
    vector_keys: Sequence[str] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Image conditions (list of (B, C_k, H, W)) and the concatenated vector condition (B, d).

    With ``image_keys`` / ``vector_keys`` given, exactly those TensorDict entries are used, in
    that order; otherwise entries are classified by rank (4-D image, 1-D/2-D vector).

    >>> from tensordict import TensorDict
    >>> td = TensorDict({"positional_embedding": torch.zeros(2, 4, 8, 8),
    ...                  "coarse": torch.zeros(2, 3, 8, 8), "lead": torch.zeros(2)}, [2])
    >>> images, vector = split_condition(td)
    >>> [tuple(i.shape) for i in images], tuple(vector.shape)
    ([(2, 3, 8, 8), (2, 4, 8, 8)], (2, 1))
    """
    if condition is None:
        return [], None
    if isinstance(condition, torch.Tensor):
        if condition.ndim == 4:
            return [condition], None
        return [], _as_vector("condition", condition)
    if not isinstance(condition, Mapping) and not hasattr(condition, "keys"):
        raise TypeError(
            f"condition must be a Tensor, a TensorDict or None, got {type(condition).__name__}"
        )
    images, vectors = [], []
    if image_keys is None and vector_keys is None:
        for key in _ordered_keys(condition):
            value = condition[key]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"condition {key!r}: expected a tensor, got {type(value).__name__}")
            if value.ndim == 4:
                images.append(value)
            else:
                vectors.append(_as_vector(key, value))
    else:
        for key in image_keys or ():
            value = condition[key]
            if value.ndim != 4:
                raise ValueError(
                    f"condition {key!r}: expected a (B, C, H, W) image, got {tuple(value.shape)}"
                )
            images.append(value)
        vectors = [_as_vector(key, condition[key]) for key in vector_keys or ()]
    vector = None
    if vectors:
        vector = vectors[0] if len(vectors) == 1 else torch.cat(vectors, dim=1)
    return images, vector
