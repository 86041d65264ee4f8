"""Variational upper bounds on the negative log-likelihood: the continuous-time bound of a linear SDE, and
DDPM's bound of its discrete chain. The probability-flow ODE (:mod:`sde_lib.likelihood`) gives the exact
log-density of the ODE's model; these bound the model defined by the reverse-time SDE (or chain).

Continuous time (Song et al. 2021, arXiv 2101.09258, thm. 2; Kingma et al. 2021, VDM, arXiv 2107.00630).
For the forward SDE dx = f x dt + g dW with x_t = alpha_t x_0 + sigma_t z, Ito's formula for log p_t(x_t)
along the forward process from x_{t0} = x (Fokker-Planck gives d_t log p = -D f - f x.s + g^2/2 (div s
+ |s|^2), s = grad log p_t) yields the identity

    -log p_{t0}(x) = E[-log p_T(x_T)] + 1/2 int_{t0}^T E[ g^2 (|s|^2 + 2 div s) - 2 D f ] dt.

With the model's score s_theta and prior pi in place of s and p_T the right-hand side bounds -log p_theta(x)
of the reverse SDE's model (thm. 2 there); the gap is the KL between the forward path measure given x and
the model's, zero when s_theta = grad log p_t and pi = p_T. The model only exists down to eps, so the point
x is decoded from time eps with the Gaussian decoder p(x | x_eps) = N(x_eps / alpha_eps, sigma(eps)^2 I)
(sigma(t) = sigma_t / alpha_t): Jensen over q(x_eps | x) = N(alpha_eps x, sigma_eps^2 I) adds
E[-log p(x | x_eps) + log q(x_eps | x)] = -D log alpha_eps, and the bound from eps, averaged over x_eps,
integrates over the kernel from 0 (Chapman-Kolmogorov). Stein's lemma E[div s(x_t)] = E[s . z] / sigma_t
turns the integrand into the denoising one, g^2 |s + z/sigma|^2 - g^2 |z|^2 / sigma^2 - 2 D f, whose last
two terms have closed-form integrals: E|z|^2 = D with int g^2 / sigma^2 = 2 (lambda_eps - lambda_T)
(lambda the half log-SNR) and int D f = D log(alpha_T / alpha_eps). Altogether

    -log p_theta(x) <= E_z[-log pi(alpha_T x + sigma_T z)] - D log alpha_T - D (lambda_eps - lambda_T)
                       + 1/2 int_eps^T g(t)^2 E_z |s_theta(x_t, t) + z / sigma_t|^2 dt.

The last integral is the likelihood-weighted denoising score-matching loss (:mod:`sde_lib.losses`), estimated
with its importance-sampled times (uniform in lambda_t, weight sigma_t^2 Z / (T - eps), Z = 2 (lambda_eps -
lambda_T)): per draw 1/2 Z |sigma_t s_theta + z|^2, bounded in t. For the Gaussian prior N(0, s_p^2 I) the
prior term is exact: D/2 log(2 pi s_p^2) + (alpha_T^2 |x|^2 + D sigma_T^2) / (2 s_p^2). What eps leaves out:
with the exact score the estimator's mean differs from -log p_0(x) by 1/2 int_0^eps E[g^2 (|s|^2 + 2 div s)]
dt, O(eps) (the data score is finite for a smooth p_0), plus the decoder's smoothing, O(D sigma(eps)^2 |d^2
log p_0|); for data without a smooth density (dequantised levels) the bound is of the decoded model, which
is as much a model of the data as the ODE's p_eps. Discrete data are dequantised as for the ODE's bits/dim
(:func:`sde_lib.likelihood.bits_per_dim`): bits/dim <= E_u[bound(x(k, u))] / (D log 2) + log2(L / (hi - lo)).

DDPM (Ho et al. 2020, arXiv 2006.11239; improved-diffusion's ``calc_bpd_loop``): the chain of N steps with
betas beta_n, abar_n = prod_{m<=n} (1 - beta_m) (``sde.discrete_betas``, steps n = 1..N here indexed
i = n - 1), the reverse steps p(x_{n-1} | x_n) = N(mu(x_n, x0_hat), betatilde_n I) of the posterior
variance (what the ancestral sampler draws; or beta_n, :func:`ddpm_bits_per_dim`), and on x_1 the discretised
Gaussian decoder P(k | x_1) = prod_d int_{bin(k_d)} N(y; x0_hat_d, betatilde_2) dy, the outer bins open:

    -log P(k) <= L_T + sum_{n=2}^N L_{n-1} + L_0,   L_T = KL(q(x_N | x_0) || N(0, I)),  L_0 = -log P(k | x_1),
    L_{n-1} = KL(q(x_{n-1} | x_n, x_0) || p(x_{n-1} | x_n)) = beta_n / (2 (1 - beta_n)(1 - abar_{n-1})) |eps_hat - z|^2

with x_0 the centre of k's bin and x_n = sqrt(abar_n) x_0 + sqrt(1 - abar_n) z (one z per term; equal
variances reduce each KL to the mean term, VDM's (SNR_{n-1} - SNR_n) |x_0 - x0_hat|^2 / 2). The network is
queried as it was trained (:func:`sde_lib.losses.ddpm_losses`): step i at t_i = i T / (N - 1), through its
noise prediction ``eps_fn(x, t)`` (:meth:`sde_lib.parameterization.ModelScore.eps`: the score form
-sigma_t s is 0 * inf at t_0 = 0). The bound is of the discrete data directly: no dequantisation, no offset.

Shapes: ``x`` ``(B, *dims)`` with D = prod(dims); bounds and terms per example ``(B,)``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sde_lib.checks import integer, real
from sde_lib.data.scaling import dequantize_interval
from sde_lib.likelihood import bpd_from_logp, bpd_offset, check_discrete, validate_levels
from sde_lib.losses import denoising_losses, times_from_uniform, weighting_fn
from sde_lib.sampling.api import bind_score
from sde_lib.sdes import SDE, SubVPSDE, VPSDE, per_sample_keys

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------- continuous time
def gaussian_prior_term(sde: SDE, x: jax.Array) -> jax.Array:
    """E_z[-log N(alpha_T x + sigma_T z; 0, s_p^2 I)] ``(B,)`` in closed form, s_p = ``sde.prior_std``."""
    d = math.prod(x.shape[1:])
    alpha, sigma = sde.marginal_coeffs(jnp.asarray(sde.T, x.dtype))
    s2 = sde.prior_std**2
    sq = jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=-1)
    return 0.5 * d * jnp.log(2 * jnp.pi * s2) + (alpha**2 * sq + d * sigma**2) / (2 * s2)


def bound_constant(sde: SDE, dim: int, eps: float) -> float:
    """-D log alpha_T - D (lambda_eps - lambda_T): the closed-form part of the continuous bound (module docstring)."""
    alpha_t = float(sde.marginal_coeffs(jnp.asarray(sde.T))[0])
    lam = float(sde.half_log_snr(jnp.asarray(eps))) - float(sde.half_log_snr(jnp.asarray(sde.T)))
    return -dim * math.log(alpha_t) - dim * lam


@eqx.filter_jit
def _continuous_draw(x, key, offset, stratum, sde, score_fn, cond, prior_logp, eps, n_strata):
    """One draw per row of the estimator's parts: the prior term and 1/2 of the importance-sampled DSM
    integral, each ``(B,)``. Row i's t, z (and prior draw) come from ``(key, offset + i)``; t is drawn in
    stratum ``stratum`` of ``n_strata`` equal ranges of the uniform that :func:`times_from_uniform` maps to t,
    so the draws of one example cover the log-SNR range evenly (same mean, less variance)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(x.shape[0]))
    kt, kz, kp = (jax.vmap(lambda k, j=j: jax.random.fold_in(k, j))(keys) for j in range(3))
    u = (stratum + jax.vmap(lambda k: jax.random.uniform(k, (), x.dtype))(kt)) / n_strata
    t = times_from_uniform(sde, u, "likelihood_is", eps)
    z = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(kz)
    alpha, sigma = sde.marginal_coeffs(t)
    score = bind_score(score_fn, cond)
    # The network conditioning slot carries t itself: the score function takes (x, t).
    dsm = denoising_losses(score, x, z, alpha, sigma, t, weighting_fn(sde, t, "likelihood_is", eps), "score",
                           reduce_mean=False)
    if prior_logp is None:
        prior = gaussian_prior_term(sde, x)
    else:  # a given prior's E[-log pi(x_T)] by one draw of x_T
        a_t, s_t = sde.marginal_coeffs(jnp.asarray(sde.T, x.dtype))
        zp = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(kp)
        prior = -prior_logp(a_t * x + s_t * zp)
    return prior, 0.5 * (sde.T - eps) * dsm


