"""Denoising score matching losses (Vincent 2011; Karras et al. 2022, Eq. 2 and Sec. 5).

L = w(t) (x0_hat(x_t, t) - x0)^2 per element, with t ~ scheduler.sample_time,
x_t = scheduler.add_noise(x0, t) and w(t) = scheduler.loss_weight(t) of shape (B,) or (B, C).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
from tensordict import TensorDict

from hpcdiff.diffusion.base import DiffusionModel, PredictorType
from hpcdiff.diffusion.utils.utils import apply_loss_weight

if TYPE_CHECKING:
    from hpcdiff.diffusion.noise_schedulers import NoiseScheduler

ToX0Fn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Reduction = Literal["none", "mean", "sum"]

_REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda loss: loss,
    "mean": torch.mean,
    "sum": torch.sum,
}


def _identity_x0(prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return prediction


def _to_x0_fn(
    prediction_type: PredictorType,
    score_to_x0_fn: ToX0Fn | None,
    epsilon_to_x0_fn: ToX0Fn | None,
    velocity_to_x0_fn: ToX0Fn | None = None,
) -> ToX0Fn:
    """The map (prediction, x_t, t) -> x0_hat for a model that predicts ``prediction_type``."""
    if prediction_type == "x0":
        return _identity_x0
    converters = {
        "score": score_to_x0_fn,
        "epsilon": epsilon_to_x0_fn,
        "velocity": velocity_to_x0_fn,
    }
    if prediction_type not in converters:
        raise ValueError(
            "prediction_type must be 'x0', 'score', 'epsilon', or 'velocity', "
            f"got '{prediction_type}'."
        )
    fn = converters[prediction_type]
    if fn is None:
        raise ValueError(
            f"{prediction_type}_to_x0_fn must be provided when prediction_type='{prediction_type}'."
        )
    return fn


def _reduction_fn(reduction: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'none', 'mean', or 'sum', got '{reduction}'.")
    return _REDUCTIONS[reduction]


class _DSMLoss:
    """Shared state of the DSM losses: model, scheduler, x0 conversion and reduction."""

    def __init__(
        self,
        model: DiffusionModel,
        noise_scheduler: NoiseScheduler,
        prediction_type: PredictorType = "x0",
        score_to_x0_fn: ToX0Fn | None = None,
        epsilon_to_x0_fn: ToX0Fn | None = None,
        reduction: Reduction = "mean",
        velocity_to_x0_fn: ToX0Fn | None = None,
    ) -> None:
        self.model = model
        self.noise_scheduler = noise_scheduler
        self._to_x0 = _to_x0_fn(
            prediction_type, score_to_x0_fn, epsilon_to_x0_fn, velocity_to_x0_fn
        )
        self._reduce = _reduction_fn(reduction)

    def _x0_error(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | None,
        condition: torch.Tensor | TensorDict | None,
        model_kwargs: dict[str, Any],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (x0_hat - x0) (B, *) and the time t (B,) it was evaluated at."""
        if t is None:
            t = self.noise_scheduler.sample_time(x0.shape[0], device=x0.device, dtype=x0.dtype)
        x_t = self.noise_scheduler.add_noise(x0, t)
        prediction = self.model(x_t, t, condition=condition, **model_kwargs)
        return self._to_x0(prediction, x_t, t) - x0, t

    def _weigh_and_reduce(self, loss: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        w = apply_loss_weight(self.noise_scheduler.loss_weight(t), loss.ndim)  # (B, 1|C, 1, ..., 1)
        return self._reduce(w * loss)


class MSEDSMLoss(_DSMLoss):
    """Mean-squared denoising score matching, w(t) (x0_hat(x_t, t) - x0)^2 (Karras et al. 2022).

    The model's output is turned into x0_hat according to ``prediction_type``: used as is for
    ``"x0"``, through ``score_to_x0_fn(score, x_t, t)`` for ``"score"``,
    ``epsilon_to_x0_fn(epsilon, x_t, t)`` for ``"epsilon"`` and
    ``velocity_to_x0_fn(velocity, x_t, t)`` for ``"velocity"`` (e.g. the scheduler's
    ``score_to_x0`` / ``epsilon_to_x0`` / ``velocity_to_x0``). With
    :class:`~hpcdiff.diffusion.noise_schedulers.RectifiedFlowNoiseScheduler` (weight 1 / t^2)
    and ``"velocity"`` this is the flow matching loss |v_hat - v|^2.

    Parameters
    ----------
    model : DiffusionModel
        Network ``model(x_t, t, condition=None, **kw)``, e.g. a preconditioned backbone.
    noise_scheduler : NoiseScheduler
        Supplies ``sample_time``, ``add_noise`` and ``loss_weight``.
    prediction_type : {"x0", "score", "epsilon", "velocity"}, default "x0"
    score_to_x0_fn, epsilon_to_x0_fn : callable, optional
        Required for ``prediction_type`` ``"score"`` and ``"epsilon"`` respectively.
    reduction : {"none", "mean", "sum"}, default "mean"
        ``"none"`` returns the per-element loss of shape (B, *).
    velocity_to_x0_fn : callable, optional
        Required for ``prediction_type="velocity"``.

    Examples
    --------
    >>> import torch
    >>> class Scheduler:  # sigma(t) = t, w(t) = 1 / t^2
    ...     def sample_time(self, N, *, device=None, dtype=None):
    ...         return torch.full((N,), 2.0, device=device, dtype=dtype)
    ...     def add_noise(self, x0, time):
    ...         return x0 + time.view(-1, 1)
    ...     def loss_weight(self, t):
    ...         return 1 / t**2
    >>> loss_fn = MSEDSMLoss(lambda x, t, condition=None: x, Scheduler())
    >>> loss_fn(torch.zeros(3, 2))  # x0_hat - x0 = t = 2, weight 1/4
    tensor(1.)
    """

    def __call__(
        self,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        condition: torch.Tensor | TensorDict | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """Loss for clean data x0 (B, *); ``t`` (B,) is sampled from the scheduler when None."""
        error, t = self._x0_error(x0, t, condition, model_kwargs)
        return self._weigh_and_reduce(error**2, t)


class WeightedMSEDSMLoss(_DSMLoss):
    """DSM loss with an element-wise weight m (e.g. a mask): w(t) m (x0_hat - x0)^2.

    Same constructor as :class:`MSEDSMLoss`; ``weight`` (B, *) is unrelated to the scheduler's
    time weight w(t).

    Examples
    --------
    >>> import torch
    >>> class Scheduler:
    ...     def sample_time(self, N, *, device=None, dtype=None):
    ...         return torch.ones(N, device=device, dtype=dtype)
    ...     def add_noise(self, x0, time):
    ...         return x0 + time.view(-1, 1)
    ...     def loss_weight(self, t):
    ...         return torch.ones_like(t)
    >>> loss_fn = WeightedMSEDSMLoss(lambda x, t, condition=None: x, Scheduler(), reduction="sum")
    >>> loss_fn(torch.zeros(2, 4), weight=torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0]]))
    tensor(3.)
    """

    def __call__(
        self,
        x0: torch.Tensor,
        weight: torch.Tensor,
        t: torch.Tensor | None = None,
        condition: torch.Tensor | TensorDict | None = None,
        **model_kwargs: Any,
    ) -> torch.Tensor:
        """Weighted loss for clean data x0 (B, *) and element weight ``weight`` (B, *)."""
        error, t = self._x0_error(x0, t, condition, model_kwargs)
        return self._weigh_and_reduce(weight * error**2, t)
