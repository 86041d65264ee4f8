"""Gaussian mixtures with exact densities and scores under any linear SDE: the framework's ground truth.

If p_0 = sum_k w_k N(mu_k, s_k^2 I) and x_t = alpha_t x_0 + sigma_t z, then

    p_t = sum_k w_k N(alpha_t mu_k, (alpha_t^2 s_k^2 + sigma_t^2) I),

so log p_t and its score  grad log p_t(x) = sum_k r_k(x) (alpha_t mu_k - x) / v_k  (r_k the posterior
component responsibilities, v_k the component variances) are exact. A sampler driven by this score has
only discretisation error, and the probability-flow likelihood must reproduce log p_eps.

So are the posterior means E[x_0 | x_t] = sum_k r_k (mu_k + alpha_t s_k^2 (x - alpha_t mu_k) / v_k) and
E[z | x_t] = sum_k r_k sigma_t (x - alpha_t mu_k) / v_k, hence the exact velocity (the minimiser of flow
matching's loss, the probability-flow drift) v(x, t) = alpha'_t E[x_0 | x_t] + sigma'_t E[z | x_t], which
stays finite where alpha_t = 0 (the linear path at t = 1: v = x - E[x_0]) and the score form does not.

With component labels the mixture is also an exact labelled data set: the class-conditional score
(responsibilities within the class), the noisy classifier p_t(y | x) and the posterior of unobserved
coordinates given observed ones are all closed-form, which proves guidance and inpainting. So is the
posterior for a linear-Gaussian measurement y = A x + N(0, s^2 I) (:meth:`GaussianMixture.posterior`, a
mixture of full-covariance Gaussians), which proves the solvers of linear inverse problems.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.checks import integer
from sde_lib.sdes import SDE, per_sample_keys


def _mixture_draws(key: jax.Array, n: int, log_weights, dim: int, component_draw) -> jax.Array:
    """``(n, dim)`` draws of a mixture: per row a component c ~ softmax(log_weights) and a standard normal z,
    mapped by ``component_draw(c, z)``; row i depends only on (key, i)."""
    n = integer(n, "n", minimum=1)

    def one(k):
        kc, kz = jax.random.split(k)
        return component_draw(jax.random.categorical(kc, log_weights), jax.random.normal(kz, (dim,)))

    return jax.vmap(one)(per_sample_keys(key, n))


class GaussianMixture(eqx.Module):
    """Mixture of K isotropic Gaussians in D dimensions.

    Args:
      means: ``(K, D)`` component means.
      stds: ``(K,)`` per-component isotropic standard deviations (> 0).
      weights: ``(K,)`` non-negative mixture weights; normalised here.
      labels: optional ``(K,)`` ints, the class of each component (classes 0..C-1): then the mixture is
        also a labelled data set with exact class-conditional densities and noisy-classifier posteriors.

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
    labels: jax.Array | None
    num_classes: int = eqx.field(static=True)

    def __init__(self, means, stds, weights, labels=None):
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
        if labels is None:
            self.labels, self.num_classes = None, 0
        else:
            host = np.asarray(labels)
            if host.shape != (k,) or not np.issubdtype(host.dtype, np.integer) or host.min() < 0:
                raise ValueError(f"labels must be ({k},) non-negative ints, got {host.dtype} {host.shape}")
            self.labels, self.num_classes = jnp.asarray(host, jnp.int32), int(host.max()) + 1

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

    def _row_log_weights(self, label):
        """Per-row component log-weights ``(n, K)`` of the class ``label`` ``(n,)`` (renormalised within the
        class); the null class ``num_classes`` (or ``label=None``) keeps the whole mixture."""
        if label is None:
            return self.log_weights[None, :]
        if self.labels is None:
            raise ValueError("this mixture has no labels: build it with labels=... to condition on a class")
        label = jnp.asarray(label)
        inside = self.labels[None, :] == label[:, None]
        null = (label == self.num_classes)[:, None]
        lw = jnp.where(inside | null, self.log_weights[None, :], -jnp.inf)
        return lw - jax.nn.logsumexp(lw, axis=-1, keepdims=True)

    def _velocity(self, x, alpha, sigma, d_alpha, d_sigma):
        """alpha' E[x_0 | x] + sigma' E[z | x] from the posterior means, shape of ``x``."""
        log_n, mean, var = self._components(x, alpha, sigma)
        r = jax.nn.softmax(log_n + self.log_weights, axis=-1)  # (n, K)
        flat = x.reshape(x.shape[0], -1)
        alpha, sigma, d_alpha, d_sigma = (jnp.broadcast_to(c, x.shape[:1])[:, None] for c in
                                          (alpha, sigma, d_alpha, d_sigma))
        resid = flat[:, None, :] - mean  # (n, K, D): x - alpha mu_k
        x0 = r @ self.means + jnp.einsum("nk,nkd->nd", r * alpha * self.stds**2 / var, resid)
        z = jnp.einsum("nk,nkd->nd", r * sigma / var, resid)
        return (d_alpha * x0 + d_sigma * z).reshape(x.shape)

    def _score(self, x, alpha, sigma, label=None):
        log_n, mean, var = self._components(x, alpha, sigma)
        r = jax.nn.softmax(log_n + self._row_log_weights(label), axis=-1)  # (n, K) responsibilities
        flat = x.reshape(x.shape[0], -1)
        score = jnp.einsum("nk,nkd->nd", r / var, mean) - jnp.sum(r / var, axis=-1, keepdims=True) * flat
        return score.reshape(x.shape)

    # --------------------------------------------------------------------------------- public API
    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``(n, D)`` exact draws of p_0; row i depends only on (key, i)."""
        return _mixture_draws(key, n, self.log_weights, self.dim, lambda c, z: self.means[c] + self.stds[c] * z)

    def sample_t(self, sde: SDE, key: jax.Array, n: int, t) -> jax.Array:
        """``(n, D)`` exact draws of p_t under ``sde`` (alpha_t x_0 + sigma_t z with x_0 ~ p_0)."""
        alpha, sigma = (jnp.reshape(c, (-1, 1)) for c in sde.marginal_coeffs(jnp.asarray(t, jnp.float32)))
        n = integer(n, "n", minimum=1)
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
        """The exact score ``score_fn(x, t) = grad_x log p_t(x)`` with ``x`` ``(n, *dims)``, ``t`` ``(n,)``;
        also ``score_fn(x, t, {"label": (n,)})``, the exact class-conditional score grad log p_t(x | y)
        (a labelled mixture; label ``num_classes`` is the null class: the unconditional score)."""
        return MixtureScore(self, sde)

    def velocity_fn(self, sde: SDE) -> "MixtureVelocity":
        """The exact velocity ``velocity_fn(x, t) = E[alpha'_t x_0 + sigma'_t z | x_t = x]`` (module docstring),
        ``x`` ``(n, *dims)``, ``t`` ``(n,)``: flow matching's target and the probability-flow drift."""
        return MixtureVelocity(self, sde)

    # ---------------------------------------------------------------------------------- conditioning
    def conditional(self, label: int) -> "GaussianMixture":
        """The mixture of class ``label``: its components, weights renormalised."""
        if self.labels is None:
            raise ValueError("this mixture has no labels: build it with labels=... to condition on a class")
        keep = np.flatnonzero(np.asarray(self.labels) == integer(label, "label", minimum=0))
        if keep.size == 0:
            raise ValueError(f"no component has label {label} (classes 0..{self.num_classes - 1})")
        return GaussianMixture(self.means[keep], self.stds[keep], self.weights[keep], self.labels[keep])

    def class_log_prob_t(self, sde: SDE, x: jax.Array, t) -> jax.Array:
        """Exact noisy-classifier log-probabilities log p_t(y | x) ``(n, num_classes)`` under ``sde``."""
        if self.labels is None:
            raise ValueError("this mixture has no labels: build it with labels=... for class posteriors")
        alpha, sigma = sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        log_n, _, _ = self._components(x, alpha, sigma)
        joint = log_n + self.log_weights  # (n, K)
        onehot = jax.nn.one_hot(self.labels, self.num_classes, dtype=bool)  # (K, C)
        per_class = jax.nn.logsumexp(jnp.where(onehot[None], joint[:, :, None], -jnp.inf), axis=1)
        return per_class - jax.nn.logsumexp(joint, axis=-1, keepdims=True)

    def condition(self, mask, x_obs) -> "GaussianMixture":
        """The exact posterior of the unobserved coordinates given the observed ones.

        ``mask`` and ``x_obs``: ``(D,)`` (or image-shaped, flattened here), mask 1 where observed. For
        isotropic components p(x_u | x_o) = sum_k w_k' N(x_u; mu_k,u, s_k^2 I) with
        w_k' ∝ w_k N(x_o; mu_k,o, s_k^2 I): the same components on the unobserved coordinates, reweighted
        by each one's density at the observed values. Returns a mixture over the unobserved coordinates
        (in their order in the flattened vector); labels are kept.
        """
        m = np.asarray(mask).reshape(-1).astype(bool)
        xo = jnp.asarray(x_obs, jnp.float32).reshape(-1)
        if m.shape != (self.dim,) or xo.shape != (self.dim,):
            raise ValueError(f"mask and x_obs need {self.dim} values, got {m.size} and {xo.size}")
        if m.all() or not m.any():
            raise ValueError("mask must observe some coordinates and leave some unobserved")
        obs, unobs = np.flatnonzero(m), np.flatnonzero(~m)
        sq = jnp.sum((xo[obs][None, :] - self.means[:, obs]) ** 2, axis=-1)
        log_lik = -0.5 * sq / self.stds**2 - obs.size * jnp.log(self.stds)
        log_w = self.log_weights + log_lik
        weights = jnp.exp(log_w - jax.nn.logsumexp(log_w))
        return GaussianMixture(self.means[:, unobs], self.stds, weights, self.labels)

    def posterior(self, A, y, noise_std: float) -> "FullGaussianMixture":
        """The exact posterior p(x | y) for the measurement y = A x + N(0, noise_std^2 I).

        ``A`` ``(M, D)`` acts on flattened examples (``sde_lib.operators``' ``as_matrix(dims)``), ``y``
        ``(M,)``. Each component stays Gaussian: with G_k = s_k^2 A A^T + s^2 I,
        mean_k = mu_k + s_k^2 A^T G_k^{-1} (y - A mu_k), cov_k = s_k^2 (I - s_k^2 A^T G_k^{-1} A), and
        weight_k ∝ w_k N(y; A mu_k, G_k). The covariances are full, so the result is a
        :class:`FullGaussianMixture` (over all D coordinates; with noise_std = 0 each covariance is singular
        on A's row space, where the samples measure y exactly). Computed in float64 on the host.
        """
        a = np.asarray(A, np.float64)
        yv = np.asarray(y, np.float64).reshape(-1)
        s = float(noise_std)
        if a.ndim != 2 or a.shape[1] != self.dim or yv.shape != (a.shape[0],):
            raise ValueError(f"posterior: A must be (M, {self.dim}) and y (M,), got A {a.shape} and y {yv.shape}")
        if not (np.isfinite(s) and s >= 0):
            raise ValueError(f"posterior: noise_std must be a finite number >= 0, got {noise_std}")
        if s == 0 and np.linalg.matrix_rank(a) < a.shape[0]:
            raise ValueError(f"posterior: a noise-free measurement needs A of full row rank, A {a.shape} has rank "
                             f"{np.linalg.matrix_rank(a)} (pass noise_std > 0 or drop the dependent rows)")
        mu, var = np.asarray(self.means, np.float64), np.asarray(self.stds, np.float64) ** 2
        eye_m, eye_d = np.eye(a.shape[0]), np.eye(self.dim)
        means, covs, log_w = [], [], []
        for k in range(len(var)):
            g = var[k] * a @ a.T + s**2 * eye_m
            resid = yv - a @ mu[k]
            gain = var[k] * np.linalg.solve(g, a).T  # s_k^2 A^T G^-1, (D, M)
            means.append(mu[k] + gain @ resid)
            cov = var[k] * eye_d - gain @ a * var[k]
            covs.append(0.5 * (cov + cov.T))
            _, logdet = np.linalg.slogdet(2 * np.pi * g)
            log_w.append(float(self.log_weights[k]) - 0.5 * (resid @ np.linalg.solve(g, resid) + logdet))
        log_w = np.asarray(log_w)
        weights = np.exp(log_w - log_w.max())
        return FullGaussianMixture(np.stack(means), np.stack(covs), weights, self.labels)

    def component_probs(self, x: jax.Array) -> jax.Array:
        """p(component k | x_0 = x), ``(n, K)``: their mean over samples of a posterior p(x | y) is the
        posterior's component weights p(k | y) (y depends on k only through x)."""
        log_n, _, _ = self._components(x, 1.0, 0.0)
        return jax.nn.softmax(log_n + self.log_weights, axis=-1)

    def mean_and_cov(self) -> tuple[jax.Array, jax.Array]:
        """Mean ``(D,)`` and covariance ``(D, D)`` of p_0 (for moment-matching checks)."""
        w = self.weights
        mean = w @ self.means
        centred = self.means - mean
        cov = jnp.einsum("k,ki,kj->ij", w, centred, centred) + jnp.sum(w * self.stds**2) * jnp.eye(self.dim)
        return mean, cov


