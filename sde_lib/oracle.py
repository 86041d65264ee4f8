"""Gaussian mixtures with exact densities and scores under any linear SDE: the framework's ground truth.

If p_0 = sum_k w_k N(mu_k, s_k^2 I) and x_t = alpha_t x_0 + sigma_t z, then

    p_t = sum_k w_k N(alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I),

so log p_t and its score  grad log p_t(x) = sum_k r_k(x) (alpha_t mu_k - x) / v_k  (r_k the posterior
component responsibilities, v_k the component variances) are exact. A sampler driven by this score has
only discretisation error, and the probability-flow likelihood must reproduce log p_eps.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.sdes import SDE, per_sample_keys


class GaussianMixture(eqx.Module):
    """Mixture of K isotropic Gaussians in D dimensions.

    Args:
      means: ``(K, D)`` component means.
      stds: ``(K,)`` per-component isotropic standard deviations (> 0).
      weights: ``(K,)`` non-negative mixture weights; normalised here.

    Inputs ``x`` may be ``(n, D)`` or image-shaped ``(n, *dims)`` with ``prod(dims) == D``; they are
    flattened internally and scores come back in the input's shape. A mixture is an ``equinox.Module``
    (its arrays are pytree leaves), so a compiled sampler takes another mixture of the same shapes
    without recompiling.
    """

    # Identity hash and equality, as for a closure: ``jax.jit(score_fn)`` needs a hashable callable, and
    # array fields are not hashable. Jitted entry points flatten the module and trace its arrays instead.
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    means: jax.Array
    stds: jax.Array
    log_weights: jax.Array

    def __init__(self, means, stds, weights):
        means = jnp.asarray(means, jnp.float32)
        stds = jnp.asarray(stds, jnp.float32)
        weights = jnp.asarray(weights, jnp.float32)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {means.shape}")
        k = means.shape[0]
        if stds.shape != (k,) or weights.shape != (k,):
            raise ValueError(f"stds and weights must have shape ({k},), got {stds.shape} and {weights.shape}")
        self.means, self.stds = means, stds
        self.log_weights = jnp.log(weights / jnp.sum(weights))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def weights(self) -> jax.Array:
        return jnp.exp(self.log_weights)

    # ------------------------------------------------------------------------------------- core maths
    def _components(self, x, alpha, sigma):
        """Per-component log N(x; alpha mu_k, v_k I) ``(n, K)``, plus means ``(n, K, D)`` and vars ``(n, K)``."""
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.dim:
            raise ValueError(f"x has {x.shape[1]} dimensions per example, the mixture has {self.dim}")
        alpha = jnp.broadcast_to(alpha, x.shape[:1])[:, None]
        sigma = jnp.broadcast_to(sigma, x.shape[:1])[:, None]
        var = alpha**2 * self.stds**2 + sigma**2  # (n, K)
        mean = alpha[..., None] * self.means  # (n, K, D)
        sq = jnp.sum((x[:, None, :] - mean) ** 2, axis=-1)
        log_n = -0.5 * sq / var - 0.5 * self.dim * jnp.log(2 * jnp.pi * var)
        return log_n, mean, var

    def _log_prob(self, x, alpha, sigma):
        log_n, _, _ = self._components(x, alpha, sigma)
        return jax.nn.logsumexp(log_n + self.log_weights, axis=-1)

    def _score(self, x, alpha, sigma):
        log_n, mean, var = self._components(x, alpha, sigma)
        r = jax.nn.softmax(log_n + self.log_weights, axis=-1)  # (n, K) responsibilities
        flat = x.reshape(x.shape[0], -1)
        score = jnp.einsum("nk,nkd->nd", r / var, mean) - jnp.sum(r / var, axis=-1, keepdims=True) * flat
        return score.reshape(x.shape)

    # --------------------------------------------------------------------------------- public API
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``(n, D)`` exact draws of p_0; row i depends only on (key, i)."""

        def one(k):
            kc, kz = jax.random.split(k)
            c = jax.random.categorical(kc, self.log_weights)
            return self.means[c] + self.stds[c] * jax.random.normal(kz, (self.dim,))

        return jax.vmap(one)(per_sample_keys(key, n))

    def sample_t(self, sde: SDE, key: jax.Array, n: int, t) -> jax.Array:
        """``(n, D)`` exact draws of p_t under ``sde`` (alpha_t x_0 + sigma_t z with x_0 ~ p_0)."""
        alpha, sigma = (jnp.reshape(c, (-1, 1)) for c in sde.marginal_coeffs(jnp.asarray(t, jnp.float32)))
        kx, kz = jax.random.split(key)
        z = jax.vmap(lambda k: jax.random.normal(k, (self.dim,)))(per_sample_keys(kz, n))
        return alpha * self.sample(kx, n) + sigma * z

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p_0(x), shape ``(n,)``."""
        return self._log_prob(x, 1.0, 0.0)

    def log_prob_t(self, sde: SDE, x: jax.Array, t) -> jax.Array:
        """Exact log p_t(x) under ``sde``'s marginal, shape ``(n,)``; ``t`` scalar or ``(n,)``."""
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        return self._log_prob(x, alpha, sigma)

    def score_fn(self, sde: SDE) -> "MixtureScore":
        """The exact score ``score_fn(x, t) = grad_x log p_t(x)`` with ``x`` ``(n, *dims)``, ``t`` ``(n,)``."""
        return MixtureScore(self, sde)

    def mean_and_cov(self) -> tuple[jax.Array, jax.Array]:
        """Mean ``(D,)`` and covariance ``(D, D)`` of p_0 (for moment-matching checks)."""
        w = self.weights
        mean = w @ self.means
        centred = self.means - mean
        cov = jnp.einsum("k,ki,kj->ij", w, centred, centred) + jnp.sum(w * self.stds**2) * jnp.eye(self.dim)
        return mean, cov


