"""The training loop: config -> data -> network -> loss -> optax (+EMA) -> orbax checkpoints, data-parallel.

:func:`train` resumes from the newest checkpoint in ``workdir``. Each call of the jitted step runs
``n_jitted_steps`` updates; frequencies (``log_freq``, ``eval_freq``, ``snapshot_freq``,
``snapshot_freq_for_preemption``) fire when a call crosses a multiple. The loss and gradient norm of
every update are checked on the host one call behind the device (so the check never stalls the
pipeline) and always before a checkpoint is written: a non-finite value stops the run with
:class:`NonFiniteLossError` naming the update and what was not finite, and no checkpoint holds its
result. SIGTERM finishes the current call, writes a preemption checkpoint and returns; Ctrl-C (SIGINT)
does the same and then raises :class:`~sde_lib.errors.Interrupted` (``train.py`` exits with status 130);
a second Ctrl-C aborts at once. A run already at or past ``n_iters`` changes nothing: one line says so.
A new run that fails before its first checkpoint leaves no folder behind (only what the command itself
created is removed), so the next attempt starts afresh.

A run folder is never damaged by a second command:

* **validate, then write**: the config, the data (files present, shapes matching the config) and the
  fit of existing checkpoints are checked before anything is written; a failing call leaves the folder
  byte for byte as it was (and does not create it);
* **a run's config is its identity**: resuming compares the new config with ``config.json``. Fields in
  :data:`RESUMABLE` may change (the change is appended to ``history.jsonl``); any other difference is
  refused with a :class:`RunConflict` naming the fields, unless ``force=True`` (recorded as forced);
  ``fork_from=OTHER`` starts a new run in ``workdir`` from OTHER's newest checkpoint with this config;
* **one writer**: a lock file ``workdir/.lock`` (process id, host) is held for the whole run; a second
  training exits at once with :class:`RunConflict`; a lock left by a dead process on this host is taken
  over with a warning.

Every file in the folder is written through its owner, ``sde_lib.runs.folder.RunFolder`` (checkpoints
through orbax, ``sde_lib.runs.checkpoints``); the run's parts come from ``sde_lib.runs.assemble``, the
same assembly ``load_run`` uses.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sde_lib import figures, sampling, training
from sde_lib.config import validate_config
from sde_lib.data import Dataset, data_dims
from sde_lib.errors import Interrupted, NonFiniteLossError, RunConflict
from sde_lib.runs import checkpoints as ckpt_lib
from sde_lib.runs.assemble import Assembly, assemble
from sde_lib.runs.folder import RunFolder
from sde_lib.training import to_host

log = logging.getLogger(__name__)

# Fields that may change when a run resumes: they do not change the model being trained (lengths,
# frequencies, the sampler used for snapshots and evaluation settings, where the data live).
RESUMABLE = ("training.n_iters", "training.log_freq", "training.eval_freq", "training.snapshot_freq",
             "training.snapshot_freq_for_preemption", "training.snapshot_sampling", "training.n_jitted_steps",
             "sampling.*", "eval.*", "data.path", "data.workers")


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, auto: bool = False) -> None:
    """Join a multi-process run: explicit coordinator, or ``auto`` (cluster detection: SLURM, TPU, ...).

    Must run before any other JAX call. Single-process runs call nothing.
    """
    if coordinator_address:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()


def use_cpu_devices(n: int | None) -> None:
    """Expose the host CPU as ``n`` JAX devices, so that training runs data-parallel over them.

    XLA:CPU runs one device's program one operation after another and leaves many of them (elementwise
    fusions, reductions, small matrix products) on a single core; ``n`` devices run ``n`` shards of the
    batch at once, so every core stays busy (docs/throughput.md: U-Net steps 1.3-1.6x the images/s with 2
    devices on 2 cores; the quick start's MLP, whose large matrix products already use every core, 0.6x).
    The batch must be a multiple of ``n``; results equal one device's up to the summation order of the
    batch mean. Has no effect where the default backend is a GPU or TPU.
    Must run before any other JAX call; ``None`` keeps JAX's default (one CPU device).
    """
    if n is None:
        return
    if n < 1:
        raise ValueError(f"--cpu_devices={n}: must be at least 1")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError as err:  # JAX refuses once a backend exists
        raise ValueError(f"--cpu_devices={n}: must be set before any JAX computation in this process") from err


# ------------------------------------------------------------------------------------------ identity
def _flat(config, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        if hasattr(v, "items"):
            sub = _flat(v, f"{prefix}{k}.")
            out.update(sub or {f"{prefix}{k}": {}})
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(old, new) -> dict[str, tuple]:
    """``{field: (old value, new value)}`` for every dotted field that differs between two configs."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _resumable(field: str) -> bool:
    return any(field == r or (r.endswith(".*") and field.startswith(r[:-1])) for r in RESUMABLE)


def check_resume(recorded, config, *, force: bool = False, workdir: str = "") -> dict[str, tuple]:
    """The changes of ``config`` against the ``recorded`` one; :class:`RunConflict` if any is not
    :data:`RESUMABLE` (unless ``force``)."""
    changes = config_changes(recorded, config)
    refused = [k for k in changes if not _resumable(k)]
    if refused and not force:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise RunConflict(
            f"{workdir}: the config differs from the run's recorded config.json in {shown}{more}; resuming would "
            f"train another model. Start a new run in another --workdir, start one from this run's checkpoint "
            f"with --fork_from={workdir} --workdir=NEW, or continue this run with the new values with --force")
    return changes


# -------------------------------------------------------------------------------------------- loop
def _crossed(step: int, k: int, freq: int) -> bool:
    """Whether the updates (step - k, step] include a multiple of ``freq``."""
    return step // freq > (step - k) // freq


def _check_finite(metrics: dict, first_step: int, checkpoints: ckpt_lib.Checkpointer) -> dict:
    """Host copies of per-update ``metrics``; raise naming the first update (1-based) with a non-finite loss
    or gradient, which of the two it was, and the usual remedies."""
    host = {k: to_host(v) for k, v in metrics.items()}
    bad = ~np.isfinite(host["loss"]) | ~np.isfinite(host["grad_norm"])
    if bad.any():
        i = int(np.argmax(bad))
        loss, norm = host["loss"][i], host["grad_norm"][i]
        what = (f"non-finite loss ({loss})" if not np.isfinite(loss)
                else f"non-finite gradients (global norm {norm}) at a loss of {loss:.4g}")
        checkpoints.wait()
        last = checkpoints.latest_step()
        where = f"step {last} in {checkpoints.workdir}" if last is not None else "none (no checkpoint yet)"
        raise NonFiniteLossError(f"{what} at step {first_step + i + 1}; stopping. Last good checkpoint: {where}. "
                                 f"Usual remedies: a lower config.optim.lr, gradient clipping "
                                 f"(config.optim.grad_clip > 0), a longer config.optim.warmup")
    return host


class _StopOnSignals:
    """Context manager turning SIGTERM and a first SIGINT (Ctrl-C) into a flag the loop polls between calls;
    a second SIGINT raises KeyboardInterrupt at once."""

    def __enter__(self):
        self.requested = None  # the signal that asked to stop
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.requested == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("a second Ctrl-C: stopped without a checkpoint of the last updates")
        self.requested = signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


@dataclasses.dataclass
class _Prepared:
    """What :func:`_prepare` checked and loaded before anything is written."""

    assembly: Assembly
    train_ds: Dataset
    eval_ds: Dataset
    event: dict
    done: tuple | None = None  # (message, state) of a run already at or past n_iters


def _prepare(config, folder: RunFolder, mesh, *, force: bool, fork_from: str | None) -> _Prepared:
    """Everything :func:`train` checks before it may write: the recorded config, the run's parts (condition
    encoder, first stage), the data and their conditions, and the fit of existing checkpoints.

    Raises ValueError / FileNotFoundError / :class:`RunConflict` / :class:`~sde_lib.errors.CheckpointMismatch`.
    """
    t = config.training
    training.check_batch_sizes(config, mesh)
    eval_split = "test" if config.eval.split == "test" else "train"
    train_ds = Dataset(config.data, "train", t.batch_size, config.seed, workers=config.data.workers)
    eval_ds = Dataset(config.data, eval_split, config.eval.batch_size, config.seed)
    dims = tuple(data_dims(config.data))
    if tuple(train_ds.dims) != dims:
        raise ValueError(f"config.data describes examples of shape {dims}, but {config.data.dataset} holds "
                         f"{tuple(train_ds.dims)}")
    train_ds.steps_per_epoch  # noqa: B018  (raises if the batch exceeds the split)
    has_checkpoints = bool(ckpt_lib.steps(folder))
    source = None
    if fork_from is not None:
        if folder.has_config or has_checkpoints:
            raise RunConflict(f"--fork_from starts a new run, but {folder.given} already holds one; "
                              f"choose a new --workdir")
        source = RunFolder(fork_from)
        event = {"event": "fork", "from": source.path, "changes": config_changes(source.read_config(), config)}
    elif folder.has_config:
        changes = check_resume(folder.read_config(), config, force=force, workdir=folder.given)
        event = {"event": "forced resume" if any(not _resumable(k) for k in changes) else "resume",
                 "changes": changes}
    else:
        if has_checkpoints:
            raise RunConflict(f"{folder.given} holds checkpoints but no config.json; "
                              f"it is not a run this code can resume")
        event = {"event": "start"}
    assembly = assemble(config, folder, source=source)
    done = None
    if source is None and folder.has_config and has_checkpoints and max(ckpt_lib.steps(folder)) >= t.n_iters:
        state, step = ckpt_lib.restore(folder, assembly.target)  # read-only: a damaged step is skipped, not moved
        if step >= t.n_iters:
            done = (f"run at step {step} {'has reached' if step == t.n_iters else 'is past'} "
                    f"n_iters={t.n_iters}; nothing to do", state)
    train_ds.set_conditions(assembly.condition_arrays("train"))
    eval_ds.set_conditions(assembly.condition_arrays(eval_split))
    for probe_folder in [f for f in (source, folder if folder.has_config else None) if f is not None]:
        probe = ckpt_lib.Checkpointer(probe_folder.reader())
        try:
            for step, manager in probe.steps():
                probe.check_fits(step, manager, assembly.target)
        finally:
            probe.close()
    return _Prepared(assembly, train_ds, eval_ds, event, done)


def train(config, workdir: str, *, devices=None, keep: int | None = 5, progress: bool = True, force: bool = False,
          fork_from: str | None = None):
    """Train ``config`` in ``workdir`` (resuming from its newest checkpoint) and return the final TrainState.

    Args:
      config: a config of the schema (validated here).
      workdir: the run folder: checkpoints, ``config.json``, ``history.jsonl``, ``metrics.jsonl``,
        TensorBoard, samples (``sde_lib.runs.folder``).
      devices: devices of the data-parallel mesh (default: all devices of all processes).
      keep: numbered snapshots kept (None: all).
      progress: show a tqdm bar (process 0).
      force: resume although fields outside :data:`RESUMABLE` changed (recorded in ``history.jsonl``).
      fork_from: start this new run from another run's newest checkpoint (its step, parameters, EMA and
        optimiser state) with ``config``.
    """
    config = validate_config(config)
    t = config.training
    k = int(t.n_jitted_steps)
    if t.n_iters % k:
        raise ValueError(f"config.training.n_iters={t.n_iters} must be a multiple of n_jitted_steps={k}")
    mesh = training.make_mesh(devices)
    folder = RunFolder(workdir, read_only=False)
    prepared = _prepare(config, folder, mesh, force=force, fork_from=fork_from)
    if prepared.done is not None:  # nothing is written: not even the changed n_iters
        message, state = prepared.done
        log.warning("%s", message)
        return state
    optimizer = training.make_optimizer(config.optim, t.n_iters)
    _, state = prepared.assembly.init_state(optimizer)
    state = jax.device_put(state, training.replicated(mesh))

    # Everything is checked: from here on the command writes.
    new, before = not folder.has_config, folder.entries()
    folder.create()
    try:
        with folder.lock():
            return _train_locked(config, folder, mesh, optimizer, state, prepared, keep=keep, progress=progress,
                                 fork_from=fork_from)
    except BaseException:
        if new and not ckpt_lib.steps(folder):
            folder.remove_new_run(before)  # a start that failed before its first checkpoint leaves nothing
        raise


def _train_locked(config, folder: RunFolder, mesh, optimizer, state, prepared: _Prepared, *, keep, progress,
                  fork_from):
    t = config.training
    k = int(t.n_jitted_steps)
    assembly, train_ds, eval_ds = prepared.assembly, prepared.train_ds, prepared.eval_ds
    checkpoints = ckpt_lib.Checkpointer(folder, keep=keep)
    source = ckpt_lib.Checkpointer(RunFolder(fork_from), async_writes=False) if fork_from else checkpoints
    try:
        restored, start = source.restore_latest(state)
    finally:
        if fork_from:
            source.close()
    state, start = (restored, start) if restored is not None else (state, 0)
    if fork_from and restored is None:
        checkpoints.close()
        raise FileNotFoundError(f"--fork_from={fork_from}: no readable checkpoint to start from")
    folder.write_config(config)
    if "encoder" in assembly.new:
        folder.write_encoder(assembly.new["encoder"])
    if "first_stage" in assembly.new:
        folder.write_first_stage(assembly.new["first_stage"])
    stage = assembly.first_stage
    folder.append_history({**prepared.event, "step": int(start), "backend": jax.default_backend(),
                           "devices": int(mesh.size),
                           **({} if stage is None else {"first_stage": stage.workdir, "first_stage_step": stage.step,
                                                        "latent_scale": stage.scale})})
    if start:
        log.warning("resuming %s from step %d", folder.given, start)
    if fork_from:
        checkpoints.save(start, state)  # the fork's first checkpoint: the source's state, in this run
    if start >= t.n_iters:
        checkpoints.close()
        return state
    if start % k:
        checkpoints.close()
        raise ValueError(f"the run resumes at step {start}, which config.training.n_jitted_steps={k} does not divide")

    objective = assembly.objective()
    train_step = training.make_train_step(config, optimizer, mesh, objective)
    batches = train_ds.iterate(start, sharding=training.batch_sharding(mesh, stacked=k > 1), steps_per_call=k)
    eval_step = training.make_eval_step(mesh, objective)
    eval_x, eval_mask = next(eval_ds.eval_batches(dequantize=bool(config.data.uniform_dequantization),
                                                  sharding=training.batch_sharding(mesh)))
    eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    logger = folder.metrics_logger(start)
    bar = tqdm(total=t.n_iters, initial=start, unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    step, pending, stopping = start, None, False
    window = folder.load_window(start)  # the partial log window a preempted run left behind
    tick, timed = time.perf_counter(), 0

    def flush_pending():
        nonlocal pending, timed
        if pending is not None:
            window.append(_check_finite(pending[1], pending[0], checkpoints))
            timed += len(window[-1]["loss"])
            pending = None

    try:
        with _StopOnSignals() as stop:
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
                    record = {k: float(np.mean(np.concatenate([w[k] for w in window]))) for k in window[0]}
                    record["steps_per_sec"] = timed / (now - tick)
                    window, tick, timed = [], now, 0
                    logger.write(step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                if _crossed(step, k, t.eval_freq):
                    logger.write(step, {"eval_loss": to_host(eval_step(state.ema, eval_x, eval_mask, eval_key))})
                if snapshot or preempt or stopping:
                    checkpoints.save(step, state, snapshot=snapshot)
                    folder.save_window(step, window)
                if snapshot and t.snapshot_sampling and t.objective == "score":
                    _snapshot_samples(assembly, state, sample_key, folder, step, logger, eval_ds)
            flush_pending()
    finally:
        bar.close()
        logger.close()
        checkpoints.close()  # waits for asynchronous writes: the last good checkpoint is complete
    if stopping == signal.SIGINT:
        raise Interrupted(f"interrupted (Ctrl-C): stopped at step {step} with a checkpoint in {folder.given}; "
                          f"the same command resumes it")
    if stopping:
        log.warning("SIGTERM: stopped at step %d with a checkpoint in %s", step, folder.given)
    return state


def _snapshot_samples(assembly: Assembly, state, key, folder: RunFolder, step, logger, eval_ds: Dataset) -> None:
    """Sample the EMA model (conditional runs: test conditions; latent runs: decoded) into samples/."""
    config, s = assembly.config, assembly.config.sampling
    cond = None
    if eval_ds.cond:
        rows = np.arange(s.batch_size) % eval_ds.num_examples  # the first test conditions (cycled if too few)
        cond = {k: jnp.asarray(v) for k, v in eval_ds.cond_rows(rows).items()}
    x, _ = sampling.sample(assembly.sde, assembly.score_fn(state.ema), key, (s.batch_size, *assembly.model_dims),
                           sampler=s.sampler, steps=s.steps, eps=s.eps, denoise=s.denoise, cond=cond, **dict(s.options))
    if assembly.first_stage is not None:
        x = assembly.first_stage.decode(x)
    path = folder.samples_path(step)
    if path is not None:
        image = figures.samples_to_png(config, to_host(x), path)
        if image is not None:
            logger.write_image(step, "samples", image)
