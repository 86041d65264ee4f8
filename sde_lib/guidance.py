"""Conditioned generation on top of any score: classifier-free and classifier guidance, inpainting and
linear inverse problems.

Guidance returns a new score function ``guided(x, t, cond)`` that every sampler takes unchanged
(``sample(..., cond=cond)`` routes the condition's rows):

* :func:`classifier_free` (Ho & Salimans 2022, arXiv 2207.12598): s_u + w (s_c - s_u) with s_c the
  conditional and s_u the null-condition score of one network, both evaluated in **one batched call**
  (the batch doubled); w = 1 is the conditional model, w = 0 the unconditional one. Since eps = -sigma s
  and x0 = (x + sigma^2 s) / alpha are affine in the score with the same coefficients for both branches,
  guiding the score, the noise or the data prediction is the same map: exponential integrators, which
  use eps or x0, need nothing special. An evaluation of the guided score is one network call (on 2B
  rows): samplers' ``info["nfe"]`` counts network calls.
* :func:`classifier` (Dhariwal & Nichol 2021, arXiv 2105.05233): s(x, t) + w grad_x log p_t(y | x) from
  a noise-conditional classifier's log-probabilities ``log_prob_fn(x, t, cond) -> (B,)``.

Linear inverse problems, :func:`linear_inverse`, sample x given y = A x + N(0, s^2 I) for a linear operator
A (``sde_lib.operators``: ``Mask``, ``AvgPool``, ``Blur``, ``ChannelMix``, ``Matrix``) with an unconditional
model; :func:`inpaint` is its common case, the coordinates ``mask * x_obs`` observed (``Mask``, s = 0).
Methods, each with its network calls (NFE) per step of the sampler:

* ``"replace"`` (score_sde's controllable generation, generalised to any A by the projection of Song,
  Shen, Xing & Ermon 2022, arXiv 2111.08005): after every step of any fixed-step sampler, x is projected
  onto the forward-diffused measurement, x <- x + A^+ (y_t - A x) with y_t = alpha_t y + sigma_t A z
  (fresh z), and at the start too; the result measures y exactly. For a mask this replaces the observed
  coordinates. NFE: the sampler's (``ancestral``: 1 per step). Treats y as noise-free.
* ``"repaint"`` (Lugmayr et al. 2022, arXiv 2201.09865): the projection after DDIM(eta) steps, and after
  every ``jump_length`` steps a jump back up by ``jump_length`` steps of forward noise, ``jump_n_sample - 1``
  times, so the unmeasured part harmonises with the measured one. NFE: 1 per reverse step, none for the
  forward jumps (``info["nfe"]`` counts them).
* ``"dps"`` (Chung et al. 2023, arXiv 2209.14687): each step of any fixed-step sampler is followed by a
  step down the gradient of the measurement error of the Tweedie estimate,
  x <- x - zeta grad_{x_t} ||y - A x0_hat(x_t)||^2 / ||y - A x0_hat(x_t)||. NFE: the sampler's + 1 per
  step (the extra evaluation at the step's start, with one backward pass).
* ``"pigdm"`` (ΠGDM, Song, Vahdat, Mardani & Kautz, ICLR 2023, openreview.net/forum?id=9_gsMA8MRKQ): the
  score of p_t(x | y) with p(y | x_t) taken as N(A x0_hat, r_t^2 A A^T + s^2 I),
  s(x_t) + (d x0_hat / d x_t)^T A^T (r_t^2 A A^T + s^2 I)^+ (y - A x0_hat), r_t^2 = d^2 sigma_t^2 /
  (alpha_t^2 d^2 + sigma_t^2) (``data_std`` d, 1 in the paper): exact when the data are N(mu, d^2 I). A
  guided score, so any sampler runs it, adaptive ones included. NFE: the sampler's; each evaluation is
  one network call plus one backward pass (a vector-Jacobian product).

``info["nfe"]`` is exact: network calls per sample path. For a mask, ``basis`` (C, C) orthonormal poses
"keep these coordinates" in another basis of the last axis (colourisation: the grey channel of a
decorrelating channel transform).
"""

