"""Adaptive step-size control that counts vector-field evaluations exactly.

Used wherever ``info["nfe"]`` must equal the real number of score evaluations of an adaptive solve
(the probability-flow likelihood, the adaptive samplers). Usage: wrap a ``diffrax.PIDController``,
pass an explicit ``dt0``, save ``SaveAt(controller_state=True)`` and read ``controller_state[1]``.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax.numpy as jnp


class CountingPIDController(diffrax.AbstractAdaptiveStepSizeController):
    """PID step-size control that also counts vector-field evaluations.

    Diffrax rolls the solver state back on a rejected step but hands the controller state through, so
    the controller is the one place that sees every attempted step. A step costs ``stages`` evaluations,
    one fewer for FSAL tableaus once a step has been accepted (before that, diffrax recomputes the first
    stage on every attempt).
    """

    pid: diffrax.PIDController
    stages: int = eqx.field(static=True)
    fsal: bool = eqx.field(static=True)

    @property
    def rtol(self):
        return self.pid.rtol

    @property
    def atol(self):
        return self.pid.atol

    @property
    def norm(self):
        return self.pid.norm

    def wrap(self, direction):
        return eqx.tree_at(lambda c: c.pid, self, self.pid.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            raise ValueError("CountingPIDController needs an explicit dt0 (initial-step selection would evaluate uncounted)")
        tnext, state = self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (state, jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        state, count, accepted = controller_state
        keep, nt0, nt1, jump, state, result = self.pid.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        cost = self.stages - jnp.where(self.fsal & accepted, 1, 0)
        return keep, nt0, nt1, jump, (state, count + cost, accepted | keep), result
