"""The training loop and the checkpoint-consuming helpers the scripts call.

:func:`train`: config -> data -> network -> loss -> optax (+EMA) -> orbax checkpoints, data-parallel over
every device. Each call of the jitted step runs ``n_jitted_steps`` updates; frequencies (``log_freq``,
``eval_freq``, ``snapshot_freq``, ``snapshot_freq_for_preemption``) fire when a call crosses a multiple.
The loss and gradient norm of every update are checked on the host one call behind the device (so the
check never stalls the pipeline) and always before a checkpoint is written: a non-finite value stops
the run with :class:`NonFiniteLossError` naming the update, and no checkpoint holds its result.
SIGTERM finishes the current call, writes a preemption checkpoint and returns.

:func:`load_ema` / :func:`draw_samples` / :func:`evaluate_bpd` read a run directory back.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import models
from sde_lib import checkpoint as ckpt_lib
from sde_lib import logging_utils, sampling, training
from sde_lib.config import get_sde, validate_config
from sde_lib.data import data_dims, eval_batches, load_split, make_iterator, to_uint8
from sde_lib.likelihood import bits_per_dim


log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm of an update was NaN or Inf."""


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> None:
    """Join a multi-process run: explicit coordinator, or ``auto`` (cluster detection: SLURM, TPU, ...).

    Must run before any other JAX call. Single-process runs call nothing.
    """
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()


