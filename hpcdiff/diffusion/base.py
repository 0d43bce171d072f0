"""The three call signatures of a diffusion pipeline: DiffusionModel, Predictor, Denoiser.

Training:  data -> NoiseScheduler.add_noise -> DiffusionModel -> loss
Inference: DiffusionModel -> partial(condition=...) -> Predictor -> get_denoiser -> Denoiser
           -> Solver.step (sample loop) -> samples
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch
from tensordict import TensorDict

PredictorType = Literal["x0", "score", "epsilon", "velocity"]
"""What a predictor returns: clean data, the score, the noise epsilon, or the velocity
v = dx_t/dt = alpha'(t) x0 + sigma'(t) eps (flow matching)."""


@runtime_checkable
class DiffusionModel(Protocol):
    """A network (or function) mapping a noisy state ``x`` at time ``t`` to a prediction.

    ``condition`` is a tensor, a :class:`~tensordict.TensorDict` of several conditioning
    tensors, or ``None`` (unconditional). Shapes: ``x`` (B, *), ``t`` (B,).

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from hpcdiff.diffusion import DiffusionModel
    >>>
    >>> class Model:
    ...     def __call__(self, x, t, condition=None, **kwargs):
    ...         return F.relu(x)
    ...
    >>> isinstance(Model(), DiffusionModel)
    True
    """

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        condition: torch.Tensor | TensorDict | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor: ...


@runtime_checkable
class Predictor(Protocol):
    """Inference-time callable ``(x, t) -> prediction`` (x0, score, epsilon, ...).

    Usually a :class:`DiffusionModel` with its condition bound by ``functools.partial``.

    >>> import torch
    >>> from functools import partial
    >>> from tensordict import TensorDict
    >>> from hpcdiff.diffusion import Predictor
    >>>
    >>> class MyModel:
    ...     def __call__(self, x, t, condition=None):
    ...         t_bc = t.view(-1, *([1] * (x.ndim - 1)))
    ...         return x / (1 + t_bc**2) + condition["y"]
    ...
    >>> model = MyModel()
    >>> cond = TensorDict({"y": torch.randn(2, 4)}, batch_size=[2])
    >>> x0_predictor = partial(model, condition=cond)
    >>> isinstance(x0_predictor, Predictor)
    True
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Denoiser(Protocol):
    """The update function a solver integrates, e.g. the probability-flow ODE rhs dx/dt.

    Built from a :class:`Predictor` by ``NoiseScheduler.get_denoiser``.

    >>> import torch
    >>> from hpcdiff.diffusion import Denoiser
    >>> def x0_predictor(x, t):
    ...     t_bc = t.view(-1, *([1] * (x.ndim - 1)))
    ...     return x / (1 + t_bc**2)
    >>> def my_denoiser(x, t):
    ...     x0 = x0_predictor(x, t)
    ...     t_bc = t.view(-1, *([1] * (x.ndim - 1)))
    ...     return (x0 - x) / t_bc
    ...
    >>> isinstance(my_denoiser, Denoiser)
    True
    """

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
