"""Training objectives: weighted denoising score matching and its discrete-time special cases.

Continuous time (Song et al. 2021, arXiv 2011.13456): with x_t = alpha_t x_0 + sigma_t z,

    L(theta) = E_{t, x_0, z} [ lambda(t) || s_theta(x_t, t) + z / sigma_t ||^2 ],   t ~ U(eps, T),

which differs from explicit score matching E lambda ||s_theta - grad log p_t||^2 by a constant. Weightings
(:func:`weighting_fn`): ``"sigma2"`` lambda = sigma_t^2 (score_sde's default); ``"likelihood"``
lambda = g(t)^2, which makes L an upper bound on the negative log-likelihood (arXiv 2101.09258);
``"likelihood_is"`` the same objective with t drawn from q(t) ∝ g^2 / sigma_t^2 and reweighted by
1 / ((T - eps) q(t)). Because g^2 / sigma_t^2 = -2 d lambda_t / dt for every linear SDE (lambda_t the
half log-SNR), q is uniform in lambda_t: t = t_from_half_log_snr(U(lambda_T, lambda_eps)) is exact, and the
reweighted integrand is the constant Z / (T - eps) times the ``"sigma2"`` one, Z = 2 (lambda_eps - lambda_T).

Flow matching (Lipman et al. 2023, arXiv 2210.02747; rectified flow, Liu et al. 2023) regresses the velocity,
E || v_theta(x_t, t) - (alpha'_t x_0 + sigma'_t z) ||^2. Since v = f x - g^2 s / 2 for every process and the
conditional target is f x + g^2 z / (2 sigma_t), this is the weighting ``"velocity"``, lambda(t) = (g^2 / 2)^2;
with ``parameterization="velocity"`` the loss is exactly || F - (alpha' x_0 + sigma' z) ||^2 (z - x_0 on the
linear path). Its minimiser is the probability-flow drift. Times (:data:`TIME_SAMPLINGS`): ``"uniform"``
U(eps, T), or ``"logit_normal"``: log sigma(t) ~ N(loc, scale^2) truncated to [eps, T], sigma(t) the EDM
noise level, i.e. logit(t) ~ N(loc, scale^2) on the linear path (SD3's logit-normal, Esser et al. 2024,
arXiv 2403.03206; loc 0, scale 1) and EDM's log-normal sigma on the EDM path (loc -1.2, scale 1.2).
The weighting is applied as is (no importance correction): the time law is part of the objective.

Every parameterisation is affine in the network output (score = a F + b x), so the loss is computed as
the equivalent native regression lambda a^2 || F - F* || ^2 (F* from :func:`regression_target`), which
avoids cancellations such as (alpha F - x) / sigma^2 at small sigma. Sums over dims, or means with
``reduce_mean`` (score_sde's convention).

Discrete time: the DDPM loss (Ho et al. 2020) draws i ~ U{0..N-1} and uses DDPM's alpha-bar_i; with
``parameterization="eps"`` it is exactly E || F - z ||^2. The SMLD loss (VE) draws one of the N geometric
noise levels with weighting sigma_i^2. Both are the ``"sigma2"`` objective on the grid t_i = i / (N - 1),
and the network is conditioned as in continuous time at t_i, so a discretely trained model plugs into
:func:`sde_lib.parameterization.score_fn_from_model` (for VP its score then uses the continuous alpha_t,
which differs from DDPM's alpha-bar by O(1/N)).

Models: ``model_fn(x_in, c_noise) -> F`` (an nnx module works; close over conditioning inputs). Draws
for example i depend only on (key, i).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from sde_lib import parameterization as param_lib
from sde_lib.parameterization import ModelFn
from sde_lib.sdes import SDE, SubVPSDE, VESDE, VPSDE, batch_broadcast, per_sample_keys

WEIGHTINGS = ("sigma2", "likelihood", "likelihood_is", "velocity")
TIME_SAMPLINGS = ("uniform", "logit_normal")


def _check_weighting(weighting: str) -> str:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    return weighting


def weighting_fn(sde: SDE, t: jax.Array, weighting: str, eps: float = 1e-5) -> jax.Array:
    """Per-example weight ``(B,)`` applied to || s + z / sigma_t ||^2 at times ``t`` ``(B,)``.

    For ``"likelihood_is"`` it is the importance weight times g^2, i.e. sigma_t^2 Z / (T - eps), valid
    for t drawn by :func:`sample_times`; for ``"velocity"`` (g^2 / 2)^2, the velocity error's.
    """
    w = _check_weighting(weighting)
    if w == "likelihood":
        return sde.diffusion_coef(t) ** 2
    if w == "velocity":
        return (0.5 * sde.diffusion_coef(t) ** 2) ** 2
    sigma2 = sde.marginal_coeffs(t)[1] ** 2
    if w == "sigma2":
        return sigma2
    z = 2.0 * (sde.half_log_snr(jnp.asarray(eps)) - sde.half_log_snr(jnp.asarray(sde.T)))
    return sigma2 * z / (sde.T - eps)


def _check_time_sampling(time_sampling: str, weighting: str, scale: float) -> None:
    if time_sampling not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time sampling {time_sampling!r}; choose from {', '.join(TIME_SAMPLINGS)}")
    if time_sampling != "uniform" and _check_weighting(weighting) == "likelihood_is":
        raise ValueError(f"weighting 'likelihood_is' draws its own times; time sampling {time_sampling!r} does not apply")
    if not scale > 0:
        raise ValueError(f"the time distribution's scale must be > 0, got {scale}")


def sample_times(sde: SDE, key: jax.Array, shape: tuple[int, ...], weighting: str, eps: float = 1e-5,
                 time_sampling: str = "uniform", loc: float = 0.0, scale: float = 1.0) -> jax.Array:
    """Training times of ``shape``: U(eps, T); uniform in lambda_t for ``"likelihood_is"``; for ``"logit_normal"``
    -lambda_t = log sigma(t) ~ N(loc, scale^2) truncated to [eps, T] (module docstring), drawn by inverting
    the truncated normal's CDF."""
    return times_from_uniform(sde, jax.random.uniform(key, shape), weighting, eps, time_sampling, loc, scale)