def _chunks(n: int, batch_size: int | None):
    """``(start, rows, pad)`` of chunks of ``batch_size`` rows (all rows if None); the last one padded."""
    size = n if batch_size is None else min(batch_size, n)
    for start in range(0, n, size):
        rows = min(size, n - start)
        yield start, rows, size - rows


def _rows(a, start, rows, pad):
    part = a[start:start + rows]
    return jnp.concatenate([part, jnp.repeat(part[-1:], pad, axis=0)]) if pad else part


def _check_eps(sde: SDE, eps) -> float:
    eps = real(eps, "eps")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    return eps


def _continuous_draws(sde, score_fn, x, key, j, n_draws, cond, prior_logp, eps, batch_size):
    """Draw ``j`` of ``n_draws`` (its time stratum) over all rows, in chunks: (prior, diffusion) each ``(B,)``."""
    parts = []
    for start, rows, pad in _chunks(x.shape[0], batch_size):
        c = None if cond is None else jax.tree.map(lambda a: _rows(jnp.asarray(a), start, rows, pad), cond)
        out = _continuous_draw(_rows(x, start, rows, pad), jax.random.fold_in(key, j), np.asarray(start, np.int32),
                               np.asarray(j, np.float32), sde, score_fn, c, prior_logp, eps, n_draws)
        parts.append(jax.tree.map(lambda a: a[:rows], out))
    return tuple(jnp.concatenate(p) for p in zip(*parts))


