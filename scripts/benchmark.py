"""Speed benchmarks, measured side by side in one process (ratios are what to trust on a shared machine).

  sampler   wall time of sde_lib.sampling.sample vs a hand-written lax.scan loop doing the same steps with
            the same score network and batch (ode_euler, euler_maruyama), reported as ratios.
  train     train-step images/s of DDPM++ at 32x32 (small nf) through sde_lib.training (compile excluded).

Usage:
  python scripts/benchmark.py sampler [--batch 512 --dim 64 --hidden 256 --steps 100 --repeats 7]
  python scripts/benchmark.py train   [--nf 32 --res_blocks 1 --batch 32 --steps 5]
Results print as a markdown table and go to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

import models
import sde_lib
from sde_lib import sampling
from sde_lib.sdes import batch_broadcast


def _timed(fn, *args):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def _mlp_score(dim: int, hidden: int, sde):
    """A jitted eps-style MLP turned into a score: s = -net(x, t) / sigma_t."""
    graphdef, params = nnx.split(models.MLP(dim, hidden=hidden, n_layers=3, init_scale=1.0, rngs=nnx.Rngs(0)))

    def score_fn(x, t):
        return -nnx.merge(graphdef, params)(x, 999.0 * t) / batch_broadcast(sde.marginal_coeffs(t)[1], x)

    return jax.jit(score_fn)


def _scan_baseline(sde, score_fn, steps: int, eps: float, stochastic: bool):
    """The hand-written loop: uniform grid, Euler on the PF-ODE or Euler-Maruyama on the reverse SDE."""
    ts = jnp.linspace(sde.T, eps, steps + 1)
    pf = 0.5 if not stochastic else 1.0

    @jax.jit
    def run(key, x):
        def step(x, i):
            t0, t1 = ts[i], ts[i + 1]
            tb = jnp.full(x.shape[:1], t0)
            f, g = sde.drift_coef(t0), sde.diffusion_coef(t0)
            x = x + (f * x - pf * g**2 * score_fn(x, tb)) * (t1 - t0)
            if stochastic:
                x = x + g * jnp.sqrt(t0 - t1) * jax.random.normal(jax.random.fold_in(key, i), x.shape)
            return x, None

        return jax.lax.scan(step, x, jnp.arange(steps))[0]

    return run


def bench_sampler(args) -> list[dict]:
    sde = sde_lib.VPSDE()
    score_fn = _mlp_score(args.dim, args.hidden, sde)
    shape = (args.batch, args.dim)
    x_T = sde.prior_sampling(jax.random.PRNGKey(1), shape)
    rows = []
    for name, stochastic in (("ode_euler", False), ("euler_maruyama", True)):
        ours = jax.jit(lambda k, x, name=name: sampling.sample(sde, score_fn, k, shape, name, steps=args.steps,
                                                                x_init=x)[0])
        base = _scan_baseline(sde, score_fn, args.steps, sampling.default_eps(sde), stochastic)
        key = jax.random.PRNGKey(0)
        if not stochastic:  # same maths, same grid: the outputs agree to float32 rounding
            a, b = ours(key, x_T), base(key, x_T)
            diff = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        else:
            diff = float("nan")
        _timed(ours, key, x_T), _timed(base, key, x_T)  # compile both before timing
        t_ours, t_base = [], []
        for r in range(args.repeats):  # alternate so that load drifts hit both alike
            t_ours.append(_timed(ours, jax.random.PRNGKey(r), x_T))
            t_base.append(_timed(base, jax.random.PRNGKey(r), x_T))
        mo, mb = statistics.median(t_ours), statistics.median(t_base)
        rows.append({"sampler": name, "steps": args.steps, "batch": args.batch, "dim": args.dim,
                     "hidden": args.hidden, "ours_s": mo, "scan_s": mb, "ratio": mo / mb,
                     "max_rel_diff": diff})
    print("| sampler | steps | batch x dim | ours (s) | lax.scan (s) | ratio | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['batch']}x{r['dim']} | {r['ours_s']:.4f} | {r['scan_s']:.4f} "
              f"| {r['ratio']:.3f} | {r['max_rel_diff']:.1e} |")
    return rows


def bench_train(args) -> list[dict]:
    """Images/s of the jitted DDPM++ train step (configs/cifar10/vp_ddpmpp_continuous.py) at 32x32."""
    import runpy

    from sde_lib import training

    cfg_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "cifar10",
                            "vp_ddpmpp_continuous.py")
    config = runpy.run_path(cfg_path)["get_config"]()
    config.model.nf = args.nf
    config.model.num_res_blocks = args.res_blocks
    config.training.batch_size = args.batch
    config.training.n_jitted_steps = 1
    optimizer = training.make_optimizer(config.optim, config.training.n_iters)
    graphdef, state = training.init_train_state(config, optimizer)
    mesh = training.make_mesh()
    step = training.make_train_step(config, graphdef, optimizer, mesh)
    batch = jax.device_put(jax.random.uniform(jax.random.PRNGKey(0), (args.batch, 32, 32, 3), minval=-1.0),
                           training.batch_sharding(mesh))
    state = jax.device_put(state, training.replicated(mesh))
    t = time.perf_counter()
    state, _ = step(state, batch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    per_step = (time.perf_counter() - t) / args.steps
    row = {"model": "DDPM++ (cifar10 vp_ddpmpp_continuous)", "nf": args.nf, "num_res_blocks": args.res_blocks,
           "batch": args.batch, "compile_s": compile_s, "step_s": per_step, "images_per_s": args.batch / per_step}
    print("| model | nf | res blocks | batch | compile (s) | step (s) | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {row['model']} | {args.nf} | {args.res_blocks} | {args.batch} | {compile_s:.1f} | {per_step:.3f} "
          f"| {row['images_per_s']:.1f} |")
    return [row]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["sampler", "train"])
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--nf", type=int, default=32)
    p.add_argument("--res_blocks", type=int, default=1, help="train: num_res_blocks (4 in the CIFAR-10 config)")
    p.add_argument("--out", default=None, help="JSON output path (default out/benchmark_<what>.json)")
    args = p.parse_args()
    rows = bench_sampler(args) if args.what == "sampler" else bench_train(args)
    out = args.out or f"out/benchmark_{args.what}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    machine = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
               "cpu_count": os.cpu_count(), "platform": platform.platform()}
    with open(out, "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
