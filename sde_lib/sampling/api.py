"""``sample()``: every sampler behind one call, solved by ``diffrax.diffeqsolve`` from T down to eps.

Three ways of running a solve:

* fixed steps on the whole batch (state ``(B, *dims)``, one score call per stage for all rows, a
  ``StepTo`` grid): diffrax's own ``Euler``/``Heun``/``Midpoint``/``Tsit5`` on the probability-flow ODE,
  ``Euler`` on the reverse SDE with a per-sample Brownian path, and our solvers (``stochastic.py``,
  ``exponential.py``, ``edm.py``) for the samplers diffrax does not have;
* adaptive steps per sample (``jax.vmap`` over rows, so a row's steps never depend on its batch-mates):
  ``Tsit5``/``Dopri5`` with a ``PIDController`` on the ODE, ``ShARK``/``SRA1`` with a
  ``VirtualBrownianTree`` on the reverse SDE. The network still sees the batch: vmap batches its calls.

``info["nfe"]`` counts score evaluations per sample path: fixed-step samplers know it in closed form,
adaptive ones read diffrax's step statistics. An optional Tweedie denoising step adds one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax

from sde_lib.sampling.edm import EDMHeun
from sde_lib.sampling.exponential import DPMSolver, DPMSolverPPMultistep, UniPC
from sde_lib.sampling.grids import TIME_GRIDS, time_grid
from sde_lib.sampling.noise import PerSampleBrownianPath
from sde_lib.sampling.stochastic import DDIM, PredictorCorrector, ReverseDiffusion
from sde_lib.sdes import SDE, batch_broadcast, per_sample_keys
from sde_lib.step_control import CountingPIDController

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How a sampler runs: ``kind`` picks the runner, ``options`` are its extra keyword arguments."""

    kind: str  # "ode" | "sde" | "custom" | "ode_adaptive" | "sde_adaptive"
    grid: str | None  # default time grid (None for adaptive samplers)
    family: str  # "sde", "ode", "exponential" or "edm": for listings and ablations
    options: tuple[tuple[str, Any], ...] = ()


_SPECS: dict[str, _Spec] = {
    "euler_maruyama": _Spec("sde", "uniform", "sde"),
    "reverse_diffusion": _Spec("custom", "uniform", "sde"),
    "ancestral": _Spec("custom", "uniform", "sde"),
    "pc": _Spec("custom", "uniform", "sde", (("predictor", "reverse_diffusion"), ("snr", 0.16), ("n_steps", 1))),
    "sde_adaptive": _Spec("sde_adaptive", None, "sde", (("solver", "shark"), ("bm_tol", None))),
    "ode_euler": _Spec("ode", "uniform", "ode"),
    "ode_heun": _Spec("ode", "uniform", "ode"),
    "ode_midpoint": _Spec("ode", "uniform", "ode"),
    "ode_tsit5": _Spec("ode", "uniform", "ode"),
    "ode_adaptive": _Spec("ode_adaptive", None, "ode", (("solver", "dopri5"),)),
    "ddim": _Spec("custom", "logsnr", "exponential", (("eta", 0.0),)),
    "dpm_solver_2": _Spec("custom", "logsnr", "exponential"),
    "dpm_solver_3": _Spec("custom", "logsnr", "exponential"),
    "dpm_solver_pp_2m": _Spec("custom", "logsnr", "exponential", (("lower_order_final", True),)),
    "dpm_solver_pp_3m": _Spec("custom", "logsnr", "exponential", (("lower_order_final", True),)),
    "unipc": _Spec("custom", "logsnr", "exponential", (("order", 3), ("lower_order_final", True))),
    "edm_heun": _Spec(
        "custom", "edm", "edm", (("S_churn", 0.0), ("S_tmin", 0.0), ("S_tmax", float("inf")), ("S_noise", 1.0))
    ),
}
_ODE_SOLVERS = {"ode_euler": diffrax.Euler, "ode_heun": diffrax.Heun, "ode_midpoint": diffrax.Midpoint,
                "ode_tsit5": diffrax.Tsit5}
_ADAPTIVE_ODE = {"tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5}
_ADAPTIVE_SDE = {"shark": diffrax.ShARK, "sra1": diffrax.SRA1}
# Score evaluations per fixed step: (per step, once at the start). Tsit5 is first-same-as-last.
_ODE_NFE = {"ode_euler": (1, 0), "ode_heun": (2, 0), "ode_midpoint": (2, 0), "ode_tsit5": (6, 1)}
_COMMON = {"time_grid", "rho", "rtol", "atol", "max_steps", "save_trajectory", "progress", "dt0"}


def available_samplers() -> list[str]:
    """Names accepted by :func:`sample`."""
    return list(_SPECS)


def sampler_family(name: str) -> str:
    """``"sde"``, ``"ode"``, ``"exponential"`` or ``"edm"``; deterministic unless ``"sde"``."""
    return _spec(name).family


def default_eps(sde: SDE) -> float:
    """score_sde's end times: 1e-3 for VP-type SDEs, 1e-5 for VE."""
    return 1e-3 if sde.is_vp_type else 1e-5


def _spec(name: str) -> _Spec:
    if name not in _SPECS:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(_SPECS)}")
    return _SPECS[name]


