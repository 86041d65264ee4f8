"""Checkpoints of a run folder with orbax: numbered snapshots and a frequent preemption checkpoint.

Layout inside the run folder (score_sde's names; ``RunFolder.checkpoint_dir``):

* ``checkpoints/<step>/``: snapshots every ``training.snapshot_freq`` updates, the last ``keep`` kept;
* ``checkpoints-meta/<step>/``: preemption checkpoints every ``training.snapshot_freq_for_preemption``
  updates and on SIGTERM, the last two kept (so a damaged latest one still leaves one to fall back to).

Writes are asynchronous (orbax commits a step by an atomic rename, so a process killed mid-write leaves
no half step behind). Resuming takes the newest step of either directory. A step whose files cannot be
read is skipped with one warning line; a writer (training) also moves it aside to ``<step>.corrupt``,
a reader (``read_only=True``: sampling, evaluation) never renames, creates or deletes anything. A step
that is readable but does not fit the model (other shapes: the config changed) is never called corrupt:
it raises :class:`~sde_lib.errors.CheckpointMismatch`. No pickle: arrays go to orbax's tensorstore format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from sde_lib.errors import CheckpointMismatch
from sde_lib.runs.folder import PREEMPTION, SNAPSHOTS, RunFolder


def abstract_like(state):
    """Shape/dtype/sharding of every leaf of ``state``: the restore target orbax needs."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


@contextlib.contextmanager
def _quiet():
    """Silence orbax's and TensorStore's logging and asyncio's task tracebacks during a restore attempt
    (a damaged step otherwise prints ~100 lines); our own one-line warning says what happened."""
    loggers = [logging.getLogger(n) for n in ("asyncio", "absl", "orbax", "jax")]
    levels = [lg.level for lg in loggers]
    absl_level = absl_logging.get_verbosity()
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        absl_logging.set_verbosity(absl_logging.FATAL)
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        absl_logging.set_verbosity(absl_level)


# tensorstore's status codes, and what they mean for a checkpoint's files, in words
_STATUS = {"NOT_FOUND": "some of its array files are missing", "OUT_OF_RANGE": "its array files are truncated",
           "DATA_LOSS": "its array files are damaged", "FAILED_PRECONDITION": "its array files are inconsistent",
           "PERMISSION_DENIED": "its files cannot be read (permission denied)"}


def _reason(err: Exception) -> str:
    """Why a step could not be restored, in plain words (the library's own message often names an internal
    object, a driver chain or a byte offset rather than what is wrong with the files)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, (UnicodeDecodeError, json.JSONDecodeError)):
        return "its metadata files are damaged (not readable JSON)"
    if isinstance(err, FileNotFoundError):
        return "some of its files are missing"
    status = next((code for code in _STATUS if text.startswith(code)), None)
    if status:
        return _STATUS[status]
    if "pytree structure" in text:
        return "its metadata does not describe the arrays it should hold (damaged metadata)"
    if not text or text.startswith("<") or "pybind11" in text:  # a repr of an internal object: no reason given
        return f"its files could not be read ({type(err).__name__})"
    return text if len(text) <= 160 else text[:160] + "..."


def _path(keys) -> str:
    """A tree path as ``a/b/0/c``, whatever the container types (orbax's metadata stores dicts and string
    indices where the state has named tuples, lists and attributes)."""
    tokens = []
    for k in keys:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                tokens.append(str(getattr(k, attr)))
                break
    return "/".join(tokens)


def _mismatches(stored, target) -> list[str]:
    """Differences between a checkpoint's stored tree metadata and the restore target, as short lines."""
    is_leaf = lambda v: hasattr(v, "shape")  # noqa: E731  (metadata leaves and ShapeDtypeStructs)
    flat_s = {_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(stored, is_leaf=is_leaf)[0]}
    flat_t = {_path(p): v for p, v in jax.tree_util.tree_flatten_with_path(target, is_leaf=is_leaf)[0]}
    # nnx stores a parameter's array under ".value": compare without that last token on either side.
    flat_s = {k.removesuffix("/value"): v for k, v in flat_s.items()}
    flat_t = {k.removesuffix("/value"): v for k, v in flat_t.items()}
    out = []
    for key in sorted(set(flat_s) | set(flat_t)):
        if key not in flat_t:
            out.append(f"{key} is in the checkpoint, not in the model")
        elif key not in flat_s:
            out.append(f"{key} is in the model, not in the checkpoint")
        else:
            shape_s, shape_t = tuple(getattr(flat_s[key], "shape", ())), tuple(flat_t[key].shape)
            if shape_s != shape_t:
                out.append(f"{key} has shape {shape_s} in the checkpoint, {shape_t} in the model")
    return out