from __future__ import annotations

from typing import Any, Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.checks import integer, real
from sde_lib.operators import LinearOperator, Mask
from sde_lib.parameterization import tweedie_x0
from sde_lib.sampling import api, registry
from sde_lib.sampling.base import transition
from sde_lib.sampling.grids import time_grid
from sde_lib.sampling.noise import normal_like_rows, time_bits
from sde_lib.sdes import SDE, batch_broadcast, per_sample_keys

METHODS = ("replace", "repaint", "dps", "pigdm")
_REPLACE_SALT = 0x5EED  # a noise stream of its own, apart from the sampler's


# ------------------------------------------------------------------------------------------ guidance
def _broadcast_null(null_cond, batch: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (batch,) + jnp.shape(a)), null_cond)


class ClassifierFree(eqx.Module):
    """``guided(x, t, cond) = s_u + scale (s_c - s_u)``: one call of ``score_fn`` on the doubled batch.

    ``scale`` is a traced array: changing it does not recompile a sampler.
    """

    __hash__ = object.__hash__  # identity, as for a closure (``jax.jit(guided)``)
    __eq__ = object.__eq__

    score_fn: Any
    null_cond: Any
    scale: jax.Array

    def __call__(self, x, t, cond):
        b = x.shape[0]
        null = _broadcast_null(self.null_cond, b)
        if jax.tree.structure(cond) != jax.tree.structure(null):
            raise ValueError(f"cond has keys {jax.tree.structure(cond)} but null_cond {jax.tree.structure(null)}")
        both = jax.tree.map(lambda c, n: jnp.concatenate([jnp.asarray(c), n.astype(jnp.asarray(c).dtype)]), cond, null)
        s = self.score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        s_c, s_u = s[:b], s[b:]
        return s_u + self.scale * (s_c - s_u)


def classifier_free(cond_score_fn: Callable, null_cond, scale: float) -> ClassifierFree:
    """Classifier-free guidance of ``cond_score_fn(x, t, cond)`` with the null condition ``null_cond``.

    ``null_cond`` is one condition without the batch dimension (e.g. ``{"label": num_classes}``, or an
    empty caption's ``{"context": (L, C), "context_mask": (L,)}``), broadcast to the rows; ``scale`` w:
    s_u + w (s_c - s_u), 1 = conditional, 0 = unconditional (k-diffusion's and diffusers' convention).
    """
    scale = real(scale, "scale")
    return ClassifierFree(cond_score_fn, jax.tree.map(jnp.asarray, null_cond), jnp.asarray(scale, jnp.float32))


class ClassifierGuided(eqx.Module):
    """``guided(x, t, cond) = score_fn(x, t) + scale grad_x log_prob_fn(x, t, cond)``."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    score_fn: Any
    log_prob_fn: Any
    scale: jax.Array

    def __call__(self, x, t, cond):
        # log_prob_fn acts row-wise, so the gradient of the sum is every row's own gradient.
        grad = jax.grad(lambda y: jnp.sum(self.log_prob_fn(y, t, cond)))(x)
        return self.score_fn(x, t) + self.scale * grad


def classifier(score_fn: Callable, log_prob_fn: Callable, scale: float) -> ClassifierGuided:
    """Classifier guidance: ``score_fn(x, t)`` plus ``scale`` times the gradient of a noise-conditional
    classifier's ``log_prob_fn(x, t, cond) -> (B,)`` (log p_t(y | x) of each row's class in ``cond``)."""
    return ClassifierGuided(score_fn, log_prob_fn, jnp.asarray(real(scale, "scale"), jnp.float32))


# -------------------------------------------------------------------- inpainting and inverse problems
class _Measured(eqx.Module):
    """A measurement ``y`` ``(B, *meas_dims)`` of data of ``shape`` ``(B, *dims)`` through ``operator``."""

    y: jax.Array
    operator: LinearOperator
    shape: tuple[int, ...] = eqx.field(static=True)

    def keep(self, x, y):
        """x moved to the nearest point whose measurement is ``y`` (x + A^+ (y - A x))."""
        return self.operator.project(x, y)

    def noised(self, sde, t, row_keys, salt):
        """The forward-diffused measurement alpha_t y + sigma_t A z, z a fresh standard normal of the data's
        shape: A x_t's law when y = A x_0."""
        alpha, sigma = sde.marginal_coeffs(t)
        z = normal_like_rows(row_keys, self.shape, time_bits(t), salt, dtype=self.y.dtype)
        return alpha * self.y + sigma * self.operator.A(z)


