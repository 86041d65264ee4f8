"""``sample()``: every registered sampler behind one call, solved by ``diffrax.diffeqsolve`` from T down to eps.

Two ways of running a solve (``registry.Sampler`` says which):

* fixed steps on the whole batch (state ``(B, *dims)``, one score call per stage for all rows, a
  ``StepTo`` grid): diffrax's own solvers on the probability-flow ODE, ``Euler`` on the reverse SDE with
  a per-sample Brownian path, and our solvers (``stochastic.py``, ``exponential.py``, ``edm.py``) on the
  score itself;
* adaptive steps per sample (``jax.vmap`` over rows, so a row's steps never depend on its batch-mates;
  the network still sees the batch, since vmap batches its calls).

``info["nfe"]`` counts score evaluations per sample path: fixed-step samplers know it in closed form,
adaptive ones count attempted steps (``step_control.CountingPIDController``). An optional Tweedie
denoising step adds one.

Failures are reported, not hidden: the score function's output shape is checked once at trace time
(a ValueError naming both shapes), and ``info["ok"]`` ``(B,)`` says which samples are finite and, for
adaptive samplers, whose solve succeeded (a row whose score is NaN ends its solve after
``step_control.MAX_NONFINITE_TRIALS`` non-finite trial steps in a row and is marked, not raised on; the
other rows' solves are untouched). Called outside ``jax.jit``, :func:`sample` also
warns in one line when any sample is not ok.

Conditioning: with ``cond`` (a pytree whose leaves have leading dimension B) the score is called as
``score_fn(x, t, cond)`` with the rows of ``cond`` that belong to the rows of ``x``; samplers never look
inside a condition.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

from sde_lib.checks import integer, real
from sde_lib.parameterization import tweedie_x0
from sde_lib.sampling import registry
from sde_lib.sampling.grids import check_time_grid, resolve_time_grid
from sde_lib.sampling.noise import PerSampleBrownianPath
from sde_lib.sdes import SDE, per_sample_keys

ScoreFn = Callable[..., jax.Array]


def default_eps(sde: SDE) -> float:
    """The SDE's default end time (``SDE.default_eps``): score_sde's 1e-3 for VP-type SDEs, 1e-5 for VE."""
    return sde.default_eps


def bind_score(score_fn: ScoreFn, cond=None) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``score(x, t)`` with ``t`` a scalar or ``(B,)``: ``score_fn`` called with ``cond`` when one is given.

    Used inside the jitted solves (a closure there costs nothing; ``score_fn``'s arrays are already
    traced). Each call checks that the score has x's shape and raises one ValueError naming both shapes
    otherwise (a wrong shape would be broadcast silently). Shapes are static, so the check runs while
    the solve is traced, once per compilation: a cached call traces nothing and checks nothing.
    """

    def score(x, t):
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        try:
            out = score_fn(x, t) if cond is None else score_fn(x, t, cond)
        except (TypeError, ValueError) as err:
            raise ValueError(f"score_fn cannot be called on x of shape {tuple(x.shape)}: "
                             f"{str(err).splitlines()[0]}") from None
        if not hasattr(out, "shape") or tuple(out.shape) != tuple(x.shape):
            got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
            raise ValueError(f"score_fn returned {got} for x of shape {tuple(x.shape)}; it must return the score, "
                             "of x's shape")
        return out

    return score


