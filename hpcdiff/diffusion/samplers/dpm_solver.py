"""DPM-Solver++(2M): the second-order multistep ODE solver of Lu et al. 2022 (data prediction),
with the optional UniC corrector of Zhao et al. 2023 (UniPC)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from hpcdiff.diffusion.base import Denoiser
from hpcdiff.diffusion.samplers._semilinear import TimeFn, split_of, unic_moments
from hpcdiff.diffusion.samplers.base import NoiseFn, Solver, per_sample

_NEEDS = {"x0": ("alpha", "sigma"), "ode": ("alpha", "sigma", "alpha_dot", "sigma_dot")}


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


class DPMSolverPlusPlus2M(Solver):
    """DPM-Solver++(2M), Algorithm 2 of Lu et al. 2022, for ``x_t = alpha(t) x0 + sigma(t) eps``.

    With ``lambda = log(alpha / sigma)``, ``h = lambda(t_next) - lambda(t_cur)`` and the x0
    estimates ``D_n`` (this step) and ``D_{n+1}`` (previous step, step size ``h_prev``):
    ``x_next = sigma_next / sigma_cur x - alpha_next (exp(-h) - 1) D`` with
    ``D = (1 + 1/(2r)) D_n - 1/(2r) D_{n+1}``, ``r = h_prev / h``. The first step, a step that
    does not start where the previous one ended, and the step to ``t_next = 0`` (where
    ``lambda = inf``, so ``x_next = alpha(0) D_n``) use ``D = D_n`` (DPM-Solver++(1), i.e. DDIM).

    One denoiser call per step. It needs the x0 estimate, which it gets in one of two ways:

    * ``denoiser_type="ode"`` (default): ``denoiser`` is the probability-flow ODE rhs
      ``F = dx/dt`` from ``noise_scheduler.get_denoiser(..., denoising_type="ode")``, exactly as
      for the other solvers, so ``sample(..., solver="dpm++2m")`` works unchanged with any
      predictor type. With the scheduler's default drift and g^2, that rhs is
      ``F = (sigma'/sigma) x + alpha lambda' x0``, inverted in closed form:
      ``x0 = (F - (sigma'/sigma) x) / (alpha lambda')``.
    * ``denoiser_type="x0"``: ``denoiser`` is an x0-predictor ``(x, t) -> x0`` (two memory
      passes per step fewer). Its output is kept, not copied, until the next step.

    ``corrector="unic"`` adds UniC-2 (Zhao et al. 2023): the predicted ``x_next`` is
    evaluated, ``D' = D(x_pred, t_next)``, and the step is redone with D fitted through
    ``D_{n+1}, D_n, D'`` as a quadratic in lambda, whose exponential integral is exact:
    ``x_next = sigma_next / sigma_cur x + alpha_next (I_0 D_n + c_old (D_{n+1} - D_n)
    + c_new (D' - D_n))``, ``c_old = (m2 - m1) / (rho (rho + 1))``,
    ``c_new = (rho m1 + m2) / (rho + 1)``, ``rho = h_prev / h``, with ``m1, m2`` the
    normalized moments of ``unic_moments`` (third order). The first step, steps that do not
    continue the previous one and steps to ``sigma = 0`` stay uncorrected. ``D'`` is reused as
    the next step's ``D_n``, so it still costs one call per step, plus one on the first (the
    step to ``t = 0`` evaluates at ``t_cur`` and discards it, so the call count never depends
    on the grid's values).

    The reference's next release spells it with a semi-linear split instead of a scheduler,
    ``DPMPlusPlus2M(denoiser, linear_fn=None, lambda_fn=None)`` or with ``bias_fn``,
    ``bias_int_fn``, ``slope_fn`` for ``F = a x + b N``: then ``x_next = E x + J (N_n + r/2
    (N_n - N_{n+1}))`` with ``E = exp(A(t_next) - A(t_cur))``, ``J = int exp(A(t_next) - A(s))
    b(s) ds`` and ``r = (lambda(t_next) - lambda(t_cur)) / (lambda(t_cur) - lambda(t_prev))``;
    ``lambda_fn`` defaults to ``t`` (nothing given: two-step Adams-Bashforth). With the x0
    split of ``noise_scheduler.get_linear_denoiser(prediction_type="x0")`` (as ``linear_fn``,
    or unpacked) and ``lambda = log(alpha / sigma)`` (or log SNR) this is the scheduler form's
    DPM-Solver++(2M) to rounding. A plain ``linear_fn`` callable is a(t) frozen over a step.

    The multistep history lives in the solver; :meth:`reset` clears it (:func:`sample` does so
    before integrating). Without the corrector, reusing an instance is safe without it:
    history is only used where ``t_cur`` equals the previous ``t_next``. With it, consecutive
    calls must continue one trajectory.

    Parameters
    ----------
    denoiser : Denoiser
        ODE rhs (``"ode"``) or x0-predictor (``"x0"``).
    noise_scheduler : LinearGaussianNoiseScheduler
        Provides ``alpha(t)``, ``sigma(t)`` (and ``alpha_dot``, ``sigma_dot`` for ``"ode"``).
        :func:`sample` passes its own scheduler when the solver is chosen by name.
    denoiser_type : {"ode", "x0"}
        What ``denoiser`` returns. Default ``"ode"``.
    corrector : {None, "unic"}
        Optional UniC-2 corrector. Default None.
    linear_fn, bias_fn, bias_int_fn, slope_fn, lambda_fn : callable, optional
        The split form above (keywords; without ``noise_scheduler``).
    noise_fn : callable, optional
        Accepted for the common solver signature; this solver draws no noise.

    >>> import torch
    >>> from hpcdiff.diffusion.samplers import DPMSolverPlusPlus2M
    >>> class EDMLike:  # alpha = 1, sigma = t
    ...     alpha = staticmethod(torch.ones_like)
    ...     sigma = staticmethod(lambda t: t)
    >>> solver = DPMSolverPlusPlus2M(lambda x, t: 0.5 * x, EDMLike(), denoiser_type="x0")
    >>> solver.step(torch.ones(1, 2), torch.tensor([2.0]), torch.tensor([1.0]))
    tensor([[0.7500, 0.7500]])
    """

    def __init__(
        self,
        denoiser: Denoiser,
        noise_scheduler: Any = None,
        denoiser_type: Literal["ode", "x0"] = "ode",
        corrector: Literal["unic"] | None = None,
        *,
        linear_fn: TimeFn | None = None,
        bias_fn: TimeFn | None = None,
        bias_int_fn: TimeFn | None = None,
        slope_fn: TimeFn | None = None,
        lambda_fn: TimeFn | None = None,
        noise_fn: NoiseFn | None = None,
    ) -> None:
        self.denoiser, self.noise_fn = denoiser, noise_fn
        split = (linear_fn, bias_fn, bias_int_fn, slope_fn, lambda_fn)
        if noise_scheduler is None:
            if denoiser_type != "ode" or corrector is not None:
                raise ValueError(
                    "the split form (no noise_scheduler) takes an ODE rhs and no corrector; "
                    f"got denoiser_type={denoiser_type!r}, corrector={corrector!r}"
                )
            self.split = split_of(linear_fn, bias_fn, bias_int_fn, slope_fn)
            self.lambda_fn = lambda_fn if lambda_fn is not None else _identity
            self.noise_scheduler, self.denoiser_type, self.corrector = None, "ode", None
            self.reset()
            return
        if split != (None,) * 5:
            raise ValueError("give noise_scheduler or linear_fn / bias_fn ... / lambda_fn")
        if denoiser_type not in _NEEDS:
            raise ValueError(f"denoiser_type must be 'ode' or 'x0', got {denoiser_type!r}")
        if corrector not in (None, "unic"):
            raise ValueError(f"corrector must be None or 'unic', got {corrector!r}")
        missing = [
            m for m in _NEEDS[denoiser_type] if not callable(getattr(noise_scheduler, m, None))
        ]
        if missing:
            raise TypeError(
                f"DPMSolverPlusPlus2M needs a linear-Gaussian noise_scheduler with methods "
                f"{', '.join(missing)}; got {type(noise_scheduler).__name__}"
            )
        self.noise_scheduler = noise_scheduler
        self.denoiser_type = denoiser_type
        self.corrector = corrector
        self.reset()

    @staticmethod
    def scheduler_defaults(noise_scheduler: Any) -> dict[str, Any]:
        """Options :func:`sample` adds when built by name: its ``noise_scheduler``."""
        return {"noise_scheduler": noise_scheduler}

    def reset(self) -> None:
        """Forget the multistep history (the next step is first order)."""
        self._x0_prev: torch.Tensor | None = None  # D_{n+1}, (B, *)
        self._h_prev: torch.Tensor | None = None  # (B, 1, ..., 1)
        self._t_end: torch.Tensor | None = None  # t_next of the previous step, (B, 1, ..., 1)
        self._x0_end: torch.Tensor | None = None  # UniC: D at the previous predicted x_next
        self._lam_prev: torch.Tensor | None = None  # split form: lambda(t_cur) of that step

    def _predict_x0(self, x: torch.Tensor, t_cur: torch.Tensor, t_bc: torch.Tensor) -> torch.Tensor:
        """x0 estimate at (x, t_cur): the denoiser's output, or the inverted ODE rhs."""
        if self.denoiser_type == "x0":
            return self.denoiser(x, t_cur)
        sch = self.noise_scheduler
        alpha, sigma = sch.alpha(t_bc), sch.sigma(t_bc)
        sigma_rate = sch.sigma_dot(t_bc) / sigma  # sigma' / sigma
        # alpha lambda' = alpha' - alpha sigma'/sigma, finite where alpha = 0 (flow matching t = 1)
        p = 1.0 / (sch.alpha_dot(t_bc) - alpha * sigma_rate)
        return torch.mul(self.denoiser(x, t_cur), p).addcmul_(-sigma_rate * p, x)

    def _history_usable(self, x: torch.Tensor) -> bool:
        prev = self._x0_prev
        return (
            prev is not None
            and prev.shape == x.shape
            and prev.dtype == x.dtype
            and prev.device == x.device
        )

    def step(self, x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """Advance ``x`` (B, *) from ``t_cur`` (B,) to ``t_next`` (B,)."""
        t_cur = t_cur.contiguous()
        t_cur_bc, t_next_bc = per_sample(t_cur, x), per_sample(t_next, x)  # (B, 1, ..., 1)
        if self.noise_scheduler is None:
            return self._split_step(x, t_cur, t_cur_bc, t_next, t_next_bc)
        sch = self.noise_scheduler
        alpha_cur, sigma_cur = sch.alpha(t_cur_bc), sch.sigma(t_cur_bc)
        alpha_next, sigma_next = sch.alpha(t_next_bc), sch.sigma(t_next_bc)
        # h = lambda_next - lambda_cur with lambda = log(alpha / sigma); +inf when sigma_next = 0.
        h = torch.log((alpha_next * sigma_cur) / (sigma_next * alpha_cur))
        c = -alpha_next * torch.expm1(-h)  # alpha_next (1 - exp(-h)); alpha_next for h = inf
        usable = self._history_usable(x)
        if usable and self.corrector is not None:
            x0 = self._x0_end  # D_n, evaluated by the previous step's corrector
        else:
            x0 = self._predict_x0(x, t_cur, t_cur_bc)  # D_n, (B, *)
        ratio = sigma_next / sigma_cur
        x_next = torch.mul(x, ratio)
        second = None
        if usable:
            # k = 1/(2r) = h / (2 h_prev) where this step continues the previous one, else 0;
            # D = (1 + k) D_n - k D_{n+1}.
            second = (t_cur_bc == self._t_end) & (sigma_next > 0) & (self._h_prev != 0)
            k = torch.where(second, h, torch.zeros_like(h)) / (2 * self._h_prev)
            x_next.addcmul_(c * (1 + k), x0).addcmul_(-c * k, self._x0_prev)
        else:
            x_next.addcmul_(c, x0)
        if self.corrector is not None:
            x_next = self._unic(x, x_next, x0, t_cur, t_next, ratio, h, c, sigma_next, second)
        self._x0_prev, self._h_prev, self._t_end = x0, h, t_next_bc
        return x_next

    def _split_step(
        self,
        x: torch.Tensor,
        t_cur: torch.Tensor,
        t_cur_bc: torch.Tensor,
        t_next: torch.Tensor,
        t_next_bc: torch.Tensor,
    ) -> torch.Tensor:
        """The split form: N_n = (F - a x) / b (0 where b = 0), x_next = E x + J (N_n + r/2
        (N_n - N_{n+1})), first order where r is not finite or the step does not continue."""
        split = self.split
        a, b = split.bias_fn(t_cur_bc), split.slope_fn(t_cur_bc)
        zero = b == 0
        F = self.denoiser(x, t_cur)
        n = torch.where(zero, 0, (F - a * x) / torch.where(zero, 1, b))  # N_n, (B, *)
        J = split.weight(t_cur_bc, t_next_bc)
        x_next = torch.mul(x, split.propagator(t_cur_bc, t_next_bc)).addcmul_(J, n)
        lam_cur = per_sample(self.lambda_fn(t_cur), x)
        if self._history_usable(x):
            num = per_sample(self.lambda_fn(t_next), x) - lam_cur
            den = lam_cur - self._lam_prev
            ok = torch.isfinite(num) & torch.isfinite(den) & (den != 0)
            ok &= t_cur_bc == self._t_end
            half_r = torch.where(ok, num, 0) / torch.where(ok, 2 * den, 1)
            x_next.addcmul_(J * half_r, n - self._x0_prev)
        self._x0_prev, self._lam_prev, self._t_end = n, lam_cur, t_next_bc
        return x_next

    def _unic(
        self,
        x: torch.Tensor,
        x_pred: torch.Tensor,
        x0: torch.Tensor,
        t_cur: torch.Tensor,
        t_next: torch.Tensor,
        ratio: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        sigma_next: torch.Tensor,
        second: torch.Tensor | None,
    ) -> torch.Tensor:
        """UniC-2 correction of the predicted ``x_pred`` (B, *); caches D' for the next step."""
        end = sigma_next > 0  # (B, 1, ..., 1); D is evaluated at t_next only where regular
        t_eval = torch.where(end.reshape(-1), t_next, t_cur)
        x0_end = self._predict_x0(x_pred, t_eval, per_sample(t_eval, x_pred))  # D', (B, *)
        self._x0_end = x0_end
        if second is None:  # first step: nothing to fit yet, D' only seeds the next step
            return x_pred
        # The quadratic fit needs finite steps h_prev, h (lambda = -inf at alpha = 0).
        second = second & torch.isfinite(self._h_prev) & torch.isfinite(h)
        h_safe = torch.where(second, h, torch.ones_like(h))
        m1, m2 = unic_moments(h_safe)
        rho = torch.where(second, self._h_prev, h_safe) / h_safe
        alpha_next = self.noise_scheduler.alpha(per_sample(t_next, x))
        zero = torch.zeros_like(h)
        c_old = torch.where(second, alpha_next * (m2 - m1) / (rho * (rho + 1)), zero)
        c_new = torch.where(second, alpha_next * (rho * m1 + m2) / (rho + 1), zero)
        x_next = torch.mul(x, ratio).addcmul_(c - c_old - c_new, x0)
        return x_next.addcmul_(c_new, x0_end).addcmul_(c_old, self._x0_prev)


class DPMPlusPlus2MUniC2(DPMSolverPlusPlus2M):
    """DPM-Solver++(2M) predictor with the UniC-2 corrector (Zhao et al. 2023): the
    :class:`DPMSolverPlusPlus2M` with ``corrector="unic"``; third order, one call per step.

    >>> import torch
    >>> from hpcdiff.diffusion.noise_schedulers import EDMNoiseScheduler
    >>> from hpcdiff.diffusion.samplers import DPMPlusPlus2MUniC2, sample
    >>> edm = EDMNoiseScheduler()
    >>> solver = DPMPlusPlus2MUniC2(lambda x, t: 0.5 * x, edm, denoiser_type="x0")
    >>> sample(lambda x, t: 0.5 * x, torch.ones(1, 2), edm, 4, solver=solver).shape
    torch.Size([1, 2])
    """

    def __init__(
        self,
        denoiser: Denoiser,
        noise_scheduler: Any,
        denoiser_type: Literal["ode", "x0"] = "ode",
        *,
        noise_fn: NoiseFn | None = None,
    ) -> None:
        super().__init__(denoiser, noise_scheduler, denoiser_type, "unic", noise_fn=noise_fn)


DPMPlusPlus2M = DPMSolverPlusPlus2M
"""Reference name of :class:`DPMSolverPlusPlus2M` (same class)."""