def _summary(draws: jax.Array) -> jax.Array:
    """Per-example Monte-Carlo standard error ``(B,)`` of the mean of ``draws`` ``(n, B)`` (NaN for n = 1)."""
    n = draws.shape[0]
    return jnp.std(draws, axis=0, ddof=1) / math.sqrt(n) if n > 1 else jnp.full(draws.shape[1:], jnp.nan)


def elbo(sde: SDE, score_fn, x: jax.Array, key: jax.Array, *, n_draws: int = 1, eps: float = 1e-5,
         prior_logp=None, cond=None, batch_size: int | None = None):
    """Upper bound on -log p(x) of the reverse-SDE model of ``score_fn`` (module docstring), per example.

    Args:
      sde: a linear SDE; score_fn: ``score_fn(x (B, *dims), t (B,))`` (or ``(x, t, cond)`` with ``cond``).
      x: ``(B, *dims)`` continuous data; key: PRNG key; draw j of row i depends on (key, j, i) only.
      n_draws: Monte-Carlo draws of (t, z) per example; eps: the smallest time (the decoder's).
      prior_logp: None for the SDE's Gaussian prior (its term in closed form), or a function ``(B, *dims)
        -> (B,)``, e.g. a mixture's exact log p_T, whose term is estimated with one draw of x_T per draw.
      batch_size: rows per compiled call (the last chunk padded; one compilation).

    Returns:
      bound ``(B,)`` in nats (mean over draws) and info: ``draws`` ``(n_draws, B)``, ``stderr`` ``(B,)`` (the
      Monte-Carlo standard error of each bound; NaN for one draw), ``prior`` and ``diffusion`` ``(n_draws, B)``
      (E[-log pi(x_T)] and 1/2 int g^2 |s + z/sigma|^2 estimates), ``constant`` (the closed-form part).
    """
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point of shape (B, *dims), got {x.dtype} {x.shape}")
    n_draws, eps = integer(n_draws, "n_draws", minimum=1), _check_eps(sde, eps)
    batch_size = None if batch_size is None else integer(batch_size, "batch_size", minimum=1)
    const = bound_constant(sde, math.prod(x.shape[1:]), eps)
    prior, diffusion = (jnp.stack(p) for p in zip(*[
        _continuous_draws(sde, score_fn, x, key, j, n_draws, cond, prior_logp, eps, batch_size)
        for j in range(n_draws)]))
    draws = prior + const + diffusion
    return jnp.mean(draws, axis=0), {"draws": draws, "stderr": _summary(draws), "prior": prior,
                                     "diffusion": diffusion, "constant": const}


