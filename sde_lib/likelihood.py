"""Exact log-likelihoods through the probability-flow ODE, and bits/dim of discrete data.

The probability-flow ODE of a linear SDE dx = f(t) x dt + g(t) dW,

    dx/dt = v(x, t) = f(t) x - 1/2 g(t)^2 s(x, t),          s = score_fn,

transports p_eps to p_T (Song et al. 2021, arXiv 2011.13456, app. D.2). By the instantaneous
change of variables d log p_t(x_t)/dt = -div v(x_t, t), so for x_eps = x

    log p_eps(x) = log p_T(x_T) + int_eps^T div v(x_t, t) dt,
    div v = D f(t) - 1/2 g(t)^2 tr(d s / d x).

We integrate the augmented state (x, delta) with d delta/dt = div v from eps to T in one diffrax solve
over the batch: one shared adaptive step sequence whose error norm is, by default, the worst example's
RMS (``error_norm="per_example"``: every log p meets the tolerance) or the RMS over the whole batch
(``"batch"``: score_sde's host loop; fewer evaluations and a looser per-example error; measured in
docs/results.md).
The trace is exact (D Jacobian-vector products against the basis) or Hutchinson's estimate
tr A ~ mean_j u_j^T A u_j with probes fixed along the trajectory. The probes do not change the x
trajectory, so the Hutchinson error is int (u^T J u - tr J) dt, of mean zero given the path: the
estimate of log p is unbiased.
On a CPU an evaluation's B x M products are made in row blocks of at most 512 (:func:`trace_blocks`):
the same values from a working set that stays in cache.

Shapes: ``x`` is ``(B, *dims)`` with D = prod(dims); log-densities are ``(B,)``.
"""

from __future__ import annotations

import functools
import math
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sde_lib.checks import integer, real
from sde_lib.data.scaling import dequantize_interval
from sde_lib.sampling.api import bind_score
from sde_lib.sdes import SDE, batch_broadcast, per_sample_keys
from sde_lib.step_control import CountingPIDController

TRACES = ("exact", "hutchinson")
PROBES = ("rademacher", "gaussian")
PRODUCTS = ("jvp", "vjp")


# ------------------------------------------------------------------------------------------- solver
def resolve_solver(solver) -> diffrax.AbstractERK:
    """A diffrax explicit Runge-Kutta solver from an instance or a class name (case-insensitive, e.g. "dopri5").

    Only explicit RK methods with an embedded error estimate are accepted: their evaluations per step
    follow from the Butcher tableau, which makes ``nfe`` exact.
    """
    if solver is None:
        # Dopri5, not Tsit5: at equal tolerances it needs fewer evaluations for a per-example error still
        # far inside tolerance (scripts/benchmark_likelihood.py; docs/results.md).
        return diffrax.Dopri5()
    if isinstance(solver, str):
        cls = _diffrax_names().get(solver.lower())
        if not (isinstance(cls, type) and issubclass(cls, diffrax.AbstractERK)):
            raise ValueError(f"solver {solver!r} is not a diffrax explicit Runge-Kutta solver (e.g. tsit5, dopri5)")
        solver = cls()
    if not isinstance(solver, diffrax.AbstractERK) or solver.tableau.b_error is None:
        raise ValueError(f"solver must be an adaptive diffrax explicit Runge-Kutta solver, got {solver!r}")
    return solver


@functools.cache
def _diffrax_names() -> dict:
    return {n.lower(): getattr(diffrax, n) for n in dir(diffrax)}


# ------------------------------------------------------------------------------------------- probes
@functools.partial(jax.jit, static_argnames=("shape", "probe", "n_probes", "dtype"))
def draw_probes(key: jax.Array, shape: tuple[int, ...], probe: str = "rademacher", n_probes: int = 1,
                offset=0, dtype=jnp.float32) -> jax.Array:
    """Hutchinson probes of shape ``(n_probes, B, *dims)`` for ``shape = (B, *dims)``.

    The probes of example ``i`` depend only on ``(key, offset + i)``, so a chunked batch draws exactly
    the probes the whole batch would. Rademacher: entries +-1 (minimum variance for a fixed matrix);
    Gaussian: N(0, 1) entries. Both satisfy E[u u^T] = I.
    """
    _check_choice("probe", probe, PROBES)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + jnp.arange(shape[0]))
    sampler = jax.random.rademacher if probe == "rademacher" else jax.random.normal
    u = jax.vmap(lambda k: sampler(k, (n_probes,) + tuple(shape[1:]), dtype=dtype))(keys)
    return jnp.swapaxes(u, 0, 1)