def to_host(x) -> np.ndarray:
    """A replicated (or process-local) array as NumPy, also when other processes hold copies."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def _crossed(step: int, k: int, freq: int) -> bool:
    """Whether the updates (step - k, step] include a multiple of ``freq``."""
    return step // freq > (step - k) // freq


def _check_finite(metrics: dict, first_step: int, checkpoints: ckpt_lib.Checkpointer) -> dict:
    """Host copies of per-update ``metrics``; raise naming the first update (1-based) with a non-finite value."""
    host = {k: to_host(v) for k, v in metrics.items()}
    bad = ~np.isfinite(host["loss"]) | ~np.isfinite(host["grad_norm"])
    if bad.any():
        i = int(np.argmax(bad))
        checkpoints.wait()
        last = checkpoints.latest_step()
        where = f"step {last} in {checkpoints.workdir}" if last is not None else "none (no checkpoint yet)"
        raise NonFiniteLossError(f"non-finite loss {host['loss'][i]} (grad norm {host['grad_norm'][i]}) at step "
                                 f"{first_step + i + 1}; stopping. Last good checkpoint: {where}")
    return host


class _StopOnSigterm:
    """Context manager turning SIGTERM into a flag the loop polls between calls."""

    def __enter__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def _samples_to_files(config, x: np.ndarray, prefix: str) -> np.ndarray | None:
    """Write ``prefix.png`` (image grid, or a scatter plot of 2-D vectors); return the RGB image."""
    x = np.asarray(x)
    d = config.data
    if x.ndim == 4:
        levels = d.levels or 256
        grid = logging_utils.image_grid(to_uint8(x, levels, d.centered))
        scale = max(1, 256 // grid.shape[0])
        logging_utils.save_png(prefix + ".png", grid, scale=scale)
        return grid
    if x.ndim == 2 and x.shape[1] >= 2:
        return logging_utils.scatter_png(prefix + ".png", x[:, :2])
    return None


def draw_samples(config, sde, score_fn, key, *, sampler: str | None = None, steps: int | None = None,
                 num: int | None = None, denoise: bool | None = None) -> tuple[np.ndarray, dict]:
    """``num`` samples ``(num, *dims)`` of ``score_fn`` with the sampler of ``config.sampling`` (or the given one)."""
    s = config.sampling
    sampler = sampler or s.sampler
    options = {"snr": s.snr, "n_steps": s.n_steps_each} if sampler == "pc" else {}
    shape = (int(num or s.batch_size), *data_dims(config.data))
    x, info = sampling.sample(sde, score_fn, key, shape,
                              sampler=sampler, steps=int(steps or s.steps), eps=s.eps,
                              denoise=s.denoise if denoise is None else denoise, **options)
    return to_host(x), info


def train(config, workdir: str, *, devices=None, keep: int | None = 5, progress: bool = True):
    """Train ``config`` in ``workdir`` (resuming from its newest checkpoint) and return the final TrainState.

    Args:
      config: a config of the schema (validated here).
      workdir: run directory: checkpoints, ``config.json``, ``metrics.jsonl``, TensorBoard, samples.
      devices: devices of the data-parallel mesh (default: all devices of all processes).
      keep: numbered snapshots kept (None: all).
      progress: show a tqdm bar (process 0).
    """
    config = validate_config(config)
    t = config.training
    k = int(t.n_jitted_steps)
    if t.n_iters % k:
        raise ValueError(f"config.training.n_iters={t.n_iters} must be a multiple of n_jitted_steps={k}")
    ckpt_lib.write_config(workdir, config)
    mesh = training.make_mesh(devices)
    for field, size in (("training.batch_size", t.batch_size), ("eval.batch_size", config.eval.batch_size)):
        if size % mesh.size:
            raise ValueError(f"config.{field}={size} must be a multiple of the {mesh.size} devices")
    optimizer = training.make_optimizer(config.optim, config.training.n_iters)
    graphdef, state = training.init_train_state(config, optimizer)
    state = jax.device_put(state, training.replicated(mesh))
    checkpoints = ckpt_lib.Checkpointer(workdir, keep=keep)
    restored, start = checkpoints.restore_latest(state)
    state, start = (restored, start) if restored is not None else (state, 0)
    if start:
        log.warning("resuming %s from step %d", workdir, start)
    if start >= t.n_iters:
        checkpoints.close()
        return state

    train_step = training.make_train_step(config, graphdef, optimizer, mesh)
    batches = make_iterator(config, "train", start, sharding=training.batch_sharding(mesh, stacked=k > 1))
    eval_step = training.make_eval_step(config, graphdef, mesh)
    sde = get_sde(config)
    build_score = training.score_fn_builder(config, graphdef, sde)
    eval_x, eval_mask = next(eval_batches(config, dequantize=bool(config.data.uniform_dequantization),
                                          sharding=training.batch_sharding(mesh)))
    eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    logger = logging_utils.MetricsLogger(workdir, start)
    bar = tqdm(total=t.n_iters, initial=start, unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    step, pending, window, tick, stopping = start, None, [], time.perf_counter(), False

    def flush_pending():
        nonlocal pending
        if pending is not None:
            window.append(_check_finite(pending[1], pending[0], checkpoints))
            pending = None

    try:
        with _StopOnSigterm() as stop:
            while step < t.n_iters and not stopping:
                state, metrics = train_step(state, next(batches))
                flush_pending()  # the previous call's values: ready by now, so this does not stall
                pending, step = (step, metrics), step + k
                bar.update(k)
                stopping = stop.requested  # read once: the checkpoint below must cover a stop
                snapshot = _crossed(step, k, t.snapshot_freq) or step == t.n_iters
                preempt = _crossed(step, k, t.snapshot_freq_for_preemption)
                if _crossed(step, k, t.log_freq) or snapshot or preempt or stopping:
                    flush_pending()
                if _crossed(step, k, t.log_freq) and window:
                    now = time.perf_counter()
                    record = {"loss": float(np.mean(np.concatenate([w["loss"] for w in window]))),
                              "grad_norm": float(np.mean(np.concatenate([w["grad_norm"] for w in window]))),
                              "steps_per_sec": sum(len(w["loss"]) for w in window) / (now - tick)}
                    window, tick = [], now
                    logger.write(step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                if _crossed(step, k, t.eval_freq):
                    logger.write(step, {"eval_loss": to_host(eval_step(state.ema, eval_x, eval_mask, eval_key))})
                if snapshot or preempt or stopping:
                    checkpoints.save(step, state, snapshot=snapshot)
                if snapshot and t.snapshot_sampling:
                    x, _ = draw_samples(config, sde, build_score(state.ema), sample_key)
                    if jax.process_index() == 0:
                        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
                        image = _samples_to_files(config, x, os.path.join(workdir, "samples", f"step_{step}"))
                        if image is not None:
                            logger.write_image(step, "samples", image)
            flush_pending()
            if stopping:
                log.warning("SIGTERM: stopped at step %d with a checkpoint in %s", step, workdir)
    finally:
        bar.close()
        logger.close()
        checkpoints.close()  # waits for asynchronous writes: the last good checkpoint is complete
    return state


def load_ema(workdir: str, step: int | None = None):
    """``(config, graphdef, ema_params, step)`` of ``workdir``'s newest checkpoint (or ``step``)."""
    config = ckpt_lib.read_config(workdir)
    optimizer = training.make_optimizer(config.optim, config.training.n_iters)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.get_model(config, nnx.Rngs(0))), nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          jax.eval_shape(lambda: training.init_train_state(config, optimizer)[1]))
    checkpoints = ckpt_lib.Checkpointer(workdir, async_writes=False)
    try:
        if step is None:
            state, step = checkpoints.restore_latest(target)
            if state is None:
                raise FileNotFoundError(f"{workdir}: no checkpoint to load")
        else:
            state = checkpoints.restore(step, target)
    finally:
        checkpoints.close()
    return config, graphdef, state.ema, int(step)