def elbo_bits_per_dim(sde: SDE, score_fn, k, key: jax.Array, *, levels: int, scale=(0.0, 1.0), n_draws: int = 1,
                      eps: float = 1e-5, cond=None, batch_size: int | None = None, progress: bool = False):
    """Bits/dim bound of discrete data ``k`` (integers 0..L-1, ``(B, *dims)``) from :func:`elbo`.

    Each draw dequantises afresh, x = lo + (hi - lo)(k + u) / L with u ~ U[0, 1)^D from (key, j, i), as
    :func:`sde_lib.likelihood.bits_per_dim` does, and bounds -log p(x) with one (t, z); the mean over draws
    estimates E_u[bound] / (D log 2) + log2(L / (hi - lo)) without bias, an upper bound on -log2 P(k) / D.

    Returns bpd ``(B,)`` and info: ``bpd_draws`` ``(n_draws, B)``, ``stderr`` ``(B,)`` (Monte-Carlo standard
    error of each example's bpd, dequantisation included; NaN for one draw), ``prior_bpd`` and
    ``diffusion_bpd`` ``(B,)`` (the terms' means over draws in bits/dim), ``constant_bpd``.
    """
    levels, lo, hi = check_discrete(levels, scale)
    n_draws, eps = integer(n_draws, "n_draws", minimum=1), _check_eps(sde, eps)
    batch_size = None if batch_size is None else integer(batch_size, "batch_size", minimum=1)
    validate_levels(k, levels)
    k = np.asarray(k)
    n, dim = k.shape[0], math.prod(k.shape[1:])
    const = bound_constant(sde, dim, eps)
    priors, diffusions = [], []
    for j in tqdm(range(n_draws), disable=not progress, desc="bound bits/dim"):
        k_deq, k_est = jax.random.split(jax.random.fold_in(key, j))
        u = jax.vmap(lambda kk: jax.random.uniform(kk, k.shape[1:]))(per_sample_keys(k_deq, n))
        x = jnp.asarray(dequantize_interval(k, np.asarray(u), levels, lo, hi))
        prior, diffusion = _continuous_draws(sde, score_fn, x, k_est, j, n_draws, cond, None, eps, batch_size)
        priors.append(prior)
        diffusions.append(diffusion)
    prior, diffusion = jnp.stack(priors), jnp.stack(diffusions)
    draws = bpd_from_logp(-(prior + const + diffusion), dim, levels, (lo, hi))
    scale_bits = 1.0 / (dim * LN2)
    return jnp.mean(draws, axis=0), {
        "bpd_draws": draws, "stderr": _summary(draws), "prior_bpd": jnp.mean(prior, axis=0) * scale_bits,
        "diffusion_bpd": jnp.mean(diffusion, axis=0) * scale_bits, "constant_bpd": const * scale_bits}


# ------------------------------------------------------------------------------------------- DDPM
DECODERS = ("discretized", "gaussian")
VARIANCES = ("small", "large")


def _check_chain(sde) -> None:
    if not isinstance(sde, VPSDE) or isinstance(sde, SubVPSDE):
        raise ValueError(f"DDPM's bound needs a VPSDE (its chain), got {type(sde).__name__}")
    if sde.N < 2 or sde.beta_max >= sde.N:
        raise ValueError(f"DDPM's chain needs 2 <= N and beta_max / N < 1, got N={sde.N}, beta_max={sde.beta_max}")


def chain_coefficients(sde: VPSDE) -> dict:
    """The chain's ``beta``, ``abar`` (abar_n = prod_{m<=n} (1 - beta_m)) and posterior variances
    ``betatilde`` (betatilde_1 = 0), each ``(N,)`` with index i for step n = i + 1; float64 on the host."""
    beta = np.linspace(sde.beta_min / sde.N, sde.beta_max / sde.N, sde.N)
    abar = np.exp(np.cumsum(np.log1p(-beta)))
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {"beta": beta, "abar": abar, "betatilde": beta * (1.0 - abar_prev) / (1.0 - abar)}


def _log_bin_mass(lo_edge, hi_edge, mean, std):
    """log of N(mean, std^2)'s mass on [lo_edge, hi_edge] (edges may be infinite), without cancellation: on the
    side of the mean where both tail masses are small, log(Phi(b) - Phi(a)) = log Phi(b) + log1p(-Phi(a)/Phi(b))."""
    a, b = (lo_edge - mean) / std, (hi_edge - mean) / std
    flip = a > 0  # both above the mean: use the upper tails Phi(-a) - Phi(-b)
    a, b = jnp.where(flip, -b, a), jnp.where(flip, -a, b)
    la, lb = jax.scipy.special.log_ndtr(a), jax.scipy.special.log_ndtr(b)
    return lb + jnp.log1p(-jnp.exp(jnp.minimum(la - lb, 0.0)))


