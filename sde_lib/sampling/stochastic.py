"""Stochastic samplers of the reverse-time SDE: score_sde's discrete samplers as diffrax solvers on any
time grid, Euler-Maruyama, and an adaptive SDE solve.

For a step from t0 down to t1 write the forward kernel x_{t0} = a x_{t1} + sqrt(v) z (``transition``).
On score_sde's own grid (N steps, t_i = i/N) a and v are exactly its DDPM betas (1 - a^2 = beta_i) and
SMLD sigmas (v = sigma_i^2 - sigma_{i-1}^2), so these samplers reduce to its predictors there.

* ``ReverseDiffusion``: x1 = x - (a - 1) x + v s + sqrt(v) z  (the reverse of the forward discretisation).
* ``ancestral``: DDIM with eta = 1 (``exponential.DDIM``), the exact posterior step
  q(x_{t1} | x_{t0}, x0_hat): x1 = (x + v s) / a + c z, DDPM's ancestral step for VP and SMLD's for VE.
* ``PredictorCorrector``: n Langevin corrector steps at t0, then a predictor step (reverse diffusion or
  Euler-Maruyama). score_sde sets the step 2 a^2 (snr |z| / |s|)^2 from *batch means* of the norms,
  which makes a sample depend on its batch-mates; taken per sample it explodes wherever the score
  nearly vanishes (mode centres in low dimension). We use its expectation under the noise part of p_t,
  |z|^2 ~ D and |s|^2 ~ D / sigma_t^2, i.e. step = 2 a^2 snr^2 sigma_t^2, with a^2 = 1 - beta for
  VP-type SDEs and 1 for VE; it runs for sub-VP as well (score_sde's corrector crashes there).
* ``euler_maruyama``: diffrax's ``Euler`` on the reverse SDE, with the per-sample Brownian path of
  ``noise.py``.
* ``sde_adaptive``: diffrax ``ShARK`` / ``SRA1`` with a ``PIDController`` and a ``VirtualBrownianTree``,
  each sample its own solve.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax

from sde_lib.sampling.api import bind_score, per_row, saveat
from sde_lib.sampling.base import ScoreSolver, transition
from sde_lib.sampling.exponential import DDIM
from sde_lib.sampling.noise import normal_like_rows, time_bits
from sde_lib.checks import integer_option, real_option
from sde_lib.sampling.registry import Option, Sampler, register
from sde_lib.step_control import CountingPIDController


class ReverseDiffusion(ScoreSolver):
    """score_sde's reverse-diffusion predictor on any grid; 1 score evaluation per step."""

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        a, v = transition(self.sde, t0, t1)
        x_mean = y0 - (a - 1.0) * y0 + v * self.score(terms, t0, y0, args)
        z = normal_like_rows(args, y0.shape, time_bits(s0))
        return x_mean + jnp.sqrt(v) * z, state


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


_ADAPTIVE_SDE = {"shark": diffrax.ShARK, "sra1": diffrax.SRA1}


def _sde_adaptive(sde, score_fn, x, row_keys, cond, eps, o):
    """Error-controlled reverse-SDE solves, one per sample (vmapped), on a consistent Brownian path."""
    span = sde.T - eps
    pid = diffrax.PIDController(rtol=o["rtol"], atol=o["atol"])
    controller = CountingPIDController(pid, 2, False)  # ShARK and SRA1: 2 drift evaluations, nothing carried
    save = eqx.tree_at(lambda s: s.controller_state, saveat(o["save_trajectory"]), True)
    dt0 = span / 100 if o["dt0"] is None else abs(float(o["dt0"]))

    def one(y0, key, c):
        score = bind_score(score_fn, c)
        drift = lambda t, y: sde.reverse_drift(y[None], t, score(y[None], t), probability_flow=False)[0]
        # diffrax 0.7's stochastic Runge-Kutta solvers diverge when run backwards in time (t0 > t1), so
        # the reverse SDE is written forward in s = T - t:  dx = -drift(T - s, x) ds + g(T - s) dB_s.
        tol = o["bm_tol"] if o["bm_tol"] is not None else span / 2**14
        bm = diffrax.VirtualBrownianTree(0.0, span, tol=tol, shape=y0.shape, key=key,
                                         levy_area=diffrax.SpaceTimeLevyArea)
        noise = diffrax.ControlTerm(
            lambda s, y, args: lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion_coef(sde.T - s), y.dtype)),
            bm,
        )
        terms = diffrax.MultiTerm(diffrax.ODETerm(lambda s, y, args: -drift(sde.T - s, y)), noise)
        sol = diffrax.diffeqsolve(terms, _ADAPTIVE_SDE[o["solver"]](), t0=0.0, t1=span, dt0=dt0, y0=y0,
                                  stepsize_controller=controller, saveat=save, max_steps=int(o["max_steps"]), throw=False)
        return sol.ys[-1], sol.controller_state[1], (sde.T - sol.ts, sol.ys), sol.result == diffrax.RESULTS.successful

    ys, nfe, traj, solved = per_row(one, x, row_keys, cond)
    return ys, nfe, (traj if o["save_trajectory"] else None), solved


register(Sampler("euler_maruyama", family="sde", doc="diffrax `Euler` on the reverse SDE, per-sample Brownian path",
                 terms="reverse_sde", solver=lambda sde, steps, o: diffrax.Euler()))
register(Sampler("reverse_diffusion", family="sde", doc="score_sde's predictor, any grid",
                 solver=lambda sde, steps, o: ReverseDiffusion(sde)))
register(Sampler("ancestral", family="sde", doc="exact posterior step: DDPM (VP), SMLD (VE), also sub-VP",
                 solver=lambda sde, steps, o: DDIM(sde, eta=1.0)))
register(Sampler(
    "pc", family="sde", doc="Langevin corrector (`snr`, `n_steps`) then a predictor; works for sub-VP",
    nfe_per_step=lambda o: 1 + int(o["n_steps"]), nfe_doc="steps x (1 + n_steps)",
    options=(Option("predictor", "reverse_diffusion", "reverse_diffusion | euler_maruyama",
                    lambda v: v in ("reverse_diffusion", "euler_maruyama")),
             Option("snr", 0.16, "corrector signal-to-noise ratio > 0", real_option(positive=True)),
             Option("n_steps", 1, "corrector steps per step, >= 0", integer_option(minimum=0))),
    solver=lambda sde, steps, o: PredictorCorrector(sde, predictor=o["predictor"], snr=float(o["snr"]),
                                                    n_steps=int(o["n_steps"]))))
register(Sampler(
    "sde_adaptive", family="sde", grid=None, doc="diffrax `ShARK`/`SRA1` + `PIDController` + `VirtualBrownianTree`",
    options=(Option("solver", "shark", "shark | sra1", lambda v: v in _ADAPTIVE_SDE),
             Option("bm_tol", None, "Brownian tree tolerance (default (T - eps) / 2^14)", real_option(positive=True))),
    # Strong error control of an SDE solve at the ODE's 1e-5 runs every row into max_steps; at 1e-2 the
    # samples are as good as at 1e-4 for 1/20 of the NFE (docs/results.md: KID 0.018 at 192 / 4329 NFE).
    defaults={"rtol": 1e-2, "atol": 1e-2}, adaptive=_sde_adaptive))
