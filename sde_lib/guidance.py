"""Conditioned generation on top of any score: classifier-free and classifier guidance, and inpainting.

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

Inpainting, :func:`inpaint`, samples x given the coordinates ``mask * x_obs`` (mask 1 where observed):

* ``"replace"`` (score_sde's controllable generation): after every step of any fixed-step sampler the
  observed coordinates are replaced by a forward-diffused copy alpha_t x_obs + sigma_t z (fresh z), and
  at the start too; the result carries x_obs exactly. Linear "keep these coordinates" problems in
  another orthonormal basis (colourisation: the grey channel of a decorrelating channel transform) pass
  ``basis`` (C, C): the mask then applies to the coordinates x @ basis.
* ``"repaint"`` (Lugmayr et al. 2022, arXiv 2201.09865): replacement with ancestral steps, and after
  every ``jump_length`` steps a jump back up by ``jump_length`` steps of forward noise, ``jump_n_sample - 1``
  times, so the unobserved coordinates harmonise with the observed ones.
* ``"dps"`` (Chung et al. 2023, arXiv 2209.14687): each step of any fixed-step sampler is followed by a
  step down the gradient of the observation error of the Tweedie estimate,
  x <- x - zeta grad_{x_t} ||mask (x_obs - x0_hat(x_t))||^2 / ||mask (x_obs - x0_hat(x_t))||.

``info["nfe"]`` is exact: network calls per sample path, including DPS's extra evaluation per step
(whose gradient costs one backward pass more).
"""

from __future__ import annotations

from typing import Any, Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_lib.parameterization import tweedie_x0
from sde_lib.sampling import api, registry
from sde_lib.sampling.base import transition
from sde_lib.sampling.grids import time_grid
from sde_lib.sampling.noise import normal_like_rows, time_bits
from sde_lib.sdes import SDE, batch_broadcast, per_sample_keys

METHODS = ("replace", "repaint", "dps")
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
    return ClassifierGuided(score_fn, log_prob_fn, jnp.asarray(scale, jnp.float32))


# ---------------------------------------------------------------------------------------- inpainting
class _Observation(eqx.Module):
    """Observed values and mask in the coordinates they are observed in (``basis`` applied on the last
    axis when given)."""

    x_obs: jax.Array  # (B, *dims), already in the observed coordinates
    mask: jax.Array  # broadcastable to x_obs
    basis: jax.Array | None

    def to_obs(self, x):
        return x if self.basis is None else x @ self.basis

    def from_obs(self, y):
        return y if self.basis is None else y @ self.basis.T

    def keep(self, x, observed):
        """x with its observed coordinates set to ``observed`` (in observed coordinates)."""
        y = self.to_obs(x)
        return self.from_obs(self.mask * observed + (1.0 - self.mask) * y)

    def noised(self, sde, t, row_keys, salt):
        alpha, sigma = sde.marginal_coeffs(t)
        z = normal_like_rows(row_keys, self.x_obs.shape, time_bits(t), salt, dtype=self.x_obs.dtype)
        return alpha * self.x_obs + sigma * z


class _WrappedSolver(diffrax.AbstractItoSolver):
    """A fixed-step solver ``inner`` whose every step a subclass follows by a correction towards the
    observations ``obs`` (its ``step``); everything else is the inner solver's."""

    inner: diffrax.AbstractSolver
    sde: SDE
    obs: _Observation

    term_structure = diffrax.AbstractTerm  # whatever the inner solver takes
    interpolation_cls = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return self.inner.order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.inner.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.inner.func(terms, t0, y0, args)


class _ReplaceSolver(_WrappedSolver):
    """A fixed-step solver followed, at every step, by score_sde's replacement of the observed coordinates."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, _, _, state, result = self.inner.step(terms, t0, t1, y0, args, solver_state, made_jump)
        # Samplers run from T down to eps, which diffrax solves on the negated clock s = -t.
        y1 = self.obs.keep(y1, self.obs.noised(self.sde, -t1, args, _REPLACE_SALT))
        return y1, None, dict(y0=y0, y1=y1), state, result


class _ReplaceHook(api.SolveHook):
    obs: _Observation
    sde: SDE

    def start(self, x, row_keys):
        return self.obs.keep(x, self.obs.noised(self.sde, jnp.asarray(self.sde.T, x.dtype), row_keys, _REPLACE_SALT))

    def wrap(self, solver, sde):
        return _ReplaceSolver(solver, sde, self.obs)

    def finish(self, x):
        return self.obs.keep(x, self.obs.x_obs)


class _DPSSolver(_WrappedSolver):
    """A fixed-step solver followed by DPS's gradient step on the observation error of x0_hat(x_t0)."""

    score_fn: Any
    cond: Any
    zeta: float = eqx.field(static=True)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, _, _, state, result = self.inner.step(terms, t0, t1, y0, args, solver_state, made_jump)
        t = jnp.broadcast_to(-t0, y0.shape[:1])  # the negated clock of a T -> eps solve
        score = api.bind_score(self.score_fn, self.cond)

        def sq_error(y):  # per-row squared observation error of the Tweedie estimate, summed
            r = self.obs.mask * (self.obs.x_obs - self.obs.to_obs(tweedie_x0(self.sde, y, t, score(y, t))))
            per_row = jnp.sum(jnp.square(r).reshape(r.shape[0], -1), axis=-1)
            return jnp.sum(per_row), per_row

        grad, per_row = jax.grad(sq_error, has_aux=True)(y0)
        norm = jnp.sqrt(jnp.maximum(per_row, 1e-12))
        y1 = y1 - self.zeta * grad / batch_broadcast(norm, grad)
        return y1, None, dict(y0=y0, y1=y1), state, result