class _WrappedSolver(diffrax.AbstractItoSolver):
    """A fixed-step solver ``inner`` whose every step a subclass follows by a correction towards the
    measurement ``obs`` (its ``step``); everything else is the inner solver's."""

    inner: diffrax.AbstractSolver
    sde: SDE
    obs: _Measured

    term_structure = diffrax.AbstractTerm  # whatever the inner solver takes
    interpolation_cls = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return self.inner.order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.inner.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.inner.func(terms, t0, y0, args)


class _ReplaceSolver(_WrappedSolver):
    """A fixed-step solver followed, at every step, by the projection onto the forward-diffused measurement."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, _, _, state, result = self.inner.step(terms, t0, t1, y0, args, solver_state, made_jump)
        # Samplers run from T down to eps, which diffrax solves on the negated clock s = -t.
        y1 = self.obs.keep(y1, self.obs.noised(self.sde, -t1, args, _REPLACE_SALT))
        return y1, None, dict(y0=y0, y1=y1), state, result


class _ReplaceHook(api.SolveHook):
    obs: _Measured
    sde: SDE

    def start(self, x, row_keys):
        return self.obs.keep(x, self.obs.noised(self.sde, jnp.asarray(self.sde.T, x.dtype), row_keys, _REPLACE_SALT))

    def wrap(self, solver, sde):
        return _ReplaceSolver(solver, sde, self.obs)

    def finish(self, x):
        return self.obs.keep(x, self.obs.y)


class _DPSSolver(_WrappedSolver):
    """A fixed-step solver followed by DPS's gradient step on the measurement error of x0_hat(x_t0)."""

    score_fn: Any
    cond: Any
    zeta: float = eqx.field(static=True)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, _, _, state, result = self.inner.step(terms, t0, t1, y0, args, solver_state, made_jump)
        t = jnp.broadcast_to(-t0, y0.shape[:1])  # the negated clock of a T -> eps solve
        score = api.bind_score(self.score_fn, self.cond)

        def sq_error(x):  # per-row squared measurement error of the Tweedie estimate, summed
            r = self.obs.y - self.obs.operator.A(tweedie_x0(self.sde, x, t, score(x, t)))
            per_row = jnp.sum(jnp.square(r).reshape(r.shape[0], -1), axis=-1)
            return jnp.sum(per_row), per_row

        grad, per_row = jax.grad(sq_error, has_aux=True)(y0)
        norm = jnp.sqrt(jnp.maximum(per_row, 1e-12))
        y1 = y1 - self.zeta * grad / batch_broadcast(norm, grad)
        return y1, None, dict(y0=y0, y1=y1), state, result


class _DPSHook(api.SolveHook):
    obs: _Measured
    score_fn: Any
    cond: Any
    zeta: float = eqx.field(static=True)

    def wrap(self, solver, sde):
        return _DPSSolver(solver, sde, self.obs, self.score_fn, self.cond, self.zeta)