def times_from_uniform(sde: SDE, u: jax.Array, weighting: str, eps: float = 1e-5, time_sampling: str = "uniform",
                       loc: float = 0.0, scale: float = 1.0) -> jax.Array:
    """The times of :func:`sample_times` from given uniforms ``u`` in [0, 1) (e.g. stratified ones), same shape."""
    if time_sampling == "logit_normal":
        lo = (-sde.half_log_snr(jnp.asarray(eps)) - loc) / scale
        hi = (-sde.half_log_snr(jnp.asarray(sde.T)) - loc) / scale
        p_lo, p_hi = jax.scipy.special.ndtr(lo), jax.scipy.special.ndtr(hi)
        lam = -(loc + scale * jax.scipy.special.ndtri(p_lo + (p_hi - p_lo) * u))
        return jnp.clip(sde.t_from_half_log_snr(lam), eps, sde.T)
    if _check_weighting(weighting) != "likelihood_is":
        return eps + (sde.T - eps) * u
    lam_lo, lam_hi = sde.half_log_snr(jnp.asarray(sde.T)), sde.half_log_snr(jnp.asarray(eps))
    # Clip: the round trip through lambda may leave [eps, T] by an ulp.
    return jnp.clip(sde.t_from_half_log_snr(lam_lo + (lam_hi - lam_lo) * u), eps, sde.T)