class _DPSHook(api.SolveHook):
    obs: _Observation
    score_fn: Any
    cond: Any
    zeta: float = eqx.field(static=True)

    def wrap(self, solver, sde):
        return _DPSSolver(solver, sde, self.obs, self.score_fn, self.cond, self.zeta)


def _observation(x_obs, mask, basis) -> _Observation:
    x_obs = jnp.asarray(x_obs, jnp.float32)
    if x_obs.ndim < 2:
        raise ValueError(f"x_obs must have shape (B, *dims), got {x_obs.shape}")
    mask = jnp.asarray(mask, jnp.float32)
    try:
        jnp.broadcast_shapes(mask.shape, x_obs.shape)
    except ValueError:
        raise ValueError(f"mask of shape {mask.shape} does not broadcast to x_obs of shape {x_obs.shape}") from None
    m = np.asarray(mask)
    if not np.all((m == 0) | (m == 1)):
        raise ValueError("mask must hold 0 (unobserved) and 1 (observed) only")
    if basis is not None:
        basis = jnp.asarray(basis, jnp.float32)
        c = x_obs.shape[-1]
        if basis.shape != (c, c) or not np.allclose(np.asarray(basis) @ np.asarray(basis).T, np.eye(c), atol=1e-5):
            raise ValueError(f"basis must be an orthonormal ({c}, {c}) matrix acting on the last axis")
        x_obs = x_obs @ basis
    return _Observation(x_obs, jnp.broadcast_to(mask, x_obs.shape), basis)


def repaint_schedule(steps: int, jump_length: int, jump_n_sample: int) -> np.ndarray:
    """RePaint's walk over grid positions 0 (t = T) ... ``steps`` (t = eps): ``(L + 1,)`` ints, each move
    one position down (a reverse step) or up (forward noise). After every ``jump_length`` reverse steps
    (except in the last ``jump_length``), go up ``jump_length`` and come down again, ``jump_n_sample - 1``
    times."""
    if min(steps, jump_length, jump_n_sample) < 1:
        raise ValueError(f"steps, jump_length and jump_n_sample must be >= 1, got {steps}, {jump_length}, "
                         f"{jump_n_sample}")
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
    x = sde.prior_sampling(k_prior, obs.x_obs.shape)
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
    x = obs.keep(x, obs.x_obs)
    return x, jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)


def inpaint(sde: SDE, score_fn: Callable, key: jax.Array, x_obs, mask, method: str = "replace",
            sampler: str | None = None, steps: int = 100, *, cond=None, basis=None, eps: float | None = None,
            jump_length: int = 10, jump_n_sample: int = 10, eta: float = 1.0, zeta: float = 1.0, **options):
    """Sample the unobserved coordinates of ``x_obs`` given the observed ones (``mask`` 1 where observed).

    Args:
      sde, score_fn: the model (``score_fn(x, t)``, or ``score_fn(x, t, cond)`` with ``cond``).
      key: PRNG key; row i depends only on (key, i) (tile ``x_obs`` for several samples of one image).
      x_obs: ``(B, *dims)`` observations (unobserved entries are ignored); mask: broadcastable to x_obs.
      method: ``"replace"`` | ``"repaint"`` | ``"dps"`` (module docstring).
      sampler, steps: the fixed-step sampler and its steps for ``replace`` / ``dps`` (default
        ``ancestral``); ``repaint`` takes ``steps`` reverse steps of DDIM with ``eta`` (1: ancestral).
      basis: ``(C, C)`` orthonormal; the mask applies to ``x @ basis`` (``replace`` and ``repaint``).
      jump_length, jump_n_sample: RePaint's resampling; zeta: DPS's step size.
      **options: the sampler's options.

    Returns:
      ``(x, info)``: ``x`` of x_obs's shape with the observed coordinates equal to x_obs (``replace``,
      ``repaint``); ``info["nfe"]`` exact network calls per sample, ``info["ok"]``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    obs = _observation(x_obs, mask, basis)
    shape = obs.x_obs.shape
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method == "dps" and basis is not None:
        raise ValueError("basis applies to 'replace' and 'repaint'")
    if method == "repaint":
        if sampler not in (None, "ancestral", "ddim") or options:
            raise ValueError("repaint takes its own DDIM steps (eta=1: ancestral); sampler and options do not apply")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1], got {eta}")
        eps = api.default_eps(sde) if eps is None else float(eps)
        walk = repaint_schedule(int(steps), int(jump_length), int(jump_n_sample))
        x, ok = _repaint(sde, score_fn, obs, key, walk, cond, int(steps), eps, float(eta))
        return x, {"nfe": int(np.sum(np.diff(walk) > 0)), "ok": ok, "walk": walk}
    sampler = sampler or "ancestral"
    if registry.get(sampler).is_adaptive:
        raise ValueError(f"{method} needs a fixed-step sampler, got the adaptive {sampler!r}")
    if method == "replace":
        hook = _ReplaceHook(obs, sde)
    else:
        hook = _DPSHook(obs, score_fn, cond, float(zeta), nfe_per_step=1)
    return api.run(sde, score_fn, key, shape, sampler, int(steps), eps=eps, cond=cond, options=options, hook=hook)