class Checkpointer:
    """The two orbax ``CheckpointManager`` s of a run folder.

    Args:
      folder: the run folder; a read-only folder gives a read-only checkpointer (creates no folder, never
        moves a damaged step aside, refuses to save).
      keep: numbered snapshots to keep (None: all).
      async_writes: write in a background thread (orbax's async checkpointing).
    """

    def __init__(self, folder: RunFolder, keep: int | None = 5, async_writes: bool = True):
        if keep is not None and int(keep) < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        self.workdir = folder.path
        read_only = self.read_only = folder.read_only

        def manager(name, max_to_keep):
            path = folder.checkpoint_dir(name)
            if read_only and not os.path.isdir(path):
                return None
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None if read_only else max_to_keep, create=not read_only, read_only=read_only,
                save_interval_steps=0 if read_only else 1, enable_async_checkpointing=async_writes)
            with _quiet():  # orbax warns that a read-only manager is read-only
                return ocp.CheckpointManager(path, options=options, item_handlers=ocp.StandardCheckpointHandler())

        self.snapshots = manager(SNAPSHOTS, keep)
        self.preemption = manager(PREEMPTION, 2)
        self._managers = [m for m in (self.snapshots, self.preemption) if m is not None]

    def save(self, step: int, state, *, snapshot: bool = False) -> None:
        """Start writing ``state`` as ``step``: a numbered snapshot, else a preemption checkpoint."""
        if self.read_only:
            raise RuntimeError(f"{self.workdir}: a read-only Checkpointer cannot save")
        target = self.snapshots if snapshot else self.preemption
        if step not in target.all_steps():
            target.save(int(step), args=ocp.args.StandardSave(state))

    def steps(self) -> list[tuple[int, ocp.CheckpointManager]]:
        """Every committed ``(step, manager)``, newest first (a snapshot before a preemption copy)."""
        found = [(s, m) for m in self._managers for s in m.all_steps()]
        return sorted(found, key=lambda sm: (-sm[0], sm[1] is self.preemption))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[0][0] if steps else None

    def _path(self, manager, step: int) -> str:
        return os.path.join(str(manager.directory), str(step))

    def check_fits(self, step: int, manager, target) -> None:
        """Raise :class:`CheckpointMismatch` if ``step``'s stored arrays do not have ``target``'s tree and
        shapes. Unreadable metadata is not a mismatch (the restore decides whether the step is damaged)."""
        try:
            with _quiet():
                stored = manager.item_metadata(step)
        except Exception:  # noqa: BLE001  (unreadable: left to the restore)
            return
        stored = getattr(stored, "tree", stored)
        if stored is None:
            return
        try:
            diffs = _mismatches(stored, target)
        except Exception:  # noqa: BLE001
            return
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise CheckpointMismatch(
                f"checkpoint {self._path(manager, step)} does not fit the model this config builds: "
                f"{'; '.join(diffs[:3])}{more}")

    def restore(self, step: int, target):
        """The state saved as ``step`` (either directory), shaped and sharded like ``target``."""
        for s, manager in self.steps():
            if s == step:
                self.check_fits(s, manager, target)
                with _quiet():
                    return manager.restore(s, args=ocp.args.StandardRestore(abstract_like(target)))
        raise FileNotFoundError(f"no checkpoint of step {step} under {self.workdir}")

    def restore_latest(self, target):
        """``(state, step)`` of the newest restorable checkpoint, or ``(None, None)`` if there is none.

        A step that does not fit ``target`` raises :class:`CheckpointMismatch`. A step that cannot be
        read, or whose stored step disagrees with its name, is skipped with one warning line naming it and
        the step used instead; a writer also moves it aside to ``<step>.corrupt``.
        """
        skipped = []
        for step, manager in self.steps():
            self.check_fits(step, manager, target)
            try:
                with _quiet():
                    state = manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
                stored = int(np.asarray(state.step)) if hasattr(state, "step") else step
                if stored != step:
                    raise ValueError(f"it holds step {stored}")
            except Exception as err:  # noqa: BLE001  (orbax/tensorstore raise many types for damaged files)
                skipped.append((self._path(manager, step), _reason(err)))
                if not self.read_only:
                    self._set_aside(manager, step)
                continue
            self._warn(skipped, f"step {step}")
            return state, step
        self._warn(skipped, "none (no readable checkpoint left)")
        return None, None

    def _warn(self, skipped, used: str) -> None:
        for path, why in skipped:
            aside = f"; moved to {path}.corrupt" if not self.read_only else ""
            warnings.warn(f"checkpoint {path} could not be restored: {why}{aside}; using {used}", stacklevel=3)

    def _set_aside(self, manager, step: int) -> None:
        path = self._path(manager, step)
        if jax.process_index() == 0 and os.path.exists(path):
            shutil.rmtree(path + ".corrupt", ignore_errors=True)  # an older damaged copy of the same step
            os.replace(path, path + ".corrupt")
        manager.reload()  # forget the step, so that a later save of the same step is possible

    def wait(self) -> None:
        """Block until every pending asynchronous write is committed."""
        for m in self._managers:
            m.wait_until_finished()

    def close(self) -> None:
        self.wait()
        for m in self._managers:
            m.close()


def restore(folder: RunFolder, target, step: int | None = None):
    """``(state, step)`` of a run's newest readable checkpoint (or of ``step``), shaped like ``target``; reads
    only. One-line errors for a run without checkpoints, an unknown step and a checkpoint of another model."""
    checkpoints = Checkpointer(folder.reader(), async_writes=False)
    try:
        if step is None:
            state, step = checkpoints.restore_latest(target)
            if state is None:
                raise FileNotFoundError(f"{folder.given}: no checkpoint to load (has it trained a snapshot yet?)")
        else:
            state = checkpoints.restore(int(step), target)
    finally:
        checkpoints.close()
    return state, int(step)


def steps(folder: RunFolder | str) -> list[int]:
    """Every step with a committed checkpoint of a run folder (or its path), snapshots and preemption copies,
    ascending; reads only."""
    folder = RunFolder(folder) if isinstance(folder, str) else folder
    if not folder.exists:
        return []
    checkpoints = Checkpointer(folder.reader())
    try:
        return sorted({s for s, _ in checkpoints.steps()})
    finally:
        checkpoints.close()