# -------------------------------------------------------------------------------------- divergence
# Products (rows x vectors) per block of rows on a CPU. One product with all M vectors at once carries
# M x B copies of the score's tangents or cotangents; past a few hundred rows' worth they leave the
# core's cache and every evaluation slows down (16-D oracle, 256 rows, exact trace: blocks of 32 rows
# make the solve 1.75x faster in forward mode, 1.2x in reverse mode; docs/results.md). Accelerators
# take the whole batch at once.
CPU_PRODUCTS_PER_BLOCK = 512


def trace_blocks(rows: int, vectors: int) -> int:
    """Blocks of rows in which :func:`probability_flow_field` evaluates ``rows`` x ``vectors`` products:
    1 off a CPU; on a CPU the fewest of at most :data:`CPU_PRODUCTS_PER_BLOCK` products each (or of one
    row each, if a row alone has more)."""
    if jax.default_backend() != "cpu":
        return 1
    return min(rows, -(-rows * vectors // CPU_PRODUCTS_PER_BLOCK))


def _score_trace(score_fn, x, t, vectors, product, cond=None):
    """Score ``(B, *dims)`` and per-example sum of u^T (ds/dx) u over ``vectors`` ``(M, B, *dims)`` -> ``(B,)``.

    score_fn acts row-wise, so its Jacobian over the batch is block diagonal and one product with a
    batch of vectors yields every example's quadratic form at once. The primal is evaluated once; the
    M products reuse it (linearised JVPs, or one VJP pullback).
    """
    score = bind_score(score_fn, cond)
    fn = lambda y: score(y, t)
    if product == "jvp":
        s, apply = jax.linearize(fn, x)
    else:
        s, pullback = jax.vjp(fn, x)
        apply = lambda u: pullback(u)[0]
    quad = jax.vmap(lambda u: jnp.sum((u * apply(u)).reshape(x.shape[0], -1), axis=-1))(vectors)
    return s, jnp.sum(quad, axis=0)


def _row_blocks(a, blocks: int, axis: int = 0):
    """``a``'s axis of n rows as ``blocks`` equal blocks, moved to the front: ``(blocks, ..., ceil(n / blocks),
    ...)``, the last row repeated to fill the last block."""
    n = a.shape[axis]
    size = -(-n // blocks)
    if blocks * size > n:
        last = jax.lax.slice_in_dim(a, n - 1, n, axis=axis)
        a = jnp.concatenate([a, jnp.repeat(last, blocks * size - n, axis)], axis)
    return jnp.moveaxis(a.reshape(a.shape[:axis] + (blocks, size) + a.shape[axis + 1:]), axis, 0)


def _basis(x):
    """The D standard basis vectors, each broadcast over the batch: ``(D, B, *dims)``."""
    d = math.prod(x.shape[1:])
    eye = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
    return jnp.broadcast_to(eye, (d,) + x.shape)


def probability_flow_field(sde: SDE, score_fn, vectors: jax.Array, exact: bool, product: str = "jvp",
                           blocks: int = 1, cond=None):
    """The augmented vector field  (x, delta) -> (f x - g^2 s / 2,  D f - g^2 tr(ds/dx) / 2)  at time t.

    ``score_fn(x, t)``, or ``score_fn(x, t, cond)`` with ``cond`` (leaves with leading dimension B).
    ``vectors`` ``(M, B, *dims)``: the D basis vectors (``exact=True``: their quadratic forms are
    summed, giving the trace) or M Hutchinson probes (averaged). ``blocks`` > 1: the rows (of x, the
    vectors and cond) are evaluated in that many equal blocks one after another (:func:`trace_blocks`),
    one call of score_fn per block: the same values from a smaller working set. Returns
    ``field(t, (x, delta))`` with ``t`` a scalar, ``x`` ``(B, *dims)``, ``delta`` ``(B,)``.
    """
    _check_choice("product", product, PRODUCTS)
    m = vectors.shape[0]
    if blocks > 1:  # fixed along the solve: split once here (split at every evaluation, 1.3x slower)
        vectors, cond = _row_blocks(vectors, blocks, 1), jax.tree.map(lambda c: _row_blocks(c, blocks), cond)

    def score_trace(y, t):
        if blocks == 1:
            return _score_trace(score_fn, y, t, vectors, product, cond)
        one = lambda b: _score_trace(score_fn, b[0], t, b[1], product, b[2])
        s, quad = jax.lax.map(one, (_row_blocks(y, blocks), vectors, cond))
        return s.reshape((-1,) + y.shape[1:])[:y.shape[0]], quad.reshape(-1)[:y.shape[0]]

    def field(t, state):
        y, _ = state
        s, quad = score_trace(y, t)
        tr = quad if exact else quad / m
        f, g2 = sde.drift_coef(t), sde.diffusion_coef(t) ** 2
        return sde.reverse_drift(y, t, s), math.prod(y.shape[1:]) * f - 0.5 * g2 * tr

    return field


# ------------------------------------------------------------------------------------------- solve
ERROR_NORMS = ("per_example", "batch")


def _batch_rms(state) -> jax.Array:
    """Error norm of the augmented state: the RMS over every component of the batch (scipy's, on the
    flattened batch), so one example's error can hide behind the others'."""
    y, delta = state
    return jnp.sqrt((jnp.sum(jnp.square(y)) + jnp.sum(jnp.square(delta))) / (y.size + delta.size))


def _per_example_rms_max(state) -> jax.Array:
    """Error norm of the augmented state: the largest over examples of each example's RMS.

    Accepting a step only when every example meets the tolerance gives each log p its own error
    control; with the batch-wide RMS (score_sde's host loop) one example's error can be far above the
    tolerance while the others hide it (docs/results.md has the numbers).
    """
    y, delta = state
    sq = jnp.sum(jnp.square(y).reshape(y.shape[0], -1), axis=-1) + jnp.square(delta)
    return jnp.sqrt(jnp.max(sq) / (math.prod(y.shape[1:]) + 1))


@eqx.filter_jit
def _solve(x, key, offset, sde, score_fn, cond, *, trace, probe, n_probes, rtol, atol, eps, solver, product,
           max_steps, error_norm):
    """One batched solve of the augmented ODE; compiled once per (shapes, SDE, score structure, options).

    ``sde`` and ``score_fn`` are pytrees: a score function holding parameters as arrays (``ModelScore``,
    ``MixtureScore``) is traced, so another parameter set of the same shapes reuses the compilation.
    Returns ``(logp, info, finite)`` with ``finite`` ``(B,)``: which rows of ``x`` are finite. The others
    are solved from zero instead (a NaN row would stall the shared step control of the whole batch) and
    marked NaN and not ok; the caller raises on them outside jit.
    """
    finite = jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1)
    x = jnp.where(batch_broadcast(finite, x), x, 0.0)
    if trace == "exact":
        vectors = _basis(x)
    else:
        vectors = draw_probes(key, x.shape, probe, n_probes, offset, x.dtype)
    field = probability_flow_field(sde, score_fn, vectors, exact=trace == "exact", product=product,
                                   blocks=trace_blocks(x.shape[0], vectors.shape[0]), cond=cond)
    tab = solver.tableau
    norm = _per_example_rms_max if error_norm == "per_example" else _batch_rms
    pid = diffrax.PIDController(rtol=rtol, atol=atol, norm=norm)
    controller = CountingPIDController(pid, len(tab.c) + 1, bool(tab.fsal))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, state, args: field(t, state)), solver, t0=eps, t1=sde.T,
        # dt0=None: the controller's Hairer-Wanner first step (2 counted evaluations); a fixed 0.01 (T - eps)
        # is rejected several times near eps, where the field is steep.
        dt0=None, y0=(x, jnp.zeros(x.shape[:1], x.dtype)), stepsize_controller=controller, max_steps=max_steps,
        saveat=diffrax.SaveAt(t1=True, controller_state=True), throw=False,
    )
    z, delta = sol.ys[0][-1], sol.ys[1][-1]
    prior = sde.prior_logp(z)
    nfe = sol.controller_state[1]
    logp = prior + delta
    # A failed solve (a NaN score shrinks the steps until max_steps) is reported per row, not raised.
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.isfinite(logp) & finite
    return jnp.where(ok, logp, jnp.nan), {
        "nfe": jnp.full(x.shape[:1], nfe), "ok": ok, "z": z, "prior_logp": prior, "delta_logp": delta,
        "num_steps": jnp.full(x.shape[:1], sol.stats["num_steps"]),
        "num_rejected_steps": jnp.full(x.shape[:1], sol.stats["num_rejected_steps"]),
    }, finite


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _solve_options(sde, *, trace="hutchinson", probe="rademacher", n_probes=1, rtol=1e-5,
                   atol=1e-5, eps=1e-5, solver=None, product="jvp", max_steps=4096, error_norm="per_example"):
    """Validated, hashable static options of :func:`_solve` (defaults as in :func:`log_likelihood`)."""
    _check_choice("trace", trace, TRACES)
    _check_choice("error_norm", error_norm, ERROR_NORMS)
    _check_choice("probe", probe, PROBES)
    _check_choice("product", product, PRODUCTS)
    n_probes, max_steps = integer(n_probes, "n_probes", minimum=1), integer(max_steps, "max_steps", minimum=1)
    rtol, atol = real(rtol, "rtol", positive=True), real(atol, "atol", positive=True)
    eps = real(eps, "eps")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T}), got {eps}")
    return dict(trace=trace, probe=probe, n_probes=n_probes, rtol=rtol, atol=atol, eps=eps,
                solver=resolve_solver(solver), product=product, max_steps=max_steps, error_norm=error_norm)


