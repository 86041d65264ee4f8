"""Exponential integrators of the probability-flow ODE in the half log-SNR lambda (Lu et al. 2022).

With lambda_t = log(alpha_t / sigma_t) and h = lambda_{t1} - lambda_{t0} > 0, the PF-ODE solution is

    x_{t1} = (alpha_1/alpha_0) x_{t0} - alpha_1 int_{lambda_0}^{lambda_1} e^{-lambda} eps_hat dlambda     (noise form)
           = (sigma_1/sigma_0) x_{t0} + sigma_1 int_{lambda_0}^{lambda_1} e^{lambda} x0_hat dlambda     (data form)

and the solvers Taylor-expand eps_hat or x0_hat in lambda:

* ``DPMSolver`` (singlestep, noise prediction, arXiv 2206.00927 Alg. 1-2): order 2 with an intermediate point
  at r1 = 1/2; order 3 with r1 = 1/3, r2 = 2/3. ``order`` evaluations per step.
* ``DPMSolverPPMultistep`` (DPM-Solver++(2M)/(3M), data prediction, arXiv 2211.01095 Alg. 2 and the
  authors' third-order update): one evaluation per step, reusing the last one or two x0_hat. The first
  steps warm up at lower order; with ``lower_order_final`` runs of fewer than 10 steps also lower the
  order of their last steps (the published recipe for stability at very small NFE).
* ``UniPC`` (arXiv 2302.04867, variant B(h) = e^{-h} - 1 "bh2", data prediction): a multistep predictor
  plus the UniC corrector, which re-uses the model evaluation at the new point to raise the order of the
  step just taken at no extra evaluation (skipped after the last step, where it would cost one).

* ``DDIM`` (Song, Meng & Ermon 2021), the first-order member of both families, with stochasticity eta:
  x1 = alpha_1 x0_hat + sqrt(sigma_1^2 - c^2) eps_hat + c z, c = eta sqrt(sigma_1^2 v / sigma_0^2), where
  x_{t0} = a x_{t1} + sqrt(v) z is the forward kernel; eta = 1 is the ancestral step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.sampling.base import ScoreSolver, transition
from sde_lib.sampling.noise import normal_like_rows, time_bits
from sde_lib.sampling.registry import Option, Sampler, register


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


class DPMSolver(ScoreSolver):
    """Singlestep DPM-Solver of order 2 or 3 (noise prediction)."""

    solver_order: int = eqx.field(static=True, default=2)

    def _eps_at(self, terms, t, y, args):
        return self.predictions(terms, t, y, args)[0]

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        sde = self.sde
        lam0, lam1 = sde.half_log_snr(t0), sde.half_log_snr(t1)
        h = lam1 - lam0
        alpha0, _ = sde.marginal_coeffs(t0)
        alpha1, sigma1 = sde.marginal_coeffs(t1)
        eps0 = self._eps_at(terms, t0, y0, args)

        def first_order(r):
            """(time, alpha, sigma, x) at lambda0 + r h by one DDIM step from y0."""
            s = sde.t_from_half_log_snr(lam0 + r * h)
            a_s, sig_s = sde.marginal_coeffs(s)
            return s, a_s, sig_s, (a_s / alpha0) * y0 - sig_s * jnp.expm1(r * h) * eps0

        base = (alpha1 / alpha0) * y0 - sigma1 * jnp.expm1(h) * eps0
        if self.solver_order == 2:
            r1 = 0.5
            s1, _, _, u1 = first_order(r1)
            d1 = self._eps_at(terms, s1, u1, args) - eps0
            return base - sigma1 / (2 * r1) * jnp.expm1(h) * d1, state
        r1, r2 = 1.0 / 3.0, 2.0 / 3.0
        s1, _, _, u1 = first_order(r1)
        d1 = self._eps_at(terms, s1, u1, args) - eps0
        s2, _, sig_s2, u2 = first_order(r2)
        u2 = u2 - sig_s2 * (r2 / r1) * (jnp.expm1(r2 * h) / (r2 * h) - 1.0) * d1
        d2 = self._eps_at(terms, s2, u2, args) - eps0
        return base - sigma1 / r2 * (jnp.expm1(h) / h - 1.0) * d2, state


class _Multistep(ScoreSolver):
    """State: the last two data predictions and their lambdas, and the step index."""

    solver_order: int = eqx.field(static=True, default=2)
    n_steps: int = eqx.field(static=True, default=10)
    lower_order_final: bool = eqx.field(static=True, default=True)

    def init(self, terms, t0, t1, y0, args):
        z = jnp.zeros_like(y0)
        lam = jnp.zeros((), jnp.result_type(t0))
        return (z, z, lam, lam, jnp.array(0, jnp.int32))

    def step_order(self, i):
        """Order used at step i: warm-up min(order, i + 1); optionally min(., steps - i) near the end."""
        order = jnp.minimum(self.solver_order, i + 1)
        if self.lower_order_final and self.n_steps < 10:
            order = jnp.minimum(order, self.n_steps - i)
        return order


def _dpmpp_update(order, y0, m0, m1, m2, lam0, lam_p1, lam_p2, h, ratio, alpha1):
    """DPM-Solver++ multistep update of the given (traced) order in {1, 2, 3}."""
    phi1 = jnp.expm1(-h)
    first = ratio * y0 - alpha1 * phi1 * m0
    r0 = (lam0 - lam_p1) / h
    r1 = (lam_p1 - lam_p2) / h
    d1_0 = (m0 - m1) / r0

    def o1():
        return first

    def o2():
        return first - 0.5 * alpha1 * phi1 * d1_0

    def o3():
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        return first + alpha1 * phi2 * d1 - alpha1 * phi3 * d2

    return jax.lax.switch(order - 1, (o1, o2, o3))


class DPMSolverPPMultistep(_Multistep):
    """DPM-Solver++(2M) / (3M): one data prediction per step."""

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        m1, m2, lam_p1, lam_p2, i = state
        sde = self.sde
        lam0, lam1 = sde.half_log_snr(t0), sde.half_log_snr(t1)
        _, sigma0 = sde.marginal_coeffs(t0)
        alpha1, sigma1 = sde.marginal_coeffs(t1)
        m0 = self.predictions(terms, t0, y0, args)[1]
        order = self.step_order(i)
        y1 = _dpmpp_update(order, y0, m0, m1, m2, lam0, lam_p1, lam_p2, lam1 - lam0, sigma1 / sigma0, alpha1)
        return y1, (m0, m1, lam0, lam_p1, i + 1)


class UniPC(_Multistep):
    """UniPC (bh2, data prediction): UniP predictor of order p plus the UniC corrector of order p + 1.

    Step i evaluates the model once, m_i = x0_hat(x~_i, t_i), at the *predicted* point x~_i. That value
    first corrects the previous step (t_{i-1} -> t_i) from its corrected start x_{i-1}, giving x_i; the
    predictor then steps x_i -> x~_{i+1}. diffrax's state y is the predicted x~_i; the corrected start,
    the last three model values and their times travel in the solver state. The last step is not
    corrected (that would cost an extra evaluation), as in the reference implementation.
    """

    def init(self, terms, t0, t1, y0, args):
        z = jnp.zeros_like(y0)
        t = jnp.zeros((), jnp.result_type(t0))
        return ((z, z, z), (t, t, t), jnp.array(0, jnp.int32), z)

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        (m1, m2, m3), (t_1, t_2, t_3), i, x_prev = state
        m0 = self.predictions(terms, t0, y0, args)[1]
        corrected = _switch_order(
            self.step_order(i - 1), self.sde, x_prev, (m1, m2, m3), (t_1, t_2, t_3), t0, m0
        )
        x0 = jnp.where(i > 0, corrected, y0)
        y1 = _switch_order(self.step_order(i), self.sde, x0, (m0, m1, m2), (t0, t_1, t_2), t1, None)
        return y1, ((m0, m1, m2), (t0, t_1, t_2), i + 1, x0)


def _switch_order(order, sde, x, ms, ts, t_new, m_new):
    """Dispatch a traced order in {1, 2, 3} to the statically shaped UniPC update."""
    branches = [lambda o=o: _unipc_update(o, sde, x, ms, ts, t_new, m_new) for o in (1, 2, 3)]
    return jax.lax.switch(jnp.clip(order, 1, 3) - 1, branches)


def _unipc_update(order, sde, x, ms, ts, t_new, m_new):
    """One UniP (``m_new is None``) or UniC update of the step from ts[0] to t_new (bh2 variant).

    ms[k] is the data prediction at ts[k] (k = 0 the step's start). With h = lambda_new - lambda_0,
    r_k = (lambda_k - lambda_0) / h and D_k = (m_k - m_0) / r_k, the update is
        x_new = (sigma_new/sigma_0) x - alpha_new (e^{-h} - 1) m_0 - alpha_new B(h) sum_k rho_k D_k,
    B(h) = e^{-h} - 1, where the rho solve the order conditions  sum_k rho_k r_k^{j-1} = b_j,
    b_j = j! psi_{j+1} / B(h) with psi_1 = e^{-h} - 1 and psi_{k+1} = psi_k / (-h) - 1/k!
    (arXiv 2302.04867, Alg. 1-2). The predictor uses order - 1 past points; the corrector adds the
    new point (r = 1), for order terms in all.
    """
    lam0, lam_new = sde.half_log_snr(ts[0]), sde.half_log_snr(t_new)
    h = lam_new - lam0
    alpha_new, sigma_new = sde.marginal_coeffs(t_new)
    _, sigma0 = sde.marginal_coeffs(ts[0])
    hh = -h
    h_phi_1 = jnp.expm1(hh)
    b_h = h_phi_1
    base = (sigma_new / sigma0) * x - alpha_new * h_phi_1 * ms[0]

    rks = [(sde.half_log_snr(ts[k]) - lam0) / h for k in range(1, order)]
    ds = [(ms[k] - ms[0]) / rks[k - 1] for k in range(1, order)]
    if m_new is not None:
        rks.append(jnp.ones_like(h))
        ds.append(m_new - ms[0])
    if not ds:
        return base
    n = len(ds)
    if n == 1 and (m_new is not None or order == 2):
        rhos = [0.5]  # the reference's simplified first-order coefficient
    else:
        b, h_phi_k, fac = [], h_phi_1 / hh - 1.0, 1.0
        for j in range(1, n + 1):
            b.append(h_phi_k * fac / b_h)
            fac *= j + 1
            h_phi_k = h_phi_k / hh - 1.0 / fac
        mat = jnp.stack([jnp.stack(rks) ** (j - 1) for j in range(1, n + 1)])
        rhos = jnp.linalg.solve(mat, jnp.stack(b))
        rhos = [rhos[k] for k in range(n)]
    return base - alpha_new * b_h * sum(r * d for r, d in zip(rhos, ds))


_LOF = Option("lower_order_final", True, "lower the order of the last steps of runs under 10 steps")
register(Sampler("ddim", family="exponential", grid="logsnr", doc="DDIM, `eta` in [0, 1]",
                 options=(Option("eta", 0.0, "stochasticity in [0, 1]", lambda v: 0.0 <= v <= 1.0),),
                 solver=lambda sde, steps, o: DDIM(sde, eta=float(o["eta"]))))
for _order in (2, 3):
    register(Sampler(f"dpm_solver_{_order}", family="exponential", grid="logsnr", nfe_per_step=_order,
                     doc="singlestep DPM-Solver, noise prediction",
                     solver=lambda sde, steps, o, k=_order: DPMSolver(sde, solver_order=k)))
for _order in (2, 3):
    register(Sampler(f"dpm_solver_pp_{_order}m", family="exponential", grid="logsnr", options=(_LOF,),
                     doc="multistep DPM-Solver++, data prediction",
                     solver=lambda sde, steps, o, k=_order: DPMSolverPPMultistep(
                         sde, solver_order=k, n_steps=steps, lower_order_final=bool(o["lower_order_final"]))))
register(Sampler("unipc", family="exponential", grid="logsnr", doc="UniPC-bh2 predictor-corrector (`order`)",
                 options=(Option("order", 3, "1, 2 or 3", lambda v: v in (1, 2, 3)), _LOF),
                 solver=lambda sde, steps, o: UniPC(sde, solver_order=int(o["order"]), n_steps=steps,
                                                    lower_order_final=bool(o["lower_order_final"]))))
