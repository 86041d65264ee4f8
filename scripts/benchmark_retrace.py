"""Per-call cost of ``sample()`` on the digits U-Net: seconds per repeated call and score traces per call.

A repeated ``sample()`` with the same network must trace nothing: the compiled sampler is reused and the
score's shape check ran while it was traced. (Before, every call also traced the whole network once more
in an eager ``jax.eval_shape`` shape check.) This script builds the network of
``configs/digits/vp_ddpmpp.py`` (DDPM++ U-Net, nf 32, two levels 8 -> 4, attention at 4x4, 0.75M
parameters; random weights: the time per call does not depend on training), compiles each sampler once,
then times repeated calls and counts how often the network is traced per call.

    python scripts/benchmark_retrace.py --out out/benchmark_retrace.json
    # another checkout's library, same script (e.g. before/after a change), alternating processes:
    PYTHONPATH=/path/to/checkout python scripts/benchmark_retrace.py --out out/before.json

Prints, per sampler: the first call (compile) in s, the median and minimum of ``--repeats`` further calls
in s, traces per further call, and the time of one trace of the network (``jax.eval_shape``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import models
import sde_lib
from sde_lib.parameterization import ModelScore


def digits_unet_settings() -> ml_collections.ConfigDict:
    """``config.model`` of configs/digits/vp_ddpmpp.py: its own settings over configs/digits/_base.py's
    over sde_lib/config.py's defaults (written out: this script must not import the config machinery)."""
    return ml_collections.ConfigDict(dict(
        name="ddpmpp", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
        resblock_type="biggan", embedding_type="fourier", fourier_scale=1.0, skip_rescale=True, init_scale=0.0,
        resamp_with_conv=True, conditional=True, progressive_input="none", num_classes=0, concat_channels=0,
        remat=False, context="none", context_dim=64, context_len=12, context_depth=2, transformer_depth=1,
        num_heads=4, context_pooled=False, parameterization="edm", sigma_data=0.5))


class TraceCount:
    n = 0


class Network(eqx.Module):
    """An nnx network as a pytree (``graphdef`` static, ``state`` traced) that counts its traces: its
    Python body runs only while a caller traces it."""

    graphdef: Any = eqx.field(static=True)
    state: Any
    count: TraceCount = eqx.field(static=True)

    def __call__(self, x, c_noise):
        self.count.n += 1
        return nnx.merge(self.graphdef, self.state)(x, c_noise, train=False)


def timed(call) -> float:
    """Seconds of one call, its results waited for."""
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samplers", default="ode_euler:10,dpm_solver_pp_3m:20", help="comma-separated NAME:STEPS")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default="out/benchmark_retrace.json")
    a = p.parse_args(argv)

    m = digits_unet_settings()
    graphdef, state = nnx.split(models.get_model(m, (8, 8, 1), nnx.Rngs(0)))
    count = TraceCount()
    sde = sde_lib.VPSDE(0.1, 20.0)
    score = ModelScore(Network(graphdef, state, count), sde, m.parameterization, m.sigma_data)
    shape = (a.batch, 8, 8, 1)
    n_params = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(nnx.merge(graphdef, state), nnx.Param)))

    # One trace of the network alone: what an eager shape check costs per call.
    x, t = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:1], jnp.float32)
    # A new closure each time, as the eager check built: nothing cached.
    trace_s = statistics.median(timed(lambda: jax.eval_shape(lambda *a: score(*a), x, t)) for _ in range(5))

    rows = []
    for item in a.samplers.split(","):
        name, steps = item.split(":")
        key = jax.random.PRNGKey(0)
        call = lambda: sde_lib.sampling.sample(sde, score, key, shape, name, int(steps))[0]  # noqa: E731
        before = count.n
        first = timed(call)  # compiles
        traced = count.n
        times = [timed(call) for _ in range(a.repeats)]
        rows.append({"sampler": name, "steps": int(steps), "first_call_s": first,
                     "median_s": statistics.median(times), "min_s": min(times),
                     "traces_per_call": (count.n - traced) / a.repeats, "traces_compiling": traced - before})
        print(f"  {rows[-1]}", flush=True)

    lines = [f"digits U-Net ({n_params / 1e6:.2f}M parameters), batch {a.batch}; "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()}); library {sde_lib.__file__}; "
             f"one trace of the network: {trace_s:.3f} s", "",
             "| sampler | steps | first call (s) | median call (s) | min call (s) | traces per call |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['sampler']} | {r['steps']} | {r['first_call_s']:.2f} | {r['median_s']:.3f} | {r['min_s']:.3f} | "
              f"{r['traces_per_call']:g} |" for r in rows]
    print("\n".join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "library": sde_lib.__file__, "trace_s": trace_s, "params": n_params,
                   "rows": rows, "table": lines}, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