def log_likelihood(sde: SDE, score_fn, x: jax.Array, key: jax.Array, *, cond=None, trace: str = "hutchinson",
                   probe: str = "rademacher", n_probes: int = 1, rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float = 1e-5, solver=None, product: str = "jvp", batch_size: int | None = None,
                   max_steps: int = 4096, error_norm: str = "per_example"):
    """log p_eps(x) of the model defined by the probability-flow ODE of ``sde`` driven by ``score_fn``.

    Args:
      sde: the forward SDE; score_fn: ``score_fn(x (B, *dims), t (B,)) -> (B, *dims)``, acting row-wise.
        Pytree score functions (``ModelScore``, ``MixtureScore``) are traced: another parameter set of
        the same shapes reuses the compiled solve.
      x: ``(B, *dims)`` points at time eps; key: PRNG key for Hutchinson probes (unused for "exact").
      cond: optional condition (leaves with leading dimension B): log p(x | cond) of a conditional score
        ``score_fn(x, t, cond)``, e.g. ``{"label": (B,)}``.
      trace: "exact" (D products per evaluation: low-dimensional data) or "hutchinson".
      probe, n_probes: Hutchinson probe law ("rademacher" | "gaussian") and probes averaged per
        evaluation; drawn once per solve, example i's from (key, i).
      rtol, atol: PID tolerances; eps: start time, integrating to sde.T.
      solver: diffrax explicit RK solver or its name; default Dopri5.
      product: "jvp" (forward mode) or "vjp" (reverse mode) Jacobian products; jvp is faster on CPU
        (scripts/benchmark_likelihood.py).
      batch_size: solve in chunks of this many examples (the last padded), bounding memory; every chunk
        reuses one compiled solve. None: one solve for the batch.
      max_steps: step cap of each solve.
      error_norm: "per_example" (a step is accepted when every example's RMS error meets the
        tolerance) or "batch" (RMS over the whole batch, as scipy on the flattened batch: fewer steps,
        no per-example guarantee).

    Returns:
      logp ``(B,)`` and info: ``nfe`` ``(B,)`` exact score_fn evaluations spent on each example's
      solve (on a CPU a large batch is evaluated in row blocks, :func:`trace_blocks` calls of
      score_fn on fewer rows each), ``ok`` ``(B,)`` (the solve succeeded and log p is finite; NaN where not), ``z``
      ``(B, *dims)`` the latent at T, ``prior_logp`` and ``delta_logp`` ``(B,)`` with
      logp = prior_logp + delta_logp, ``num_steps`` and ``num_rejected_steps`` ``(B,)``.

    Non-finite inputs raise a ValueError naming the rows (found in the compiled solve; under jit they
    are NaN and not ok); a score function of the wrong output shape raises naming the shapes, once, when
    the solve is traced; a failed solve (e.g. a NaN score) warns once and is marked in ``ok``.
    """
    if jnp.ndim(x) < 2:
        raise ValueError(f"x must have shape (B, *dims), got {jnp.shape(x)}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating point (dequantise discrete data first), got {x.dtype}")
    if batch_size is not None:
        batch_size = integer(batch_size, "batch_size", minimum=1)
    options = _solve_options(sde, trace=trace, probe=probe, n_probes=n_probes, rtol=rtol,
                             atol=atol, eps=eps, solver=solver, product=product, max_steps=max_steps,
                             error_norm=error_norm)
    outs = [out for _, out in _chunked_solves(sde, score_fn, x, cond, key, batch_size, options)]
    logp, info, finite = jax.tree.map(lambda *a: jnp.concatenate(a), *outs) if len(outs) > 1 else outs[0]
    _raise_non_finite(finite)
    _warn_failed(info["ok"])
    return logp, info


