"""Adams-Bashforth samplers in the EDM variables: iPNDM and DEIS (Zhang & Chen 2022, arXiv 2204.13902).

In y = x / alpha_t and rho = sigma(t) = sigma_t / alpha_t the probability-flow ODE of every linear SDE is

    dy / drho = eps_hat(alpha_t y, t),        eps_hat = -sigma_t score,

so a step t_i -> t_{i+1} is y_{i+1} = y_i + int_{rho_i}^{rho_{i+1}} eps_hat drho, and a multistep method
replaces eps_hat by the polynomial through its last q values (one evaluation per step, q <= 4):

* ``IPNDM`` (improved PNDM, DEIS' App. and the GITS/AMED code): the constant-step Adams-Bashforth
  coefficients of order q in rho, (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24, with lower-order
  warm-up (no Runge-Kutta start);
* ``DEIS`` (the exponential integrator with a Lagrange polynomial in ``basis`` t ("tAB") or rho ("rhoAB")):
  y_{i+1} = y_i + sum_j C_j eps_{i-j} with C_j = int_{rho_i}^{rho_{i+1}} L_j(u(rho)) drho, L_j the Lagrange
  basis over the nodes u_{i-j} (u = t or rho). The integral is taken in rho by Gauss-Legendre quadrature
  (exact for rhoAB; t(rho) is smooth, unlike rho(t) ~ sqrt(t) near t = 0, so tAB's quadrature converges
  fast too). Order q = 1 is DDIM for both.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.sampling.base import ScoreSolver
from sde_lib.checks import integer_option
from sde_lib.sampling.registry import Option, Sampler, register

_IPNDM = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))
_GAUSS_NODES, _GAUSS_WEIGHTS = np.polynomial.legendre.leggauss(8)


class _AdamsRho(ScoreSolver):
    """Shared state and step of the rho-space multistep samplers: the last three eps_hat and their times."""

    solver_order: int = eqx.field(static=True, default=3)

    def init(self, terms, t0, t1, y0, args):
        z = jnp.zeros_like(y0)
        t = jnp.zeros((), jnp.result_type(t0))
        return ((z, z, z), (t, t, t), jnp.array(0, jnp.int32))

    @abc.abstractmethod
    def coefficients(self, order, ts, t1):
        """Weights ``(4,)`` of eps_hat at ``ts`` (newest first, 4 times) for the step ts[0] -> t1 at ``order``."""

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        (e1, e2, e3), (t_1, t_2, t_3), i = state
        sde = self.sde
        eps = self.predictions(terms, t0, y0, args)[0]
        order = jnp.minimum(self.solver_order, i + 1)
        c = self.coefficients(order, (t0, t_1, t_2, t_3), t1)
        alpha0, _ = sde.marginal_coeffs(t0)
        alpha1, _ = sde.marginal_coeffs(t1)
        y1 = y0 / alpha0 + c[0] * eps + c[1] * e1 + c[2] * e2 + c[3] * e3
        return alpha1 * y1, ((eps, e1, e2), (t0, t_1, t_2), i + 1)


class IPNDM(_AdamsRho):
    """iPNDM: constant-step Adams-Bashforth in rho of order min(order, i + 1) at step i."""

    def coefficients(self, order, ts, t1):
        drho = self.sde.sigma(t1) - self.sde.sigma(ts[0])
        table = jnp.array([row + (0.0,) * (4 - len(row)) for row in _IPNDM])
        return drho * table[order - 1]


class DEIS(_AdamsRho):
    """DEIS tAB / rhoAB of order min(order, i + 1) at step i (Lagrange basis in ``basis`` = t | rho)."""

    basis: str = eqx.field(static=True, default="t")

    def __check_init__(self):
        if self.basis not in ("t", "rho"):
            raise ValueError(f"basis must be 't' or 'rho', got {self.basis!r}")

    def coefficients(self, order, ts, t1):
        sde = self.sde
        rho0, rho1 = sde.sigma(ts[0]), sde.sigma(t1)
        rho = rho0 + 0.5 * (rho1 - rho0) * (1.0 + jnp.asarray(_GAUSS_NODES, rho0.dtype))
        w = 0.5 * (rho1 - rho0) * jnp.asarray(_GAUSS_WEIGHTS, rho0.dtype)
        if self.basis == "t":
            u, nodes = sde.t_from_sigma(rho), jnp.stack(ts)
        else:
            u, nodes = rho, sde.sigma(jnp.stack(ts))

        def weights(q):
            """C_j for the q newest nodes (zero for the rest)."""
            out = []
            for j in range(4):
                if j >= q:
                    out.append(jnp.zeros_like(rho0))
                    continue
                lag = jnp.ones_like(u)
                for k in range(q):
                    if k != j:
                        lag = lag * (u - nodes[k]) / (nodes[j] - nodes[k])
                out.append(jnp.sum(w * lag))
            return jnp.stack(out)

        return jax.lax.switch(order - 1, [lambda q=q: weights(q) for q in (1, 2, 3, 4)])


_ORDER = Option("order", 3, "1 to 4: Adams-Bashforth order (past evaluations used + 1)",
                integer_option(choices=(1, 2, 3, 4)))
register(Sampler("ipndm", family="exponential", grid="edm",
                 doc="iPNDM, constant-step Adams-Bashforth in sigma (`order`)",
                 options=(Option("order", 4, "1 to 4", integer_option(choices=(1, 2, 3, 4))),),
                 solver=lambda sde, steps, o: IPNDM(sde, solver_order=int(o["order"]))))
register(Sampler("deis", family="exponential", grid="logsnr",
                 doc="DEIS tAB (`basis` t) or rhoAB (`basis` rho), `order`",
                 options=(_ORDER, Option("basis", "t", "t | rho: variable of the Lagrange polynomial",
                                         lambda v: v in ("t", "rho"))),
                 solver=lambda sde, steps, o: DEIS(sde, solver_order=int(o["order"]), basis=o["basis"])))
