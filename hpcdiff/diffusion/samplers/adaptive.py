"""Adaptive step-size ODE solver: embedded Runge-Kutta pairs with error control (Hairer, Norsett &
Wanner, Solving ODEs I, sec. II.4; Bogacki & Shampine 1989)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver

NormFn = Callable[[torch.Tensor], float]
"""``y (B, *) -> float``: the error norm, max over samples of the RMS of each sample."""

Method = Literal["heun_euler", "bosh3"]
_ORDER = {"heun_euler": 1, "bosh3": 2}  # order q of the embedded (error-estimating) solution


def rms_norm(y: torch.Tensor) -> float:
    """max over samples of the RMS over each sample's elements of ``y`` (B, *)."""
    return y.square().flatten(1).mean(1).sqrt().max().item()


class AdaptiveSolver(Solver):
    """Integrates each interval [t_cur, t_next] with an embedded pair and a bounded controller.

    Pairs: ``"heun_euler"`` (Heun 2 / Euler 1, two calls per step) and ``"bosh3"``
    (Bogacki-Shampine 3(2), first-same-as-last: three calls per accepted step). The error of
    a step is err = max_b RMS((x_hi - x_lo) / (atol + rtol max(|x|, |x_hi|))) over samples b;
    it is accepted when err <= 1 and the higher-order solution is kept. After an accepted step
    h grows by safety err_n^(-0.7 / (q + 1)) err_{n-1}^(0.4 / (q + 1)) (PI control, Gustafsson
    1991), after a rejection by safety err^(-1 / (q + 1)) <= 1; the factor is bounded to
    [factor_min, factor_max]; q is the embedded order. The step proposal carries over to the
    next interval. A step that ends at t = 0, where the diffusion ODE rhs is singular, is one
    Euler step (the x0 estimate for an EDM-form rhs); end grids with ``[..., t_min, 0]``. Times
    are the scheduler's t, for EDM the noise level sigma, in which the flow is nearly straight.

    All samples share one step sequence, so the batch needs one time; the step decisions read
    the error on the host (this solver is not for ``torch.compile(fullgraph=True)``; for
    compiled production runs use :func:`optimize_schedule` and a fixed-step solver).
    ``nfe``, ``n_accepted``, ``n_rejected`` and ``accepted_times`` record the work since the
    last :meth:`reset`; ``step_sizes`` holds (t_mid, h_opt) per accepted step, h_opt = h
    err^(-1 / (q + 1)) the step that would just meet the tolerance there.

    Parameters
    ----------
    denoiser : Denoiser
        ``F(x, t)``, the probability-flow ODE rhs.
    method : {"heun_euler", "bosh3"}
        Embedded pair (default "bosh3").
    rtol, atol : float
        Relative and absolute tolerances of the RMS error norm (1e-3, 1e-3).
    h_init : float, optional
        First step size; default 0.01 RMS(x / scale) / RMS(F / scale) (no extra call).
    safety, factor_min, factor_max : float
        Controller safety factor and step-ratio bounds (0.8, 0.2, 5).
    max_steps : int
        Attempted steps per interval before RuntimeError (1000).
    norm_fn : callable, optional
        ``y -> max_b RMS(y_b)`` as a float, for the step-size decisions; default over the
        elements of ``y``. Tiled sampling passes one over the whole domain, so that every
        rank takes the same steps.
    noise_fn : callable, optional
        Accepted for the common solver signature; this solver draws no noise.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import AdaptiveSolver
    >>> solver = AdaptiveSolver(lambda x, t: -x, rtol=1e-6, atol=1e-9)  # dx/dt = -x
    >>> x = solver.step(torch.ones(1, 1), torch.tensor([1.0]), torch.tensor([0.5]))
    >>> abs(x.item() - torch.e**0.5) < 1e-5
    True
    """

    def __init__(
        self,
        denoiser: Denoiser,
        method: Method = "bosh3",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        h_init: float | None = None,
        safety: float = 0.8,
        factor_min: float = 0.2,
        factor_max: float = 5.0,
        max_steps: int = 1000,
        *,
        norm_fn: NormFn | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> None:
        if method not in _ORDER:
            raise ValueError(f"method must be 'heun_euler' or 'bosh3', got {method!r}")
        if rtol < 0 or atol < 0 or rtol + atol == 0:
            raise ValueError(f"need rtol, atol >= 0, not both 0; got rtol={rtol}, atol={atol}")
        if not 0 < factor_min < 1 < factor_max or not 0 < safety <= 1:
            raise ValueError(
                "need 0 < factor_min < 1 < factor_max and 0 < safety <= 1, got "
                f"factor_min={factor_min}, factor_max={factor_max}, safety={safety}"
            )
        if h_init is not None and h_init <= 0:
            raise ValueError(f"h_init must be positive, got {h_init}")
        self.denoiser = denoiser
        self.method = method
        self.rtol, self.atol = rtol, atol
        self.h_init = h_init
        self.safety, self.factor_min, self.factor_max = safety, factor_min, factor_max
        self.max_steps = max_steps
        self.norm_fn = norm_fn if norm_fn is not None else rms_norm
        self.noise_fn = noise_fn
        self.reset()

    def reset(self) -> None:
        """Zero the counters and forget the proposed step size."""
        self.nfe = 0
        self.n_accepted = 0
        self.n_rejected = 0
        self.accepted_times: list[float] = []
        self.step_sizes: list[tuple[float, float]] = []
        self._h: float | None = None

    def _F(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.nfe += 1
        return self.denoiser(x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device))

    def _scale(self, x: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        return self.atol + self.rtol * torch.maximum(x.abs(), x_new.abs())

    def _pair(
        self, x: torch.Tensor, t: float, h: float, k1: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x_hi, x_hi - x_lo, F(x_hi, t + h) if the pair provides it else None)."""
        if self.method == "heun_euler":
            k2 = self._F(x + h * k1, t + h)
            return x + (h / 2) * (k1 + k2), (h / 2) * (k2 - k1), None
        k2 = self._F(x + (h / 2) * k1, t + h / 2)
        k3 = self._F(x + (3 * h / 4) * k2, t + 3 * h / 4)
        x_hi = x + h * (2 / 9 * k1 + 1 / 3 * k2 + 4 / 9 * k3)
        k4 = self._F(x_hi, t + h)
        # x_hi - x_lo with the 2nd-order weights (7/24, 1/4, 1/3, 1/8).
        err = h * (-5 / 72 * k1 + 1 / 12 * k2 + 1 / 9 * k3 - 1 / 8 * k4)
        return x_hi, err, k4

    def _first_h(self, x: torch.Tensor, k1: torch.Tensor, span: float) -> float:
        if self.h_init is not None:
            return self.h_init
        scale = self._scale(x, x)
        d0, d1 = self.norm_fn(x / scale), self.norm_fn(k1 / scale)
        if d0 < 1e-5 or d1 < 1e-5:
            return 1e-6 * span
        return min(span, 0.01 * d0 / d1)

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Integrate ``x`` (B, *) from ``t_cur`` to ``t_next`` (B,), equal over the batch."""
        t0, t1 = float(t_cur.reshape(-1)[0]), float(t_next.reshape(-1)[0])
        if bool((t_cur != t0).any()) or bool((t_next != t1).any()):
            raise ValueError("AdaptiveSolver needs one t_cur and one t_next for the whole batch")
        if not self.accepted_times or self.accepted_times[-1] != t0:
            self.accepted_times.append(t0)
        if t1 == t0:
            return x
        if t1 == 0:  # singular endpoint: one Euler step
            self.n_accepted += 1
            self.accepted_times.append(t1)
            self.nfe += 1
            return x - t0 * self.denoiser(x, t_cur)
        return self._integrate(x, t0, t1)

    def _integrate(self, x: torch.Tensor, t: float, t1: float) -> torch.Tensor:
        direction = 1.0 if t1 > t else -1.0
        k1 = self._F(x, t)
        h = self._h if self._h is not None else self._first_h(x, k1, abs(t1 - t))
        q1 = _ORDER[self.method] + 1
        e_prev = 1.0
        for _ in range(self.max_steps):
            last = h >= abs(t1 - t)
            h_step = abs(t1 - t) if last else h
            x_hi, err, k_end = self._pair(x, t, direction * h_step, k1)
            e = max(self.norm_fn(err / self._scale(x, x_hi)), 1e-10)
            if e <= 1:  # PI control (Gustafsson 1991) of accepted steps
                factor = self.safety * e ** (-0.7 / q1) * e_prev ** (0.4 / q1)
            else:
                factor = self.safety * e ** (-1 / q1)
            factor = min(self.factor_max, max(self.factor_min, factor))
            if e <= 1:
                e_prev = e
                # Step that would just meet the tolerance here, free of controller transients.
                self.step_sizes.append((t + direction * h_step / 2, h_step * e ** (-1 / q1)))
                t = t1 if last else t + direction * h_step
                x, self.n_accepted = x_hi, self.n_accepted + 1
                self.accepted_times.append(t)
                h = h_step * factor if not last else max(h, h_step * factor)
                if last:
                    self._h = h
                    return x
                k1 = k_end if k_end is not None else self._F(x, t)
            else:
                self.n_rejected += 1
                h = h_step * min(1.0, factor)
        raise RuntimeError(
            f"AdaptiveSolver: no convergence within max_steps={self.max_steps} at t={t} "
            f"(step {h:.3g}); loosen rtol/atol or raise max_steps"
        )