def _raise_non_finite(finite) -> None:
    """Non-finite inputs are a caller's error: one ValueError naming the rows (outside jit)."""
    if not isinstance(finite, jax.core.Tracer) and not np.asarray(finite).all():
        bad = np.flatnonzero(~np.asarray(finite))
        raise ValueError(f"x has non-finite values in {bad.size} row(s), e.g. rows {bad[:5].tolist()}")


def _warn_failed(ok) -> None:
    if not isinstance(ok, jax.core.Tracer) and not np.asarray(ok).all():  # a readback, no further dispatch
        warnings.warn(f"log_likelihood(): the solve failed for {int(np.sum(~np.asarray(ok)))} of {ok.size} examples "
                      "(a NaN/Inf score, or max_steps reached); their log p is NaN, see info['ok']", stacklevel=3)


def _chunked_solves(sde, score_fn, x, cond, key, batch_size, options):
    """Yield ``(rows, (logp, info, finite))`` per chunk of ``batch_size`` rows (all rows if None).

    The last chunk is padded by repeating its last row so every chunk has one shape (one compilation);
    padded rows are dropped. Probe keys use the global row index, as an unchunked solve would.
    """
    n = x.shape[0]
    size = n if batch_size is None else min(int(batch_size), n)

    def rows(a, start):
        if size == n:  # one chunk: no slicing dispatched
            return a
        part = a[start:start + size]
        pad = size - part.shape[0]
        return jnp.concatenate([part, jnp.repeat(part[-1:], pad, axis=0)]) if pad else part

    for start in range(0, n, size):
        pad = size - min(size, n - start)
        chunk_cond = None if cond is None else jax.tree.map(lambda a: rows(jnp.asarray(a), start), cond)
        # The offset as a NumPy array: traced (one compilation for every chunk), and no device dispatch here.
        out = _solve(rows(x, start), key, np.asarray(start, np.int32), sde, score_fn, chunk_cond, **options)
        yield size - pad, jax.tree.map(lambda a: a[:size - pad], out) if pad else out