@eqx.filter_jit
def _ddpm_rows(x0, k, key, offset, sde, eps_fn, cond, levels, lo, hi, decoder, variance):
    """Per-row terms in nats from the chain's start ``x0`` ``(B, *dims)``: L_T ``(B,)`` and ``(B, N)`` with
    column 0 the decoder's L_0 (of the levels ``k`` or of ``x0`` itself) and column i the step term L_i."""
    coef = chain_coefficients(sde)
    beta, abar, betatilde = (jnp.asarray(coef[name], x0.dtype) for name in ("beta", "abar", "betatilde"))
    flat = x0.reshape(x0.shape[0], -1)
    d = flat.shape[1]
    # L_T = KL(N(sqrt(abar_N) x0, (1 - abar_N) I) || N(0, I)).
    prior = 0.5 * (abar[-1] * (jnp.sum(flat**2, -1) - d) - d * jnp.log1p(-abar[-1]))
    rows = offset + jnp.arange(x0.shape[0])
    t_grid = jnp.arange(sde.N, dtype=x0.dtype) * (sde.T / (sde.N - 1))

    def noisy(i):
        z = jax.vmap(lambda r: jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), r),
                                                 x0.shape[1:], x0.dtype))(rows)
        x = jnp.sqrt(abar[i]) * x0 + jnp.sqrt(1.0 - abar[i]) * z
        t = jnp.full(x0.shape[:1], t_grid[i])
        eps_hat = eps_fn(x, t) if cond is None else eps_fn(x, t, cond)
        return x, jnp.sum(jnp.square(eps_hat - z).reshape(x0.shape[0], -1), -1), eps_hat

    def term(i):  # L_i, i = 1..N-1 (module docstring), with r = betatilde / sigma^2 (1 for "small")
        r = 1.0 if variance == "small" else betatilde[i] / beta[i]
        w = beta[i] / (2.0 * (1.0 - beta[i]) * (1.0 - abar[i - 1]))
        return 0.5 * d * (r - 1.0 - jnp.log(r)) + r * w * noisy(i)[1]

    x1, sq, eps_hat = noisy(0)
    if decoder == "gaussian":
        # N(x0; x0_hat, (1 - abar_1) / abar_1): the variance of x0 given x1 for data flat at that scale;
        # x0 - x0_hat = (eps_hat - z) sqrt((1 - abar_1) / abar_1).
        decoder_nll = 0.5 * d * jnp.log(2 * jnp.pi * (1.0 - abar[0]) / abar[0]) + 0.5 * sq
    else:
        width = (hi - lo) / levels
        x0_hat = (x1 - jnp.sqrt(1.0 - abar[0]) * eps_hat) / jnp.sqrt(abar[0])
        lo_edge = jnp.where(k == 0, -jnp.inf, lo + k * width)
        hi_edge = jnp.where(k == levels - 1, jnp.inf, lo + (k + 1) * width)
        # improved-diffusion's decoder variance: betatilde_2 in place of betatilde_1 = 0.
        log_p = _log_bin_mass(lo_edge, hi_edge, x0_hat, jnp.sqrt(betatilde[1]))
        decoder_nll = -jnp.sum(log_p.reshape(x0.shape[0], -1), -1)
    terms = jax.lax.map(term, jnp.arange(1, sde.N))  # (N - 1, B): one batched network call per step
    return prior, jnp.concatenate([decoder_nll[:, None], terms.T], axis=1)