class _PiGDMScore(eqx.Module):
    """ΠGDM's conditional score s(x, t) + J^T A^T (r_t^2 A A^T + s^2 I)^+ (y - A x0_hat(x)), J = d x0_hat / dx,
    called as ``guided(x, t, {"y": rows of y, "cond": the network's condition or None})`` so that every
    sampler, adaptive ones included, hands it the measurement rows that belong to x's rows."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    score_fn: Any
    sde: SDE
    operator: LinearOperator
    noise_var: jax.Array
    data_var: jax.Array

    def __call__(self, x, t, cond):
        inner = cond["cond"]

        def denoise(z):
            s = self.score_fn(z, t) if inner is None else self.score_fn(z, t, inner)
            return tweedie_x0(self.sde, z, t, s), s

        x0, vjp, s = jax.vjp(denoise, x, has_aux=True)  # one network call; its backward pass is the VJP
        alpha, sigma = self.sde.marginal_coeffs(t)
        # The variance of p(x_0 | x_t) were the data N(mu, data_var I): ΠGDM's r_t^2.
        r2 = self.data_var * sigma**2 / (alpha**2 * self.data_var + sigma**2)
        u = self.operator.weighted_pinv(cond["y"] - self.operator.A(x0), r2, self.noise_var)
        return s + vjp(u)[0]


def repaint_schedule(steps: int, jump_length: int, jump_n_sample: int) -> np.ndarray:
    """RePaint's walk over grid positions 0 (t = T) ... ``steps`` (t = eps): ``(L + 1,)`` ints, each move
    one position down (a reverse step) or up (forward noise). After every ``jump_length`` reverse steps
    (except in the last ``jump_length``), go up ``jump_length`` and come down again, ``jump_n_sample - 1``
    times."""
    steps = integer(steps, "steps", minimum=1)
    jump_length = integer(jump_length, "jump_length", minimum=1)
    jump_n_sample = integer(jump_n_sample, "jump_n_sample", minimum=1)
    jumps = {p: jump_n_sample - 1 for p in range(jump_length, steps, jump_length)}
    walk, p = [0], 0
    while p < steps:
        p += 1
        walk.append(p)
        if jumps.get(p, 0) > 0:
            jumps[p] -= 1
            for _ in range(jump_length):
                p -= 1
                walk.append(p)
    return np.asarray(walk)


@eqx.filter_jit
def _repaint(sde, score_fn, obs, key, walk, cond, steps, eps, eta):
    """RePaint over ``walk`` (positions on the uniform grid of ``steps`` steps) with DDIM(eta) reverse steps
    (eta = 1: ancestral), from a prior draw: ``(x, ok)``, ``ok`` ``(B,)`` the finite rows."""
    score = api.bind_score(score_fn, cond)
    k_prior, k_noise = jax.random.split(key)
    x = sde.prior_sampling(k_prior, obs.shape)
    row_keys = per_sample_keys(k_noise, x.shape[0])
    ts = time_grid(sde, "uniform", steps, eps)

    def move(x, i):
        p0, p1 = walk[i], walk[i + 1]
        t0, t1 = ts[p0], ts[p1]

        def down(x):
            alpha0, sigma0 = sde.marginal_coeffs(t0)
            alpha1, sigma1 = sde.marginal_coeffs(t1)
            s = score(x, t0)
            eps_hat, x0_hat = -sigma0 * s, (x + sigma0**2 * s) / alpha0
            _, v = transition(sde, t0, t1)
            c = eta * jnp.sqrt(sigma1**2 * v) / sigma0
            z = normal_like_rows(row_keys, x.shape, i, 1, dtype=x.dtype)
            x = alpha1 * x0_hat + jnp.sqrt(jnp.maximum(sigma1**2 - c**2, 0.0)) * eps_hat + c * z
            return obs.keep(x, obs.noised(sde, t1, row_keys, i))

        def up(x):  # forward noise from t0 down the grid to t1 above it: x1 = a x0 + sqrt(v) z
            a, v = transition(sde, t1, t0)
            return a * x + jnp.sqrt(v) * normal_like_rows(row_keys, x.shape, i, 2, dtype=x.dtype)

        return jax.lax.cond(p1 > p0, down, up, x), None

    x = obs.keep(x, obs.noised(sde, ts[0], row_keys, _REPLACE_SALT))
    x, _ = jax.lax.scan(move, x, jnp.arange(walk.shape[0] - 1))
    x = obs.keep(x, obs.y)
    return x, jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)


def _solve(sde, score_fn, key, obs: _Measured, method, sampler, steps, cond, eps, options, *, jump_length,
           jump_n_sample, eta, zeta, noise_std, data_std):
    """Both entry points' solve, after their own checks of the measurement."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = integer(steps, "steps", minimum=1)
    eta, zeta = real(eta, "eta", minimum=0, maximum=1), real(zeta, "zeta")
    noise_std, data_std = real(noise_std, "noise_std", minimum=0), real(data_std, "data_std", minimum=0)
    if data_std == 0:
        raise ValueError("data_std must be > 0")
    eps = None if eps is None else real(eps, "eps")
    if method == "repaint":
        if sampler not in (None, "ancestral", "ddim") or options:
            raise ValueError("repaint takes its own DDIM steps (eta=1: ancestral); sampler and options do not apply")
        eps = api.default_eps(sde) if eps is None else eps
        walk = repaint_schedule(steps, jump_length, jump_n_sample)
        x, ok = _repaint(sde, score_fn, obs, key, walk, cond, steps, eps, eta)
        return x, {"nfe": int(np.sum(np.diff(walk) > 0)), "ok": ok, "walk": walk}
    sampler = sampler or "ancestral"
    adaptive = registry.get(sampler).is_adaptive
    if method == "pigdm":
        op = obs.operator
        if adaptive and isinstance(op, Mask) and op.mask.ndim == len(obs.shape) and op.mask.shape[0] > 1:
            raise ValueError("pigdm with an adaptive sampler solves each row alone: it needs one mask for all rows, "
                             f"got a per-row mask of shape {tuple(op.mask.shape)}")
        guided = _PiGDMScore(score_fn, sde, op, jnp.asarray(noise_std**2, jnp.float32),
                             jnp.asarray(data_std**2, jnp.float32))
        return api.run(sde, guided, key, obs.shape, sampler, steps, eps=eps, cond={"y": obs.y, "cond": cond},
                       options=options)
    if adaptive:
        raise ValueError(f"{method} needs a fixed-step sampler, got the adaptive {sampler!r}")
    if method == "replace":
        hook = _ReplaceHook(obs, sde)
    else:
        hook = _DPSHook(obs, score_fn, cond, zeta, nfe_per_step=1)
    return api.run(sde, score_fn, key, obs.shape, sampler, steps, eps=eps, cond=cond, options=options, hook=hook)


