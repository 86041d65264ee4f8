"""Speed benchmarks (ratios measured side by side in one process are what to trust on a shared machine).

  sampler   wall time of sde_lib.sampling.sample vs a hand-written lax.scan loop doing the same steps with
            the same score network and batch (ode_euler, euler_maruyama), reported as ratios.
  train     the trainer's jitted train step (sde_lib.training) of any config on synthetic data of the
            config's shape: images/s (median over --repeats steps after --warmup), compile time, and peak
            memory (CPU: the process's peak resident set during the timed steps and its rise over the
            resident set before compiling; GPU/TPU: the device's peak_bytes_in_use), that per image, and
            XLA's temporary buffers of the compiled step per device (the activations that model.remat
            reduces), how many cores were busy (process CPU time / wall time of the timed steps), and the
            page faults and kernel time per call.
            --cpu_devices=N splits the host CPU into N devices, as scripts/train.py does.

Usage:
  python scripts/benchmark.py sampler [--batch=512 --dim=64 --hidden=256 --steps=100 --repeats=7]
  python scripts/benchmark.py train [--config=configs/cifar10/vp_ddpmpp_continuous.py] [--config.model.nf=32 ...]
                                    [--repeats=10 --warmup=2] [--cpu_devices=N]
``train`` takes the config file and ``--config.*`` overrides exactly as scripts/train.py does (default: the
CIFAR-10 DDPM++ config). Results print as a markdown table and go to --out (JSON).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

import models
import sde_lib
from sde_lib import cli, sampling, training
from sde_lib.data import Dataset
from sde_lib.runs import trainer
from sde_lib.runs.assemble import assemble
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


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs", "cifar10", "vp_ddpmpp_continuous.py"),
    "train: experiment config file (get_config()), with --config.* overrides as in scripts/train.py.", lock_config=True)
_BATCH = flags.DEFINE_integer("batch", 512, "sampler: batch size.")
_DIM = flags.DEFINE_integer("dim", 64, "sampler: data dimension.")
_HIDDEN = flags.DEFINE_integer("hidden", 256, "sampler: MLP width.")
_STEPS = flags.DEFINE_integer("steps", 100, "sampler: solver steps.")
_REPEATS = flags.DEFINE_integer("repeats", None, "Timed repetitions (default: sampler 7, train 10).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "train: untimed steps after compilation.")
_OUT = flags.DEFINE_string("out", None, "JSON output path (default out/benchmark_<what>.json).")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "train: split the host CPU into this many devices "
                                    "(as scripts/train.py --cpu_devices).")


def bench_sampler(batch: int, dim: int, hidden: int, steps: int, repeats: int) -> list[dict]:
    sde = sde_lib.VPSDE()
    score_fn = _mlp_score(dim, hidden, sde)
    shape = (batch, dim)
    x_T = sde.prior_sampling(jax.random.PRNGKey(1), shape)
    rows = []
    for name, stochastic in (("ode_euler", False), ("euler_maruyama", True)):
        ours = jax.jit(lambda k, x, name=name: sampling.sample(sde, score_fn, k, shape, name, steps=steps,
                                                                x_init=x)[0])
        base = _scan_baseline(sde, score_fn, steps, sampling.default_eps(sde), stochastic)
        key = jax.random.PRNGKey(0)
        if not stochastic:  # same maths, same grid: the outputs agree to float32 rounding
            a, b = ours(key, x_T), base(key, x_T)
            diff = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        else:
            diff = float("nan")
        _timed(ours, key, x_T), _timed(base, key, x_T)  # compile both before timing
        t_ours, t_base = [], []
        for r in range(repeats):  # alternate so that load drifts hit both alike
            t_ours.append(_timed(ours, jax.random.PRNGKey(r), x_T))
            t_base.append(_timed(base, jax.random.PRNGKey(r), x_T))
        mo, mb = statistics.median(t_ours), statistics.median(t_base)
        rows.append({"sampler": name, "steps": steps, "batch": batch, "dim": dim,
                     "hidden": hidden, "ours_s": mo, "scan_s": mb, "ratio": mo / mb,
                     "max_rel_diff": diff})
    print("| sampler | steps | batch x dim | ours (s) | lax.scan (s) | ratio | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['batch']}x{r['dim']} | {r['ours_s']:.4f} | {r['scan_s']:.4f} "
              f"| {r['ratio']:.3f} | {r['max_rel_diff']:.1e} |")
    return rows


def _resident_bytes(field: str) -> int | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, from /proc (Linux)."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration):
        return None


def _reset_peak_resident() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM), so the peak covers the timed steps only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_memory(device, peak_reset: bool, baseline: int | None) -> tuple[str, int | None, int | None]:
    """(what was measured, peak bytes, bytes the step added): the device's peak_bytes_in_use (all of it
    the step's: state, batch, temporaries), else the process's peak resident set and its rise over
    ``baseline`` (the resident set before compiling: the compiled program, its buffers, the allocator's cache)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        peak = int(stats["peak_bytes_in_use"])
        return "device peak_bytes_in_use", peak, peak
    if peak_reset:
        kind, peak = "peak resident set during the timed steps", _resident_bytes("VmHWM")
    else:
        kind, peak = "peak resident set of the process", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return kind, peak, None if peak is None or baseline is None else peak - baseline


def _batch(assembly, k: int):
    """A batch of ``assembly``'s run, as the trainer builds it.

    Unconditional pixel models get uniform noise in the data range (the step's cost does not depend on
    the values); conditional or latent models get real training examples with their encoded conditions.
    """
    config = assembly.config
    t = config.training
    if assembly.kind is None and not config.first_stage.workdir:
        shape = ((k,) if k > 1 else ()) + (t.batch_size, *assembly.dims)
        low = -1.0 if config.data.centered else 0.0
        return jax.random.uniform(jax.random.PRNGKey(0), shape, minval=low, maxval=1.0)
    ds = Dataset(config.data, "train", t.batch_size, config.seed, cond=assembly.condition_arrays("train"))
    return next(ds.iterate(0, steps_per_call=k))


def bench_train(config, repeats: int, warmup: int) -> list[dict]:
    """Time ``config``'s train step as the trainer builds it (``training.n_jitted_steps`` updates per call):
    the run's assembly (condition encoder, first stage with its latent scale, objective with the null
    condition and perceptual features), as ``sde_lib.runs.assemble`` makes it for the trainer."""
    assembly = assemble(config)
    config = assembly.config
    t, m = config.training, config.model
    k = int(t.n_jitted_steps)
    mesh = training.make_mesh()
    training.check_batch_sizes(config, mesh, fields=("training.batch_size",))
    optimizer = training.make_optimizer(config.optim, t.n_iters)
    _, state = assembly.init_state(optimizer)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    state = jax.device_put(state, training.replicated(mesh))
    batch = jax.device_put(_batch(assembly, k), training.batch_sharding(mesh, stacked=k > 1))
    step = training.make_train_step(config, optimizer, mesh, assembly.objective())
    baseline = _resident_bytes("VmRSS")  # the process before the step exists: Python, JAX, state, batch

    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    buffers = compiled.memory_analysis()
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    peak_reset = _reset_peak_resident()
    times = []
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = usage.ru_utime + usage.ru_stime - usage_start.ru_utime - usage_start.ru_stime
    cores_busy = cpu_s / sum(times)  # CPU seconds of all threads per wall second
    # XLA:CPU maps its temporary buffer afresh on every call (one page fault per 4 KiB page touched):
    # the kernel time this costs is what n_jitted_steps > 1 amortises (docs/throughput.md).
    faults_per_call = (usage.ru_minflt - usage_start.ru_minflt) / repeats
    system_s_per_call = (usage.ru_stime - usage_start.ru_stime) / repeats
    memory_kind, peak, added = _peak_memory(jax.local_devices()[0], peak_reset, baseline)

    images = k * t.batch_size
    step_s = statistics.median(times)
    xla_bytes = None
    if buffers is not None:  # arguments (state, batch) + outputs + temporaries, less donated aliases
        xla_bytes = (buffers.argument_size_in_bytes + buffers.output_size_in_bytes + buffers.temp_size_in_bytes
                     - buffers.alias_size_in_bytes)
    mib = 2.0**20
    row = {"model": m.name, "nf": m.nf, "ch_mult": list(m.ch_mult), "num_res_blocks": m.num_res_blocks,
           "attn_resolutions": list(m.attn_resolutions), "dropout": m.dropout, "params": n_params,
           "condition": config.condition.kind, "first_stage": config.first_stage.workdir or None,
           "data": list(assembly.dims), "batch": t.batch_size, "n_jitted_steps": k,
           "compute_dtype": t.compute_dtype, "remat": bool(m.remat), "devices": len(mesh.devices.flat),
           "cores_busy": cores_busy, "page_faults_per_call": faults_per_call, "system_s_per_call": system_s_per_call,
           "compile_s": compile_s, "step_s": step_s, "step_s_all": times, "images_per_s": images / step_s,
           "memory_kind": memory_kind, "peak_bytes": peak, "step_bytes": added,
           "step_bytes_per_image": added and added / images,
           "xla_temp_bytes": buffers and buffers.temp_size_in_bytes, "xla_total_bytes": xla_bytes,
           "xla_donated_bytes": buffers and buffers.alias_size_in_bytes,
           "final_loss": float(metrics["loss"][-1])}
    print(f"{m.name} nf={m.nf} ch_mult={tuple(m.ch_mult)} res_blocks={m.num_res_blocks} attn={tuple(m.attn_resolutions)} "
          f"{'x'.join(map(str, assembly.dims))} {n_params / 1e6:.2f}M params, {row['devices']} "
          f"{jax.default_backend()} device(s); memory: {memory_kind}")
    print("| batch | devices | updates/call | dtype | remat | compile (s) | step (s) | images/s | cores busy "
          "| page faults/call | kernel ms/call | peak (MiB) | step's (MiB) | per image (MiB) "
          "| XLA temp per device (MiB) |")
    print("|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    fmt = lambda b: "-" if b is None else f"{b / mib:.1f}"  # noqa: E731
    print(f"| {t.batch_size} | {row['devices']} | {k} | {t.compute_dtype} | {row['remat']} | {compile_s:.1f} "
          f"| {step_s:.3f} | {row['images_per_s']:.1f} | {cores_busy:.2f} | {faults_per_call:.0f} "
          f"| {1e3 * system_s_per_call:.0f} | {fmt(peak)} | {fmt(added)} | {fmt(row['step_bytes_per_image'])} "
          f"| {fmt(row['xla_temp_bytes'])} |")
    return [row]


def main(argv):
    if len(argv) != 2 or argv[1] not in ("sampler", "train"):
        raise app.UsageError("usage: benchmark.py {sampler,train} [flags]; see --help")
    what = argv[1]
    repeats = _REPEATS.value or (7 if what == "sampler" else 10)
    with cli.exit_on_user_error():
        trainer.use_cpu_devices(_CPU_DEVICES.value)
        if what == "sampler":
            rows = bench_sampler(_BATCH.value, _DIM.value, _HIDDEN.value, _STEPS.value, repeats)
        else:
            rows = bench_train(_CONFIG.value, repeats, _WARMUP.value)
    out = _OUT.value or f"out/benchmark_{what}.json"
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    machine = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
               "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(out, "w") as f:
        json.dump({"machine": machine, "rows": rows}, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.absl_flags_parser)
