"""The forward SDEs: marginals against simulation and the variance ODE, reverse dynamics, noise-level maps,
priors, score_sde's discretisations, seeding and validation. Reference formulas are written out here
independently of sde_lib."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sde_lib
from sde_lib.oracle import GaussianMixture

NAMES = ("vp", "subvp", "ve")


def reference_f_g2(name, t, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0):
    """f(t) and g(t)^2 of score_sde's SDEs, in numpy."""
    t = np.asarray(t, np.float64)
    beta = beta_min + t * (beta_max - beta_min)
    big_b = beta_min * t + 0.5 * (beta_max - beta_min) * t**2
    if name == "vp":
        return -0.5 * beta, beta
    if name == "subvp":
        return -0.5 * beta, beta * (1.0 - np.exp(-2.0 * big_b))
    sig = sigma_min * (sigma_max / sigma_min) ** t
    return np.zeros_like(t), sig**2 * 2.0 * np.log(sigma_max / sigma_min)


@pytest.mark.parametrize("name", NAMES)
def test_marginal_matches_euler_maruyama(name, sdes, euler_maruyama):
    sde = sdes[name]
    n = 4000
    x0 = jnp.tile(jnp.array([1.0, -0.5]), (n, 1))
    alpha0, sigma0 = sde.marginal_coeffs(jnp.zeros(()))
    x_init = alpha0 * x0 + sigma0 * jax.random.normal(jax.random.PRNGKey(0), x0.shape)
    for t1 in (0.3, 1.0):
        x = np.asarray(euler_maruyama(sde, x_init, 0.0, t1, 1000, jax.random.PRNGKey(1)), np.float64)
        mean, std = sde.marginal_prob(x0[:1], jnp.array([t1]))
        mean, var = np.asarray(mean[0]), float(std[0]) ** 2
        np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * np.sqrt(var / n))
        np.testing.assert_array_less(np.abs(x.var(0) - var), 5 * var * np.sqrt(2.0 / n) + 0.01 * var)


