"""Variational bounds (sde_lib.bounds) against the Gaussian-mixture oracle's exact densities.

Continuous time: with the exact score and the mixture's exact p_T as prior, the forward and model path
measures coincide, so the bound's estimator has mean -log p_0(x) (up to O(eps)); a perturbed score
(another mixture's) leaves a positive gap. The nearest wrong implementations (the DSM integral without
its 1/2, the prior term with the wrong sign, the closed-form constant left out) are shown to miss by many
standard errors with the same draws. DDPM: with the exact noise prediction of the chain's marginals the
chain bound is >= the exact NLL of the discrete data, and (posterior-variance steps "large", Gaussian
decoder) it approaches it as the chain gets finer.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from sde_lib import bounds
from sde_lib.data.scaling import quantize
from sde_lib.oracle import GaussianMixture


class ExactPrior(eqx.Module):
    """log p_T of a mixture: the prior that makes the model's path measure the forward one (a pytree, so
    every mixture of one shape shares a compilation)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    mixture: GaussianMixture
    sde: sde_lib.SDE

    def __call__(self, z):
        return self.mixture.log_prob_t(self.sde, z, self.sde.T)


class ChainEps(eqx.Module):
    """The exact noise prediction of DDPM's chain: -sqrt(1 - abar_i) grad log q_i at step i = t (N - 1) / T,
    q_i the mixture's marginal under the chain's abar_i (the VP SDE's at the time where alpha_t^2 = abar_i)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    mixture: GaussianMixture
    sde: sde_lib.VPSDE

    def __call__(self, x, t):
        abar = jnp.asarray(bounds.chain_coefficients(self.sde)["abar"], x.dtype)
        i = jnp.round(t * (self.sde.N - 1) / self.sde.T).astype(jnp.int32)
        t_match = self.sde.t_from_integral_beta(-jnp.log(abar[i]))
        return -jnp.sqrt(1.0 - abar[i])[:, None] * self.mixture.score_fn(self.sde)(x, t_match)


def held_out_mixture(seed, dim=6, k=3):
    """A mixture no other test uses: random means, stds and weights from ``seed``."""
    km, ks, kw = jax.random.split(jax.random.PRNGKey(seed), 3)
    return GaussianMixture(jax.random.normal(km, (k, dim)), jax.random.uniform(ks, (k,), minval=0.3, maxval=0.6),
                           jax.random.uniform(kw, (k,), minval=0.5, maxval=1.5))


KEY = jax.random.PRNGKey(0)
SDES = {"vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(), "ve": sde_lib.VESDE(sigma_max=20.0)}


@pytest.fixture(scope="module", params=list(SDES))
def continuous(request):
    """Per SDE: the exact NLL of 256 held-out draws, the bound with the exact score and one with another
    mixture's score (same shapes: one compilation), both with the exact p_T as prior."""
    sde = SDES[request.param]
    gmm, other = held_out_mixture(101), held_out_mixture(202)
    x = gmm.sample(jax.random.PRNGKey(7), 256)
    nll = -gmm.log_prob(x)
    prior = ExactPrior(gmm, sde)
    exact = bounds.elbo(sde, gmm.score_fn(sde), x, jax.random.PRNGKey(8), n_draws=8, prior_logp=prior)
    wrong = bounds.elbo(sde, other.score_fn(sde), x, jax.random.PRNGKey(9), n_draws=8, prior_logp=prior)
    return request.param, nll, exact, wrong


def mean_and_se(per_example):
    """Mean and standard error over examples (each example's draws averaged: independent across examples)."""
    per_example = np.asarray(per_example, np.float64)
    return per_example.mean(), per_example.std(ddof=1) / math.sqrt(per_example.size)


def test_continuous_bound_is_exact_with_the_exact_score_and_prior(continuous):
    name, nll, (bound, info), _ = continuous
    gap, se = mean_and_se(bound - nll)
    assert abs(gap) < 4 * se, (name, gap, se)
    # The test can fail: each nearest wrong estimator, from the same draws, misses by > 8 standard errors.
    diffusion, prior = np.mean(info["diffusion"], 0), np.mean(info["prior"], 0)
    wrong = {"integral without 1/2": bound + diffusion, "prior with the wrong sign": bound - 2 * prior}
    if name != "ve":  # alpha_T = 1 for VE: -D log alpha_T vanishes there
        wrong["no -D log alpha_T"] = bound + 6 * np.log(float(SDES[name].marginal_coeffs(jnp.asarray(1.0))[0]))
    for what, value in wrong.items():
        assert abs(np.mean(value - nll)) > 8 * se, (name, what, np.mean(value - nll), se)
    # The reported Monte-Carlo error is per example and finite with 8 draws.
    assert np.all(np.isfinite(info["stderr"])) and info["draws"].shape == (8, 256)


def test_continuous_bound_exceeds_the_nll_with_a_perturbed_score(continuous):
    name, nll, _, (bound, _) = continuous
    gap, se = mean_and_se(bound - nll)
    assert gap > 4 * se, (name, gap, se)


