"""What a network outputs, and how that output becomes a score (and eps / x0 predictions).

A score network is a plain callable ``model_fn(x_in, c_noise) -> F`` with ``x_in`` and ``F`` of shape
``(B, *dims)`` and ``c_noise`` of shape ``(B,)``; it knows nothing about SDEs. With the marginal
x_t = alpha_t x_0 + sigma_t z, every parameterisation here is affine in the output ``F``:

    x_in  = c_in * x,
    score = a_s F + b_s x,      eps = a_e F + b_e x,      x0 = a_0 F + b_0 x,

with per-example coefficients ``(B,)`` written in closed form below (no cancellation such as
1 - sigma^2 / sigma^2). Parameterisations (``r2 = alpha^2 + sigma^2``, 1 for VP):

* ``"score"``: F = score.
* ``"eps"``:   F = eps (noise prediction), score = -F / sigma.
* ``"x0"``:    F = x0 (data prediction), score = (alpha F - x) / sigma^2.
* ``"v"``:     F = v = alpha eps - sigma x0 (the same formula for VE, where alpha = 1);
  x0 = (alpha x - sigma v) / r2, eps = (sigma x + alpha v) / r2.
* ``"edm"``:   Karras et al. 2022 (arXiv 2206.00364) preconditioning of the scaled variable x / alpha
  at EDM noise level s = sigma / alpha:  D = c_skip x / alpha + c_out F(c_in x / alpha, log(s) / 4),
  c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
  with ``sd = sigma_data``; D is the x0 prediction and score = (alpha D - x) / sigma^2.
* ``"velocity"``: F = dx_t/dt = alpha' x0 + sigma' eps, flow matching's velocity (z - x0 on the linear
  path; the probability-flow drift f x - g^2 score / 2 of any SDE). With the rates (alpha', sigma') of
  ``sde.marginal_rates`` and w = alpha sigma' - sigma alpha' (> 0: 1 on the linear path):
  x0 = (sigma' x - sigma F) / w, eps = (alpha F - alpha' x) / w, score = (alpha' x - alpha F) / (sigma w).

Noise conditioning ``c_noise`` (a documented choice, as in score_sde's networks): ``log(s) / 4`` for
``"edm"`` and ``"velocity"`` (on the linear path logit(t) / 4: networks see the same noise-level input
on every path); otherwise ``(N - 1) t`` for VP-type SDEs (999 t for N = 1000, the DDPM timestep label)
and ``log(sigma_t)`` for VE (NCSN++ embeds log sigma).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from sde_lib.sdes import SDE, batch_broadcast

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "edm", "velocity")
NOISE_LEVEL_INPUT = ("edm", "velocity")  # parameterisations whose network sees log(sigma(t)) / 4

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


class Coefficients(NamedTuple):
    """Per-example ``(B,)`` coefficients: ``x_in = c_in x`` and ``pred = pred[0] F + pred[1] x``."""

    c_in: jax.Array
    c_noise: jax.Array
    score: tuple[jax.Array, jax.Array]
    eps: tuple[jax.Array, jax.Array]
    x0: tuple[jax.Array, jax.Array]


def check_parameterization(parameterization: str) -> str:
    """Return ``parameterization`` if it is known, else raise one ValueError listing the choices."""
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; choose from {', '.join(PARAMETERIZATIONS)}")
    return parameterization


def noise_conditioning(sde: SDE, t: jax.Array, parameterization: str) -> jax.Array:
    """The network's conditioning ``c_noise`` of shape ``t.shape`` (see the module docstring)."""
    if check_parameterization(parameterization) in NOISE_LEVEL_INPUT:
        return 0.25 * jnp.log(sde.sigma(t))
    if sde.is_vp_type:
        return (sde.N - 1) * t
    return jnp.log(sde.marginal_coeffs(t)[1])


def t_from_noise_conditioning(sde: SDE, c_noise: jax.Array, parameterization: str) -> jax.Array:
    """Inverse of :func:`noise_conditioning`."""
    if check_parameterization(parameterization) in NOISE_LEVEL_INPUT:
        return sde.t_from_sigma(jnp.exp(4.0 * c_noise))
    if sde.is_vp_type:
        return c_noise / (sde.N - 1)
    return sde.t_from_sigma(jnp.exp(c_noise))