# --------------------------------------------------------------------------------- discrete data
def check_discrete(levels, scale):
    """Validated ``(levels, lo, hi)`` of discrete data with ``levels`` bins tiling ``scale = (lo, hi)``."""
    levels = integer(levels, "levels", minimum=2)
    if not isinstance(scale, (tuple, list)) or len(scale) != 2:
        raise ValueError(f"scale must be (lo, hi), got {scale!r}")
    lo, hi = real(scale[0], "scale[0]"), real(scale[1], "scale[1]")
    if not hi > lo:
        raise ValueError(f"scale must be (lo, hi) with hi > lo, got {scale}")
    return levels, lo, hi


def bpd_offset(levels: int, scale=(0.0, 1.0)) -> float:
    """log2(L / (hi - lo)): the bits/dim to add to -log2 p(x) / D (see :func:`bits_per_dim`)."""
    levels, lo, hi = check_discrete(levels, scale)
    return math.log2(levels / (hi - lo))


def bpd_from_logp(logp: jax.Array, dim: int, levels: int, scale=(0.0, 1.0)) -> jax.Array:
    """Bits/dim ``(B,)`` of the discrete data from continuous log-densities ``logp`` ``(B,)`` of dequantised points."""
    return -logp / (dim * math.log(2.0)) + bpd_offset(levels, scale)