def nfe_per_step(name: str, **options) -> int:
    """Score evaluations per step of a fixed-step sampler (excluding a start-up evaluation and denoising)."""
    kind = _spec(name).kind
    if kind == "ode":
        return _ODE_NFE[name][0]
    if kind != "custom" and kind != "sde":
        raise ValueError(f"sampler {name!r} is adaptive: its NFE per step varies")
    return {"pc": 1 + int(options.get("n_steps", 1)), "dpm_solver_2": 2, "dpm_solver_3": 3, "edm_heun": 2}.get(name, 1)


def min_nfe(name: str, **options) -> int:
    """Score evaluations of one step of a fixed-step sampler, start-up evaluation included."""
    return _ODE_NFE.get(name, (0, 0))[1] + nfe_per_step(name, **options)


def steps_for_nfe(name: str, nfe: int, **options) -> int:
    """The largest number of steps whose total NFE (start-up included, no denoising) is <= ``nfe``."""
    if int(nfe) < min_nfe(name, **options):
        raise ValueError(f"an NFE budget of {nfe} is below the {min_nfe(name, **options)} of one {name!r} step")
    return (int(nfe) - _ODE_NFE.get(name, (0, 0))[1]) // nfe_per_step(name, **options)


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
    **options,
) -> tuple[jax.Array, dict]:
    """Draw samples by integrating the reverse-time SDE or probability-flow ODE from T to ``eps``.

    Args:
      sde: the forward SDE.
      score_fn: ``score_fn(x (B, *dims), t (B,)) -> (B, *dims)``; may be a pytree callable (e.g. an
        ``equinox.Module`` or ``jax.tree_util.Partial`` holding parameters): its arrays are traced, not
        baked into the compiled sampler.
      key: PRNG key; sample i depends only on (key, i).
      shape: ``(B, *dims)``.
      sampler: one of :func:`available_samplers`.
      steps: number of solver steps (time intervals) for fixed-step samplers; ignored by adaptive ones.
      x_init: optional start at t = T of shape ``shape`` instead of a prior draw.
      eps: end time; None = 1e-3 for VP/sub-VP, 1e-5 for VE.
      denoise: finish with the Tweedie step x0 = (x + sigma_eps^2 s) / alpha_eps (one more evaluation).
      **options: ``time_grid`` (uniform | quadratic | logsnr | edm), ``rho`` (edm grid, 7), ``rtol`` /
        ``atol`` (adaptive samplers, 1e-5 / 1e-5), ``max_steps`` (adaptive, 4096), ``dt0`` (adaptive first step),
        ``save_trajectory`` (True for every step, or a ``diffrax.SaveAt``), ``progress`` (tqdm bar), and the
        sampler's own: pc ``predictor``/``snr``/``n_steps``; ddim ``eta``; dpm_solver_pp_* and unipc
        ``lower_order_final``, unipc ``order``; edm_heun ``S_churn``/``S_tmin``/``S_tmax``/``S_noise``;
        ode_adaptive ``solver`` (tsit5 | dopri5); sde_adaptive ``solver`` (shark | sra1), ``bm_tol``.

    Returns:
      ``(x, info)``: samples of ``shape`` at t = eps (or denoised); ``info["nfe"]`` (int, or ``(B,)``
      array for adaptive samplers), ``info["ts"]`` (the time grid, fixed-step samplers), and
      ``info["trajectory"] = (ts, ys)`` when asked.
    """
    spec = _spec(sampler)
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must be (B, *dims) with positive sizes, got {shape}")
    if x_init is not None and tuple(x_init.shape) != shape:
        raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {shape}")
    if spec.grid is not None and int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    eps = default_eps(sde) if eps is None else float(eps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    opts = _parse_options(sampler, spec, options)
    x, nfe, ts, traj = _sample_jit(sde, score_fn, key, x_init, shape, sampler, int(steps), eps, bool(denoise), opts)
    info = {"nfe": nfe, "ts": ts}
    if traj is not None:
        info["trajectory"] = traj
    return x, info


def _parse_options(name: str, spec: _Spec, options: dict) -> tuple:
    allowed = dict(spec.options)
    unknown = set(options) - _COMMON - set(allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {sorted(unknown)} for sampler {name!r}; it takes {sorted(_COMMON | set(allowed))}"
        )
    merged = {"time_grid": spec.grid, "rho": 7.0, "rtol": 1e-5, "atol": 1e-5, "max_steps": 4096,
              "save_trajectory": False, "progress": False, "dt0": None, **allowed, **options}
    if spec.grid is not None and merged["time_grid"] not in TIME_GRIDS:
        raise ValueError(f"time_grid must be one of {TIME_GRIDS}, got {merged['time_grid']!r}")
    checks = {
        "predictor": lambda v: v in ("reverse_diffusion", "euler_maruyama"),
        "snr": lambda v: v > 0,
        "n_steps": lambda v: int(v) == v and v >= 0,
        "eta": lambda v: 0.0 <= v <= 1.0,
        "order": lambda v: v in (1, 2, 3),
        "rtol": lambda v: v > 0,
        "atol": lambda v: v > 0,
        "max_steps": lambda v: int(v) == v and v >= 1,
        "S_churn": lambda v: v >= 0,
        "S_noise": lambda v: v >= 0,
        "solver": lambda v: v in (_ADAPTIVE_ODE if spec.kind == "ode_adaptive" else _ADAPTIVE_SDE),
    }
    for k, ok in checks.items():
        if k in merged and k in (set(allowed) | _COMMON) and not ok(merged[k]):
            raise ValueError(f"invalid value {merged[k]!r} for option {k!r} of sampler {name!r}")
    return tuple(sorted((k, v) for k, v in merged.items() if k != "save_trajectory")) + (
        ("save_trajectory", merged["save_trajectory"]),
    )


@eqx.filter_jit
def _sample_jit(sde, score_fn, key, x_init, shape, name, steps, eps, denoise, opts):
    o = dict(opts)
    k_prior, k_noise = jax.random.split(key)
    x = sde.prior_sampling(k_prior, shape) if x_init is None else jnp.asarray(x_init)
    row_keys = per_sample_keys(k_noise, shape[0])
    spec = _SPECS[name]
    if spec.kind in ("ode_adaptive", "sde_adaptive"):
        x, nfe, traj = _run_adaptive(sde, score_fn, x, row_keys, name, eps, o)
        ts = None
    else:
        ts = time_grid(sde, o["time_grid"], steps, eps, o["rho"])
        x, nfe, traj = _run_fixed(sde, score_fn, x, row_keys, name, steps, ts, o)
    if denoise:
        t = jnp.full(shape[:1], eps, x.dtype)
        alpha, sigma = sde.marginal_coeffs(t)
        x = (x + batch_broadcast(sigma**2, x) * score_fn(x, t)) / batch_broadcast(alpha, x)
        nfe = nfe + 1
    return x, nfe, ts, traj


def _saveat(save_trajectory) -> diffrax.SaveAt:
    if isinstance(save_trajectory, diffrax.SaveAt):
        return save_trajectory
    return diffrax.SaveAt(t0=True, steps=True) if save_trajectory else diffrax.SaveAt(t1=True)


def _progress(o):
    return diffrax.TqdmProgressMeter() if o["progress"] else diffrax.NoProgressMeter()


def _batch_score(score_fn, t, y):
    return score_fn(y, jnp.full(y.shape[:1], t, y.dtype))


def _run_fixed(sde, score_fn, x, row_keys, name, steps, ts, o):
    """Fixed steps on the whole batch through a ``StepTo`` grid."""
    spec = _SPECS[name]
    if spec.kind == "ode":
        rsde = sde.reverse(score_fn, probability_flow=True)
        terms = diffrax.ODETerm(lambda t, y, args: rsde.sde(y, jnp.full(y.shape[:1], t, y.dtype))[0])
        solver = _ODE_SOLVERS[name]()
        per_step, start = _ODE_NFE[name]
    elif spec.kind == "sde":
        rsde = sde.reverse(score_fn)
        drift = diffrax.ODETerm(lambda t, y, args: rsde.sde(y, jnp.full(y.shape[:1], t, y.dtype))[0])
        noise = diffrax.ControlTerm(
            lambda t, y, args: lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion_coef(t), y.dtype)),
            PerSampleBrownianPath(shape=x.shape, row_keys=row_keys),
        )
        terms = diffrax.MultiTerm(drift, noise)
        solver, per_step, start = diffrax.Euler(), 1, 0
    else:
        terms = diffrax.ODETerm(lambda t, y, args: _batch_score(score_fn, t, y))
        solver = _custom_solver(sde, name, steps, o)
        per_step, start = nfe_per_step(name, **o), 0
    sol = diffrax.diffeqsolve(
        terms, solver, t0=sde.T, t1=ts[-1], dt0=None, y0=x, args=row_keys,
        stepsize_controller=diffrax.StepTo(ts), saveat=_saveat(o["save_trajectory"]), max_steps=steps,
        progress_meter=_progress(o),
    )
    traj = (sol.ts, sol.ys) if o["save_trajectory"] else None
    return sol.ys[-1], start + per_step * steps, traj


