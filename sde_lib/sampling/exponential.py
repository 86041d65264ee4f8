"""Exponential integrators of the probability-flow ODE in the half log-SNR lambda (Lu et al. 2022).

With lambda_t = log(alpha_t / sigma_t) and h = lambda_{t1} - lambda_{t0} > 0, the PF-ODE solution is

    x_{t1} = (alpha_1/alpha_0) x_{t0} - alpha_1 int_{lambda_0}^{lambda_1} e^{-lambda} eps_hat dlambda     (noise form)
           = (sigma_1/sigma_0) x_{t0} + sigma_1 int_{lambda_0}^{lambda_1} e^{lambda} x0_hat dlambda     (data form)

and the solvers Taylor-expand the model output m (eps_hat or x0_hat) in lambda. Both forms share one
update: with z = h (noise) or -h (data), c = sigma_1 (noise) or alpha_1 (data), the ratio alpha_1/alpha_0
(noise) or sigma_1/sigma_0 (data), and phi_1 = e^z - 1, phi_2 = phi_1 / z - 1, phi_3 = phi_2 / z - 1/2,

    x_{t1} = ratio x_{t0} - c (phi_1 m + phi_2 D_1 + phi_3 D_2),      D_k ~ h^k d^k m / dlambda^k.

* ``DPMSolver`` (singlestep, noise prediction, arXiv 2206.00927 Alg. 1-2), "DPM-Solver-fast": ``steps``
  counts *evaluations*; each solver step is one evaluation, and consecutive steps are grouped into
  singlestep blocks of order 3, 2 or 1 by the authors' schedule (:func:`fast_orders`), the grid points
  inside a block being its intermediate points (on the logSNR grid r1 = 1/2, resp. 1/3 and 2/3).
* ``DPMSolverMultistep`` (multistep DPM-Solver, noise prediction, arXiv 2206.00927 as in the authors'
  code; DPM-Solver++(2M)/(3M), data prediction, arXiv 2211.01095 Alg. 2): one evaluation per step, reusing
  the last one or two model outputs. The first steps warm up at lower order; with ``lower_order_final``
  runs of fewer than 10 steps also lower the order of their last steps (the published recipe for
  stability at very small NFE).
* ``UniPC`` (arXiv 2302.04867, B(h) = h "bh1" or e^h - 1 "bh2", noise or data prediction): a multistep
  predictor plus the UniC corrector, which re-uses the model evaluation at the new point to raise the order
  of the step just taken at no extra evaluation (skipped after the last step, where it would cost one).

* ``DDIM`` (Song, Meng & Ermon 2021), the first-order member of both families, with stochasticity eta:
  x1 = alpha_1 x0_hat + sqrt(sigma_1^2 - c^2) eps_hat + c z, c = eta sqrt(sigma_1^2 v / sigma_0^2), where
  x_{t0} = a x_{t1} + sqrt(v) z is the forward kernel; eta = 1 is the ancestral step.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.sampling.base import ScoreSolver, transition
from sde_lib.sampling.noise import normal_like_rows, time_bits
from sde_lib.checks import integer_option, real_option
from sde_lib.sampling.registry import Option, Sampler, register

PREDICTIONS = ("noise", "data")


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


def _phis(z):
    """phi_1, phi_2, phi_3 of the module docstring at z (= h noise form, -h data form)."""
    phi1 = jnp.expm1(z)
    phi2 = phi1 / z - 1.0
    return phi1, phi2, phi2 / z - 0.5


def _form(sde, prediction, t0, t1):
    """(z, ratio, c) of the module docstring for a step t0 -> t1 in ``prediction`` form."""
    alpha0, sigma0 = sde.marginal_coeffs(t0)
    alpha1, sigma1 = sde.marginal_coeffs(t1)
    h = sde.half_log_snr(t1) - sde.half_log_snr(t0)
    if prediction == "noise":
        return h, alpha1 / alpha0, sigma1
    return -h, sigma1 / sigma0, alpha1


# ------------------------------------------------------------------------------------ singlestep
def fast_orders(nfe: int, order: int) -> tuple[int, ...]:
    """Block orders of DPM-Solver-fast (arXiv 2206.00927 Sec. 3.4, the authors' code), summing to ``nfe``.

    Order 3: K = nfe // 3 + 1 blocks, ``(3,) * (K - 2) + (2, 1)``, ``(3,) * (K - 1) + (1,)`` or
    ``(3,) * (K - 1) + (2,)`` for nfe % 3 = 0, 1, 2; order 2: ``(2,) * (nfe // 2)`` plus ``(1,)`` if odd.
    """
    if order == 3:
        k, rem = nfe // 3 + 1, nfe % 3
        return (3,) * (k - 2) + (2, 1) if rem == 0 else (3,) * (k - 1) + ((1,) if rem == 1 else (2,))
    return (2,) * (nfe // 2) + (1,) * (nfe % 2)


class DPMSolver(ScoreSolver):
    """Singlestep DPM-Solver-fast of order 2 or 3 (noise prediction); one evaluation per solver step.

    Solver step i is stage ``j`` of a block of order ``o`` (:func:`fast_orders` over ``n_steps``
    evaluations). A block from s = t_a to t = t_{a+o} evaluates eps at its grid points s, s1, s2 and
    outputs the stage values u_1 ~ x(s1), u_2 ~ x(s2) (so diffrax's y is a first- or second-order point
    of the trajectory inside a block), then the block's end point. With r_k = (lambda_{s_k} - lambda_s) / h
    and D_k = eps(s_k) - eps(s):

        u_1 = (a_1/a_s) x_s - s_1 (e^{r1 h} - 1) eps_s                                  (DDIM)
        u_2 = (a_2/a_s) x_s - s_2 (e^{r2 h} - 1) eps_s - s_2 (r2/r1) phi_2(r2 h) D_1
        x_t = (a_t/a_s) x_s - s_t (e^h - 1) eps_s - s_t (e^h - 1) D_1 / (2 r1)             (order 2)
        x_t = (a_t/a_s) x_s - s_t (e^h - 1) eps_s - s_t (phi_2(h) D'_1 + phi_3(h) D'_2)      (order 3)

    with the Taylor-form differences D'_1 = (r2 D_1/r1 - r1 D_2/r2) / (r2 - r1),
    D'_2 = 2 (D_2/r2 - D_1/r1) / (r2 - r1) (the authors' ``solver_type="taylor"``): third order for any
    r1 < r2, so arbitrary (e.g. calibrated) grids keep the order; on the logSNR grid r1, r2 = 1/3, 2/3.
    """

    solver_order: int = eqx.field(static=True, default=2)
    n_steps: int = eqx.field(static=True, default=10)

    def init(self, terms, t0, t1, y0, args):
        t = jnp.zeros((), jnp.result_type(t0))
        z = jnp.zeros_like(y0)
        return (z, z, z, t, t, jnp.array(0, jnp.int32))

    def _kinds(self) -> np.ndarray:
        """Branch of each solver step: 0 block start (DDIM), 1 order-2 end, 2 order-3 middle, 3 order-3 end."""
        table = {1: (0,), 2: (0, 1), 3: (0, 2, 3)}
        return np.array([k for o in fast_orders(self.n_steps, self.solver_order) for k in table[o]], np.int32)

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        """State: the block's start point x_s and time t_s, eps at s and s1, the time s1, the step index."""
        sde = self.sde
        x_s, eps_s, eps_1, t_s, t_1, i = state
        eps = self.predictions(terms, t0, y0, args)[0]
        lam0, lam_end, lam_s = sde.half_log_snr(t0), sde.half_log_snr(t1), sde.half_log_snr(t_s)
        alpha1, sigma1 = sde.marginal_coeffs(t1)

        def start():
            ratio = alpha1 / sde.marginal_coeffs(t0)[0]
            return ratio * y0 - sigma1 * jnp.expm1(lam_end - lam0) * eps, (y0, eps, eps_1, t0, t_1)

        def from_block_start(h):
            return (alpha1 / sde.marginal_coeffs(t_s)[0]) * x_s - sigma1 * jnp.expm1(h) * eps_s

        def end2():
            h = lam_end - lam_s
            r1 = (lam0 - lam_s) / h
            return from_block_start(h) - sigma1 * jnp.expm1(h) / (2 * r1) * (eps - eps_s), state[:5]

        def middle3():
            h1, h2 = lam0 - lam_s, lam_end - lam_s
            y1 = from_block_start(h2) - sigma1 * (h2 / h1) * _phis(h2)[1] * (eps - eps_s)
            return y1, (x_s, eps_s, eps, t_s, t0)

        def end3():
            h = lam_end - lam_s
            r1, r2 = (sde.half_log_snr(t_1) - lam_s) / h, (lam0 - lam_s) / h
            d1, d2 = (eps_1 - eps_s) / r1, (eps - eps_s) / r2
            _, phi2, phi3 = _phis(h)
            taylor1 = (r2 * d1 - r1 * d2) / (r2 - r1)
            taylor2 = 2.0 * (d2 - d1) / (r2 - r1)
            return from_block_start(h) - sigma1 * (phi2 * taylor1 + phi3 * taylor2), state[:5]

        kind = jnp.asarray(self._kinds())[jnp.minimum(i, self.n_steps - 1)]
        y1, rest = jax.lax.switch(kind, (start, end2, middle3, end3))
        return y1, (*rest, i + 1)


# ------------------------------------------------------------------------------------- multistep
class _Multistep(ScoreSolver):
    """Order bookkeeping of the multistep solvers (warm-up and ``lower_order_final``)."""

    solver_order: int = eqx.field(static=True, default=2)
    n_steps: int = eqx.field(static=True, default=10)
    lower_order_final: bool = eqx.field(static=True, default=True)
    prediction: str = eqx.field(static=True, default="data")

    def __check_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

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

    def model(self, terms, t, y, args):
        """The model output the update expands: eps_hat (noise form) or x0_hat (data form)."""
        return self.predictions(terms, t, y, args)[0 if self.prediction == "noise" else 1]


def _multistep_update(order, form, y0, m0, m1, m2, r0, r1):
    """Multistep DPM-Solver update of the given (traced) order in {1, 2, 3} in either form.

    ``form = (z, ratio, c)`` (:func:`_form`); ``m1``, ``m2`` the previous outputs with step ratios
    r0 = (lambda_0 - lambda_{-1}) / h and r1 = (lambda_{-1} - lambda_{-2}) / h. Order 2 uses D_1 = (m0 - m1) / (2 r0)
    with phi_1 (the authors' "dpmsolver" type); order 3 the divided differences of the authors' code.
    """
    z, ratio, c = form
    phi1, phi2, phi3 = _phis(z)
    first = ratio * y0 - c * phi1 * m0
    d1_0 = (m0 - m1) / r0

    def o3():
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return first - c * (phi2 * d1 + phi3 * d2)

    return jax.lax.switch(order - 1, (lambda: first, lambda: first - 0.5 * c * phi1 * d1_0, o3))


class DPMSolverMultistep(_Multistep):
    """Multistep DPM-Solver (noise prediction) or DPM-Solver++(2M)/(3M) (data prediction): one evaluation
    per step. State: the last two model outputs and their lambdas, and the step index."""

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        m1, m2, lam_p1, lam_p2, i = state
        sde = self.sde
        lam0, lam1 = sde.half_log_snr(t0), sde.half_log_snr(t1)
        h = lam1 - lam0
        m0 = self.model(terms, t0, y0, args)
        y1 = _multistep_update(self.step_order(i), _form(sde, self.prediction, t0, t1), y0, m0, m1, m2,
                               (lam0 - lam_p1) / h, (lam_p1 - lam_p2) / h)
        return y1, (m0, m1, lam0, lam_p1, i + 1)


class DPMSolverPPMultistep(DPMSolverMultistep):
    """DPM-Solver++(2M) / (3M): :class:`DPMSolverMultistep` in data prediction."""

    prediction: str = eqx.field(static=True, default="data")


# ----------------------------------------------------------------------------------------- UniPC
class UniPC(_Multistep):
    """UniPC: UniP predictor of order p plus the UniC corrector of order p + 1 (``variant`` bh1 | bh2).

    Step i evaluates the model once, m_i at the *predicted* point x~_i. That value first corrects the
    previous step (t_{i-1} -> t_i) from its corrected start x_{i-1}, giving x_i; the predictor then steps
    x_i -> x~_{i+1}. diffrax's state y is the predicted x~_i; the corrected start, the last three model
    values and their times travel in the solver state. The last step is not corrected (that would cost an
    extra evaluation), as in the reference implementation.
    """

    variant: str = eqx.field(static=True, default="bh2")

    def init(self, terms, t0, t1, y0, args):
        z = jnp.zeros_like(y0)
        t = jnp.zeros((), jnp.result_type(t0))
        return ((z, z, z), (t, t, t), jnp.array(0, jnp.int32), z)

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        (m1, m2, m3), (t_1, t_2, t_3), i, x_prev = state
        m0 = self.model(terms, t0, y0, args)
        corrected = self._switch_order(self.step_order(i - 1), x_prev, (m1, m2, m3), (t_1, t_2, t_3), t0, m0)
        x0 = jnp.where(i > 0, corrected, y0)
        y1 = self._switch_order(self.step_order(i), x0, (m0, m1, m2), (t0, t_1, t_2), t1, None)
        return y1, ((m0, m1, m2), (t0, t_1, t_2), i + 1, x0)

    def _switch_order(self, order, x, ms, ts, t_new, m_new):
        """Dispatch a traced order in {1, 2, 3} to the statically shaped update."""
        branches = [lambda o=o: self._update(o, x, ms, ts, t_new, m_new) for o in (1, 2, 3)]
        return jax.lax.switch(jnp.clip(order, 1, 3) - 1, branches)

    def _update(self, order, x, ms, ts, t_new, m_new):
        """One UniP (``m_new is None``) or UniC update of the step from ts[0] to t_new.

        ms[k] is the model output at ts[k] (k = 0 the step's start). With h = lambda_new - lambda_0, z = h
        (noise) or -h (data), r_k = (lambda_k - lambda_0) / h and D_k = (m_k - m_0) / r_k, the update is
            x_new = ratio x - c (e^z - 1) m_0 - c B(z) sum_k rho_k D_k,   B(z) = z (bh1) or e^z - 1 (bh2),
        where the rho solve the order conditions  sum_k rho_k r_k^{j-1} = b_j, b_j = j! psi_{j+1} / B(z) with
        psi_1 = e^z - 1 and psi_{k+1} = psi_k / z - 1/k! (arXiv 2302.04867, Alg. 1-2). The predictor uses
        order - 1 past points; the corrector adds the new point (r = 1), for order terms in all.
        """
        sde = self.sde
        lam0 = sde.half_log_snr(ts[0])
        z, ratio, c = _form(sde, self.prediction, ts[0], t_new)
        h = sde.half_log_snr(t_new) - lam0
        h_phi_1 = jnp.expm1(z)
        b_h = z if self.variant == "bh1" else h_phi_1
        base = ratio * x - c * h_phi_1 * ms[0]

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
            b, h_phi_k, fac = [], h_phi_1 / z - 1.0, 1.0
            for j in range(1, n + 1):
                b.append(h_phi_k * fac / b_h)
                fac *= j + 1
                h_phi_k = h_phi_k / z - 1.0 / fac
            mat = jnp.stack([jnp.stack(rks) ** (j - 1) for j in range(1, n + 1)])
            rhos = jnp.linalg.solve(mat, jnp.stack(b))
            rhos = [rhos[k] for k in range(n)]
        return base - c * b_h * sum(r * d for r, d in zip(rhos, ds))


_LOF = Option("lower_order_final", True, "lower the order of the last steps of runs under 10 steps")
_PRED = Option("prediction", "data", "noise | data: the model output the update expands", lambda v: v in PREDICTIONS)
register(Sampler("ddim", family="exponential", grid="logsnr", doc="DDIM, `eta` in [0, 1]",
                 options=(Option("eta", 0.0, "stochasticity in [0, 1]", real_option(minimum=0, maximum=1)),),
                 solver=lambda sde, steps, o: DDIM(sde, eta=float(o["eta"]))))
for _order in (2, 3):
    register(Sampler(f"dpm_solver_{_order}", family="exponential", grid="logsnr",
                     doc="singlestep DPM-Solver-fast, noise prediction; `steps` = evaluations, blocks of order "
                         + ("3/2/1" if _order == 3 else "2/1"),
                     solver=lambda sde, steps, o, k=_order: DPMSolver(sde, solver_order=k, n_steps=steps)))
for _order in (2, 3):
    register(Sampler(f"dpm_solver_{_order}m", family="exponential", grid="logsnr", options=(_LOF,),
                     doc="multistep DPM-Solver, noise prediction",
                     solver=lambda sde, steps, o, k=_order: DPMSolverMultistep(
                         sde, solver_order=k, n_steps=steps, lower_order_final=bool(o["lower_order_final"]),
                         prediction="noise")))
for _order in (2, 3):
    register(Sampler(f"dpm_solver_pp_{_order}m", family="exponential", grid="logsnr", options=(_LOF,),
                     doc="multistep DPM-Solver++, data prediction",
                     solver=lambda sde, steps, o, k=_order: DPMSolverPPMultistep(
                         sde, solver_order=k, n_steps=steps, lower_order_final=bool(o["lower_order_final"]))))
register(Sampler("unipc", family="exponential", grid="logsnr",
                 doc="UniPC predictor-corrector (`order`, `variant` bh1 | bh2, `prediction` noise | data)",
                 options=(Option("order", 3, "1, 2 or 3", integer_option(choices=(1, 2, 3))), _LOF,
                          Option("variant", "bh2", "bh1 | bh2: B(h) = h or e^h - 1", lambda v: v in ("bh1", "bh2")),
                          _PRED),
                 solver=lambda sde, steps, o: UniPC(sde, solver_order=int(o["order"]), n_steps=steps,
                                                    lower_order_final=bool(o["lower_order_final"]),
                                                    variant=o["variant"], prediction=o["prediction"])))
