"""Shared machinery for our own diffrax solvers (samplers that diffrax does not ship).

Every sampler integrates from T down to eps. ``diffrax.diffeqsolve`` runs such a solve on the negated
clock s = -t (it wraps each term in ``WrapTerm(term, direction=-1)``), so a solver's ``step`` receives
s0 < s1 and the real times are ``t = s * terms.direction``. Terms still evaluate at real time: the
single term our solvers receive is ``ODETerm(score)``, so ``terms.vf(s, y, args)`` is the score at t.

The solver state and noise follow diffrax's conventions: ``args`` carries the per-row keys of the batch
(see ``noise.py``) for the stochastic ones.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import diffrax
import jax.numpy as jnp

from sde_lib.parameterization import eps_and_x0
from sde_lib.sdes import SDE


class ScoreSolver(diffrax.AbstractSolver):
    """Base class: a fixed-step solver with access to the SDE and the score through ``terms``.

    Subclasses implement ``step_real(terms, s0, t0, t1, y0, args, state) -> (y1, state)`` with real
    times t0 > t1; this class adapts it to diffrax's solver interface. Fixed steps only (no error
    estimate), linear dense output between steps.
    """

    sde: SDE

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return None

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        sign = terms.direction
        y1, solver_state = self.step_real(terms, t0, t0 * sign, t1 * sign, y0, args, solver_state)
        return y1, None, dict(y0=y0, y1=y1), solver_state, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    # ------------------------------------------------------------------ helpers for subclasses
    def score(self, terms, t, y, args):
        """The score at real time t for the whole batch ``y`` ``(B, *dims)`` (one evaluation)."""
        return terms.vf(t * terms.direction, y, args)

    def predictions(self, terms, t, y, args):
        """(eps_hat, x0_hat) from one score evaluation (``parameterization.eps_and_x0``)."""
        return eps_and_x0(self.sde, y, t, self.score(terms, t, y, args))

    @abc.abstractmethod
    def step_real(self, terms, s0, t0, t1, y0, args, state):
        """One step from real time t0 to t1 < t0 (solver time s0 = -t0); returns (y1, new state)."""


def transition(sde: SDE, t_from, t_to):
    """Forward kernel x_{t_from} | x_{t_to} = a x_{t_to} + sqrt(v) z for t_to < t_from.

    a = alpha(t_from) / alpha(t_to) and v = sigma(t_from)^2 - a^2 sigma(t_to)^2 (any linear SDE:
    variances from 0 compose as v_from = a^2 v_to + v). Returns (a, v).
    """
    a0, s0 = sde.marginal_coeffs(t_from)
    a1, s1 = sde.marginal_coeffs(t_to)
    a = a0 / a1
    return a, jnp.maximum(s0**2 - a**2 * s1**2, 0.0)
