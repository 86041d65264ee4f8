"""Time grids calibrated on the model itself (in the spirit of LD3, Tong et al. 2024, arXiv 2405.15506).

A fixed-step sampler with ``steps`` steps is a differentiable function of its grid t_0 = T > t_1 > ... >
t_steps = eps. For ``n`` prior draws x_T^(k) and a tight probability-flow ODE solve of each (the teacher,
``ode_adaptive``), the calibrated grid minimises an objective of the endpoint distances
d_k = || x_sampler(ts; x_T^(k)) - x_teacher(x_T^(k)) ||: by default their geometric mean exp(mean_k log d_k),
which weighs the typical draw rather than the few whose path changes mode (the median error is what it
aims at), or their mean (which the rare mode changes dominate: lower RMS, higher median error).

The grid is parametrised without constraints: the steps' shares of the half log-SNR range,
lambda_i = lambda_T + (lambda_eps - lambda_T) sum_{j < i} softmax(theta)_j, which keeps every grid valid
(strictly decreasing, both ends pinned) whatever theta is. Adam runs on theta from a few starting grids
(the sampler's default, logSNR, quadratic, EDM): gradients flow through the sampler's diffrax solve
(reverse mode through the score), each start keeps the lowest objective it saw, and the best start wins.
Per iteration the cost is one batched solve and its backward pass: ``nfe`` evaluations and ``nfe``
vector-Jacobian products of the score per draw.

The draws come from ``key`` alone: calibrate with a key other than the measured draws' (the grid is then
measured out of sample), and the same key reproduces the same grid.
"""

from __future__ import annotations

import dataclasses
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sde_lib.sampling import api, registry
from sde_lib.sampling.grids import check_time_grid, resolve_time_grid
from sde_lib.sdes import SDE, per_sample_keys


OBJECTIVES = ("mean", "geometric")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """Calibration draws and their tight probability-flow ODE solves, shareable by several calibrations.

    Attributes: ``key`` and ``n`` that drew them; ``x_init`` ``(n, *dims)`` at t = T; ``x`` ``(n, *dims)`` at
    eps; ``row_keys`` ``(n, 2)`` per-row noise keys; ``eps``; ``nfe`` the mean evaluations per draw.
    """

    key: jax.Array
    n: int
    x_init: jax.Array
    x: jax.Array
    row_keys: jax.Array
    eps: float
    nfe: float