def sample_workdir(workdir: str, out_prefix: str, *, sampler: str | None = None, steps: int | None = None,
                   num: int | None = None, seed: int = 0, denoise: bool | None = None) -> dict:
    """Sample ``workdir``'s EMA model; write ``out_prefix.png`` and ``out_prefix.npz`` (``samples``, ``nfe``)."""
    config, graphdef, ema, step = load_ema(workdir)
    start = time.perf_counter()
    sde = get_sde(config)
    score_fn = training.score_fn_builder(config, graphdef, sde)(ema)
    x, info = draw_samples(config, sde, score_fn, jax.random.PRNGKey(seed), sampler=sampler, steps=steps, num=num,
                           denoise=denoise)
    seconds = time.perf_counter() - start
    nfe = float(np.mean(to_host(info["nfe"])))
    os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
    np.savez(out_prefix + ".npz", samples=x, nfe=nfe, step=step)
    _samples_to_files(config, x, out_prefix)
    return {"step": step, "sampler": sampler or config.sampling.sampler, "steps": int(steps or config.sampling.steps),
            "nfe": nfe, "num": len(x),
            "seconds": seconds, "png": out_prefix + ".png", "npz": out_prefix + ".npz"}


def evaluate_bpd(workdir: str, *, split: str | None = None, num: int | None = None, n_dequant: int | None = None,
                 trace: str = "hutchinson", seed: int = 0, batch_size: int | None = None,
                 step: int | None = None) -> dict:
    """Bits/dim of ``workdir``'s EMA model (newest checkpoint, or ``step``): :func:`model_bpd` plus ``step``."""
    config, graphdef, ema, step = load_ema(workdir, step)
    if config.data.levels is None:
        raise ValueError(f"{workdir}: bits/dim needs discrete data (config.data.levels), got continuous data")
    sde = get_sde(config)
    report = model_bpd(config, sde, training.score_fn_builder(config, graphdef, sde)(ema), split=split, num=num,
                       n_dequant=n_dequant, trace=trace, seed=seed, batch_size=batch_size)
    return {"step": step, **report}


def model_bpd(config, sde, score_fn, *, split: str | None = None, num: int | None = None,
              n_dequant: int | None = None, trace: str = "hutchinson", seed: int = 0,
              batch_size: int | None = None) -> dict:
    """Bits/dim of ``score_fn``'s PF-ODE model on ``split`` (default ``config.eval.split``) of ``config.data``.

    Uses the first ``num`` examples (default ``config.eval.num_samples``), ``n_dequant`` dequantisation
    draws (default ``config.eval.bpd_num_repeats``) and ``sde_lib.likelihood.bits_per_dim``.
    """
    d, e = config.data, config.eval
    if d.levels is None:
        raise ValueError("bits/dim needs discrete data (config.data.levels), got continuous data")
    split = split or e.split
    levels = load_split(config.data, split)
    levels = levels[: int(num or e.num_samples)]
    start = time.perf_counter()
    bpd, info = bits_per_dim(sde, score_fn, levels,
                             jax.random.PRNGKey(seed), levels=d.levels, scale=(-1.0, 1.0) if d.centered else (0.0, 1.0),
                             n_dequant=int(n_dequant or e.bpd_num_repeats), trace=trace,
                             batch_size=batch_size or e.batch_size, eps=config.training.eps)
    bpd = to_host(bpd)
    return {"split": split, "num": len(levels), "bpd": float(np.mean(bpd)),
            "bpd_stderr": float(np.std(bpd) / math.sqrt(len(bpd))), "nfe": float(np.mean(to_host(info["nfe"]))),
            "trace": trace, "seconds": time.perf_counter() - start}