def affine_coefficients(alpha, sigma, parameterization: str, sigma_data: float = 0.5, rates=None):
    """``(c_in, score, eps, x0)`` for marginal coefficients ``alpha``, ``sigma`` (any equal shapes).

    Taking the coefficients rather than ``t`` lets the discrete-time losses use DDPM's discrete
    alpha-bar with the same algebra. ``"velocity"`` also needs ``rates`` = (alpha', sigma').
    """
    one, zero = jnp.ones_like(sigma), jnp.zeros_like(sigma)
    p = check_parameterization(parameterization)
    if p == "velocity":
        if rates is None:
            raise ValueError("parameterization 'velocity' needs the rates (alpha', sigma') of a continuous-time SDE")
        d_alpha, d_sigma = rates
        w = alpha * d_sigma - sigma * d_alpha
        return (one, (-alpha / (sigma * w), d_alpha / (sigma * w)), (alpha / w, -d_alpha / w),
                (-sigma / w, d_sigma / w))
    if p == "score":
        return one, (one, zero), (-sigma, zero), (sigma**2 / alpha, 1.0 / alpha)
    if p == "eps":
        return one, (-1.0 / sigma, zero), (one, zero), (-sigma / alpha, 1.0 / alpha)
    if p == "x0":
        return one, (alpha / sigma**2, -1.0 / sigma**2), (-alpha / sigma, 1.0 / sigma), (one, zero)
    if p == "v":
        r2 = alpha**2 + sigma**2
        return one, (-alpha / (sigma * r2), -1.0 / r2), (alpha / r2, sigma / r2), (-sigma / r2, alpha / r2)
    s = sigma / alpha
    n2 = s**2 + sigma_data**2
    c_out = s * sigma_data / jnp.sqrt(n2)
    # 1 - c_skip = s^2 / n2 and s / sigma = 1 / alpha give the x-coefficients without cancellation.
    score = (alpha * c_out / sigma**2, -1.0 / (alpha**2 * n2))
    eps = (-alpha * c_out / sigma, sigma / (alpha**2 * n2))
    x0 = (c_out, sigma_data**2 / (n2 * alpha))
    return 1.0 / (alpha * jnp.sqrt(n2)), score, eps, x0


def coefficients(sde: SDE, t: jax.Array, parameterization: str, sigma_data: float = 0.5) -> Coefficients:
    """All coefficients of ``parameterization`` at times ``t`` of shape ``(B,)``."""
    alpha, sigma = sde.marginal_coeffs(t)
    c_in, score, eps, x0 = affine_coefficients(alpha, sigma, parameterization, sigma_data, sde.marginal_rates(t))
    return Coefficients(c_in, noise_conditioning(sde, t, parameterization), score, eps, x0)


def _apply(pair, out, x):
    return batch_broadcast(pair[0], x) * out + batch_broadcast(pair[1], x) * x


class ModelScore(eqx.Module):
    """The contract ``score_fn(x, t)`` (or ``score_fn(x, t, cond)``) of a raw network ``model``.

    ``model(x_in, c_noise[, cond]) -> F`` may be a pytree callable holding parameters (e.g.
    ``sde_lib.training.Network``): then a ``ModelScore`` is a pytree whose parameters are traced by a
    jitted sampler or likelihood and whose structure (network, SDE, parameterisation) is compared by
    value, so a new parameter set, even one loaded afresh with its SDE, reuses the compilation.
    ``x`` ``(B, *dims)``, ``t`` ``(B,)``.
    """

    # Identity hash and equality, as for a closure: ``jax.jit(score_fn)`` needs a hashable callable, and
    # array fields are not hashable. Jitted entry points flatten the module and trace its arrays instead.
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    model: Any
    sde: SDE
    parameterization: str = eqx.field(static=True, default="score")
    sigma_data: float = eqx.field(static=True, default=0.5)

    def __check_init__(self):
        check_parameterization(self.parameterization)

    def _output(self, x, t, cond):
        t = jnp.broadcast_to(t, x.shape[:1])
        c = coefficients(self.sde, t, self.parameterization, self.sigma_data)
        x_in = batch_broadcast(c.c_in, x) * x
        return c, (self.model(x_in, c.c_noise) if cond is None else self.model(x_in, c.c_noise, cond))

    def __call__(self, x: jax.Array, t: jax.Array, cond=None) -> jax.Array:
        c, out = self._output(x, t, cond)
        return _apply(c.score, out, x)

    def eps(self, x: jax.Array, t: jax.Array, cond=None) -> jax.Array:
        """The noise prediction of the same evaluation, ``(B, *dims)``: finite at sigma_t = 0 for an eps network
        (DDPM's first step at t = 0), where -sigma_t * score is 0 * inf."""
        c, out = self._output(x, t, cond)
        return _apply(c.eps, out, x)