def _check_cond(cond, batch: int):
    for leaf in jax.tree.leaves(cond):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != batch:
            raise ValueError(f"cond: every leaf needs leading dimension B={batch}, got shape {jnp.shape(leaf)}")


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    key: jax.Array,
    shape: tuple[int, ...],
    sampler: str = "ode_tsit5",
    steps: int = 50,
    x_init: jax.Array | None = None,
    eps: float | None = None,
    denoise: bool = False,
    cond: Any = None,
    **options,
) -> tuple[jax.Array, dict]:
    """Draw samples by integrating the reverse-time SDE or probability-flow ODE from T to ``eps``.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x (B, *dims), t (B,)) -> (B, *dims)``, or ``score_fn(x, t, cond)`` when
        ``cond`` is given; may be a pytree callable (an ``equinox.Module`` or ``jax.tree_util.Partial``
        holding parameters): its arrays are traced, not baked into the compiled sampler, so another
        parameter set of the same shapes reuses the compilation.
      key: PRNG key; sample i depends only on (key, i).
      shape: ``(B, *dims)``.
      sampler: one of :func:`available_samplers`.
      steps: number of solver steps (time intervals) for fixed-step samplers; ignored by adaptive ones.
      x_init: optional start at t = T of shape ``shape`` instead of a prior draw.
      eps: end time; None = 1e-3 for VP/sub-VP, 1e-5 for VE.
      denoise: finish with the Tweedie step x0 = (x + sigma_eps^2 s) / alpha_eps (one more evaluation).
      cond: optional condition, a pytree whose leaves have leading dimension B (see the module docstring).
      **options: the sampler's options (``registry.get(sampler).all_options``): fixed-step samplers take
        ``time_grid`` (uniform | quadratic | logsnr | edm), ``rho``, ``save_trajectory`` (True or a
        ``diffrax.SaveAt``), ``progress``; adaptive ones ``rtol``, ``atol``, ``max_steps``, ``dt0``,
        ``save_trajectory``; plus each sampler's own (e.g. ddim ``eta``, pc ``snr``/``n_steps``).

    Returns:
      ``(x, info)``: samples of ``shape`` at t = eps (or denoised); ``info["nfe"]`` (int, or ``(B,)``
      array for adaptive samplers: score evaluations, i.e. network calls, per sample path),
      ``info["ok"]`` ``(B,)`` bool (finite, and the adaptive solve succeeded), ``info["ts"]`` (the time
      grid, fixed-step samplers), and ``info["trajectory"] = (ts, ys)`` when asked.
    """
    return run(sde, score_fn, key, shape, sampler, steps, x_init=x_init, eps=eps, denoise=denoise, cond=cond,
               options=options)


class SolveHook(eqx.Module):
    """What a method built on the fixed-step samplers adds to their solve (``guidance.inpaint``): a pytree,
    so its arrays (observations, masks) are traced by the compiled sampler.

    ``start(x, row_keys)`` adjusts the prior draw; ``wrap(solver, sde)`` returns a diffrax solver that
    wraps the sampler's; ``finish(x)`` adjusts the result; ``nfe_per_step`` extra score evaluations.
    """

    nfe_per_step: int = eqx.field(static=True, default=0, kw_only=True)

    def start(self, x, row_keys):
        return x

    def wrap(self, solver, sde):
        return solver

    def finish(self, x):
        return x


def run(sde: SDE, score_fn: ScoreFn, key: jax.Array, shape: tuple[int, ...], sampler: str, steps: int, *,
        x_init=None, eps=None, denoise: bool = False, cond=None, options: dict | None = None,
        hook: SolveHook | None = None) -> tuple[jax.Array, dict]:
    """:func:`sample` with an optional :class:`SolveHook` (fixed-step samplers only)."""
    spec = registry.get(sampler)
    options = options or {}
    if hook is not None and spec.is_adaptive:
        raise ValueError(f"sampler {sampler!r} is adaptive; this method needs a fixed-step sampler")
    if not isinstance(shape, (tuple, list)) or len(shape) < 2:
        raise ValueError(f"shape must be a tuple (B, *dims), got {shape!r}")
    shape = tuple(integer(s, "shape", minimum=1) for s in shape)
    if x_init is not None and tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
    steps = integer(steps, "steps", minimum=1)
    if not isinstance(denoise, (bool, np.bool_)):
        raise TypeError(f"denoise must be True or False, got {denoise!r}")
    eps = default_eps(sde) if eps is None else real(eps, "eps")
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    if cond is not None:
        _check_cond(cond, shape[0])
    opts = spec.parse_options(options)
    if not spec.is_adaptive:
        check_time_grid(sde, opts["time_grid"], steps, eps)
    x, nfe, ok, ts, traj = _sample_jit(sde, score_fn, key, x_init, shape, sampler, steps, eps, bool(denoise),
                                       opts, cond, hook)
    info = {"nfe": nfe, "ok": ok, "ts": ts}
    if traj is not None:
        info["trajectory"] = traj
    if not isinstance(ok, jax.core.Tracer) and not np.asarray(ok).all():  # a readback, no further dispatch
        bad = int(np.sum(~np.asarray(ok)))
        warnings.warn(f"sample(): {bad} of {shape[0]} samples of {sampler!r} are not finite or their solve failed "
                      f"(a NaN/Inf score or input, or an adaptive solve reaching max_steps); see info['ok']",
                      stacklevel=3)
    return x, info


