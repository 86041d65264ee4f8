"""The training loop: config -> data -> network -> loss -> optax (+EMA) -> orbax checkpoints, data-parallel.

:func:`train` resumes from the newest checkpoint in ``workdir``. Each call of the jitted step runs
``n_jitted_steps`` updates; frequencies (``log_freq``, ``eval_freq``, ``snapshot_freq``,
``snapshot_freq_for_preemption``) fire when a call crosses a multiple. The loss and gradient norm of
every update are checked on the host one call behind the device (so the check never stalls the
pipeline) and always before a checkpoint is written: a non-finite value stops the run with
:class:`NonFiniteLossError` naming the update, and no checkpoint holds its result. SIGTERM finishes the
current call, writes a preemption checkpoint and returns.

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
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import signal
import socket
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from sde_lib import checkpoint as ckpt_lib
from sde_lib import conditioning, latent, logging_utils, objectives, sampling, text, training
from sde_lib.config import get_sde, validate_config
from sde_lib.data import Dataset, data_dims, to_uint8
from sde_lib.runs import abstract_state, to_host

log = logging.getLogger(__name__)

LOCK_FILE, HISTORY_FILE, WINDOW_FILE = ".lock", "history.jsonl", "log_window.json"
# Fields that may change when a run resumes: they do not change the model being trained (lengths,
# frequencies, the sampler used for snapshots and evaluation settings, where the data live).
RESUMABLE = ("training.n_iters", "training.log_freq", "training.eval_freq", "training.snapshot_freq",
             "training.snapshot_freq_for_preemption", "training.snapshot_sampling", "training.n_jitted_steps",
             "sampling.*", "eval.*", "data.path")


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm of an update was NaN or Inf."""


class RunConflict(ValueError):
    """The command would damage the run folder (another writer holds it, or the config changed)."""


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


# -------------------------------------------------------------------------------------------- lock
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``workdir/.lock`` held while a run trains: ``{"pid", "host", "since"}``, created atomically.

    A lock of a process that no longer runs on this host is stale: it is taken over with a warning.
    A live lock (or one of another host, which cannot be checked) raises :class:`RunConflict`.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self.held = False

    def __enter__(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": datetime.datetime.now().isoformat(timespec="seconds")}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(me, f)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)  # atomic: fails if the lock exists
                    self.held = True
                    return self
                except FileExistsError:
                    holder = self._holder()
                    if holder is None or (holder.get("host") == me["host"] and not _pid_alive(int(holder["pid"]))):
                        who = "an unreadable lock" if holder is None else f"process {holder['pid']} (no longer running)"
                        warnings.warn(f"{self.path}: taking over the stale lock of {who}", stacklevel=2)
                        stale = f"{self.path}.stale.{os.getpid()}"
                        try:
                            os.replace(self.path, stale)
                            os.remove(stale)
                        except FileNotFoundError:
                            pass  # another process took it over first; try again
                        continue
                    raise RunConflict(
                        f"{os.path.dirname(self.path)} is being trained by process {holder['pid']} on "
                        f"{holder['host']} (since {holder.get('since', '?')}; lock {self.path}); wait for it, stop it, "
                        f"or remove the lock if that process is gone")
            raise RunConflict(f"{self.path}: could not take the lock")
        finally:
            os.remove(tmp)

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc):
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                os.remove(self.path)
            self.held = False


def append_history(workdir: str, event: dict) -> None:
    """One line of ``workdir/history.jsonl``: what each command did to the run (start, resume, changes)."""
    record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid(),
              "host": socket.gethostname(), "argv": sys.argv, **event}
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


# -------------------------------------------------------------------------------------------- loop
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