def _custom_solver(sde, name, steps, o):
    if name == "reverse_diffusion":
        return ReverseDiffusion(sde)
    if name == "ancestral":
        return DDIM(sde, eta=1.0)
    if name == "ddim":
        return DDIM(sde, eta=float(o["eta"]))
    if name == "pc":
        return PredictorCorrector(sde, predictor=o["predictor"], snr=float(o["snr"]), n_steps=int(o["n_steps"]))
    if name in ("dpm_solver_2", "dpm_solver_3"):
        return DPMSolver(sde, solver_order=int(name[-1]))
    if name in ("dpm_solver_pp_2m", "dpm_solver_pp_3m"):
        return DPMSolverPPMultistep(sde, solver_order=int(name[-2]), n_steps=steps,
                                    lower_order_final=bool(o["lower_order_final"]))
    if name == "unipc":
        return UniPC(sde, solver_order=int(o["order"]), n_steps=steps, lower_order_final=bool(o["lower_order_final"]))
    return EDMHeun(sde, n_steps=steps, s_churn=float(o["S_churn"]), s_tmin=float(o["S_tmin"]),
                   s_tmax=float(o["S_tmax"]), s_noise=float(o["S_noise"]))


def _run_adaptive(sde, score_fn, x, row_keys, name, eps, o):
    """Error-controlled steps, each sample its own solve (vmapped)."""
    pid = diffrax.PIDController(rtol=o["rtol"], atol=o["atol"])
    saveat = eqx.tree_at(lambda s: s.controller_state, _saveat(o["save_trajectory"]), True)
    c = 0.5 if name == "ode_adaptive" else 1.0
    span = sde.T - eps
    # An explicit first step: diffrax's automatic choice would spend evaluations nobody counts.
    dt0 = span / 100 if o["dt0"] is None else abs(float(o["dt0"]))

    def one(y0, key):
        def drift(t, y):
            score = score_fn(y[None], jnp.full((1,), t, y.dtype))[0]
            return sde.drift_coef(t) * y - c * sde.diffusion_coef(t) ** 2 * score

        if name == "ode_adaptive":
            solver = _ADAPTIVE_ODE[o["solver"]]()
            controller = CountingPIDController(pid, len(solver.tableau.c) + 1, bool(solver.tableau.fsal))
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(lambda t, y, args: drift(t, y)), solver, t0=sde.T, t1=eps, dt0=-dt0, y0=y0,
                stepsize_controller=controller, saveat=saveat, max_steps=int(o["max_steps"]),
            )
            return sol.ys[-1], sol.controller_state[1], (sol.ts, sol.ys)
        # diffrax 0.7's stochastic Runge-Kutta solvers diverge when run backwards in time (t0 > t1), so
        # the reverse SDE is written forward in s = T - t:  dx = -drift(T - s, x) ds + g(T - s) dB_s.
        tol = o["bm_tol"] if o["bm_tol"] is not None else span / 2**14
        bm = diffrax.VirtualBrownianTree(0.0, span, tol=tol, shape=y0.shape, key=key,
                                         levy_area=diffrax.SpaceTimeLevyArea)
        noise = diffrax.ControlTerm(
            lambda s, y, args: lineax.DiagonalLinearOperator(jnp.full(y.shape, sde.diffusion_coef(sde.T - s), y.dtype)),
            bm,
        )
        terms = diffrax.MultiTerm(diffrax.ODETerm(lambda s, y, args: -drift(sde.T - s, y)), noise)
        # ShARK and SRA1 evaluate the drift twice per attempted step and carry nothing over.
        controller = CountingPIDController(pid, 2, False)
        sol = diffrax.diffeqsolve(
            terms, _ADAPTIVE_SDE[o["solver"]](), t0=0.0, t1=span, dt0=dt0, y0=y0, stepsize_controller=controller,
            saveat=saveat, max_steps=int(o["max_steps"]),
        )
        return sol.ys[-1], sol.controller_state[1], (sde.T - sol.ts, sol.ys)

    ys, nfe, traj = jax.vmap(one)(x, row_keys)
    return ys, nfe, (traj if o["save_trajectory"] else None)
