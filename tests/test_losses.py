"""Objectives and parameterisations, against the Gaussian-mixture oracle (exact score).

Statistical checks compare Monte Carlo means with their standard errors (4-5 SE), using common random
numbers where two objectives are compared; each also checks that the same test would see an effect."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import sde_lib
from sde_lib import losses
from sde_lib import parameterization as pz
from sde_lib.oracle import builtin_mixture

NAMES = ("vp", "subvp", "ve")
B = 8192


@pytest.fixture(scope="module")
def gmm():
    return builtin_mixture("grid2d")


@pytest.fixture(scope="module")
def x0(gmm):
    return jax.jit(gmm.sample, static_argnums=1)(jax.random.PRNGKey(0), B)


def mean_se(v):
    v = np.asarray(v, np.float64)
    return v.mean(), v.std() / np.sqrt(v.size)


def perturbed_model(sde, score_fn, delta, parameterization):
    """The network representing score + delta * tanh(x) in ``parameterization``."""
    return pz.model_fn_from_score(sde, lambda x, t: score_fn(x, t) + delta * jnp.tanh(x), parameterization)


def assert_minimum(results, case=None):
    """``results[delta] = (losses, d losses / d delta)`` per example at delta in {0, 0.3, -0.3}: the exact
    score (delta = 0) must be a stationary minimum, and the slope must be visible at delta = +-0.3."""
    loss0, slope0 = results[0.0]
    m, se = mean_se(slope0)
    assert abs(m) < 4.5 * se, (case, m, se)
    for delta in (0.3, -0.3):
        loss_d, slope_d = results[delta]
        assert np.mean(loss_d) > np.mean(loss0), case
        m, se = mean_se(slope_d)
        assert np.sign(m) == np.sign(delta) and abs(m) > 4.5 * se, (case, delta, m, se)


def _minimum_results(loss_and_slope, x0, key):
    return {d: loss_and_slope(d, key, x0) for d in (0.0, 0.3, -0.3)}


@pytest.mark.parametrize("name", NAMES)
def test_dsm_is_minimised_by_the_exact_score(name, sdes, gmm, x0):
    """Every weighting; the parameterisations rotate through SDEs and weightings."""
    sde = sdes[name]
    score_fn = gmm.score_fn(sde)
    offset = NAMES.index(name) * len(losses.WEIGHTINGS)
    cases = [(w, pz.PARAMETERIZATIONS[(offset + i) % 5]) for i, w in enumerate(losses.WEIGHTINGS)]

    @jax.jit
    def loss_and_slope(delta, key, x0):
        def f(d):
            return [losses.dsm_losses(sde, perturbed_model(sde, score_fn, d, p), key, x0, w, p) for w, p in cases]

        delta = jnp.asarray(delta, jnp.float32)
        return jax.jvp(f, (delta,), (jnp.ones_like(delta),))

    results = _minimum_results(loss_and_slope, x0, jax.random.PRNGKey(1))
    for j in range(len(cases)):
        assert_minimum({d: (v[0][j], v[1][j]) for d, v in results.items()}, cases[j])


@pytest.mark.parametrize("name", NAMES)
def test_denoising_and_explicit_score_matching_differ_by_a_constant(name, sdes, gmm, x0):
    """Per example with common (t, z): DSM - ESM for two candidate scores has the same mean."""
    sde = sdes[name]
    exact = gmm.score_fn(sde)
    candidates = (lambda x, t: exact(x, t) + 0.5 * jnp.tanh(x), lambda x, t: exact(x, t) - 1.5 * jnp.sin(x))

    @jax.jit
    def differences(key, x0):
        kt, kz = jax.random.split(key)
        t = losses.sample_times(sde, kt, x0.shape[:1], "likelihood")
        noise = jax.random.normal(kz, x0.shape)
        alpha, sigma = sde.marginal_coeffs(t)
        x = alpha[:, None] * x0 + sigma[:, None] * noise
        out = []
        for weighting in ("sigma2", "likelihood"):
            w = losses.weighting_fn(sde, t, weighting)
            gaps = []
            for cand, p in zip(candidates, ("v", "edm")):
                model = pz.model_fn_from_score(sde, cand, p)
                c_noise = pz.noise_conditioning(sde, t, p)
                dsm = losses.denoising_losses(model, x0, noise, alpha, sigma, c_noise, w, p)
                esm = w * jnp.mean((cand(x, t) - exact(x, t)) ** 2, axis=-1)
                gaps.append((dsm - esm, dsm))
            out.append((gaps[0][0] - gaps[1][0], gaps[0][1] - gaps[1][1]))
        return out

    for gap_diff, dsm_diff in differences(jax.random.PRNGKey(2), x0):
        m, se = mean_se(gap_diff)
        assert abs(m) < 4.5 * se, (m, se)
        m, se = mean_se(dsm_diff)
        assert abs(m) > 5 * se  # the candidates' losses do differ


def reference_lambda(name, t):
    """Half log-SNR written out in numpy: VP -log sqrt(e^B - 1), sub-VP -log(2 sinh(B/2)), VE -log sigma_t."""
    big_b = 0.1 * t + 0.5 * 19.9 * t**2
    if name == "vp":
        return -0.5 * np.log(np.expm1(big_b))
    if name == "subvp":
        return -np.log(2.0 * np.sinh(0.5 * big_b))
    return -np.log(0.01 * 5000.0**t)


@pytest.mark.parametrize("name", NAMES)
def test_importance_sampled_likelihood_weighting_is_unbiased(name, sdes, gmm, x0):
    sde, eps = sdes[name], 1e-5
    model = perturbed_model(sde, gmm.score_fn(sde), 0.5, "score")
    zero = lambda x, c: jnp.zeros_like(x)  # noqa: E731  (per-example loss g^2/sigma^2 |z|^2 / d)

    @jax.jit
    def run(key, x0):
        k1, k2, k3 = jax.random.split(key, 3)
        t_is = losses.sample_times(sde, k3, (x0.shape[0],), "likelihood_is", eps)
        return t_is, [
            (losses.dsm_losses(sde, m, k1, x0, "likelihood"), losses.dsm_losses(sde, m, k2, x0, "likelihood_is"))
            for m in (model, zero)
        ]

    t_is, ((plain, is_), (plain0, is0)) = run(jax.random.PRNGKey(3), x0)
    (m1, s1), (m2, s2) = mean_se(plain), mean_se(is_)
    assert abs(m1 - m2) < 4.5 * np.hypot(s1, s2), (m1, s1, m2, s2)
    # With F = 0 both estimate int_eps^T g^2 / sigma^2 dt / (T - eps) = 2 (lambda_eps - lambda_T) / (T - eps).
    expected = 2.0 * (reference_lambda(name, eps) - reference_lambda(name, 1.0)) / (1.0 - eps)
    for v in (plain0, is0):
        m, se = mean_se(v)
        assert abs(m - expected) < 4.5 * se, (m, se, expected)
    assert mean_se(is0)[1] < 0.05 * expected  # importance sampling removes the 1/t tail
    # The IS times follow q(t) ∝ g^2 / sigma^2, i.e. CDF (lambda_eps - lambda_t) / (lambda_eps - lambda_T).
    lo, hi = reference_lambda(name, 1.0), reference_lambda(name, eps)
    t_is = np.sort(np.asarray(t_is, np.float64))
    cdf = (hi - reference_lambda(name, t_is)) / (hi - lo)
    ks = np.max(np.abs(cdf - (np.arange(t_is.size) + 0.5) / t_is.size))
    assert ks < 1.95 / np.sqrt(t_is.size)  # 0.1% Kolmogorov critical value


def test_likelihood_weight_integral_matches_quadrature(sdes):
    """The closed-form normaliser 2 (lambda_eps - lambda_T) equals the quadrature of g^2 / sigma_t^2."""
    with jax.enable_x64(True):
        for sde in sdes.values():
            f = lambda s: float(sde.diffusion_coef(jnp.asarray(s)) ** 2 / sde.marginal_coeffs(jnp.asarray(s))[1] ** 2)  # noqa: E731
            quad = integrate.quad(f, 1e-5, 1.0, points=[1e-4, 1e-3, 1e-2, 1e-1], limit=200)[0]
            w = losses.weighting_fn(sde, jnp.ones(1), "likelihood_is") / sde.marginal_coeffs(jnp.ones(1))[1] ** 2
            np.testing.assert_allclose(float(w[0]) * (1.0 - 1e-5), quad, rtol=1e-6)


def _predictions(sde, model, p, x, t):
    """(score, eps, x0) of one network output through the affine coefficients of ``p``."""
    c = pz.coefficients(sde, t, p)
    out = model(c.c_in[:, None] * x, c.c_noise)
    return tuple(a[:, None] * out + b[:, None] * x for a, b in (c.score, c.eps, c.x0))


@pytest.mark.parametrize("name", NAMES)
def test_parameterization_round_trips(name, sdes, gmm):
    sde = sdes[name]
    with jax.enable_x64(True):
        score_fn = gmm.score_fn(sde)
        t = jnp.asarray(np.geomspace(1e-5, 1.0, 16))
        x0 = jax.random.normal(jax.random.PRNGKey(4), (16, 2), jnp.float64)
        z = jax.random.normal(jax.random.PRNGKey(5), (16, 2), jnp.float64)
        alpha, sigma = (c[:, None] for c in sde.marginal_coeffs(t))
        x = alpha * x0 + sigma * z
        s = score_fn(x, t)
        eps, x0_hat = -sigma * s, (x + sigma**2 * s) / alpha
        eps_t, x0_t = pz.eps_and_x0(sde, x, t, s)
        np.testing.assert_allclose(eps_t, eps, rtol=1e-12)
        np.testing.assert_allclose(x0_t, x0_hat, rtol=1e-10)
        np.testing.assert_allclose(pz.tweedie_x0(sde, x, t, s), x0_hat, rtol=1e-10)
        edm_s = sigma / alpha
        sd2 = 0.25
        native = {
            "score": s,
            "eps": eps,
            "x0": x0_hat,
            "v": alpha * eps - sigma * x0_hat,
            "edm": (x0_hat - sd2 / (edm_s**2 + sd2) * x / alpha) / (edm_s * 0.5 / jnp.sqrt(edm_s**2 + sd2)),
        }
        for p, out in native.items():
            model = pz.model_fn_from_score(sde, score_fn, p)
            c = pz.coefficients(sde, t, p)
            np.testing.assert_allclose(model(c.c_in[:, None] * x, c.c_noise), out, rtol=1e-7, atol=1e-9)
            pred = _predictions(sde, model, p, x, t)
            # score = a F + b x cancels at small sigma for "x0" (b = -1/sigma^2): allow ulps of b x.
            tol = 1e-7 * np.abs(s) + 1e-14 * np.abs(x) / sigma**2
            assert np.all(np.abs(pz.score_fn_from_model(sde, model, p)(x, t) - s) <= tol), p
            assert np.all(np.abs(pred[0] - s) <= tol), p
            np.testing.assert_allclose(pred[1], eps, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(pred[2], x0_hat, rtol=1e-7, atol=1e-9)
            # The regression target is the output that predicts the true noise and data.
            target = pz.regression_target(sde, x0, z, t, p)
            pred = _predictions(sde, lambda x_in, c_noise: target, p, x, t)
            np.testing.assert_allclose(pred[1], z, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(pred[2], x0, rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(pred[0], -z / sigma, rtol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_network_inputs_and_edm_preconditioning(name, sdes):
    """Karras et al.'s c_skip, c_out, c_in, c_noise on x / alpha, and the documented non-EDM conditioning."""
    sde = sdes[name]
    t = jnp.linspace(0.01, 1.0, 5)
    x = jax.random.normal(jax.random.PRNGKey(6), (5, 3))
    net = lambda x_in, c_noise: x_in * (1.0 + c_noise[:, None])  # noqa: E731
    alpha, sigma = (np.asarray(c, np.float64)[:, None] for c in sde.marginal_coeffs(t))
    s, sd, xs = sigma / alpha, 0.5, np.asarray(x, np.float64) / alpha
    c_in, c_skip, c_out = 1 / np.sqrt(s**2 + sd**2), sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2)
    denoised = c_skip * xs + c_out * net(c_in * xs, np.log(s[:, 0]) / 4)
    expected = (alpha * denoised - np.asarray(x)) / sigma**2
    np.testing.assert_allclose(pz.score_fn_from_model(sde, net, "edm")(x, t), expected, rtol=1e-4)
    label = np.asarray(t) * 999 if name != "ve" else np.log(sigma[:, 0])
    for p in ("score", "eps", "x0", "v"):
        c = pz.coefficients(sde, t, p)
        np.testing.assert_array_equal(c.c_in, np.ones(5))
        np.testing.assert_allclose(c.c_noise, label, rtol=1e-5)
    seen = pz.score_fn_from_model(sde, lambda x_in, c_noise: x_in + c_noise[:, None], "score")(x, t)
    np.testing.assert_allclose(seen, np.asarray(x) + label[:, None], rtol=1e-5, atol=1e-5)


