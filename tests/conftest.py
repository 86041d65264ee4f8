"""Shared fixtures: one instance per SDE (so jitted helpers keyed on the SDE compile once per session)
and an Euler-Maruyama simulator of the forward SDE."""

import functools

import jax
import jax.numpy as jnp
import pytest

import sde_lib
from sde_lib.sdes import batch_broadcast
from tests.helpers import compilation_cache


@pytest.fixture(scope="session")
def sdes():
    """The three SDEs with score_sde's default parameters, keyed by name."""
    return {"vp": sde_lib.VPSDE(0.1, 20.0), "subvp": sde_lib.SubVPSDE(0.1, 20.0), "ve": sde_lib.VESDE(0.01, 50.0)}


@functools.partial(jax.jit, static_argnums=(0, 4))
def _euler_maruyama(sde, x, t0, t1, steps, key):
    dt = (t1 - t0) / steps

    def step(x, inp):
        i, k = inp
        drift, g = sde.sde(x, jnp.full(x.shape[:1], t0 + i * dt))
        z = jax.random.normal(k, x.shape)
        return x + drift * dt + batch_broadcast(g, x) * jnp.sqrt(dt) * z, None

    x, _ = jax.lax.scan(step, x, (jnp.arange(steps), jax.random.split(key, steps)))
    return x


@pytest.fixture(scope="session")
def euler_maruyama():
    """``em(sde, x, t0, t1, steps, key)``: x (B, *dims) at t0 -> one Euler-Maruyama path per row at t1."""
    return _euler_maruyama


class CountingScore:
    """Wraps a score function and counts its runtime evaluations (one per batched call) on the host."""

    def __init__(self, score_fn):
        self.score_fn, self.calls = score_fn, 0

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t, *cond):
        jax.debug.callback(self._tick)
        return self.score_fn(x, t, *cond)

    def take(self) -> int:
        """Calls since the last ``take`` (waits for pending callbacks first)."""
        jax.effects_barrier()
        calls, self.calls = self.calls, 0
        return calls


@pytest.fixture(scope="session")
def counting_score():
    """The :class:`CountingScore` class, for tests that check ``info["nfe"]`` against real calls."""
    return CountingScore


@pytest.fixture(scope="module")
def module_compilation_cache(tmp_path_factory):
    """One persistent compilation cache for a module and the scripts it starts (``helpers.compilation_cache``);
    a module opts in with ``pytestmark = pytest.mark.usefixtures("module_compilation_cache")``."""
    with compilation_cache(tmp_path_factory.mktemp("jax_cache")):
        yield