def teacher_solve(sde: SDE, score_fn, key: jax.Array, n: int = 256, *, dims: tuple[int, ...],
                  eps: float | None = None, tol: float | None = None) -> Teacher:
    """Draw ``n`` starts x_T ``(n, *dims)`` from ``key`` and solve each by ``ode_adaptive`` at rtol = atol = ``tol``
    (default 1e-8 with float64 enabled, 1e-5 otherwise) down to ``eps``."""
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    eps = api.default_eps(sde) if eps is None else float(eps)
    dtype = jnp.result_type(float)
    k_init, k_noise = jax.random.split(key)
    shape = (int(n), *dims)
    x_init = sde.prior_sampling(k_init, shape).astype(dtype)
    tol = tol if tol is not None else (1e-8 if dtype == jnp.float64 else 1e-5)
    x, info = api.sample(sde, score_fn, k_noise, shape, "ode_adaptive", x_init=x_init, eps=eps, rtol=tol, atol=tol,
                         max_steps=1 << 16)
    return Teacher(key, int(n), x_init, x, per_sample_keys(k_noise, shape[0]), eps,
                   float(np.mean(np.asarray(info["nfe"]))))


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A calibrated grid and what it cost.

    Attributes:
      ts: ``(steps + 1,)`` float64 times from T to eps (pass as ``time_grid=ts``).
      sampler, nfe, steps: the sampler, its NFE budget and the steps that budget buys.
      init: the starting grid that led to ``ts`` (the best of the starts tried).
      loss_init, loss: the objective on the calibration draws on the default grid and on ``ts``.
      n: calibration draws; teacher_nfe: mean evaluations per draw of the teacher solve.
      iters: Adam iterations per start, each ``nfe`` evaluations and ``nfe`` VJPs per draw; starts: starts tried.
      seconds: wall time of the calibration (teacher solve included unless it was passed in).
    """

    ts: np.ndarray
    sampler: str
    nfe: int
    steps: int
    init: str
    loss_init: float
    loss: float
    n: int
    teacher_nfe: float
    iters: int
    starts: int
    seconds: float

    @property
    def total_nfe(self) -> float:
        """Score evaluations of the whole calibration (teacher plus forward passes; VJPs not included)."""
        return self.n * (self.teacher_nfe + self.starts * self.iters * self.nfe)


def calibrate(sde: SDE, score_fn, sampler: str, nfe: int, key: jax.Array, n: int = 256, *,
              dims: tuple[int, ...], eps: float | None = None, init=("logsnr", "quadratic", "edm"), iters: int = 200,
              lr: float = 0.05, objective: str = "geometric", teacher_tol: float | None = None,
              teacher: Teacher | None = None, **options) -> Calibration:
    """Calibrate the time grid of a deterministic fixed-step ``sampler`` at an NFE budget (module docstring).

    Args:
      sde, score_fn: the model, as for :func:`~sde_lib.sampling.sample` (``score_fn(x, t)``).
      sampler: a deterministic fixed-step sampler name; ``options`` are its options (e.g. ``prediction``).
      nfe: the budget; the grid has ``steps_for_nfe(sampler, nfe, **options) + 1`` times.
      key, n: draw the ``n`` calibration starts x_T ``(n, *dims)`` (:func:`teacher_solve`).
      dims: shape of one example.
      eps: end time (default :func:`~sde_lib.sampling.default_eps`).
      init: starting grids, each a name of ``TIME_GRIDS`` or an array; each start is optimised and the lowest
        objective wins (the sampler's default grid is always among them).
      iters, lr: Adam iterations per start and learning rate on theta.
      objective: the ``"geometric"`` mean of the per-draw distances (weighs the typical draw, not the few whose
        path changes mode: it aims at the median error), or their ``"mean"`` (lower RMS error, higher median).
      teacher_tol: rtol = atol of the teacher solve (:func:`teacher_solve`).
      teacher: a :func:`teacher_solve` of the same ``key``, ``n`` and ``eps``, to share one teacher between
        calibrations (its cost is then not in ``seconds``).

    Returns:
      A :class:`Calibration`; its ``ts`` passes ``check_time_grid``.
    """
    start = time.perf_counter()
    spec = registry.get(sampler)
    if spec.is_adaptive or spec.family == "sde" or spec.terms == "reverse_sde" or float(options.get("eta", 0.0)):
        raise ValueError(f"sampler {sampler!r}: grids are calibrated for deterministic fixed-step samplers only")
    if int(iters) < 1 or objective not in OBJECTIVES:
        raise ValueError(f"need iters >= 1 and objective in {OBJECTIVES}, got iters={iters}, objective={objective!r}")
    if "time_grid" in options:
        raise ValueError("pass the starting grids as init=, not time_grid=")
    opts = spec.parse_options(options)
    steps = registry.steps_for_nfe(sampler, nfe, **options)
    if teacher is None:
        teacher = teacher_solve(sde, score_fn, key, n, dims=dims, eps=eps, tol=teacher_tol)
    elif (teacher.n != int(n) or not np.array_equal(jax.random.key_data(teacher.key), jax.random.key_data(key))
          or eps is not None and float(eps) != teacher.eps):
        raise ValueError("teacher: it was drawn with another key, n or eps than this calibration's")
    eps = teacher.eps
    dtype = teacher.x_init.dtype
    inits = list(init) if isinstance(init, (list, tuple)) else [init]
    inits = [opts["time_grid"]] + [g for g in inits if not (isinstance(g, str) and g == opts["time_grid"])]
    lam_T, lam_eps = sde.half_log_snr(jnp.asarray(sde.T, dtype)), sde.half_log_snr(jnp.asarray(eps, dtype))
    runs = []  # (objective, theta, name of the start, objective at the start) per start
    for grid in inits:
        check_time_grid(sde, grid, steps, eps)
        ts0 = resolve_time_grid(sde, grid, steps, eps, opts["rho"]).astype(dtype)
        theta0 = jnp.log(jnp.diff(sde.half_log_snr(ts0)) / (lam_eps - lam_T))
        theta, loss, loss0 = _optimize(theta0, teacher.x_init, teacher.x, teacher.row_keys, score_fn, lam_T, lam_eps,
                                       sde=sde, sampler=sampler, steps=steps, opts=opts, eps=eps, iters=int(iters),
                                       lr=float(lr), objective=objective)
        runs.append((float(loss), theta, grid if isinstance(grid, str) else "array", float(loss0)))
    loss, theta, name, _ = min(runs, key=lambda r: r[0])
    ts = np.asarray(_grid(sde, theta, lam_T, lam_eps, eps), np.float64)
    return Calibration(ts, sampler, int(nfe), int(steps), name, runs[0][3], loss, teacher.n, teacher.nfe, int(iters),
                       len(inits), time.perf_counter() - start)


def optimize_grid(sde: SDE, score_fn, sampler: str, nfe: int, key: jax.Array, n: int = 256, **kwargs) -> np.ndarray:
    """The calibrated ``(steps + 1,)`` time grid of :func:`calibrate` (same arguments), for ``time_grid=``."""
    return calibrate(sde, score_fn, sampler, nfe, key, n, **kwargs).ts


@eqx.filter_jit
def _optimize(theta0, x_init, target, row_keys, score_fn, lam_T, lam_eps, *, sde, sampler, steps, opts, eps, iters, lr,
              objective):
    """Adam on theta from ``theta0``: (best theta, its objective, the objective at ``theta0``). Compiled once per
    (sampler, steps, options, shapes), so further starts and calibrations of the same kind reuse it."""
    spec = registry.get(sampler)
    n = x_init.shape[0]

    def loss(theta):
        x = _solve(spec, sde, api.bind_score(score_fn), x_init, row_keys, steps, _grid(sde, theta, lam_T, lam_eps, eps),
                   opts)
        d = jnp.linalg.norm((x - target).reshape(n, -1), axis=1)
        return jnp.mean(d) if objective == "mean" else jnp.exp(jnp.mean(jnp.log(d + 1e-12)))

    # A step whose loss is not finite (a degenerate grid) is skipped rather than poisoning Adam's moments.
    opt = optax.apply_if_finite(optax.adam(lr), max_consecutive_errors=iters)

    def body(carry, _):
        theta, state, best, best_loss = carry
        value, grad = jax.value_and_grad(loss)(theta)
        better = value < best_loss
        best, best_loss = jnp.where(better, theta, best), jnp.where(better, value, best_loss)
        updates, state = opt.update(grad, state, theta)
        return (optax.apply_updates(theta, updates), state, best, best_loss), value

    carry = (theta0, opt.init(theta0), theta0, jnp.asarray(jnp.inf, theta0.dtype))
    (_, _, best, best_loss), history = jax.lax.scan(body, carry, None, length=iters)
    return best, best_loss, history[0]


def _solve(spec, sde, score, x, row_keys, steps, ts, opts):
    """The sampler's fixed-step solve of the batch ``x`` on the traced grid ``ts`` (as ``sample`` runs it,
    without its host-side grid validation, so that ``ts`` can be differentiated)."""
    if spec.terms == "probability_flow":
        term = diffrax.ODETerm(lambda t, y, args: sde.reverse_drift(y, t, score(y, t)))
    else:
        term = diffrax.ODETerm(lambda t, y, args: score(y, t))
    sol = diffrax.diffeqsolve(term, spec.solver(sde, steps, opts), t0=sde.T, t1=ts[-1], dt0=None, y0=x, args=row_keys,
                              stepsize_controller=diffrax.StepTo(ts), saveat=diffrax.SaveAt(t1=True), max_steps=steps)
    return sol.ys[-1]


def _grid(sde: SDE, theta, lam_T, lam_eps, eps):
    """Times ``(len(theta) + 1,)`` whose half log-SNR steps are the shares softmax(theta) of the range."""
    lam = lam_T + (lam_eps - lam_T) * jnp.concatenate([jnp.zeros(1, theta.dtype), jnp.cumsum(jax.nn.softmax(theta))])
    return sde.t_from_half_log_snr(lam).at[0].set(sde.T).at[-1].set(eps)