def test_unknown_names_raise():
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match="parameterization"):
        pz.score_fn_from_model(sde, lambda x, c: x, "flow")
    with pytest.raises(ValueError, match="weighting"):
        losses.get_loss_fn(sde, weighting="snr")
    with pytest.raises(ValueError, match="parameterization"):
        losses.get_loss_fn(sde, parameterization="flow")
    with pytest.raises(ValueError, match="eps"):
        losses.get_loss_fn(sde, eps=0.0)
    with pytest.raises(ValueError, match="SubVPSDE"):
        losses.get_loss_fn(sde_lib.SubVPSDE(), continuous=False)
    with pytest.raises(ValueError, match="weighting"):
        losses.get_loss_fn(sde, continuous=False, weighting="likelihood")


@functools.lru_cache(maxsize=None)
def _ddpm_tables(n, beta_min, beta_max):
    """sqrt(alpha-bar_i), sqrt(1 - alpha-bar_i) from DDPM's betas, in numpy float64."""
    abar = np.cumprod(1.0 - np.linspace(beta_min / n, beta_max / n, n))
    return np.sqrt(abar), np.sqrt(1.0 - abar)


def test_ddpm_loss_is_minimised_by_the_optimal_noise_predictor(gmm, x0):
    n = 50
    sde = sde_lib.VPSDE(0.1, 20.0, N=n)
    sa, s1m = (jnp.asarray(v, jnp.float32) for v in _ddpm_tables(n, 0.1, 20.0))
    # The discrete marginal at level i, fed to the oracle through an object exposing marginal_coeffs.
    level = types.SimpleNamespace(marginal_coeffs=lambda i: (sa[i.astype(jnp.int32)], s1m[i.astype(jnp.int32)]))
    discrete_score = gmm.score_fn(level)

    @jax.jit
    def loss_and_slope(delta, key, x0):
        def f(d):
            def model(x, c_noise):
                i = jnp.round(c_noise).astype(jnp.int32)  # the network label is the DDPM timestep i
                return -s1m[i][:, None] * discrete_score(x, i) + d * jnp.tanh(x)

            return losses.ddpm_losses(sde, model, key, x0, "eps")

        delta = jnp.asarray(delta, jnp.float32)
        return jax.jvp(f, (delta,), (jnp.ones_like(delta),))

    assert_minimum(_minimum_results(loss_and_slope, x0, jax.random.PRNGKey(7)))
    # eps-prediction is unweighted: F = 0 costs E |z|^2 / d = 1.
    zero_loss = jax.jit(lambda key, x0: losses.ddpm_losses(sde, lambda x, c: jnp.zeros_like(x), key, x0, "eps"))
    m, se = mean_se(zero_loss(jax.random.PRNGKey(8), x0))
    assert abs(m - 1.0) < 4.5 * se