class MixtureScore(eqx.Module):
    """``score_fn(x, t)``: the exact score of ``mixture`` under ``sde`` (a pytree: equal mixtures and SDEs
    share one compiled sampler)."""

    # Identity hash and equality, as for a closure: ``jax.jit(score_fn)`` needs a hashable callable, and
    # array fields are not hashable. Jitted entry points flatten the module and trace its arrays instead.
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        alpha, sigma = self.sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        return self.mixture._score(x, alpha, sigma)


def builtin_mixture(name: str) -> GaussianMixture:
    """A few fixed mixtures used by tests, demos and ablations.

    ``ring2d``: 8 modes on a circle of radius 2 (std 0.1, multi-modal, well separated);
    ``grid2d``: 3x3 grid, unequal weights; ``gauss16d`` / ``gauss64d``: 4 random modes in 16 / 64-D.
    """
    if name == "ring2d":
        ang = jnp.arange(8) * (2 * math.pi / 8)
        means = 2.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], axis=-1)
        return GaussianMixture(means, jnp.full((8,), 0.1), jnp.ones(8))
    if name == "grid2d":
        g = jnp.linspace(-1.5, 1.5, 3)
        means = jnp.stack(jnp.meshgrid(g, g), axis=-1).reshape(-1, 2)
        return GaussianMixture(means, jnp.full((9,), 0.15), jnp.arange(1, 10, dtype=jnp.float32))
    if name in ("gauss16d", "gauss64d"):
        d = 16 if name == "gauss16d" else 64
        means = jax.random.normal(jax.random.PRNGKey(d), (4, d)) * 0.8
        return GaussianMixture(means, jnp.array([0.2, 0.3, 0.4, 0.5]), jnp.array([0.1, 0.2, 0.3, 0.4]))
    raise ValueError(f"unknown built-in mixture {name!r}; choose from ring2d, grid2d, gauss16d, gauss64d")