def denoising_losses(
    model_fn: ModelFn,
    x0: jax.Array,
    noise: jax.Array,
    alpha: jax.Array,
    sigma: jax.Array,
    c_noise: jax.Array,
    weight: jax.Array,
    parameterization: str = "score",
    reduce_mean: bool = True,
    sigma_data: float = 0.5,
    rates=None,
) -> jax.Array:
    """Per-example ``weight * || s(x_t) + noise / sigma ||^2`` (reduced over dims), shape ``(B,)``.

    The deterministic core of every loss here: ``x0``, ``noise`` ``(B, *dims)``; marginal coefficients
    ``alpha``, ``sigma``, network conditioning ``c_noise`` and ``weight`` all ``(B,)``; ``rates``
    (alpha', sigma') for the ``"velocity"`` parameterisation. Use it for held-out losses at fixed noise levels.
    """
    c_in, (a, _), _, _ = param_lib.affine_coefficients(alpha, sigma, parameterization, sigma_data, rates)
    x = batch_broadcast(alpha, x0) * x0 + batch_broadcast(sigma, x0) * noise
    out = model_fn(batch_broadcast(c_in, x) * x, c_noise)
    target = param_lib.target_from_coefficients(alpha, sigma, x0, noise, parameterization, sigma_data, rates)
    sq = jnp.square(out - target).reshape(x0.shape[0], -1)
    sq = jnp.mean(sq, axis=-1) if reduce_mean else jnp.sum(sq, axis=-1)
    return weight * a**2 * sq


def _draws(key, x0, draw_t, noise=None):
    """Per-example (t or index, noise) with example i a function of (key, i) only; a given ``noise`` (a
    coupling's, e.g. reflow's pairs) is used as is."""

    def one(k):
        kt, kz = jax.random.split(k)
        return draw_t(kt), jax.random.normal(kz, x0.shape[1:], x0.dtype)

    t, z = jax.vmap(one)(per_sample_keys(key, x0.shape[0]))
    return t, (z if noise is None else noise)


def dsm_losses(
    sde: SDE,
    model_fn: ModelFn,
    key: jax.Array,
    x0: jax.Array,
    weighting: str = "sigma2",
    parameterization: str = "score",
    reduce_mean: bool = True,
    eps: float = 1e-5,
    sigma_data: float = 0.5,
    noise: jax.Array | None = None,
    time_sampling: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
) -> jax.Array:
    """Continuous-time denoising score matching, per example ``(B,)`` for data ``x0`` ``(B, *dims)``.

    ``noise``: the z of x_t = alpha_t x0 + sigma_t z, ``(B, *dims)``, for a coupling of data and noise (reflow);
    None draws it independently. ``time_sampling``, ``time_loc``, ``time_scale``: see :func:`sample_times`.
    """
    t, noise = _draws(key, x0, lambda k: sample_times(sde, k, (), weighting, eps, time_sampling, time_loc,
                                                       time_scale), noise)
    alpha, sigma = sde.marginal_coeffs(t)
    c_noise = param_lib.noise_conditioning(sde, t, parameterization)
    w = weighting_fn(sde, t, weighting, eps)
    return denoising_losses(model_fn, x0, noise, alpha, sigma, c_noise, w, parameterization, reduce_mean, sigma_data,
                            sde.marginal_rates(t))


def ddpm_coefficients(sde: VPSDE) -> tuple[jax.Array, jax.Array]:
    """DDPM's sqrt(alpha-bar_i) and sqrt(1 - alpha-bar_i), each ``(N,)``, from ``sde.discrete_betas``."""
    log_abar = jnp.cumsum(jnp.log1p(-sde.discrete_betas))
    return jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))


def _grid_losses(sde, alphas, sigmas, model_fn, key, x0, parameterization, reduce_mean, sigma_data):
    """sigma^2-weighted losses at a uniformly drawn level i of the tables ``alphas``, ``sigmas`` ``(N,)``."""
    i, noise = _draws(key, x0, lambda k: jax.random.randint(k, (), 0, sde.N))
    # Condition the network as in continuous time at t_i = i T / (N - 1), the grid score_sde samples on.
    c_noise = param_lib.noise_conditioning(sde, i * (sde.T / max(sde.N - 1, 1)), parameterization)
    sigma = sigmas[i]
    return denoising_losses(
        model_fn, x0, noise, alphas[i], sigma, c_noise, sigma**2, parameterization, reduce_mean, sigma_data
    )


