"""Semi-linear split F(x, t) = a(t) x + b(t) N(x, t) of an ODE rhs and its exponential-integrator
weights (Hochbruck & Ostermann 2010; Zhang & Chen 2023, DEIS; Lu et al. 2022, DPM-Solver)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

TimeFn = Callable[[torch.Tensor], torch.Tensor]

# Gauss-Legendre rule on [-1, 1] as Python floats (constants under torch.compile).
_GL_NODES, _GL_WEIGHTS = (tuple(v.tolist()) for v in np.polynomial.legendre.leggauss(8))


def _zeros(t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(t)


def _ones(t: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(t)


def linear_split_options(noise_scheduler: Any, prediction_type: str = "x0") -> dict[str, TimeFn]:
    """``bias_fn``, ``bias_int_fn``, ``slope_fn`` from ``get_linear_denoiser`` when the
    scheduler has one (linear-Gaussian schedules), else no options (explicit Euler)."""
    split = getattr(noise_scheduler, "get_linear_denoiser", None)
    if not callable(split):
        return {}
    bias_fn, bias_int_fn, slope_fn = split(prediction_type=prediction_type)
    return {"bias_fn": bias_fn, "bias_int_fn": bias_int_fn, "slope_fn": slope_fn}


class SemiLinear:
    """The split ``(a, A, b)`` with A' = a; defaults a = 0, b = 1 (then exponential Euler is
    explicit Euler). ``bias_fn`` and ``bias_int_fn`` come together or not at all."""

    def __init__(
        self, bias_fn: TimeFn | None, bias_int_fn: TimeFn | None, slope_fn: TimeFn | None
    ) -> None:
        if (bias_fn is None) != (bias_int_fn is None):
            raise ValueError(
                "bias_fn and bias_int_fn must both be provided or both None, got "
                f"bias_fn={bias_fn!r}, bias_int_fn={bias_int_fn!r}."
            )
        self.bias_fn = bias_fn if bias_fn is not None else _zeros
        self.bias_int_fn = bias_int_fn if bias_int_fn is not None else _zeros
        self.slope_fn = slope_fn if slope_fn is not None else _ones

    def propagator(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """E = exp(A(t_next) - A(t_cur)), the exact flow of x' = a(t) x."""
        return torch.exp(self.bias_int_fn(t_next) - self.bias_int_fn(t_cur))

    def _ratio(self, t: torch.Tensor) -> torch.Tensor:
        return self.slope_fn(t) / self.bias_fn(t)

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """J = int_{t_cur}^{t_next} exp(A(t_next) - A(s)) b(s) ds.

        With r = b/a frozen at t_next, the part r a integrates exactly to r (E - 1); the rest,
        exp(A(t_next) - A(s)) (b - r a), by 8-point Gauss-Legendre. Exact whenever b/a is
        constant (x0 splits of alpha = 1 schedules and of rectified flow).
        """
        half, mid = (t_next - t_cur) / 2, (t_next + t_cur) / 2
        # r at t_next; where b/a is indeterminate there (inf/inf at sigma = 0), its linear
        # extrapolation from 1% and 2% into the step; else 0 (no split: pure quadrature).
        r = self._ratio(t_next)
        h = t_cur - t_next
        r_in = 2 * self._ratio(t_next + 1e-2 * h) - self._ratio(t_next + 2e-2 * h)
        r = torch.where(torch.isfinite(r), r, r_in)
        r = torch.where(torch.isfinite(r), r, torch.zeros_like(r))
        A_next = self.bias_int_fn(t_next)
        # All nodes in one batch: s (G, *t.shape), so each coefficient function runs once.
        z = torch.tensor(_GL_NODES, dtype=t_cur.dtype, device=t_cur.device)
        w = torch.tensor(_GL_WEIGHTS, dtype=t_cur.dtype, device=t_cur.device)
        s = mid + half * z.reshape(-1, *([1] * t_cur.ndim))
        rest = torch.exp(A_next - self.bias_int_fn(s)) * (self.slope_fn(s) - r * self.bias_fn(s))
        rest = torch.tensordot(w, rest, dims=1)
        return r * torch.expm1(A_next - self.bias_int_fn(t_cur)) + half * rest

    def step_coefficients(
        self, t_cur: torch.Tensor, t_next: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, p) with exponential Euler x_next = E x + J N = q x + p F(x, t_cur).

        N = (F - a x) / b, so p = J / b and q = E - p a; a zero slope drops the N term.
        """
        a, b = self.bias_fn(t_cur), self.slope_fn(t_cur)
        zero = b == 0
        p = torch.where(zero, 0, self.weight(t_cur, t_next) / torch.where(zero, 1, b))
        return self.propagator(t_cur, t_next) - p * a, p


class FrozenLinear:
    """The split F = a x + N with only a(t) known (``linear_fn``): a frozen at t_cur over a
    step, so E = exp(h a) and J = (exp(h a) - 1) / a (J = h where a = 0), h = t_next - t_cur;
    first order in the variation of a. A :class:`SemiLinear` is exact where A is known."""

    def __init__(self, linear_fn: TimeFn) -> None:
        self.bias_fn, self.slope_fn = linear_fn, _ones

    def propagator(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        return torch.exp((t_next - t_cur) * self.bias_fn(t_cur))

    def weight(self, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        a, h = self.bias_fn(t_cur), t_next - t_cur
        zero = a == 0
        return torch.where(zero, h, torch.expm1(h * a) / torch.where(zero, 1, a))


def split_of(
    linear_fn: TimeFn | None,
    bias_fn: TimeFn | None,
    bias_int_fn: TimeFn | None,
    slope_fn: TimeFn | None,
) -> SemiLinear | FrozenLinear:
    """The split a solver was given: ``linear_fn`` (a scheduler's ``get_linear_denoiser``
    result, used exactly, or any a(t), frozen per step) or ``bias_fn``, ``bias_int_fn``,
    ``slope_fn``; nothing is a = 0, b = 1."""
    if linear_fn is None:
        return SemiLinear(bias_fn, bias_int_fn, slope_fn)
    if (bias_fn, bias_int_fn, slope_fn) != (None, None, None):
        raise ValueError("give linear_fn or bias_fn / bias_int_fn / slope_fn, not both")
    if isinstance(linear_fn, tuple) and len(linear_fn) == 3:  # a LinearSplit
        return SemiLinear(*linear_fn)
    return FrozenLinear(linear_fn)


# sum_{k=1}^{10} c_k h^k with c_k = (-1)^(k+1) / (k + 1)! (m1) and 2 (-1)^(k+1) / (k + 2)! (m2).
_M1_SERIES = tuple((-1) ** (k + 1) / math.factorial(k + 1) for k in range(1, 11))
_M2_SERIES = tuple(2 * (-1) ** (k + 1) / math.factorial(k + 2) for k in range(1, 11))


def _power_series(h: torch.Tensor, coefficients: tuple[float, ...]) -> torch.Tensor:
    """sum_k c_k h^k, k = 1 .. len(c), as one batched power and reduction."""
    k = torch.arange(1, len(coefficients) + 1, dtype=h.dtype, device=h.device)
    c = torch.tensor(coefficients, dtype=h.dtype, device=h.device)
    return (c * h.unsqueeze(-1) ** k).sum(-1)


def unic_moments(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized moments (m1, m2) = (I_1 / h, 2 I_2 / h^2), I_k = int_0^h e^{-(h-u)} u^k/k! du.

    I_0 = 1 - e^{-h}, I_1 = h - I_0, I_2 = h^2 / 2 - I_1, so m1 = 1 - I_0 / h and
    m2 = 1 - 2 m1 / h; their Taylor series below h = 1/2, where those differences cancel.
    """
    small = h.abs() < 0.5
    hs = torch.where(small, h, torch.zeros_like(h))
    hd = torch.where(small, torch.ones_like(h), h)
    m1_direct = 1 + torch.expm1(-hd) / hd
    m1 = torch.where(small, _power_series(hs, _M1_SERIES), m1_direct)
    m2 = torch.where(small, _power_series(hs, _M2_SERIES), 1 - 2 * m1_direct / hd)
    return m1, m2