def score_fn_from_model(
    sde: SDE, model_fn: ModelFn, parameterization: str = "score", sigma_data: float = 0.5
) -> ModelScore:
    """:class:`ModelScore` of ``model_fn``: ``score_fn(x, t[, cond])``."""
    return ModelScore(model_fn, sde, parameterization, float(sigma_data))


def model_fn_from_score(
    sde: SDE, score_fn: ScoreFn, parameterization: str = "score", sigma_data: float = 0.5
) -> ModelFn:
    """The network that represents ``score_fn`` exactly in ``parameterization``: inverse of
    :func:`score_fn_from_model`. Turns the Gaussian-mixture oracle into a "trained model" for tests
    and ablations of losses and parameterisations.
    """
    check_parameterization(parameterization)

    def model_fn(x_in, c_noise):
        t = t_from_noise_conditioning(sde, c_noise, parameterization)
        c = coefficients(sde, t, parameterization, sigma_data)
        x = x_in / batch_broadcast(c.c_in, x_in)
        a, b = (batch_broadcast(v, x) for v in c.score)
        return (score_fn(x, t) - b * x) / a

    return model_fn


def regression_target(
    sde: SDE, x0: jax.Array, noise: jax.Array, t: jax.Array, parameterization: str, sigma_data: float = 0.5
) -> jax.Array:
    """The output ``F*`` whose predictions are exact for ``x_t = alpha_t x0 + sigma_t noise``.

    ``x0``, ``noise``: ``(B, *dims)``; ``t``: ``(B,)``. Score -noise / sigma, eps noise, x0 x0,
    v alpha noise - sigma x0, EDM (s x0 - sd^2 noise) / (sd sqrt(s^2 + sd^2)), velocity alpha' x0 + sigma' noise.
    """
    t = jnp.broadcast_to(t, x0.shape[:1])
    alpha, sigma = sde.marginal_coeffs(t)
    return target_from_coefficients(alpha, sigma, x0, noise, parameterization, sigma_data, sde.marginal_rates(t))


def target_from_coefficients(alpha, sigma, x0, noise, parameterization: str, sigma_data: float = 0.5, rates=None):
    """:func:`regression_target` for given per-example marginal coefficients ``alpha``, ``sigma`` ``(B,)``
    (and their rates ``(alpha', sigma')`` for ``"velocity"``)."""
    p = check_parameterization(parameterization)
    a, s = batch_broadcast(alpha, x0), batch_broadcast(sigma, x0)
    if p == "velocity":
        if rates is None:
            raise ValueError("parameterization 'velocity' needs the rates (alpha', sigma') of a continuous-time SDE")
        return batch_broadcast(rates[0], x0) * x0 + batch_broadcast(rates[1], x0) * noise
    if p == "score":
        return -noise / s
    if p == "eps":
        return noise
    if p == "x0":
        return x0
    if p == "v":
        return a * noise - s * x0
    e = s / a
    return (e * x0 - sigma_data**2 * noise) / (sigma_data * jnp.sqrt(e**2 + sigma_data**2))


def eps_and_x0(sde: SDE, x: jax.Array, t: jax.Array, score: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Noise and data predictions of a score: eps = -sigma_t s and the Tweedie estimate
    x0 = E[x_0 | x_t = x] = (x + sigma_t^2 s) / alpha_t. ``t`` scalar or ``(B,)``; shapes of ``x``."""
    alpha, sigma = (batch_broadcast(c, x) for c in sde.marginal_coeffs(t))
    return -sigma * score, (x + sigma**2 * score) / alpha


def tweedie_x0(sde: SDE, x: jax.Array, t: jax.Array, score: jax.Array) -> jax.Array:
    """The Tweedie denoising step x0 = (x + sigma_t^2 s) / alpha_t (see :func:`eps_and_x0`)."""
    return eps_and_x0(sde, x, t, score)[1]
