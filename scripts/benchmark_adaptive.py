"""What per-sample adaptive solves cost, and what one non-finite row costs its batch-mates.

``ode_adaptive`` solves each row on its own (``jax.vmap`` of one ``diffeqsolve`` per row): a row's steps,
NFE and result do not depend on the other rows. The alternative is one solve of the whole batch with
one error norm over all rows, where every row takes the steps the worst row needs. This script measures,
on the exact score of the 16-D oracle mixture (``gauss16d``, VP SDE, rtol = atol = 1e-5, Dopri5):

* clean batch: seconds per call and NFE per row of the per-row solve against the batch-wide solve;
* a batch of which one row's score is NaN: the batch's seconds and that row's NFE, with the solve
  ending after ``step_control.MAX_NONFINITE_TRIALS`` non-finite trial steps in a row (now) and without
  that rule (the old behaviour: the row spins until ``max_steps`` and the vmapped loop with it).

    python scripts/benchmark_adaptive.py --batch 64 --repeats 7

Times are medians of ``--repeats`` calls after one compiling call, alternating the variants.
"""

from __future__ import annotations

import argparse
import statistics
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import sde_lib
from sde_lib import step_control


def batch_solve(sde, score, x, eps, rtol, atol):
    """One Dopri5 solve of the whole batch (one error norm over all rows); returns (x, NFE)."""
    pid = diffrax.PIDController(rtol=rtol, atol=atol)
    controller = step_control.CountingPIDController(pid, 7, True)
    term = diffrax.ODETerm(lambda t, y, args: sde.reverse_drift(y, t, score(y, jnp.full(y.shape[:1], t))))
    sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0=sde.T, t1=eps, dt0=-(sde.T - eps) / 100, y0=x,
                              stepsize_controller=controller, max_steps=4096,
                              saveat=diffrax.SaveAt(t1=True, controller_state=True))
    return sol.ys[-1], sol.controller_state[1]


def timed(fn, repeats):
    out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    sde = sde_lib.VPSDE()
    score = sde_lib.oracle.builtin_mixture("gauss16d").score_fn(sde)
    key = jax.random.PRNGKey(0)
    shape = (args.batch, 16)
    x_init = sde.prior_sampling(jax.random.PRNGKey(1), shape)
    flag = jnp.zeros(args.batch).at[0].set(1.0)
    nan_score = lambda x, t, c: jnp.where(c[:, None] > 0, jnp.nan, score(x, t))

    def per_row():
        return sde_lib.sampling.sample(sde, score, key, shape, "ode_adaptive", x_init=x_init)

    batch_jit = jax.jit(lambda x: batch_solve(sde, score, x, 1e-3, 1e-5, 1e-5))
    variants = {"per-row solves": per_row, "one batch-wide solve": lambda: batch_jit(x_init)}
    results = {name: timed(fn, 0)[0] for name, fn in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(args.repeats):  # alternate, so load on the machine hits every variant alike
        for name, fn in variants.items():
            times[name] += timed(fn, 1)[1]
    (x_row, info), (x_batch, nfe_batch) = results["per-row solves"], results["one batch-wide solve"]
    nfe = np.asarray(info["nfe"])
    print(f"clean batch of {args.batch}, gauss16d exact score, Dopri5 rtol = atol = 1e-5:")
    print(f"  per-row solves:       {statistics.median(times['per-row solves']) * 1e3:8.1f} ms, NFE per row "
          f"median {np.median(nfe):.0f} (min {nfe.min()}, max {nfe.max()})")
    print(f"  one batch-wide solve: {statistics.median(times['one batch-wide solve']) * 1e3:8.1f} ms, NFE per row "
          f"{int(nfe_batch)} (every row)")
    print(f"  largest difference between the two: {float(jnp.abs(x_row - x_batch).max()):.2e}")

    def nan_call():
        return sde_lib.sampling.sample(sde, nan_score, key, shape, "ode_adaptive", x_init=x_init, cond=flag)

    rows = {}
    for label, trials in (("now", step_control.MAX_NONFINITE_TRIALS), ("without the rule", 10**9)):
        step_control.MAX_NONFINITE_TRIALS = trials  # read while the solve is traced: a new compilation
        jax.clear_caches()
        (x, info), t = timed(nan_call, max(1, args.repeats // 3))
        rows[label] = (statistics.median(t), np.asarray(info["nfe"]), np.asarray(info["ok"]), x)
    clean_nfe = nfe
    print("one NaN row in the batch (max_steps 4096):")
    for label, (t, nfe, ok, x) in rows.items():
        same = bool((nfe[1:] == clean_nfe[1:]).all())
        change = float(jnp.abs(x[1:] - x_row[1:]).max())
        print(f"  {label:17s} {t * 1e3:8.1f} ms, NaN row NFE {nfe[0]}, ok {ok.sum()}/{len(ok)}, clean rows' NFE "
              f"as in the clean batch: {same}, largest change of a clean row {change:.1e}")

if __name__ == "__main__":
    main()