def validate_levels(k, levels):
    """Raise one ValueError unless ``k`` ``(B, *dims)`` holds integer levels in 0..levels-1."""
    arr = np.asarray(k)
    if arr.ndim < 2:
        raise ValueError(f"data must have shape (B, *dims), got {arr.shape}")
    if not np.all(np.equal(np.mod(arr, 1), 0)):
        raise ValueError("data must hold integer levels (quantise continuous data first)")
    if arr.min() < 0 or arr.max() > levels - 1:
        raise ValueError(f"data levels span [{arr.min()}, {arr.max()}], outside [0, levels-1={levels - 1}]")


def bits_per_dim(sde: SDE, score_fn, k, key: jax.Array, *, levels: int, scale=(0.0, 1.0),
                 n_dequant: int = 1, batch_size: int | None = None, progress: bool = False, cond=None, **options):
    """Bits/dim of discrete data ``k`` (integers 0..L-1, ``(B, *dims)``) under the PF-ODE model.

    Derivation. The data are mapped to the model's space by x = lo + (hi - lo)(k + u)/L, so the discrete
    value k owns the box bin(k) of side Delta = (hi - lo)/L, and the boxes tile [lo, hi]^D. A density p
    thus defines a discrete model P(k) = int_bin(k) p(x) dx = Delta^D E_{u ~ U[0,1)^D} p(x(k, u)), and
    by Jensen
        -log P(k) <= E_u[-log p(x(k, u))] - D log Delta.
    Dividing by D log 2:
        bits/dim(k) <= E_u[-log2 p(x)] / D + log2(L / (hi - lo)).
    For 8-bit data in [0, 1] the offset is 8 bits, in [-1, 1] 7 bits; for 17-level digits in [0, 1]
    log2 17. Averaging ``n_dequant`` draws of u estimates the expectation without bias, so the result
    is (in expectation) an upper bound on the model's negative log-likelihood of the discrete data.

    Host-level driver (validates ``k`` eagerly, loops over chunks and draws); each solve is compiled.
    With ``cond`` (leaves with leading dimension B) it is the conditional model's bits/dim of log p(k | cond).
    ``options`` go to :func:`log_likelihood` (trace, probe, n_probes, rtol, atol, eps, solver, product,
    max_steps, error_norm).

    Returns:
      bpd ``(B,)`` averaged over draws, and info with ``bpd_draws`` ``(n_dequant, B)`` and ``nfe``
      ``(n_dequant, B)``.
    """
    levels, lo, hi = check_discrete(levels, scale)
    n_dequant = integer(n_dequant, "n_dequant", minimum=1)
    if batch_size is not None:
        batch_size = integer(batch_size, "batch_size", minimum=1)
    validate_levels(k, levels)
    k = jnp.asarray(k)
    n, dim = k.shape[0], math.prod(k.shape[1:])
    # Validate and normalise the solver options once, through the public entry point's checks.
    options = _solve_options(sde, **options)
    draws, nfes, oks = [], [], []
    bar = tqdm(total=int(n_dequant) * n, unit="ex", disable=not progress, desc="bits/dim")
    for j in range(int(n_dequant)):
        k_deq, k_probe = jax.random.split(jax.random.fold_in(key, j))
        u = jax.vmap(lambda kk: jax.random.uniform(kk, k.shape[1:]))(per_sample_keys(k_deq, n))  # row i: (key, i)
        x = jnp.asarray(dequantize_interval(np.asarray(k), np.asarray(u), levels, lo, hi))
        row_bpd, row_nfe, row_ok = [], [], []
        for rows, (logp, info, _) in _chunked_solves(sde, score_fn, x, cond, k_probe, batch_size, options):
            row_bpd.append(bpd_from_logp(logp, dim, levels, (lo, hi)))
            row_nfe.append(info["nfe"])
            row_ok.append(info["ok"])
            bar.update(rows)
        draws.append(jnp.concatenate(row_bpd))
        nfes.append(jnp.concatenate(row_nfe))
        oks.append(jnp.concatenate(row_ok))
    bar.close()
    bpd_draws, ok = jnp.stack(draws), jnp.all(jnp.stack(oks), axis=0)
    _warn_failed(ok)
    return jnp.mean(bpd_draws, axis=0), {"bpd_draws": bpd_draws, "nfe": jnp.stack(nfes), "ok": ok}
