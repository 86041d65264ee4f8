"""PF-ODE likelihood: our on-device diffrax solve vs a score_sde-style host loop, side by side.

The host loop is score_sde's likelihood.py design: scipy's solve_ivp (RK45) on the flattened batch,
calling one jitted drift-and-divergence function per evaluation and copying state between host and
device each time. Two host loops are timed: with score_sde's reverse-mode divergence, and with our
forward-mode field (sde_lib.likelihood.probability_flow_field, in the same row blocks as ours), so the
second differs from ours only in the solve. Same score function, points and tolerances; compiled
functions are warmed up before timing, then every method is called ``--repeats`` times in turn
(round robin, so a change of machine load hits all alike) and the median call is reported. Several
``--tols`` give a work-precision table and an equal-accuracy comparison.

    .venv/bin/python scripts/benchmark_likelihood.py --n 256 --out out/benchmark_likelihood.json
    .venv/bin/python scripts/benchmark_likelihood.py --workdir runs/quickstart --n 64 --tols 1e-4,1e-5

A *source* supplies (sde, score_fn, points, error function); the oracle source is a built-in Gaussian
mixture with its exact score, and the error of a solve is measured against the exact log p_eps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

import sde_lib
from sde_lib import likelihood as L
from sde_lib.oracle import builtin_mixture



def oracle_source(mixture: str, sde_name: str, n: int, eps: float, seed: int):
    """Exact mixture score; error = |log p_T(z) + delta - log p_eps(x)| / D with the mixture's true p_T.

    Using the true p_T removes the (method-independent) mismatch between p_T and the SDE's prior, so
    the error is the solver's alone.
    """
    sde = sde_lib.sdes.sde_class(sde_name)()
    gmm = builtin_mixture(mixture)
    x = gmm.sample_t(sde, jax.random.PRNGKey(seed), n, eps)
    exact = gmm.log_prob_t(sde, x, eps)

    def error(z, delta):
        transported = delta + gmm.log_prob_t(sde, jnp.asarray(z, jnp.float32), sde.T)
        return np.abs(np.asarray(transported - exact)) / gmm.dim

    return {"name": f"oracle:{mixture}/{sde_name}", "sde": sde, "score_fn": gmm.score_fn(sde), "x": x,
            "error": error}


def workdir_source(workdir: str, n: int, eps: float, seed: int):
    """A trained run's EMA model on ``n`` dequantised test examples; both methods use the same single
    Rademacher probe (as score_sde's likelihood does), and the error is measured against a tight
    (rtol = atol = 1e-8) solve of that same Hutchinson ODE."""
    from sde_lib import data

    r = sde_lib.load_run(workdir)
    config, sde, score_fn = r.config, r.sde, r.score_fn
    levels = data.load_split(config.data, "test")[:n]
    u = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), levels.shape))
    x = jnp.asarray(data.dequantize(levels, u, config.data.levels, config.data.centered), jnp.float32)
    key = jax.random.PRNGKey(1)
    _, info = L.log_likelihood(sde, score_fn, x, key, trace="hutchinson", solver="tsit5", rtol=1e-8, atol=1e-8,
                               eps=eps)
    ref = np.asarray(info["prior_logp"] + info["delta_logp"])
    dim = math.prod(x.shape[1:])

    def error(z, delta):
        return np.abs(np.asarray(sde.prior_logp(jnp.asarray(z, jnp.float32)) + jnp.asarray(delta)) - ref) / dim

    probes = L.draw_probes(key, x.shape, "rademacher", 1, 0, x.dtype)
    return {"name": f"workdir:{workdir}@{r.step}", "sde": sde, "score_fn": score_fn, "x": x, "error": error,
            "vectors": probes, "trace": "hutchinson"}


def host_loop(src, rtol, atol, eps, product, blocks=1):
    """score_sde-style solve: returns a function running one solve -> (z, delta, nfe)."""
    sde, x = src["sde"], src["x"]
    shape, n = x.shape, x.shape[0]
    exact = src.get("trace", "exact") == "exact"
    vectors = L._basis(x) if exact else src["vectors"]
    field = L.probability_flow_field(sde, src["score_fn"], vectors, exact=exact, product=product, blocks=blocks)
    field = jax.jit(field)

    def ode_func(t, y):
        state = (jnp.asarray(y[:-n].reshape(shape), jnp.float32), jnp.asarray(y[-n:], jnp.float32))
        dx, ddelta = field(jnp.float32(t), state)
        return np.concatenate([np.asarray(dx).ravel(), np.asarray(ddelta)]).astype(np.float64)

    y0 = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(n)])

    def run():
        sol = solve_ivp(ode_func, (eps, sde.T), y0, rtol=rtol, atol=atol, method="RK45")
        y = sol.y[:, -1]
        return y[:-n].reshape(shape), y[-n:], sol.nfev

    return run


def ours(src, rtol, atol, eps, **options):
    sde, score_fn, x = src["sde"], src["score_fn"], src["x"]
    key = jax.random.PRNGKey(1)

    def run():
        # Hutchinson sources fix the probes (shared with the host loops); the key draws the same ones.
        _, info = L.log_likelihood(sde, score_fn, x, key, rtol=rtol, atol=atol, eps=eps, **options)
        z, delta = jax.block_until_ready((info["z"], info["delta_logp"]))
        return z, delta, int(info["nfe"][0])

    return run


def measure(methods, error, repeats):
    """``{name: row}``: each method's NFE, median and minimum wall time of ``repeats`` calls taken in
    turn with the other methods', and its errors."""
    outs = {name: run() for name, run in methods.items()}  # warm-up: compilation excluded
    times = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            t0 = time.perf_counter()
            outs[name] = run()
            times[name].append(time.perf_counter() - t0)
    rows = {}
    for name, (z, delta, nfe) in outs.items():
        err = error(z, delta)
        rows[name] = {"nfe": int(nfe), "wall_s": statistics.median(times[name]), "min_s": min(times[name]),
                      "max_err_per_dim": float(err.max()), "mean_err_per_dim": float(err.mean())}
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mixture", default="gauss16d")
    p.add_argument("--sde", default="vp", choices=sde_lib.sdes.CLI_NAMES)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--tols", default="1e-5",
                   help="comma-separated rtol = atol values; several give a work-precision table")
    p.add_argument("--eps", type=float, default=1e-5)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="a trained run instead of the oracle (Hutchinson, 1 probe)")
    p.add_argument("--out", default="out/benchmark_likelihood.json")
    a = p.parse_args(argv)
    tols = [float(v) for v in a.tols.split(",")]

    if a.workdir:
        src = workdir_source(a.workdir, a.n, a.eps, a.seed)
        blocks = L.trace_blocks(src["x"].shape[0], src["vectors"].shape[0])
        hutch = dict(trace="hutchinson", solver="dopri5", product="jvp")
        methods = lambda tol: {
            HOST_SCORE_SDE: host_loop(src, product="vjp", **tol),
            HOST_FUSED: host_loop(src, product="jvp", blocks=blocks, **tol),
            "ours: diffrax Dopri5, per-example error": ours(src, **hutch, **tol),
            "ours: diffrax Dopri5, batch error norm": ours(src, error_norm="batch", **hutch, **tol),
        }
    else:
        src = oracle_source(a.mixture, a.sde, a.n, a.eps, a.seed)
        blocks = L.trace_blocks(a.n, math.prod(src["x"].shape[1:]))
        methods = lambda tol: {
            HOST_SCORE_SDE: host_loop(src, product="vjp", **tol),
            HOST_FUSED: host_loop(src, product="jvp", blocks=blocks, **tol),
            "ours: diffrax Tsit5, exact trace (jvp)": ours(src, trace="exact", solver="tsit5", product="jvp", **tol),
            "ours: diffrax Dopri5, exact trace (jvp)": ours(src, trace="exact", solver="dopri5", product="jvp", **tol),
            "ours: diffrax Dopri5, exact trace, batch error norm": ours(src, trace="exact", solver="dopri5",
                                                                      error_norm="batch", **tol),
            "ours: diffrax Tsit5, exact trace (vjp)": ours(src, trace="exact", solver="tsit5", product="vjp", **tol),
            "ours: diffrax Tsit5, Hutchinson 1 probe (jvp)": ours(src, trace="hutchinson", solver="tsit5",
                                                                 product="jvp", **tol),
            "ours: diffrax Tsit5, Hutchinson 1 probe (vjp)": ours(src, trace="hutchinson", solver="tsit5",
                                                                 product="vjp", **tol),
        }
    rows = []
    for tol in tols:
        for name, row in measure(methods(dict(rtol=tol, atol=tol, eps=a.eps)), src["error"], a.repeats).items():
            rows.append({"tol": tol, "method": name, **row})
            print(f"  tol {tol:g}  {name}: {rows[-1]}", flush=True)
    return report(a, src, rows)


