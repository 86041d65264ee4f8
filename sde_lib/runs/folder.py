"""A run folder and every small file in it: the one module that opens paths inside a run.

Layout of a run folder (score_sde's names where it has them):

    config.json           the resolved config; read back upgraded to today's schema (:func:`upgrade`)
    history.jsonl         one line per command that wrote to the run (start, resume, fork, changes)
    .lock                 the writer's lock: {"pid", "host", "since"}
    log_window.json       the updates logged since the last log line, at the last checkpoint
    latent_scale.json     latent runs: the autoencoder run, its step and the latent scale
    vocab.json            the condition kind's encoder (a caption vocabulary, layout tokens)
    metrics.jsonl         one JSON object per log line; tensorboard/ the same as TensorBoard events
    samples/step_N.png    samples drawn at snapshots
    checkpoints/, checkpoints-meta/   orbax's (``sde_lib.runs.checkpoints``)

Every small file is written atomically (a temporary file, then a rename), so a killed process leaves the
old file or the new one. A folder opened ``read_only`` (loaders, evaluation, sampling) refuses every
write. In a multi-process run only process 0 writes (``writer``); the others read.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
import socket
import sys
import warnings

import jax
import ml_collections
import numpy as np

from sde_lib.config import default_config
from sde_lib.errors import RunConflict

CONFIG, HISTORY, LOCK, WINDOW = "config.json", "history.jsonl", ".lock", "log_window.json"
FIRST_STAGE, ENCODER, METRICS, TENSORBOARD, SAMPLES = ("latent_scale.json", "vocab.json", "metrics.jsonl",
                                                       "tensorboard", "samples")
SNAPSHOTS, PREEMPTION = "checkpoints", "checkpoints-meta"


class RunFolder:
    """The run folder at ``path``.

    Args:
      path: the folder (need not exist yet for a writer).
      read_only: refuse every write (loaders); nothing is created, renamed or deleted.
      writer: whether this process writes (False on processes other than 0 of a multi-process run: the
        write methods then do nothing). Default: process 0.
    """

    def __init__(self, path: str, *, read_only: bool = True, writer: bool | None = None):
        self.path = os.path.abspath(path)
        self.given = path
        self.read_only = read_only
        self.writer = (jax.process_index() == 0) if writer is None else bool(writer)

    def __repr__(self):
        return f"RunFolder({self.given!r}{', read_only' if self.read_only else ''})"

    def reader(self) -> "RunFolder":
        """The same folder, read-only (for probes that must not write, whatever this object may do)."""
        return RunFolder(self.given, read_only=True, writer=False)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def entries(self) -> set[str]:
        """The names in the folder (empty when it does not exist)."""
        return set(os.listdir(self.path)) if self.exists else set()

    @property
    def has_config(self) -> bool:
        return os.path.isfile(self.file(CONFIG))

    def checkpoint_dir(self, name: str) -> str:
        """The folder of orbax's ``name`` checkpoint manager (:data:`SNAPSHOTS` or :data:`PREEMPTION`)."""
        if name not in (SNAPSHOTS, PREEMPTION):
            raise ValueError(f"no checkpoint folder {name!r}")
        return self.file(name)

    # ------------------------------------------------------------------------------------- writes
    def _writes(self) -> bool:
        """Whether a write happens here: refused when read-only, skipped on processes that do not write."""
        if self.read_only:
            raise RuntimeError(f"{self.given}: opened read-only; this command must not write into the run")
        if self.writer:
            os.makedirs(self.path, exist_ok=True)
        return self.writer

    def _write_json(self, name: str, obj, indent: int | None = None) -> None:
        if not self._writes():
            return
        path = self.file(name)
        with open(path + ".tmp", "w") as f:
            json.dump(obj, f, indent=indent, default=str)
            f.write("\n")
        os.replace(path + ".tmp", path)

    def _read_json(self, name: str, what: str):
        """The JSON of ``name``, or None when the file does not exist; one ValueError when it is unreadable."""
        path = self.file(name)
        if not os.path.isfile(path):
            return None
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read {what} ({err})") from None

    def create(self) -> None:
        """Create the folder (a writer's first write)."""
        self._writes()

    def remove_new_run(self, kept: set[str]) -> None:
        """Undo a run this command started and that wrote no checkpoint: remove every entry not in ``kept``
        (what the folder held before the command), and the folder itself if nothing is left."""
        if not self._writes():
            return
        for name in self.entries() - set(kept):
            path = self.file(name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        if not self.entries():
            os.rmdir(self.path)

    # ------------------------------------------------------------------------------------- config
    def read_config(self) -> ml_collections.ConfigDict:
        """The config the run was started with, upgraded to today's schema (see :func:`upgrade`)."""
        if not self.has_config:
            raise FileNotFoundError(f"{self.file(CONFIG)}: no config.json; is {self.given!r} a training workdir?")
        return upgrade(self._read_json(CONFIG, "the run's config as JSON"))

    def write_config(self, config) -> None:
        if self._writes():
            path = self.file(CONFIG)
            with open(path + ".tmp", "w") as f:
                f.write(config.to_json(indent=2) + "\n")
            os.replace(path + ".tmp", path)

    # ------------------------------------------------------------------------------------ history
    def append_history(self, event: dict) -> None:
        """One line of ``history.jsonl``: what a command did to the run (and when, where, how it was called)."""
        if not self._writes():
            return
        record = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid(),
                  "host": socket.gethostname(), "argv": sys.argv, **event}
        with open(self.file(HISTORY), "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def read_history(self) -> list[dict]:
        return _read_jsonl(self.file(HISTORY))

    # -------------------------------------------------------------------------------------- lock
    def lock(self) -> "RunLock":
        """The writer's lock, a context manager (see :class:`RunLock`)."""
        if self.read_only:
            raise RuntimeError(f"{self.given}: a read-only folder takes no lock")
        return RunLock(self.file(LOCK)) if self.writer else contextlib.nullcontext()

    # -------------------------------------------------------------------------------- log window
    def save_window(self, step: int, window: list[dict]) -> None:
        """The updates logged since the last log line, so that a run resumed at ``step`` logs the same means."""
        keys = window[0].keys() if window else ()
        self._write_json(WINDOW, {"step": int(step), **{k: np.concatenate([w[k] for w in window]).tolist()
                                                        for k in keys}})

    def load_window(self, step: int) -> list[dict]:
        try:
            record = self._read_json(WINDOW, "the log window")
        except ValueError:
            return []  # a damaged window costs one log line's mean, nothing else
        if not record or record.pop("step", None) != step or not record.get("loss"):
            return []
        # float32, as the device computed them: the logged mean must be the uninterrupted run's to the bit.
        return [{k: np.asarray(v, np.float32) for k, v in record.items()}]

    # ------------------------------------------------------------------------ first stage, encoder
    def read_first_stage(self) -> dict | None:
        """A latent run's ``{"scale", "first_stage", "step"}``, or None before its first start."""
        return self._read_json(FIRST_STAGE, "the latent scale")

    def write_first_stage(self, record: dict) -> None:
        self._write_json(FIRST_STAGE, record)

    def read_encoder(self) -> dict | None:
        """The saved state of the condition kind's encoder (e.g. a caption vocabulary), or None."""
        return self._read_json(ENCODER, "the run's condition encoder (vocabulary)")

    def write_encoder(self, state: dict) -> None:
        self._write_json(ENCODER, state, indent=1)

    # ----------------------------------------------------------------------------- logs, samples
    def metrics_logger(self, start_step: int = 0, tensorboard: bool = True) -> "MetricsLogger":
        """A logger appending to ``metrics.jsonl`` (and TensorBoard) from ``start_step``; lines after it (of a
        run killed after its last checkpoint) are dropped first."""
        if not self._writes():
            return MetricsLogger(None, None, start_step)
        return MetricsLogger(self.file(METRICS), self.file(TENSORBOARD) if tensorboard else None, start_step)

    def read_metrics(self) -> list[dict]:
        """The records of ``metrics.jsonl`` in order."""
        return _read_jsonl(self.file(METRICS))

    def samples_path(self, step: int) -> str | None:
        """Where snapshot samples of ``step`` go (``samples/step_N.png``); None on processes that do not write."""
        if not self._writes():
            return None
        os.makedirs(self.file(SAMPLES), exist_ok=True)
        return os.path.join(self.file(SAMPLES), f"step_{int(step)}.png")


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------ config upgrade
def upgrade(raw: dict) -> ml_collections.ConfigDict:
    """A recorded config (a dict) in today's schema: fields added since it was written take the value that
    reproduces what the run did (``optim.ema_warmup=False``: older runs had none), or the default; moved
    fields move (score_sde's ``sampling.snr`` / ``n_steps_each`` became pc's ``sampling.options``; the
    condition of ``model.num_classes`` / ``model.context`` became ``condition.kind``)."""
    raw = _tuples(json.loads(json.dumps(raw)))  # a deep copy
    sampling = raw.get("sampling", {})
    snr, n_steps = sampling.pop("snr", None), sampling.pop("n_steps_each", None)
    if "options" not in sampling and sampling.get("sampler") == "pc" and snr is not None:
        sampling["options"] = {"snr": snr, "n_steps": n_steps}
    model = raw.setdefault("model", {})
    model.pop("progressive", None)  # was a one-choice field ("none")
    context = model.pop("context", "none")
    if "condition" not in raw:
        kind = context if context != "none" else ("label" if model.get("num_classes") else "none")
        raw["condition"] = {"kind": kind}
    raw.setdefault("optim", {}).setdefault("ema_warmup", False)
    config = default_config()
    _merge(config, raw)
    return config


def _merge(dst, src):
    for k, v in src.items():
        if k in dst and isinstance(dst[k], ml_collections.ConfigDict) and isinstance(v, dict):
            if dst[k].keys() or not v:
                _merge(dst[k], v)
            else:
                dst[k] = ml_collections.ConfigDict(v)
        else:
            with dst.ignore_type():
                dst[k] = v


def _tuples(tree):
    """JSON lists -> tuples (the schema's sequences are tuples), recursively."""
    if isinstance(tree, dict):
        return {k: _tuples(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return tuple(_tuples(v) for v in tree)
    return tree


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
    """``.lock`` held while a run trains: ``{"pid", "host", "since"}``, created atomically (a hard link).

    A lock of a process that no longer runs on this host is stale: it is taken over with a warning. A live
    lock (or one of another host, which cannot be checked) raises :class:`~sde_lib.errors.RunConflict`.
    """

    def __init__(self, path: str):
        self.path = path
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


# ------------------------------------------------------------------------------------------ metrics
class MetricsLogger:
    """Appends scalar metrics to ``metrics.jsonl`` and TensorBoard (tensorboardX); with no path it logs
    nothing (processes other than 0). On resume at step k, lines after k (of a run killed after its last
    checkpoint, and a line cut short by the kill) are dropped and TensorBoard is told to purge events
    after k, so both logs read as one uninterrupted run."""

    def __init__(self, path: str | None, tensorboard_dir: str | None, start_step: int = 0):
        self.path, self._file, self._writer = path, None, None
        if path is None:
            return
        _truncate_jsonl(path, start_step)
        self._file = open(path, "a")
        if tensorboard_dir:
            from tensorboardX import SummaryWriter  # lazily: a heavy optional dependency only the writer needs

            self._writer = SummaryWriter(tensorboard_dir, purge_step=start_step + 1 if start_step > 0 else None)

    def write(self, step: int, metrics: dict) -> None:
        """Log scalar ``metrics`` (Python or 0-d array values) at ``step``; flushed at once."""
        if self._file is None:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, int(step))
            self._writer.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Add an ``(H, W, 3)`` uint8 image to TensorBoard."""
        if self._writer is not None:
            self._writer.add_image(tag, image, int(step), dataformats="HWC")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def _truncate_jsonl(path: str, last_step: int) -> None:
    """Keep the complete lines of ``path`` whose step is <= ``last_step`` (atomically rewritten)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", math.inf) <= last_step:
                kept.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