def ddpm_bits_per_dim(sde: VPSDE, eps_fn, k, key: jax.Array, *, levels: int, scale=(0.0, 1.0),
                      decoder: str = "discretized", variance: str = "small", n_draws: int = 1, cond=None,
                      batch_size: int | None = None,
                      progress: bool = False):
    """DDPM's bound L_T + sum L_t + L_0 on -log2 P(k) / D for discrete data ``k`` (integers 0..L-1,
    ``(B, *dims)``) under ``sde``'s N-step chain (module docstring).

    ``eps_fn(x, t)`` (or ``(x, t, cond)``) is the network's noise prediction ``(B, *dims)`` at times ``t``
    ``(B,)``, e.g. a run's ``score_fn.eps``. ``decoder``:

    * ``"discretized"`` (Ho et al.): the chain starts at the bin centres and L_0 = -log P(k | x_1). For a
      model of dequantised data (density spread over each bin) it is loose by about
      1/2 log2(Delta^2 / (2 pi e betatilde_2)) bits/dim (Delta the bin width): q(x_1 | x_0) is a Gaussian of
      variance ~ beta_1 at the centre, the model's x_1 spreads over the bin.
    * ``"gaussian"``: the chain starts at a uniformly dequantised point x_0 (a fresh one per draw) and
      L_0 = -log N(x_0; x0_hat, (1 - abar_1) / abar_1); the bits/dim then carry log2(L / (hi - lo)), as the
      ODE's (:func:`sde_lib.likelihood.bits_per_dim`). With the exact noise prediction and ``variance="large"``
      it tends to the data's -log2 P(k) / D (up to the dequantisation's Jensen gap) as the chain gets finer.

    ``variance``: the reverse steps' fixed variance (improved-diffusion's fixedsmall / fixedlarge), ``"small"``
    betatilde_n (the ancestral sampler's) or ``"large"`` beta_n, with
    L_{n-1} = D/2 (r - 1 - log r) + r beta_n / (2 (1 - beta_n)(1 - abar_{n-1})) |eps_hat - z|^2 with
    r = betatilde_n / sigma_n^2.
    For data flat at the chain's first noise levels (dequantised levels, any smooth density) the true reverse
    variance there is beta_n, not betatilde_n: their ratio SNR_{n-1} / SNR_n is ~ 1 + 1/n near the start whatever
    N, so "small" keeps a gap of 1/2 sum_n (1/n - log(1 + 1/n)) -> gamma / 2 = 0.29 nats/dim (Euler's gamma) as
    N grows (0.44 at N = 1000, where beta still grows along the first steps; 0.41 measured on the oracle),
    while "large" tends to the exact NLL with the exact noise prediction (tests/test_bounds.py).

    Each of ``n_draws`` draws passes once over the N steps per chunk of ``batch_size`` rows (N network calls
    of the chunk); the noise of draw j, step i, row r depends on (key, j, i, r) only.

    Returns bpd ``(B,)`` and info: ``prior_bpd`` ``(B,)`` (L_T), ``terms_bpd`` ``(B, N)`` (column 0 the
    decoder's L_0, with the dequantisation offset for ``"gaussian"``; column i the step term L_i),
    ``decoder_bpd`` ``(B,)``, means over draws in bits/dim that sum to bpd; ``bpd_draws`` ``(n_draws, B)``.
    """
    _check_chain(sde)
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    levels, lo, hi = check_discrete(levels, scale)
    n_draws = integer(n_draws, "n_draws", minimum=1)
    batch_size = None if batch_size is None else integer(batch_size, "batch_size", minimum=1)
    validate_levels(k, levels)
    k = np.asarray(k)
    n, dim = k.shape[0], math.prod(k.shape[1:])
    to_bits = 1.0 / (dim * LN2)
    offset = bpd_offset(levels, (lo, hi)) if decoder == "gaussian" else 0.0
    kf = jnp.asarray(k, jnp.float32)
    priors, terms = [], []
    bar = tqdm(total=n_draws * n, disable=not progress, unit="ex", desc="DDPM bound")
    for j in range(n_draws):
        k_deq, k_chain = jax.random.split(jax.random.fold_in(key, j))
        u = jax.vmap(lambda kk: jax.random.uniform(kk, k.shape[1:]))(per_sample_keys(k_deq, n))
        u = np.full(k.shape, 0.5) if decoder == "discretized" else np.asarray(u)  # the bin centre, or dequantised
        x0 = jnp.asarray(dequantize_interval(k, u, levels, lo, hi))
        draw_p, draw_t = [], []
        for start, rows, pad in _chunks(n, batch_size):
            c = None if cond is None else jax.tree.map(lambda a: _rows(jnp.asarray(a), start, rows, pad), cond)
            prior, term = _ddpm_rows(_rows(x0, start, rows, pad), _rows(kf, start, rows, pad), k_chain,
                                     np.asarray(start, np.int32), sde, eps_fn, c, levels, lo, hi, decoder, variance)
            draw_p.append(prior[:rows])
            draw_t.append(term[:rows])
            bar.update(rows)
        priors.append(jnp.concatenate(draw_p) * to_bits)
        terms.append(jnp.concatenate(draw_t).at[:, 0].add(offset / to_bits) * to_bits)
    bar.close()
    prior, terms = jnp.stack(priors), jnp.stack(terms)  # (n_draws, B), (n_draws, B, N)
    draws = prior + jnp.sum(terms, axis=2)
    terms = jnp.mean(terms, axis=0)
    return jnp.mean(draws, axis=0), {"prior_bpd": jnp.mean(prior, axis=0), "terms_bpd": terms,
                                     "decoder_bpd": terms[:, 0], "bpd_draws": draws}
