"""Adaptive step-size control that counts vector-field evaluations exactly.

Used wherever ``info["nfe"]`` must equal the real number of score evaluations of an adaptive solve
(the probability-flow likelihood, the adaptive samplers). Usage: wrap a ``diffrax.PIDController``,
pass ``dt0`` (or None: :func:`initial_step_size`, its two evaluations counted), save
``SaveAt(controller_state=True)`` and read ``controller_state[1]``.
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp


MAX_NONFINITE_TRIALS = 10


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
        count = 0
        if dt0 is None:
            # Our own Hairer-Wanner rule, not diffrax's: diffrax's sees the terms already wrapped and
            # falls back to a fixed 0.01, which near a singular start is rejected several times.
            field = lambda t, y: func(terms, t, y, args)
            dt0 = initial_step_size(field, t0, y0, self.pid.rtol, self.pid.atol, self.pid.norm,
                                    error_order - 1, t1 - t0)
            count = 2
        tnext, state = self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (state, jnp.full((), count, jnp.int32), jnp.zeros((), bool), jnp.zeros((), jnp.int32))

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        state, count, accepted, streak = controller_state
        keep, nt0, nt1, jump, state, result = self.pid.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        cost = self.stages - jnp.where(self.fsal & accepted, 1, 0)
        # A trial step whose result is not finite is rejected and the step shrunk by diffrax's factormin
        # (0.2), which is right for a step that overflowed, but a NaN score never recovers: the solve would
        # spin until max_steps while its batch-mates wait (the vmapped loop runs until every row is done).
        # After MAX_NONFINITE_TRIALS such trials in a row (the step 0.2^10 ~ 1e-7 of where it started) the
        # solve ends, marked ``nonfinite``.
        bad = ~jnp.all(jnp.stack([jnp.all(jnp.isfinite(y)) for y in jax.tree.leaves(y1_candidate)]))
        streak = jnp.where(bad, streak + 1, 0)
        result = diffrax.RESULTS.where(streak >= MAX_NONFINITE_TRIALS, diffrax.RESULTS.nonfinite, result)
        return keep, nt0, nt1, jump, (state, count + cost, accepted | keep, streak), result


def initial_step_size(field, t0, y0, rtol: float, atol: float, norm, order: int, max_step):
    """First step of an adaptive solve of dy/dt = field(t, y) from (t0, y0), by Hairer, Norsett & Wanner's
    rule (Solving ODEs I, sec. II.4); two evaluations of ``field``, which the caller counts.

    With the error scale s = atol + rtol |y0| and ``norm`` the solve's error norm:
        d0 = ||y0 / s||, d1 = ||f0 / s||, h0 = min(0.01 d0 / d1, max_step) (1e-6 if either is below 1e-5),
        d2 = ||(f(t0 + h0, y0 + h0 f0) - f0) / s|| / h0,
        h = min(100 h0, (0.01 / max(d1, d2))^(1 / (order + 1)), max_step),
    where ``order`` is the embedded (error-estimating) method's order (4 for Dopri5 and Tsit5). A step
    of this size makes the leading local error term about 1% of the tolerance, so the first attempt
    is rarely rejected. :class:`CountingPIDController` uses it for dt0=None (diffrax's own choice is a
    fixed 0.01 once it wraps the terms). ``y0`` and the field's value are pytrees of the same structure;
    returns a scalar.
    """
    scale = jax.tree.map(lambda y: atol + rtol * jnp.abs(y), y0)
    scaled = lambda tree: jax.tree.map(lambda a, b: a / b, tree, scale)
    f0 = field(t0, y0)
    d0, d1 = norm(scaled(y0)), norm(scaled(f0))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    # The probe t0 + h0 stays inside the interval: beyond it the field may be undefined (a periodic
    # schedule's alpha_t, say); scipy's select_initial_step clips alike.
    h0 = jnp.minimum(jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1)), max_step)
    f1 = field(t0 + h0, jax.tree.map(lambda y, f: y + h0 * f, y0, f0))
    d2 = norm(scaled(jax.tree.map(lambda a, b: a - b, f1, f0))) / h0
    dmax = jnp.maximum(d1, d2)
    h1 = jnp.where(dmax <= 1e-15, jnp.maximum(1e-6, 1e-3 * h0),
                   (0.01 / jnp.where(dmax <= 1e-15, 1.0, dmax)) ** (1.0 / (order + 1)))
    return jnp.minimum(jnp.minimum(100.0 * h0, h1), max_step)
