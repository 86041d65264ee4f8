"""EDM's Heun sampler (Karras et al. 2022, arXiv 2206.00364, Alg. 2) for any SDE through its sigma(t).

In y = x / alpha_t and sigma = sigma(t) = sigma_t / alpha_t the probability-flow ODE of every linear SDE
reads dy/dsigma = (y - D(y; sigma)) / sigma, with the denoiser D = x0_hat. Each step optionally "churns":
it raises the noise to sigma_hat = sigma_0 (1 + gamma) by adding fresh noise, gamma = min(S_churn / N,
sqrt(2) - 1) for sigma_0 in [S_tmin, S_tmax], then takes a Heun step sigma_hat -> sigma_1 (2 evaluations).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp

from sde_lib.sampling.base import ScoreSolver
from sde_lib.sampling.noise import normal_like_rows, time_bits
from sde_lib.checks import real_option
from sde_lib.sampling.registry import Option, Sampler, register


class EDMHeun(ScoreSolver):
    """Heun in sigma with EDM's churn; deterministic when ``s_churn == 0``."""

    n_steps: int = eqx.field(static=True, default=18)
    s_churn: float = eqx.field(static=True, default=0.0)
    s_tmin: float = eqx.field(static=True, default=0.0)
    s_tmax: float = eqx.field(static=True, default=float("inf"))
    s_noise: float = eqx.field(static=True, default=1.0)

    def _slope(self, terms, y, sig, args):
        """dy/dsigma = (y - D) / sigma at noise level ``sig`` (one evaluation)."""
        t = self.sde.t_from_sigma(sig)
        alpha, _ = self.sde.marginal_coeffs(t)
        x0_hat = self.predictions(terms, t, alpha * y, args)[1]
        return (y - x0_hat) / sig

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        sde = self.sde
        sig0, sig1 = sde.sigma(t0), sde.sigma(t1)
        alpha0, _ = sde.marginal_coeffs(t0)
        alpha1, _ = sde.marginal_coeffs(t1)
        y = y0 / alpha0
        if self.s_churn > 0:
            gamma = jnp.where(
                (sig0 >= self.s_tmin) & (sig0 <= self.s_tmax), min(self.s_churn / self.n_steps, math.sqrt(2) - 1), 0.0
            )
            sig_hat = sig0 * (1.0 + gamma)
            z = normal_like_rows(args, y.shape, time_bits(s0))
            y = y + jnp.sqrt(sig_hat**2 - sig0**2) * self.s_noise * z
        else:
            sig_hat = sig0
        d = self._slope(terms, y, sig_hat, args)
        y_euler = y + (sig1 - sig_hat) * d
        d1 = self._slope(terms, y_euler, sig1, args)
        return alpha1 * (y + (sig1 - sig_hat) * 0.5 * (d + d1)), state


register(Sampler(
    "edm_heun", family="edm", grid="edm", nfe_per_step=2,
    doc="churn `S_churn`, `S_tmin`, `S_tmax`, `S_noise`; any SDE via sigma(t)",
    options=(Option("S_churn", 0.0, ">= 0", real_option(minimum=0)),
             Option("S_tmin", 0.0, "churn from this sigma", real_option(minimum=0)),
             Option("S_tmax", float("inf"), "churn up to this sigma", real_option(minimum=0, finite=False)),
             Option("S_noise", 1.0, ">= 0", real_option(minimum=0))),
    solver=lambda sde, steps, o: EDMHeun(sde, n_steps=steps, s_churn=float(o["S_churn"]), s_tmin=float(o["S_tmin"]),
                                         s_tmax=float(o["S_tmax"]), s_noise=float(o["S_noise"]))))