def samples_to_png(config, x: np.ndarray, path: str) -> np.ndarray | None:
    """Write ``path`` (an image grid, nearest-neighbour enlarged, or a scatter plot of 2-D vectors); return
    the RGB image."""
    x = np.asarray(x)
    d = config.data
    if x.ndim == 4:
        grid = logging_utils.image_grid(to_uint8(x, d.levels or 256, d.centered))
        logging_utils.save_png(path, grid, scale=max(1, 512 // max(grid.shape[:2])))  # readable: ~512 px
        return grid
    if x.ndim == 2 and x.shape[1] >= 2:
        return logging_utils.scatter_png(path, x[:, :2])
    return None


@dataclasses.dataclass
class _Prepared:
    """What :func:`_prepare` checked and loaded before anything is written."""

    train_ds: Dataset
    eval_ds: Dataset
    event: dict
    tokenizer: object = None
    first_stage: latent.FirstStage | None = None


def _prepare(config, workdir: str, mesh, *, force: bool, fork_from: str | None) -> _Prepared:
    """Everything :func:`train` checks before it may write: the data (and their conditions), the first
    stage of a latent run, the recorded config and the fit of existing checkpoints.

    Raises ValueError / FileNotFoundError / :class:`RunConflict` / :class:`~sde_lib.checkpoint.CheckpointMismatch`.
    """
    t = config.training
    training.check_batch_sizes(config, mesh)
    tokenizer = conditioning.tokenizer_for(config)
    eval_split = "test" if config.eval.split == "test" else "train"
    needs_cond = t.objective == "classifier" or config.model.num_classes or config.model.context != "none"
    cond = (lambda split: conditioning.condition_arrays(config, split, tokenizer)) if needs_cond else (lambda s: None)
    train_ds = Dataset(config.data, "train", t.batch_size, config.seed, cond=cond("train"))
    eval_ds = Dataset(config.data, eval_split, config.eval.batch_size, config.seed, cond=cond(eval_split))
    dims = tuple(data_dims(config.data))
    if tuple(train_ds.dims) != dims:
        raise ValueError(f"config.data describes examples of shape {dims}, but {config.data.dataset} holds "
                         f"{tuple(train_ds.dims)}")
    train_ds.steps_per_epoch  # noqa: B018  (raises if the batch exceeds the split)

    recorded_path = os.path.join(workdir, ckpt_lib.CONFIG_FILE)
    exists = os.path.isfile(recorded_path)
    has_checkpoints = bool(_read_only_steps(workdir))
    if fork_from is not None:
        if exists or has_checkpoints:
            raise RunConflict(f"--fork_from starts a new run, but {workdir} already holds one; choose a new --workdir")
        source = ckpt_lib.read_config(fork_from)
        event = {"event": "fork", "from": os.path.abspath(fork_from), "changes": config_changes(source, config)}
    elif exists:
        changes = check_resume(ckpt_lib.read_config(workdir), config, force=force, workdir=workdir)
        event = {"event": "forced resume" if any(not _resumable(k) for k in changes) else "resume",
                 "changes": changes}
    else:
        if has_checkpoints:
            raise RunConflict(f"{workdir} holds checkpoints but no config.json; it is not a run this code can resume")
        event = {"event": "start"}
    first_stage = None
    if config.first_stage.workdir:
        if exists and latent.read_scale(workdir) is not None:
            first_stage = latent.first_stage_of(config, workdir)  # the autoencoder step and scale it started with
        else:
            first_stage = latent.load_first_stage(config)
    if tokenizer is not None and exists and os.path.isfile(os.path.join(workdir, text.VOCAB_FILE)):
        saved = text.WordTokenizer.load(workdir) if config.model.context == "caption" else None
        if saved is not None and saved.words != tokenizer.words:
            raise RunConflict(f"{workdir}: the data's caption vocabulary differs from the run's vocab.json")
    _, target = abstract_state(config)
    for folder in ([fork_from] if fork_from else []) + ([workdir] if exists else []):
        probe = ckpt_lib.Checkpointer(folder, read_only=True)
        try:
            for step, manager in probe.steps():
                probe.check_fits(step, manager, target)
        finally:
            probe.close()
    return _Prepared(train_ds, eval_ds, event, tokenizer, first_stage)


def _read_only_steps(workdir: str) -> list[int]:
    if not os.path.isdir(workdir):
        return []
    probe = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        return [s for s, _ in probe.steps()]
    finally:
        probe.close()


def _save_window(workdir: str, step: int, window: list[dict]) -> None:
    """The updates logged since the last log line, so that a run resumed at ``step`` logs the same means."""
    if jax.process_index() != 0:
        return
    keys = window[0].keys() if window else ()
    record = {"step": int(step), **{k: np.concatenate([w[k] for w in window]).tolist() for k in keys}}
    path = os.path.join(workdir, WINDOW_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def _load_window(workdir: str, step: int) -> list[dict]:
    try:
        with open(os.path.join(workdir, WINDOW_FILE)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return []
    if record.pop("step", None) != step or not record.get("loss"):
        return []
    # float32, as the device computed them: the logged mean must be the uninterrupted run's to the bit.
    return [{k: np.asarray(v, np.float32) for k, v in record.items()}]


def train(config, workdir: str, *, devices=None, keep: int | None = 5, progress: bool = True, force: bool = False,
          fork_from: str | None = None):
    """Train ``config`` in ``workdir`` (resuming from its newest checkpoint) and return the final TrainState.

    Args:
      config: a config of the schema (validated here).
      workdir: run directory: checkpoints, ``config.json``, ``history.jsonl``, ``metrics.jsonl``,
        TensorBoard, samples.
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
    prepared = _prepare(config, workdir, mesh, force=force, fork_from=fork_from)
    optimizer = training.make_optimizer(config.optim, t.n_iters)
    graphdef, state = training.init_train_state(config, optimizer)
    state = jax.device_put(state, training.replicated(mesh))

    # Everything is checked: from here on the command writes.
    writer = jax.process_index() == 0
    if writer:
        os.makedirs(workdir, exist_ok=True)
    lock = RunLock(workdir) if writer else None
    if lock is not None:
        lock.__enter__()
    try:
        return _train_locked(config, workdir, mesh, optimizer, graphdef, state, prepared, keep=keep,
                             progress=progress, fork_from=fork_from)
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)


def _train_locked(config, workdir, mesh, optimizer, graphdef, state, prepared: _Prepared, *, keep, progress,
                  fork_from):
    t = config.training
    k = int(t.n_jitted_steps)
    train_ds, eval_ds, event = prepared.train_ds, prepared.eval_ds, prepared.event
    checkpoints = ckpt_lib.Checkpointer(workdir, keep=keep)
    source = ckpt_lib.Checkpointer(fork_from, read_only=True, async_writes=False) if fork_from else checkpoints
    try:
        restored, start = source.restore_latest(state)
    finally:
        if fork_from:
            source.close()
    state, start = (restored, start) if restored is not None else (state, 0)
    if fork_from and restored is None:
        checkpoints.close()
        raise FileNotFoundError(f"--fork_from={fork_from}: no readable checkpoint to start from")
    stage = prepared.first_stage
    if stage is not None and latent.read_scale(workdir) is None:  # a latent run's first start
        stage.scale = latent.compute_scale(stage, train_ds.x_model_space(2048), jax.random.PRNGKey(config.seed))
    if jax.process_index() == 0:
        ckpt_lib.write_config(workdir, config)
        if stage is not None and latent.read_scale(workdir) is None:
            latent.save_scale(workdir, stage)
        if isinstance(prepared.tokenizer, text.WordTokenizer):
            prepared.tokenizer.save(workdir)
        append_history(workdir, {**event, "step": int(start), "backend": jax.default_backend(),
                                 "devices": int(mesh.size), **({} if stage is None else {
            "first_stage": stage.workdir, "first_stage_step": stage.step, "latent_scale": stage.scale})})
    if start:
        log.warning("resuming %s from step %d", workdir, start)
    if fork_from:
        checkpoints.save(start, state)  # the fork's first checkpoint: the source's state, in this run
    if start >= t.n_iters:
        checkpoints.close()
        return state
    if start % k:
        checkpoints.close()
        raise ValueError(f"the run resumes at step {start}, which config.training.n_jitted_steps={k} does not divide")

    objective = run_objective(config, graphdef, prepared.tokenizer, stage)
    train_step = training.make_train_step(config, graphdef, optimizer, mesh, objective)
    batches = train_ds.iterate(start, sharding=training.batch_sharding(mesh, stacked=k > 1), steps_per_call=k)
    eval_step = training.make_eval_step(config, graphdef, mesh, objective)
    eval_x, eval_mask = next(eval_ds.eval_batches(dequantize=bool(config.data.uniform_dequantization),
                                                  sharding=training.batch_sharding(mesh)))
    eval_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    sample_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    logger = logging_utils.MetricsLogger(workdir, start)
    bar = tqdm(total=t.n_iters, initial=start, unit="step", dynamic_ncols=True,
               disable=not progress or jax.process_index() != 0)
    step, pending, stopping = start, None, False
    window = _load_window(workdir, start)  # the partial log window a preempted run left behind
    tick, timed = time.perf_counter(), 0

    def flush_pending():
        nonlocal pending, timed
        if pending is not None:
            window.append(_check_finite(pending[1], pending[0], checkpoints))
            timed += len(window[-1]["loss"])
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
                    record = {k: float(np.mean(np.concatenate([w[k] for w in window]))) for k in window[0]}
                    record["steps_per_sec"] = timed / (now - tick)
                    window, tick, timed = [], now, 0
                    logger.write(step, record)
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                if _crossed(step, k, t.eval_freq):
                    logger.write(step, {"eval_loss": to_host(eval_step(state.ema, eval_x, eval_mask, eval_key))})
                if snapshot or preempt or stopping:
                    checkpoints.save(step, state, snapshot=snapshot)
                    _save_window(workdir, step, window)
                if snapshot and t.snapshot_sampling and t.objective == "score":
                    _snapshot_samples(config, graphdef, state, sample_key, workdir, step, logger, prepared)
            flush_pending()
            if stopping:
                log.warning("SIGTERM: stopped at step %d with a checkpoint in %s", step, workdir)
    finally:
        bar.close()
        logger.close()
        checkpoints.close()  # waits for asynchronous writes: the last good checkpoint is complete
    return state


def _snapshot_samples(config, graphdef, state, key, workdir, step, logger, prepared: _Prepared) -> None:
    """Sample the EMA model (conditional runs: test conditions; latent runs: decoded) into samples/."""
    s = config.sampling
    stage = prepared.first_stage
    dims = latent.model_dims(config)
    cond = None
    if prepared.eval_ds.cond:
        cond = {k: jnp.asarray(v[: s.batch_size]) for k, v in prepared.eval_ds.cond.items()}
    x, _ = sampling.sample(get_sde(config), training.score_fn(config, graphdef, state.ema), key,
                           (s.batch_size, *dims), sampler=s.sampler, steps=s.steps, eps=s.eps, denoise=s.denoise,
                           cond=cond, **dict(s.options))
    if stage is not None:
        x = stage.decode(x)
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        image = samples_to_png(config, to_host(x), os.path.join(workdir, "samples", f"step_{step}.png"))
        if image is not None:
            logger.write_image(step, "samples", image)


def run_objective(config, graphdef, tokenizer=None, stage: latent.FirstStage | None = None):
    """The objective of ``config``'s train step: its null condition (condition dropout), the frozen first
    stage of a latent run and the perceptual features of an autoencoder run (``objectives.make``)."""
    first = None if stage is None else objectives.FirstStage(stage.params, stage.moments, stage.scale,
                                                              bool(config.first_stage.sample_latents))
    return objectives.make(config, graphdef, null_cond=conditioning.null_condition(config, tokenizer),
                           first_stage=first, perceptual=_perceptual(config))


def _perceptual(config):
    """The feature function of the autoencoder's perceptual term (None when its weight is 0)."""
    if config.training.objective != "autoencoder" or not config.training.perceptual_weight:
        return None
    d = config.data
    if d.dataset.startswith("canvas"):
        from sde_lib.metrics.canvas import get_evaluator

        evaluator = get_evaluator(d.dataset)
        return lambda x: evaluator.unit_features_fn((x + 1.0) / 2.0 if d.centered else x)
    from sde_lib.metrics import get_classifier

    clf = get_classifier(d)
    return lambda x: clf.unit_features_fn((x + 1.0) / 2.0 if d.centered else x)
