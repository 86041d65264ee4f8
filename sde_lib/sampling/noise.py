"""Per-sample noise for fixed-step stochastic samplers.

Sample i of a batch must depend only on (key, i), so every draw is made from a per-row key
``fold_in(key, i)`` and a salt naming the draw (the step's time bits, a sub-step index). Drawing from a
hash of (row key, salt) costs one threefry evaluation per number, the same as a hand-written loop's
``jax.random.normal``; diffrax's ``VirtualBrownianTree`` instead bisects ~log2(1/tol) levels per query
(diffrax issue #517), which is only worth paying where steps can be rejected (``sde_adaptive``).
"""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp


def time_bits(t) -> jax.Array:
    """The bit pattern of a float time, used as a salt: distinct times give distinct streams."""
    t = jnp.asarray(t)
    itype = jnp.int64 if t.dtype == jnp.float64 else jnp.int32
    return jax.lax.bitcast_convert_type(t, itype).astype(jnp.uint32)


def normal_like_rows(row_keys: jax.Array, shape: tuple[int, ...], *salts, dtype=jnp.float32) -> jax.Array:
    """Standard normals of ``shape = (B, *dims)``; row i is a function of (row_keys[i], salts) only."""

    def one(k):
        for s in salts:
            k = jax.random.fold_in(k, s)
        return jax.random.normal(k, shape[1:], dtype)

    return jax.vmap(one)(row_keys)


class PerSampleBrownianPath(diffrax.AbstractBrownianPath):
    """Brownian increments over the whole batch with row i drawn from ``row_keys[i]`` only.

    ``evaluate(t0, t1)`` returns W(t1) - W(t0) ~ N(0, (t1 - t0) I) from a stream salted by the bits of
    (t0, t1). Increments over disjoint intervals are independent, which is exactly what a fixed-step
    solver queries; like diffrax's ``UnsafeBrownianPath`` it is not a consistent path under step
    rejection, so adaptive solvers use ``VirtualBrownianTree`` instead.
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    row_keys: jax.Array
    levy_area: type = eqx.field(static=True, default=diffrax.BrownianIncrement)

    @property
    def t0(self):
        return -jnp.inf

    @property
    def t1(self):
        return jnp.inf

    def evaluate(self, t0, t1=None, left: bool = True, use_levy: bool = False):
        del left
        if t1 is None:
            t0, t1 = jnp.zeros_like(t0), t0
        dtype = jnp.result_type(t0, t1, jnp.float32)
        dt = jnp.asarray(t1 - t0, dtype)
        w = jnp.sqrt(dt) * normal_like_rows(self.row_keys, self.shape, time_bits(t0), time_bits(t1), dtype=dtype)
        if use_levy:
            return diffrax.BrownianIncrement(dt=dt, W=w)
        return w