@pytest.mark.parametrize("name", NAMES)
def test_variance_and_mean_odes(name, sdes):
    """d sigma_t^2 / dt = 2 f sigma_t^2 + g^2 and d alpha_t / dt = f alpha_t, by autodiff; f, g as score_sde."""
    sde = sdes[name]
    with jax.enable_x64(True):
        t = jnp.linspace(1e-3, 1.0, 41)
        alpha = lambda s: sde.marginal_coeffs(s)[0]  # noqa: E731
        var = lambda s: sde.marginal_coeffs(s)[1] ** 2  # noqa: E731
        dvar = jax.vmap(jax.grad(var))(t)
        dalpha = jax.vmap(jax.grad(alpha))(t)
        f, g2 = sde.drift_coef(t), sde.diffusion_coef(t) ** 2
        np.testing.assert_allclose(dvar, 2 * f * var(t) + g2, rtol=1e-9)
        np.testing.assert_allclose(dalpha, f * alpha(t), rtol=1e-9, atol=1e-12)
        f_ref, g2_ref = reference_f_g2(name, t)
        np.testing.assert_allclose(f, f_ref, rtol=1e-12)
        np.testing.assert_allclose(g2, g2_ref, rtol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_reverse_sde_and_probability_flow(name, sdes):
    sde = sdes[name]
    gmm = GaussianMixture(jax.random.normal(jax.random.PRNGKey(3), (3, 6)), jnp.array([0.3, 0.5, 0.8]), jnp.ones(3))
    score_fn = gmm.score_fn(sde)
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 2, 3)) * 2.0
    t = jnp.array([0.01, 0.2, 0.5, 0.8, 1.0])
    score = np.asarray(score_fn(x, t))
    f_ref, g2_ref = reference_f_g2(name, t)
    fx = f_ref[:, None, None] * np.asarray(x)
    g2 = g2_ref[:, None, None]

    drift, diffusion = sde.reverse(score_fn).sde(x, t)
    np.testing.assert_allclose(drift, fx - g2 * score, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(diffusion**2, g2_ref, rtol=2e-5)
    drift, diffusion = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(drift, fx - 0.5 * g2 * score, rtol=2e-5, atol=1e-4)
    np.testing.assert_array_equal(diffusion, np.zeros(5))

    f_d, g_d = (np.asarray(v) for v in sde.discretize(x, t))
    rev_f, rev_g = sde.reverse(score_fn).discretize(x, t)
    np.testing.assert_allclose(rev_f, f_d - g_d[:, None, None] ** 2 * score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rev_g, g_d, rtol=1e-6)
    rev_f, rev_g = sde.reverse(score_fn, probability_flow=True).discretize(x, t)
    np.testing.assert_allclose(rev_f, f_d - 0.5 * g_d[:, None, None] ** 2 * score, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rev_g, np.zeros(5))


@pytest.mark.parametrize("name", NAMES)
def test_noise_level_maps_round_trip(name, sdes):
    sde = sdes[name]
    with jax.enable_x64(True):
        t = jnp.asarray(np.geomspace(1e-5, 1.0, 200))
        alpha, sigma_t = sde.marginal_coeffs(t)
        sig, lam = sde.sigma(t), sde.half_log_snr(t)
        np.testing.assert_allclose(sig, sigma_t / alpha, rtol=1e-12)
        np.testing.assert_allclose(lam, np.log(np.asarray(alpha) / np.asarray(sigma_t)), rtol=1e-12, atol=1e-12)
        assert np.all(np.diff(np.asarray(sig)) > 0) and np.all(np.diff(np.asarray(lam)) < 0)
        np.testing.assert_allclose(sde.t_from_sigma(sig), t, rtol=1e-10)
        np.testing.assert_allclose(sde.t_from_half_log_snr(lam), t, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_prior_logp_is_density_of_prior_sampling(name, sdes):
    sde = sdes[name]
    z = sde.prior_sampling(jax.random.PRNGKey(5), (400, 3, 4, 4))
    assert z.shape == (400, 3, 4, 4)
    zn = np.asarray(z, np.float64)
    ref = stats.norm.logpdf(zn, scale=sde.prior_std).reshape(400, -1).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(z), ref, rtol=1e-5)
    np.testing.assert_allclose(sde.prior_logp(0.5 * z), stats.norm.logpdf(0.5 * zn, scale=sde.prior_std)
                               .reshape(400, -1).sum(-1), rtol=1e-5)
    n = zn.size
    assert abs(zn.mean()) < 5 * sde.prior_std / np.sqrt(n)
    assert abs(zn.var() / sde.prior_std**2 - 1.0) < 5 * np.sqrt(2.0 / n)
    # The prior is the marginal at T, up to VP's alpha_T^2 of the data and VE's sigma_min^2.
    assert abs(float(sde.marginal_coeffs(jnp.asarray(sde.T))[1]) / sde.prior_std - 1.0) < 1e-3


def _grid_times(n):
    """One time per discrete level i, inside [i, i+1) / (N - 1) so float truncation hits level i."""
    return jnp.minimum((jnp.arange(n) + 0.25) / (n - 1), 1.0)


def test_vp_discretize_is_ddpm_step():
    n = 10
    sde = sde_lib.VPSDE(0.1, 5.0, N=n)  # beta_max / N < 1: a valid DDPM chain with distinct betas
    betas = np.linspace(0.1 / n, 5.0 / n, n)
    x = jax.random.normal(jax.random.PRNGKey(6), (n, 3))
    f, g = sde.discretize(x, _grid_times(n))
    np.testing.assert_allclose(f, np.sqrt(1 - betas)[:, None] * np.asarray(x) - np.asarray(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, np.sqrt(betas), rtol=1e-6)


def test_ve_discretize_is_smld_step():
    n = 10
    sde = sde_lib.VESDE(0.01, 50.0, N=n)
    sigmas = np.geomspace(0.01, 50.0, n)
    x = jax.random.normal(jax.random.PRNGKey(7), (n, 3))
    f, g = sde.discretize(x, _grid_times(n))
    np.testing.assert_array_equal(f, np.zeros((n, 3)))
    np.testing.assert_allclose(g, np.sqrt(sigmas**2 - np.concatenate([[0.0], sigmas[:-1]]) ** 2), rtol=1e-5)


def test_subvp_discretize_is_euler_maruyama():
    n = 10
    sde = sde_lib.SubVPSDE(0.1, 20.0, N=n)
    x = jax.random.normal(jax.random.PRNGKey(8), (n, 3))
    t = _grid_times(n)
    f, g = sde.discretize(x, t)
    f_ref, g2_ref = reference_f_g2("subvp", t)
    np.testing.assert_allclose(f, f_ref[:, None] * np.asarray(x) / n, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g, np.sqrt(g2_ref / n), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_prior_sampling_rows_depend_only_on_key_and_index(name, sdes):
    sde = sdes[name]
    key = jax.random.PRNGKey(9)
    big = sde.prior_sampling(key, (7, 2, 3))
    np.testing.assert_array_equal(big[:3], sde.prior_sampling(key, (3, 2, 3)))
    assert not np.allclose(big[0], big[1])


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: sde_lib.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sde_lib.VPSDE(beta_min=1.0, beta_max=0.5), "beta_max"),
        (lambda: sde_lib.SubVPSDE(beta_min=0.0), "beta_min"),
        (lambda: sde_lib.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sde_lib.VESDE(sigma_min=2.0, sigma_max=1.0), "sigma_max"),
        (lambda: sde_lib.VPSDE(N=0), "N"),
        (lambda: sde_lib.VESDE(N=0), "N"),
    ],
)
def test_constructor_validation(make, field):
    with pytest.raises(ValueError, match=field):
        make()
