"""The Gaussian-mixture oracle: its score is the gradient of its log-density, the density is normalised,
and it describes the law of the simulated forward SDE."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sde_lib.oracle import GaussianMixture, builtin_mixture

NAMES = ("vp", "subvp", "ve")
TIMES = (0.0, 0.05, 0.4, 1.0)


# Mixtures and SDEs are pytrees: one compilation per (mixture shapes, SDE, shape), arrays and t traced.
@eqx.filter_jit
def log_prob_t(gmm, sde, x, t):
    return gmm.log_prob_t(sde, x, jnp.asarray(t))


@eqx.filter_jit
def sample_t(gmm, sde, key, n, t):
    return gmm.sample_t(sde, key, n, jnp.asarray(t))


@pytest.fixture(scope="module")
def grid2d():
    return builtin_mixture("grid2d")


@pytest.fixture(scope="module")
def mix1d():
    return GaussianMixture(jnp.array([[-1.0], [0.5], [2.0]]), jnp.array([0.3, 0.2, 0.5]), jnp.array([0.2, 0.5, 0.3]))


def projection_cdf(gmm, sde, t, u):
    """Exact CDF of u . x under p_t for a unit vector u (a 1-D Gaussian mixture)."""
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(jnp.asarray(t)))
    loc = alpha * np.asarray(gmm.means, np.float64) @ u
    scale = np.sqrt(alpha**2 * np.asarray(gmm.stds, np.float64) ** 2 + sigma**2)
    w = np.asarray(gmm.weights, np.float64)
    return lambda y: np.sum(w * stats.norm.cdf((np.asarray(y)[:, None] - loc) / scale), axis=-1)


@pytest.mark.parametrize("name", NAMES)
def test_score_is_gradient_of_log_prob(name, sdes):
    sde = sdes[name]
    with jax.enable_x64(True):
        gmm = GaussianMixture(jax.random.normal(jax.random.PRNGKey(0), (4, 8)), jnp.array([0.2, 0.4, 0.6, 1.0]),
                              jnp.array([1.0, 2.0, 3.0, 4.0]))
        score_fn = gmm.score_fn(sde)

        @jax.jit
        def both(x, tb):
            return score_fn(x, tb), jax.grad(lambda y: jnp.sum(gmm.log_prob_t(sde, y, tb)))(x)

        for t in TIMES[1:]:
            x = jax.random.normal(jax.random.PRNGKey(1), (12, 2, 2, 2), jnp.float64) * (1.0 + t)  # image-shaped
            score, autodiff = both(x, jnp.full((12,), t))
            assert score.shape == x.shape
            np.testing.assert_allclose(score, autodiff, rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(score))))


def _grid(gmm, sde, t, size, width=12.0):
    """``size`` points covering every component of p_t to ``width`` standard deviations."""
    alpha, sigma = (float(c) for c in sde.marginal_coeffs(jnp.asarray(t)))
    std = np.sqrt(alpha**2 * np.asarray(gmm.stds) ** 2 + sigma**2)
    half = alpha * float(jnp.max(jnp.abs(gmm.means))) + width * std.max()
    return np.linspace(-half, half, size)


def _grid_log_prob_2d(gmm, sde, t, size=301):
    g = _grid(gmm, sde, t, size)
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return g, np.asarray(log_prob_t(gmm, sde, jnp.asarray(xy, jnp.float32), t), np.float64).reshape(size, size)


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one(name, sdes, mix1d, grid2d):
    sde = sdes[name]
    for t in TIMES:
        y = _grid(mix1d, sde, t, 2001)
        p = np.exp(np.asarray(log_prob_t(mix1d, sde, jnp.asarray(y, jnp.float32)[:, None], t), np.float64))
        assert abs(np.trapezoid(p, y) - 1.0) < 1e-4
        g, lp = _grid_log_prob_2d(grid2d, sde, t)
        assert abs(np.trapezoid(np.trapezoid(np.exp(lp), g, axis=1), g) - 1.0) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_simulated_forward_sde_has_law_p_t(name, sdes, grid2d, euler_maruyama):
    """Euler-Maruyama from the t = 0 marginal (p_0, plus sigma_min noise for VE) vs the exact p_t."""
    sde = sdes[name]
    n = 4000
    alpha0, sigma0 = sde.marginal_coeffs(jnp.zeros(()))
    x0 = alpha0 * grid2d.sample(jax.random.PRNGKey(2), n) + sigma0 * jax.random.normal(jax.random.PRNGKey(3), (n, 2))
    u = np.array([0.6, 0.8])
    for t1 in (0.5, 1.0):
        x = np.asarray(euler_maruyama(sde, x0, 0.0, t1, 1000, jax.random.PRNGKey(4)), np.float64)
        assert stats.kstest(x @ u, projection_cdf(grid2d, sde, t1, u)).pvalue > 1e-3
        # The same samples are also implausible under the law at another time: the test has power.
        assert stats.kstest(x @ u, projection_cdf(grid2d, sde, 0.6 * t1, u)).pvalue < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_sample_t_consistent_with_log_prob_t(name, sdes, grid2d):
    """Projections of sample_t follow the exact CDF, and the sample mean of log p_t(x) equals
    the quadrature of p_t log p_t (minus the differential entropy)."""
    sde = sdes[name]
    n, t = 4000, 0.3
    x = sample_t(grid2d, sde, jax.random.PRNGKey(5), n, t)
    u = np.array([0.8, -0.6])
    assert stats.kstest(np.asarray(x, np.float64) @ u, projection_cdf(grid2d, sde, t, u)).pvalue > 1e-3
    g = _grid(grid2d, sde, t, 301)
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    # One evaluation (one compilation) for the samples and the quadrature grid together.
    both = np.asarray(log_prob_t(grid2d, sde, jnp.concatenate([x, jnp.asarray(xy, jnp.float32)]), t), np.float64)
    logp, lq = both[:n], both[n:].reshape(g.size, g.size)
    expected = np.trapezoid(np.trapezoid(np.exp(lq) * lq, g, axis=1), g)
    assert abs(logp.mean() - expected) < 5 * logp.std() / np.sqrt(n)


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_vmap(name, sdes, grid2d):
    sde = sdes[name]
    score_fn = grid2d.score_fn(sde)
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(6), (6, 2))
    t = jnp.linspace(0.1, 1.0, 6)
    eager = score_fn(x, t)  # eager vs compiled
    atol = 1e-5 * float(jnp.max(jnp.abs(eager)))  # float32 cancellation between components
    np.testing.assert_allclose(jax.jit(score_fn)(x, t), eager, rtol=1e-5, atol=atol)
    rowwise = jax.jit(jax.vmap(lambda xi, ti: score_fn(xi[None], ti[None])[0]))(x, t)
    np.testing.assert_allclose(rowwise, eager, rtol=1e-5, atol=atol)
    logp = log_prob_t(grid2d, sde, x, t)
    single = jax.jit(jax.vmap(lambda xi, ti: grid2d.log_prob_t(sde, xi[None], ti)[0]))(x, t)  # scalar t per row
    np.testing.assert_allclose(logp, single, rtol=1e-5)


# ------------------------------------------------------------------- linear-Gaussian measurement posteriors
def test_measurement_posterior_is_bayes_rule():
    """log p(x | y) - log p(x) - log N(y; A x, s^2 I) is the same constant (-log p(y)) at every x, for a
    random A; and the posterior's component weights are the mean of p(k | x) over its samples."""
    gmm = builtin_mixture("gauss16d")
    rng = np.random.default_rng(0)
    a, y, s = rng.normal(size=(5, 16)), rng.normal(size=5), 0.3
    post = gmm.posterior(a, y, s)
    x = post.sample(jax.random.PRNGKey(0), 4000)
    xh = np.asarray(x, np.float64)
    log_lik = -0.5 * np.sum((y - xh @ a.T) ** 2, axis=1) / s**2
    const = np.asarray(post.log_prob(x), np.float64) - np.asarray(gmm.log_prob(x), np.float64) - log_lik
    assert np.ptp(const[:50]) < 1e-3 * np.abs(const[:50]).max(), const[:5]
    np.testing.assert_allclose(np.asarray(gmm.component_probs(x)).mean(0), post.weights, atol=0.02)
    # The samples have the mixture's moments (mean_and_cov sums the components' covariances).
    mean, cov = (np.asarray(v, np.float64) for v in post.mean_and_cov())
    assert np.abs(xh.mean(0) - mean).max() < 4 * np.sqrt(np.diag(cov).max() / 4000)
    np.testing.assert_allclose(np.cov(xh.T), cov, atol=0.02)


def test_noise_free_selection_is_the_conditional():
    """A noise-free measurement of some coordinates (rows of the identity) gives ``condition``'s mixture on
    the others, and those coordinates exactly on the measured ones (zero variance)."""
    gmm = builtin_mixture("gauss16d")
    mask = np.r_[np.ones(6), np.zeros(10)]
    x_obs = np.asarray(gmm.means[1]) + 0.1
    post, cond = gmm.posterior(np.eye(16)[mask == 1], x_obs[:6], 0.0), gmm.condition(mask, x_obs)
    np.testing.assert_allclose(post.weights, cond.weights, atol=1e-6)
    np.testing.assert_allclose(np.asarray(post.means)[:, 6:], cond.means, atol=1e-6)
    np.testing.assert_allclose(np.asarray(post.means)[:, :6], np.broadcast_to(x_obs[:6], (4, 6)), atol=1e-6)
    covs = np.asarray(post.covs)
    np.testing.assert_allclose(covs[:, 6:, 6:], np.asarray(cond.stds)[:, None, None] ** 2 * np.eye(10), atol=1e-6)
    np.testing.assert_allclose(covs[:, :6], 0.0, atol=1e-6)