class FullGaussianMixture(eqx.Module):
    """Mixture of K Gaussians with full covariances ``(K, D, D)`` (positive semi-definite): the exact
    posteriors of :meth:`GaussianMixture.posterior`. ``sample``, ``log_prob`` (needs definite
    covariances), ``weights``, ``mean_and_cov``; ``labels`` as the prior's."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    means: jax.Array
    covs: jax.Array
    log_weights: jax.Array
    scales: jax.Array  # (K, D, D) with covs = scales @ scales^T
    labels: jax.Array | None

    def __init__(self, means, covs, weights, labels=None):
        means, covs = np.asarray(means, np.float64), np.asarray(covs, np.float64)
        weights = np.asarray(weights, np.float64)
        k, d = means.shape if means.ndim == 2 else (-1, -1)
        if means.ndim != 2 or covs.shape != (k, d, d) or weights.shape != (k,):
            raise ValueError(f"means (K, D), covs (K, D, D) and weights (K,) needed, got {means.shape}, {covs.shape}, "
                             f"{weights.shape}")
        lam, u = np.linalg.eigh(covs)
        if lam.min() < -1e-6 * max(lam.max(), 1e-30):
            raise ValueError("covs must be positive semi-definite")
        scales = u * np.sqrt(np.clip(lam, 0.0, None))[:, None, :]
        self.means, self.covs, self.scales = (jnp.asarray(a, jnp.float32) for a in (means, covs, scales))
        self.log_weights = jnp.asarray(np.log(weights / weights.sum()), jnp.float32)
        self.labels = labels

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def weights(self) -> jax.Array:
        return jnp.exp(self.log_weights)

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """``(n, D)`` exact draws; row i depends only on (key, i)."""
        return _mixture_draws(key, n, self.log_weights, self.dim, lambda c, z: self.means[c] + self.scales[c] @ z)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log p(x), ``(n,)`` for ``x`` ``(n, D)`` (or ``(n, *dims)``); the covariances must be definite."""
        x = x.reshape(x.shape[0], -1)
        chol = jnp.linalg.cholesky(self.covs)  # (K, D, D)
        diff = x[:, None, :] - self.means[None]  # (n, K, D)
        sol = jax.vmap(lambda c, r: jax.scipy.linalg.solve_triangular(c, r.T, lower=True).T, (0, 1), 1)(chol, diff)
        log_det = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=-1)
        log_n = -0.5 * jnp.sum(sol**2, axis=-1) - 0.5 * (log_det + self.dim * jnp.log(2 * jnp.pi))
        return jax.nn.logsumexp(log_n + self.log_weights, axis=-1)

    def mean_and_cov(self) -> tuple[jax.Array, jax.Array]:
        """Mean ``(D,)`` and covariance ``(D, D)``."""
        w = self.weights
        mean = w @ self.means
        centred = self.means - mean
        return mean, jnp.einsum("k,ki,kj->ij", w, centred, centred) + jnp.einsum("k,kij->ij", w, self.covs)