def linear_inverse(sde: SDE, score_fn: Callable, key: jax.Array, y, operator: LinearOperator, method: str = "pigdm",
                   noise_std: float = 0.0, sampler: str | None = None, steps: int = 100, *, shape=None, cond=None,
                   eps: float | None = None, data_std: float = 1.0, zeta: float = 1.0, jump_length: int = 10,
                   jump_n_sample: int = 10, eta: float = 1.0, **options):
    """Sample x given a linear measurement y = A x + N(0, noise_std^2 I), with an unconditional model.

    Args:
      sde, score_fn: the model (``score_fn(x, t)``, or ``score_fn(x, t, cond)`` with ``cond``).
      key: PRNG key; row i depends only on (key, i) (tile ``y`` for several samples of one measurement).
      y: ``(B, *meas_dims)`` measurements; operator: a :class:`sde_lib.operators.LinearOperator` (``Mask``,
        ``AvgPool``, ``Blur``, ``ChannelMix``, ``Matrix``).
      method: ``"pigdm"`` | ``"dps"`` | ``"replace"`` | ``"repaint"`` (module docstring).
      noise_std: the measurement noise's standard deviation (used by ``pigdm``; the others treat y as exact
        (``replace``, ``repaint``) or fold it into ``zeta`` (``dps``)).
      sampler, steps: the sampler and its steps (default ``ancestral``); ``pigdm`` takes any sampler,
        adaptive ones included; ``replace`` and ``dps`` a fixed-step one; ``repaint`` takes ``steps``
        reverse steps of DDIM with ``eta`` (1: ancestral) and RePaint's ``jump_length``, ``jump_n_sample``.
      shape: the data's ``(B, *dims)``; default the shape the operator measures as y's (given for a
        ``Matrix`` on image-shaped data, say).
      data_std: ΠGDM's prior scale: r_t^2 = d^2 sigma_t^2 / (alpha_t^2 d^2 + sigma_t^2), exact for data
        N(mu, d^2 I) (the paper's d = 1). zeta: DPS's step size.
      **options: the sampler's options.

    Returns:
      ``(x, info)``: ``x`` ``(B, *dims)``; ``info["nfe"]`` exact network calls per sample (module
      docstring), ``info["ok"]``.
    """
    if not isinstance(operator, LinearOperator):
        raise ValueError(f"operator must be a sde_lib.operators.LinearOperator, got {type(operator).__name__}")
    y = jnp.asarray(y, jnp.float32)
    if y.ndim < 2:
        raise ValueError(f"y must have shape (B, *meas_dims), got {tuple(y.shape)}")
    shape = operator.data_shape(y.shape) if shape is None else tuple(shape)
    expected = operator.measure_shape(shape)
    if tuple(expected) != tuple(y.shape):
        raise ValueError(f"{operator!r} measures data of shape {tuple(shape)} as {tuple(expected)}, but y has shape "
                         f"{tuple(y.shape)}")
    return _solve(sde, score_fn, key, _Measured(y, operator, shape), method, sampler, steps, cond, eps, options,
                  jump_length=jump_length, jump_n_sample=jump_n_sample, eta=eta, zeta=zeta, noise_std=noise_std,
                  data_std=data_std)