# Two baselines: score_sde's divergence is reverse mode (a gradient of <s(x), u>) over the whole batch;
# the second host loop calls our forward-mode field in our row blocks, so its gap to ours is the host
# round trip and the step control alone.
HOST_SCORE_SDE = "host loop (score_sde): scipy RK45, reverse-mode divergence"
HOST_FUSED = "host loop: scipy RK45, our forward-mode field"


def equal_accuracy(rows):
    """Per host-loop row: the fastest of our rows (any tolerance) whose worst error is no larger."""
    out = []
    for host in (r for r in rows if r["method"].startswith("host loop")):
        ok = [r for r in rows if r["method"].startswith("ours") and r["max_err_per_dim"] <= host["max_err_per_dim"]]
        if ok:
            best = min(ok, key=lambda r: r["wall_s"])
            out.append((host, best))
    return out


def report(a, src, rows):
    lines = [f"Source {src['name']}, {a.n} points, D={math.prod(src['x'].shape[1:])}, rtol = atol = tol, "
             f"eps={a.eps}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax "
             f"{jax.__version__} ({jax.default_backend()}); median of {a.repeats} calls, methods taking turns (shared "
             "CPU: alike load on every method). Ratios are against the host loops at the same tolerance.",
             "", "| tol | method | NFE | median wall time (s) | vs score_sde loop | vs host loop, our field "
                 "| max err (nats/dim) | mean err (nats/dim) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = {h: next(b for b in rows if b["tol"] == r["tol"] and b["method"] == h)["wall_s"]
                for h in (HOST_SCORE_SDE, HOST_FUSED)}
        lines.append(f"| {r['tol']:g} | {r['method']} | {r['nfe']} | {r['wall_s']:.3f} | "
                     f"{r['wall_s'] / base[HOST_SCORE_SDE]:.2f}x | {r['wall_s'] / base[HOST_FUSED]:.2f}x | "
                     f"{r['max_err_per_dim']:.2e} | {r['mean_err_per_dim']:.2e} |")
    pairs = equal_accuracy(rows)
    if pairs:
        lines += ["", "At equal accuracy (our fastest row whose worst error is no larger than the host loop's):", "",
                  "| host loop | tol | its max err | ours | tol | max err | wall time ratio |", "|---|---:|---:|---|---:|---:|---:|"]
        for host, best in pairs:
            lines.append(f"| {host['method']} | {host['tol']:g} | {host['max_err_per_dim']:.2e} | {best['method']} | "
                         f"{best['tol']:g} | {best['max_err_per_dim']:.2e} | {best['wall_s'] / host['wall_s']:.2f}x |")
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"source": src["name"], "args": vars(a), "backend": jax.default_backend(), "rows": rows,
                   "table": lines}, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
