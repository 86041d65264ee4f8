"""Checkpoints of a run directory with orbax: numbered snapshots, a frequent preemption checkpoint, the config.

Layout of ``workdir`` (score_sde's names):

* ``checkpoints/<step>/``: snapshots every ``training.snapshot_freq`` updates, the last ``keep`` kept;
* ``checkpoints-meta/<step>/``: preemption checkpoints every ``training.snapshot_freq_for_preemption``
  updates and on SIGTERM, the last two kept (so a damaged latest one still leaves one to fall back to);
* ``config.json``: the resolved config.

Writes are asynchronous (orbax commits a step by an atomic rename, so a process killed mid-write leaves
no half step behind). Resuming takes the newest step of either directory; a step that fails to restore
is moved aside to ``<step>.corrupt`` with a warning and the next newest is tried. No pickle: arrays go
to orbax's tensorstore format, the config to JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings

import jax
import ml_collections
import orbax.checkpoint as ocp

SNAPSHOTS, PREEMPTION, CONFIG_FILE = "checkpoints", "checkpoints-meta", "config.json"


def write_config(workdir: str, config) -> str:
    """Write ``config`` as ``workdir/config.json`` (process 0; atomic rename) and return the path."""
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json(indent=2) + "\n")
        os.replace(tmp, path)
    return path


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run in ``workdir`` was started with; tuples (e.g. ``ch_mult``) come back as tuples."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no config.json; is {workdir!r} a training workdir?")
    with open(path) as f:
        raw = json.load(f)
    return ml_collections.ConfigDict(_tuples(raw))


def _tuples(tree):
    """JSON lists -> tuples (the schema's sequences are tuples), recursively."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


def abstract_like(state):
    """Shape/dtype/sharding of every leaf of ``state``: the restore target orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


class Checkpointer:
    """The two orbax ``CheckpointManager`` s of a run directory.

    Args:
      workdir: the run directory.
      keep: numbered snapshots to keep (None: all).
      async_writes: write in a background thread (orbax's async checkpointing).
    """

    def __init__(self, workdir: str, keep: int | None = 5, async_writes: bool = True):
        if keep is not None and int(keep) < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        self.workdir = os.path.abspath(workdir)

        def manager(name, max_to_keep):
            options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                                   enable_async_checkpointing=async_writes)
            return ocp.CheckpointManager(os.path.join(self.workdir, name), options=options)

        self.snapshots = manager(SNAPSHOTS, keep)
        self.preemption = manager(PREEMPTION, 2)

    def save(self, step: int, state, *, snapshot: bool = False) -> None:
        """Start writing ``state`` as ``step``: a numbered snapshot, else a preemption checkpoint."""
        target = self.snapshots if snapshot else self.preemption
        if step not in target.all_steps():
            target.save(int(step), args=ocp.args.StandardSave(state))

    def steps(self) -> list[tuple[int, ocp.CheckpointManager]]:
        """Every committed ``(step, manager)``, newest first (a snapshot before a preemption copy)."""
        found = [(s, m) for m in (self.snapshots, self.preemption) for s in m.all_steps()]
        return sorted(found, key=lambda sm: (-sm[0], sm[1] is self.preemption))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[0][0] if steps else None

    def restore(self, step: int, target):
        """The state saved as ``step`` (either directory), shaped and sharded like ``target``."""
        for s, manager in self.steps():
            if s == step:
                return manager.restore(s, args=ocp.args.StandardRestore(abstract_like(target)))
        raise FileNotFoundError(f"no checkpoint of step {step} under {self.workdir}")

    def restore_latest(self, target):
        """``(state, step)`` of the newest restorable checkpoint, or ``(None, None)`` if there is none.

        A checkpoint that fails to restore, or whose stored step disagrees with its name, is moved
        aside with a warning and the next newest is tried.
        """
        for step, manager in self.steps():
            try:
                state = manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
                if int(state.step) != step:
                    raise ValueError(f"it holds step {int(state.step)}")
                return state, step
            except Exception as err:  # orbax/tensorstore raise many types for damaged files
                path = os.path.join(manager.directory, str(step))
                warnings.warn(f"checkpoint {path} could not be restored ({type(err).__name__}: {err}); "
                              f"moving it to {path}.corrupt and trying the previous one", stacklevel=2)
                self._set_aside(manager, step, path)
        return None, None

    def _set_aside(self, manager, step: int, path: str) -> None:
        if jax.process_index() == 0 and os.path.exists(path):
            shutil.rmtree(path + ".corrupt", ignore_errors=True)  # an older damaged copy of the same step
            os.replace(path, path + ".corrupt")
        manager.reload()  # forget the step, so that a later save of the same step is possible

    def wait(self) -> None:
        """Block until every pending asynchronous write is committed."""
        self.snapshots.wait_until_finished()
        self.preemption.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.snapshots.close()
        self.preemption.close()