@eqx.filter_jit
def _sample_jit(sde, score_fn, key, x_init, shape, name, steps, eps, denoise, o, cond, hook):
    spec = registry.get(name)
    k_prior, k_noise = jax.random.split(key)
    x = sde.prior_sampling(k_prior, shape) if x_init is None else jnp.asarray(x_init)
    row_keys = per_sample_keys(k_noise, shape[0])
    if spec.is_adaptive:
        x, nfe, traj, solved = spec.adaptive(sde, score_fn, x, row_keys, cond, eps, o)
        ts = None
    else:
        hook = SolveHook() if hook is None else hook
        ts = resolve_time_grid(sde, o["time_grid"], steps, eps, o["rho"])
        x = hook.start(x, row_keys)
        x, nfe, traj = _run_fixed(spec, sde, bind_score(score_fn, cond), x, row_keys, steps, ts, o, hook)
        x = hook.finish(x)
        solved = jnp.ones(shape[:1], bool)
    if denoise:
        t = jnp.full(shape[:1], eps, x.dtype)
        x = tweedie_x0(sde, x, t, bind_score(score_fn, cond)(x, t))
        nfe = nfe + 1
    ok = solved & jnp.all(jnp.isfinite(x.reshape(shape[0], -1)), axis=1)
    return x, nfe, ok, ts, traj


def saveat(save_trajectory) -> diffrax.SaveAt:
    """The ``diffrax.SaveAt`` of the ``save_trajectory`` option (the end point only when False)."""
    if isinstance(save_trajectory, diffrax.SaveAt):
        return save_trajectory
    return diffrax.SaveAt(t0=True, steps=True) if save_trajectory else diffrax.SaveAt(t1=True)


def _run_fixed(spec: registry.Sampler, sde, score, x, row_keys, steps, ts, o, hook):
    """Fixed steps on the whole batch through a ``StepTo`` grid."""
    if spec.terms == "probability_flow":
        terms = diffrax.ODETerm(lambda t, y, args: sde.reverse_drift(y, t, score(y, t)))
    elif spec.terms == "reverse_sde":
        drift = diffrax.ODETerm(lambda t, y, args: sde.reverse_drift(y, t, score(y, t), probability_flow=False))
        noise = diffrax.ControlTerm(
            lambda t, y, args: lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion_coef(t), y.dtype)),
            PerSampleBrownianPath(shape=x.shape, row_keys=row_keys),
        )
        terms = diffrax.MultiTerm(drift, noise)
    else:
        terms = diffrax.ODETerm(lambda t, y, args: score(y, t))
    sol = diffrax.diffeqsolve(
        terms, hook.wrap(spec.solver(sde, steps, o), sde), t0=sde.T, t1=ts[-1], dt0=None, y0=x, args=row_keys,
        stepsize_controller=diffrax.StepTo(ts), saveat=saveat(o["save_trajectory"]), max_steps=steps,
        progress_meter=diffrax.TqdmProgressMeter() if o["progress"] else diffrax.NoProgressMeter(),
    )
    traj = (sol.ts, sol.ys) if o["save_trajectory"] else None
    return sol.ys[-1], spec.startup_nfe + (spec.step_nfe(o) + hook.nfe_per_step) * steps, traj


def per_row(fn, x, row_keys, cond):
    """``jax.vmap`` of ``fn(y0, key, cond_row)`` over rows; ``cond_row`` keeps a leading dimension of 1."""
    if cond is None:
        return jax.vmap(lambda y0, k: fn(y0, k, None))(x, row_keys)
    return jax.vmap(lambda y0, k, c: fn(y0, k, jax.tree.map(lambda a: a[None], c)))(x, row_keys, cond)
