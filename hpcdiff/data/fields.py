"""Random fields with a prescribed power spectrum, evaluated block by block.

A field is a sum of Fourier modes on a lattice of log-spaced wavenumbers,
``f(y, x, t) = Re sum_ij C_ij(t) exp(i (ky_i y + kx_j x))``, so any block of rows is two
matrix products, ``Re(E_y @ C(t) @ E_x)``, and an 8192 x 8192 field never has to be held in
memory. For an isotropic 2-D field with energy spectrum ``E(k) ~ k^-beta`` each mode carries
``|C_ij|^2 = E(k) / (2 pi k) dkx dky`` (``k = |(kx, ky)|``). Modes move with a mean flow
``(U, V)`` (frozen-turbulence advection, phase ``-(U kx + V ky) t``) plus a random phase drift
that is faster at small scales (eddy turnover time ``~ k^(-2/3)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpectralField:
    """Coefficients, wavenumbers and drift rates of one random field (grid-index units)."""

    ky: np.ndarray  # (Ky,) rad / cell
    kx: np.ndarray  # (Kx,) rad / cell
    coeff: np.ndarray  # (Ky, Kx) complex
    drift: np.ndarray  # (Ky, Kx) rad / hour
    flow: tuple[float, float]  # (V, U) cells / hour

    @classmethod
    def make(
        cls,
        rng: np.random.Generator,
        shape: tuple[int, int],
        beta: float,
        n_modes: int = 32,
        flow: tuple[float, float] = (0.0, 0.0),
        drift: float = 0.0,
        kmax_cells: float = 4.0,
    ) -> SpectralField:
        """Modes from the domain scale to ``kmax_cells`` cells, spectrum ``E(k) ~ k^-beta``.

        Rescaled so that the field has unit standard deviation.
        """
        length = float(max(shape))
        k = np.geomspace(2 * np.pi / length, 2 * np.pi / kmax_cells, n_modes)
        dk = k * np.log(k[1] / k[0]) if n_modes > 1 else k
        ky, dky = np.concatenate([-k[::-1], k]), np.concatenate([dk[::-1], dk])
        kk = np.hypot(ky[:, None], k[None, :])  # (Ky, Kx)
        power = kk**-beta / (2 * np.pi * kk) * dky[:, None] * dk[None, :]
        phase = rng.uniform(0, 2 * np.pi, kk.shape)
        coeff = np.sqrt(2 * power / power.sum()) * np.exp(1j * phase)  # unit variance
        rate = drift * rng.standard_normal(kk.shape) * (kk / k[0]) ** (2.0 / 3.0)
        return cls(ky, k, coeff, rate, (float(flow[0]), float(flow[1])))

    def coefficients(self, hours: float) -> np.ndarray:
        """``C(t)``: phases advected by the mean flow and drifted."""
        v, u = self.flow
        advect = -(v * self.ky[:, None] + u * self.kx[None, :]) * hours
        return self.coeff * np.exp(1j * (advect + self.drift * hours))

    def block(self, rows: slice, n_cols: int, hours: float, deriv: str | None = None):
        """Field values (or its y/x derivative) on rows ``rows`` of all columns, float64."""
        coeff = self.coefficients(hours)
        if deriv == "y":
            coeff = coeff * 1j * self.ky[:, None]
        elif deriv == "x":
            coeff = coeff * 1j * self.kx[None, :]
        y = np.arange(rows.start, rows.stop, dtype=np.float64)
        x = np.arange(n_cols, dtype=np.float64)
        ey = np.exp(1j * np.outer(y, self.ky))  # (h, Ky)
        ex = np.exp(1j * np.outer(self.kx, x))  # (Kx, W)
        return (ey @ (coeff @ ex)).real  # (h, W)


def radial_spectrum(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic power spectrum of a 2-D field: wavenumber bins (cycles/cell) and power."""
    f = field - field.mean()
    p = np.abs(np.fft.fft2(f)) ** 2
    ky = np.fft.fftfreq(f.shape[0])[:, None]
    kx = np.fft.fftfreq(f.shape[1])[None, :]
    k = np.hypot(ky, kx)
    edges = np.arange(1, min(f.shape) // 2) / min(f.shape)
    idx = np.digitize(k.ravel(), edges)
    power = np.bincount(idx, p.ravel(), minlength=edges.size + 1)[1:-1]
    count = np.bincount(idx, minlength=edges.size + 1)[1:-1]
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres, power / np.maximum(count, 1) * centres * 2 * np.pi
