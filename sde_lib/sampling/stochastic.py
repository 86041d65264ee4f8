"""score_sde's discrete reverse-time samplers as diffrax solvers, for an arbitrary time grid.

For a step from t0 down to t1 write the forward kernel x_{t0} = a x_{t1} + sqrt(v) z (``transition``).
On score_sde's own grid (N steps, t_i = i/N) a and v are exactly its DDPM betas (1 - a^2 = beta_i) and
SMLD sigmas (v = sigma_i^2 - sigma_{i-1}^2), so these samplers reduce to its predictors there.

* ``ReverseDiffusion``: x1 = x - (a - 1) x + v s + sqrt(v) z  (the reverse of the forward discretisation).
* ``DDIM``: x1 = alpha_1 x0_hat + sqrt(sigma_1^2 - c^2) eps_hat + c z with c = eta sqrt(sigma_1^2 v / sigma_0^2)
  (Song, Meng & Ermon 2021). eta = 0 is deterministic DDIM; eta = 1 samples the exact posterior
  q(x_{t1} | x_{t0}, x0_hat): x1 = (x + v s) / a + c z, which is DDPM's ancestral step for VP and SMLD's
  for VE, and is what ``ancestral`` uses.
* ``PredictorCorrector``: n Langevin corrector steps at t0, then a predictor step (reverse diffusion or
  Euler-Maruyama). score_sde sets the step 2 a^2 (snr |z| / |s|)^2 from *batch means* of the norms,
  which makes a sample depend on its batch-mates; taken per sample it explodes wherever the score
  nearly vanishes (mode centres in low dimension). We use its expectation under the noise part of p_t,
  |z|^2 ~ D and |s|^2 ~ D / sigma_t^2, i.e. step = 2 a^2 snr^2 sigma_t^2, with a^2 = 1 - beta for
  VP-type SDEs and 1 for VE; it runs for sub-VP as well (score_sde's corrector crashes there).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.sampling.base import ScoreSolver, transition
from sde_lib.sampling.noise import time_bits, normal_like_rows


class ReverseDiffusion(ScoreSolver):
    """score_sde's reverse-diffusion predictor on any grid; 1 score evaluation per step."""

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        a, v = transition(self.sde, t0, t1)
        x_mean = y0 - (a - 1.0) * y0 + v * self.score(terms, t0, y0, args)
        z = normal_like_rows(args, y0.shape, time_bits(s0))
        return x_mean + jnp.sqrt(v) * z, state


class DDIM(ScoreSolver):
    """DDIM with stochasticity eta in [0, 1]; eta = 1 is ancestral sampling. 1 evaluation per step."""

    eta: float = eqx.field(static=True, default=0.0)

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        eps_hat, x0_hat = self.predictions(terms, t0, y0, args)
        alpha1, sigma1 = self.sde.marginal_coeffs(t1)
        if self.eta == 0.0:
            return alpha1 * x0_hat + sigma1 * eps_hat, state
        _, sigma0 = self.sde.marginal_coeffs(t0)
        _, v = transition(self.sde, t0, t1)
        c = self.eta * jnp.sqrt(sigma1**2 * v) / sigma0
        z = normal_like_rows(args, y0.shape, time_bits(s0))
        return alpha1 * x0_hat + jnp.sqrt(jnp.maximum(sigma1**2 - c**2, 0.0)) * eps_hat + c * z, state


class PredictorCorrector(ScoreSolver):
    """Langevin corrector (``n_steps`` at signal-to-noise ``snr``) then a predictor step; n_steps + 1 evaluations."""

    predictor: str = eqx.field(static=True, default="reverse_diffusion")
    snr: float = eqx.field(static=True, default=0.16)
    n_steps: int = eqx.field(static=True, default=1)

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        a, v = transition(self.sde, t0, t1)
        alpha = a**2 if self.sde.is_vp_type else jnp.ones_like(a)
        step = 2.0 * alpha * self.snr**2 * self.sde.marginal_coeffs(t0)[1] ** 2

        def langevin(j, x):
            grad = self.score(terms, t0, x, args)
            z = normal_like_rows(args, x.shape, time_bits(s0), j + 1)
            return x + step * grad + jnp.sqrt(2.0 * step) * z

        x = jax.lax.fori_loop(0, self.n_steps, langevin, y0)
        score = self.score(terms, t0, x, args)
        z = normal_like_rows(args, x.shape, time_bits(s0))
        if self.predictor == "reverse_diffusion":
            return x - (a - 1.0) * x + v * score + jnp.sqrt(v) * z, state
        # Euler-Maruyama on the reverse SDE, dt = t1 - t0 < 0.
        f, g = self.sde.drift_coef(t0), self.sde.diffusion_coef(t0)
        return x + (f * x - g**2 * score) * (t1 - t0) + g * jnp.sqrt(t0 - t1) * z, state
