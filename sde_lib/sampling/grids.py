"""Time grids for fixed-step samplers: ``steps + 1`` times decreasing from T to eps.

* ``uniform``: equal steps in t (score_sde's samplers).
* ``quadratic``: equal steps in sqrt(t), denser near eps (DDIM / DPM-Solver's ``time_quadratic``).
* ``logsnr``: equal steps in the half log-SNR lambda_t (DPM-Solver's recommended grid; exponential
  integrators then take equal h = lambda_{i+1} - lambda_i).
* ``edm``: sigma_i = (sigma_max^{1/rho} + i/N (sigma_min^{1/rho} - sigma_max^{1/rho}))^rho in the EDM noise
  level sigma(t) = sigma_t / alpha_t, with rho = 7 by default (Karras et al. 2022, eq. 5).

Samplers also take an explicit grid: ``time_grid=ts``, an array of ``steps + 1`` strictly decreasing
times from T to eps (e.g. one calibrated on the model itself).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from sde_lib.sdes import SDE

TIME_GRIDS = ("uniform", "quadratic", "logsnr", "edm")


def time_grid(sde: SDE, kind: str, steps: int, eps: float, rho: float = 7.0):
    """Times ``(steps + 1,)`` from ``sde.T`` down to ``eps`` (both ends exact) on grid ``kind``."""
    if kind not in TIME_GRIDS:
        raise ValueError(f"time_grid must be one of {TIME_GRIDS}, got {kind!r}")
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = jnp.linspace(0.0, 1.0, int(steps) + 1)
    T = sde.T
    if kind == "uniform":
        ts = T + u * (eps - T)
    elif kind == "quadratic":
        ts = (jnp.sqrt(T) + u * (jnp.sqrt(eps) - jnp.sqrt(T))) ** 2
    elif kind == "logsnr":
        lam_T, lam_eps = sde.half_log_snr(jnp.asarray(T)), sde.half_log_snr(jnp.asarray(eps))
        ts = sde.t_from_half_log_snr(lam_T + u * (lam_eps - lam_T))
    else:
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        s_max, s_min = sde.sigma(jnp.asarray(T)), sde.sigma(jnp.asarray(eps))
        sig = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
        ts = sde.t_from_sigma(sig)
    # Pin both ends: the inverse maps round, and samplers must start at T and stop at eps exactly.
    return ts.at[0].set(T).at[-1].set(eps)


def check_time_grid(sde: SDE, grid, steps: int, eps: float) -> None:
    """Validate a ``time_grid`` option: a name of :data:`TIME_GRIDS`, or an explicit array of ``steps + 1``
    strictly decreasing times from ``sde.T`` to ``eps`` (ends within 1e-6 relative). One ValueError."""
    if isinstance(grid, str):
        if grid not in TIME_GRIDS:
            raise ValueError(f"time_grid must be one of {TIME_GRIDS} or an array of times, got {grid!r}")
        return
    ts = np.asarray(grid, np.float64)
    if ts.shape != (int(steps) + 1,):
        raise ValueError(f"time_grid array must have shape (steps + 1,) = ({int(steps) + 1},), got {ts.shape}")
    if not np.all(np.isfinite(ts)) or not np.all(np.diff(ts) < 0):
        raise ValueError("time_grid array must hold finite, strictly decreasing times")
    if abs(ts[0] - sde.T) > 1e-6 * sde.T or abs(ts[-1] - eps) > 1e-6 * max(eps, 1e-12) + 1e-12:
        raise ValueError(f"time_grid array must run from T={sde.T} to eps={eps}, got {ts[0]} to {ts[-1]}")


def resolve_time_grid(sde: SDE, grid, steps: int, eps: float, rho: float = 7.0):
    """The ``(steps + 1,)`` times of a ``time_grid`` option: a named grid, or the given array with both
    ends pinned to T and eps."""
    if isinstance(grid, str):
        return time_grid(sde, grid, steps, eps, rho)
    ts = jnp.asarray(grid, jnp.result_type(float))
    return ts.at[0].set(sde.T).at[-1].set(eps)