@pytest.mark.parametrize("parameterization", ["score", "x0"])
def test_smld_loss_is_minimised_by_the_exact_score(parameterization, gmm, x0):
    sde = sde_lib.VESDE(0.01, 50.0, N=50)
    score_fn = gmm.score_fn(sde)  # the discrete levels are sigma(t_i), t_i = i / (N - 1)

    @jax.jit
    def loss_and_slope(delta, key, x0):
        def f(d):
            return losses.smld_losses(sde, perturbed_model(sde, score_fn, d, parameterization), key, x0, parameterization)

        delta = jnp.asarray(delta, jnp.float32)
        return jax.jvp(f, (delta,), (jnp.ones_like(delta),))

    assert_minimum(_minimum_results(loss_and_slope, x0, jax.random.PRNGKey(9)))
    # sigma_i^2 weighting of the score error: the zero score costs E |z|^2 / d = 1.
    zero_loss = jax.jit(lambda key, x0: losses.smld_losses(sde, lambda x, c: jnp.zeros_like(x), key, x0))
    m, se = mean_se(zero_loss(jax.random.PRNGKey(10), x0))
    assert abs(m - 1.0) < 4.5 * se


def test_loss_fn_batch_independence_and_gradients(sdes, gmm):
    sde = sdes["vp"]
    loss_fn = losses.get_loss_fn(sde, parameterization="eps")
    per_example = jax.jit(losses.get_loss_fn(sde, parameterization="eps", per_example=True), static_argnums=0)
    x0 = gmm.sample(jax.random.PRNGKey(11), 6)
    key = jax.random.PRNGKey(12)
    model = lambda w: (lambda x, c: w * x)  # noqa: E731
    linear = model(0.3)
    np.testing.assert_allclose(per_example(linear, key, x0)[:4], per_example(linear, key, x0[:4]), rtol=1e-6)
    value_and_grad = jax.jit(jax.value_and_grad(lambda w: loss_fn(model(w), key, x0)))
    value, grad = value_and_grad(0.3)
    np.testing.assert_allclose(value, np.mean(per_example(linear, key, x0)), rtol=1e-6)
    fd = (value_and_grad(0.3 + 1e-2)[0] - value_and_grad(0.3 - 1e-2)[0]) / 2e-2
    np.testing.assert_allclose(grad, fd, rtol=1e-3)