@jax.jit
def exact_discrete_log_prob(gmm, k, levels, lo, hi):
    """log P(k) = log sum_c w_c prod_d int_bin N(y; mu_cd, s_c^2) dy, the outer bins open: ``(n,)``."""
    width = (hi - lo) / levels
    a = jnp.where(k == 0, -jnp.inf, lo + k * width)[:, None, :]
    b = jnp.where(k == levels - 1, jnp.inf, lo + (k + 1) * width)[:, None, :]
    mu, s = gmm.means[None], gmm.stds[None, :, None]
    mass = jax.scipy.stats.norm.cdf((b - mu) / s) - jax.scipy.stats.norm.cdf((a - mu) / s)
    return jax.nn.logsumexp(jnp.sum(jnp.log(mass), -1) + gmm.log_weights, -1)


@pytest.fixture(scope="module")
def chain_data():
    gmm = sde_lib.oracle.builtin_mixture("grid2d")
    levels, scale = 256, (-3.0, 3.0)
    k = quantize(np.asarray(gmm.sample(jax.random.PRNGKey(11), 1024)), levels, *scale)
    exact = -exact_discrete_log_prob(gmm, jnp.asarray(k, jnp.float32), levels, *scale) / (2 * math.log(2.0))
    return gmm, k, levels, scale, np.asarray(exact)


def chain_bound(chain_data, n, **options):
    gmm, k, levels, scale, exact = chain_data
    sde = sde_lib.VPSDE(N=n)
    bpd, info = bounds.ddpm_bits_per_dim(sde, ChainEps(gmm, sde), k, jax.random.PRNGKey(12), levels=levels,
                                         scale=scale, **options)
    assert np.allclose(info["prior_bpd"] + np.sum(info["terms_bpd"], 1), bpd, rtol=1e-5, atol=1e-5)
    return mean_and_se(bpd - exact)


def test_ddpm_bound_approaches_the_exact_nll_as_the_chain_gets_finer(chain_data):
    coarse, coarse_se = chain_bound(chain_data, 50, decoder="gaussian", variance="large")
    fine, fine_se = chain_bound(chain_data, 500, decoder="gaussian", variance="large")
    # Above the exact NLL (a bound), and closer to it with 10x the steps (N = 100 / 300 / 1000 / 3000:
    # 0.11 / 0.06 / 0.014 / 0.011 bits/dim above it, measured).
    assert coarse > 4 * coarse_se and fine > -3 * fine_se, (coarse, fine)
    assert coarse - fine > 3 * math.hypot(coarse_se, fine_se), (coarse, fine, coarse_se, fine_se)
    assert fine < 0.08, fine  # a missing 1/2 on the step terms would be off by bits/dim


def test_ddpm_discretized_bound_is_above_the_exact_nll(chain_data):
    # Ho et al.'s decoder at the bin centres: a valid bound, loose by ~1/2 log2(Delta^2 / (2 pi e betatilde_2))
    # for data spread over each bin (bounds.ddpm_bits_per_dim); here Delta = 6/256.
    gap, se = chain_bound(chain_data, 50, decoder="discretized", variance="small")
    assert gap > 4 * se, (gap, se)


def test_bad_arguments_raise_one_line_naming_them():
    sde, gmm = sde_lib.VPSDE(N=100), held_out_mixture(101)
    x, k = jnp.zeros((2, 6)), np.zeros((2, 6), np.int32)
    cases = [
        (lambda v: bounds.elbo(sde, gmm.score_fn(sde), x, KEY, n_draws=v), [0, 1.5, True], "n_draws"),
        (lambda v: bounds.elbo(sde, gmm.score_fn(sde), x, KEY, eps=v), [0.0, 2.0, float("nan")], "eps"),
        (lambda v: bounds.elbo_bits_per_dim(sde, gmm.score_fn(sde), k, KEY, levels=v), [1, 2.5], "levels"),
        (lambda v: bounds.ddpm_bits_per_dim(sde, ChainEps(gmm, sde), k, KEY, levels=4, decoder=v), ["exact"],
         "decoder"),
        (lambda v: bounds.ddpm_bits_per_dim(sde, ChainEps(gmm, sde), k, KEY, levels=4, variance=v), ["learned"],
         "variance"),
        (lambda v: bounds.ddpm_bits_per_dim(v, ChainEps(gmm, sde), k, KEY, levels=4),
         [sde_lib.SubVPSDE(), sde_lib.VPSDE(N=10)], "VPSDE"),
    ]
    for call, values, name in cases:
        for v in values:
            with pytest.raises((TypeError, ValueError)) as err:
                call(v)
            message = str(err.value)
            assert (name in message or (name == "VPSDE" and "N=" in message)) and "\n" not in message, message



def test_a_networks_noise_prediction_is_finite_where_the_score_form_is_not():
    """ModelScore.eps: the eps network's own output, also at DDPM's first step t = 0 (sigma_t = 0), where
    -sigma_t * score is 0 * inf; elsewhere it is -sigma_t * score."""
    sde = sde_lib.VPSDE()
    net = sde_lib.parameterization.score_fn_from_model(sde, lambda x, c: jnp.tanh(x + c[:, None]), "eps")
    x, t = jax.random.normal(KEY, (4, 3)), jnp.array([0.0, 1e-3, 0.5, 1.0])
    eps = net.eps(x, t)
    np.testing.assert_allclose(eps, jnp.tanh(x + 999 * t[:, None]), rtol=1e-6)
    sigma = sde.marginal_coeffs(t)[1][:, None]
    np.testing.assert_allclose(eps[1:], -(sigma * net(x, t))[1:], rtol=1e-5)
    assert not np.isfinite(np.asarray(-sigma * net(x, t))[0]).all()