def inpaint(sde: SDE, score_fn: Callable, key: jax.Array, x_obs, mask, method: str = "replace",
            sampler: str | None = None, steps: int = 100, *, cond=None, basis=None, eps: float | None = None,
            jump_length: int = 10, jump_n_sample: int = 10, eta: float = 1.0, zeta: float = 1.0,
            data_std: float = 1.0, **options):
    """Sample the unobserved coordinates of ``x_obs`` given the observed ones (``mask`` 1 where observed):
    :func:`linear_inverse` with the operator ``Mask(mask, basis)`` and no measurement noise.

    Args:
      sde, score_fn: the model (``score_fn(x, t)``, or ``score_fn(x, t, cond)`` with ``cond``).
      key: PRNG key; row i depends only on (key, i) (tile ``x_obs`` for several samples of one image).
      x_obs: ``(B, *dims)`` observations (unobserved entries are ignored); mask: broadcastable to x_obs.
      method: ``"replace"`` | ``"repaint"`` | ``"dps"`` | ``"pigdm"`` (module docstring).
      sampler, steps: the sampler and its steps for ``replace`` / ``dps`` / ``pigdm`` (default
        ``ancestral``); ``repaint`` takes ``steps`` reverse steps of DDIM with ``eta`` (1: ancestral).
      basis: ``(C, C)`` orthonormal; the mask applies to ``x @ basis``.
      jump_length, jump_n_sample: RePaint's resampling; zeta: DPS's step size; data_std: ΠGDM's prior scale.
      **options: the sampler's options.

    Returns:
      ``(x, info)``: ``x`` of x_obs's shape with the observed coordinates equal to x_obs (``replace``,
      ``repaint``); ``info["nfe"]`` exact network calls per sample, ``info["ok"]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x_obs = jnp.asarray(x_obs, jnp.float32)
    if x_obs.ndim < 2:
        raise ValueError(f"x_obs must have shape (B, *dims), got {x_obs.shape}")
    operator = Mask(mask, basis)
    operator.measure_shape(x_obs.shape)
    obs = _Measured(operator.A(x_obs), operator, tuple(x_obs.shape))
    return _solve(sde, score_fn, key, obs, method, sampler, steps, cond, eps, options, jump_length=jump_length,
                  jump_n_sample=jump_n_sample, eta=eta, zeta=zeta, noise_std=0.0, data_std=data_std)