def ddpm_losses(sde, model_fn, key, x0, parameterization="eps", reduce_mean=True, sigma_data=0.5):
    """DDPM loss per example ``(B,)``; with ``"eps"``, || F(x_i, i) - z ||^2 with i ~ U{0..N-1}."""
    if not isinstance(sde, VPSDE) or isinstance(sde, SubVPSDE):
        raise ValueError(f"the DDPM loss needs a VPSDE, got {type(sde).__name__}")
    alphas, sigmas = ddpm_coefficients(sde)
    return _grid_losses(sde, alphas, sigmas, model_fn, key, x0, parameterization, reduce_mean, sigma_data)


def smld_losses(sde, model_fn, key, x0, parameterization="score", reduce_mean=True, sigma_data=0.5):
    """SMLD / NCSN loss per example ``(B,)``: sigma_i^2 || s(x0 + sigma_i z) + z / sigma_i ||^2."""
    if not isinstance(sde, VESDE):
        raise ValueError(f"the SMLD loss needs a VESDE, got {type(sde).__name__}")
    sigmas = sde.discrete_sigmas
    alphas = jnp.ones_like(sigmas)
    return _grid_losses(sde, alphas, sigmas, model_fn, key, x0, parameterization, reduce_mean, sigma_data)


def get_loss_fn(
    sde: SDE,
    continuous: bool = True,
    weighting: str = "sigma2",
    reduce_mean: bool = True,
    parameterization: str = "score",
    eps: float = 1e-5,
    sigma_data: float = 0.5,
    per_example: bool = False,
    time_sampling: str = "uniform",
    time_loc: float = 0.0,
    time_scale: float = 1.0,
) -> Callable[..., jax.Array]:
    """``loss(model_fn, key, x0, noise=None)``: the batch mean (a scalar), or ``(B,)`` with ``per_example``;
    ``noise`` ``(B, *dims)`` couples each example with its own noise (reflow), None draws it.

    Options are validated here, once: ``continuous=False`` selects the DDPM loss (VPSDE) or the SMLD loss
    (VESDE) and only allows ``weighting="sigma2"``, uniform times and no coupled noise.
    """
    _check_weighting(weighting)
    param_lib.check_parameterization(parameterization)
    _check_time_sampling(time_sampling, weighting, time_scale)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    if continuous:
        kwargs = dict(weighting=weighting, parameterization=parameterization, reduce_mean=reduce_mean, eps=eps,
                      time_sampling=time_sampling, time_loc=float(time_loc), time_scale=float(time_scale))

        def losses(model_fn, key, x0, noise=None):
            return dsm_losses(sde, model_fn, key, x0, sigma_data=sigma_data, noise=noise, **kwargs)

    else:
        if weighting != "sigma2" or time_sampling != "uniform" or parameterization == "velocity":
            raise ValueError(f"weighting={weighting!r}, time sampling {time_sampling!r} and parameterization "
                             f"{parameterization!r}: discrete losses take 'sigma2', uniform times and no velocity")
        if isinstance(sde, VESDE):
            discrete = smld_losses
        elif isinstance(sde, VPSDE) and not isinstance(sde, SubVPSDE):
            discrete = ddpm_losses
        else:
            raise ValueError(f"continuous=False needs a VPSDE (DDPM) or VESDE (SMLD), got {type(sde).__name__}")

        def losses(model_fn, key, x0, noise=None):
            if noise is not None:
                raise ValueError("discrete losses draw their own noise; coupled noise needs continuous=True")
            return discrete(sde, model_fn, key, x0, parameterization, reduce_mean, sigma_data)

    if per_example:
        return losses
    return lambda model_fn, key, x0, noise=None: jnp.mean(losses(model_fn, key, x0, noise))