class MixtureScore(eqx.Module):
    """``score_fn(x, t)``: the exact score of ``mixture`` under ``sde`` (a pytree: equal mixtures and SDEs
    share one compiled sampler)."""

    # Identity hash and equality, as for a closure: ``jax.jit(score_fn)`` needs a hashable callable, and
    # array fields are not hashable. Jitted entry points flatten the module and trace its arrays instead.
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: jax.Array, t: jax.Array, cond=None) -> jax.Array:
        alpha, sigma = self.sde.marginal_coeffs(jnp.asarray(t, x.dtype))
        return self.mixture._score(x, alpha, sigma, None if cond is None else cond["label"])


class MixtureVelocity(eqx.Module):
    """``velocity_fn(x, t)``: the exact velocity of ``mixture`` under ``sde`` (a pytree, as :class:`MixtureScore`)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        t = jnp.asarray(t, x.dtype)
        return self.mixture._velocity(x, *self.sde.marginal_coeffs(t), *self.sde.marginal_rates(t))


def builtin_mixture(name: str) -> GaussianMixture:
    """A few fixed mixtures used by tests, demos and ablations.

    ``ring2d``: 8 modes on a circle of radius 2 (std 0.1, multi-modal, well separated), labelled by
    parity (two interleaved squares); ``grid2d``: 3x3 grid, unequal weights, labelled by row;
    ``gauss16d`` / ``gauss64d``: 4 random modes in 16 / 64-D, labelled by parity.
    """
    if name == "ring2d":
        ang = jnp.arange(8) * (2 * math.pi / 8)
        means = 2.0 * jnp.stack([jnp.cos(ang), jnp.sin(ang)], axis=-1)
        return GaussianMixture(means, jnp.full((8,), 0.1), jnp.ones(8), np.arange(8) % 2)
    if name == "grid2d":
        g = jnp.linspace(-1.5, 1.5, 3)
        means = jnp.stack(jnp.meshgrid(g, g), axis=-1).reshape(-1, 2)
        return GaussianMixture(means, jnp.full((9,), 0.15), jnp.arange(1, 10, dtype=jnp.float32), np.arange(9) // 3)
    if name in ("gauss16d", "gauss64d"):
        d = 16 if name == "gauss16d" else 64
        means = jax.random.normal(jax.random.PRNGKey(d), (4, d)) * 0.8
        return GaussianMixture(means, jnp.array([0.2, 0.3, 0.4, 0.5]), jnp.array([0.1, 0.2, 0.3, 0.4]),
                               np.arange(4) % 2)
    raise ValueError(f"unknown built-in mixture {name!r}; choose from ring2d, grid2d, gauss16d, gauss64d")
