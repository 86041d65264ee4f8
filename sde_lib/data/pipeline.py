"""Reproducible, resumable batches: a training batch is a pure function of (seed, step).

Training order: with N examples and global batch size B there are S = floor(N / B) steps per epoch;
step s is in epoch e = s // S at position p = s % S and holds the examples
``perm_e[p B : (p+1) B]``, ``perm_e = counter_rng.permutation(N, make_key(seed, SHUFFLE, e))`` (the
N mod B examples left over are skipped that epoch only). Example i in epoch e is flipped and dequantised
with randomness hashed from (seed, e, i), so the batches of a run resumed at step k equal those of an
uninterrupted run, and do not depend on how the batch is split over processes. Process ``r`` of ``P``
receives rows ``[r B/P, (r+1) B/P)`` of every global batch.

Conditions ride along row for row (``{"x": ..., "label": ...}``); a condition drawn anew at every step
(:class:`PerStep`: one of the captions of an image, :class:`Choices`; a random mask over the image) is
drawn from (seed, step, example), and from a fixed key in evaluation batches.

Image files (``files.ImageFiles``, the ``folder`` data set) are read lazily: the host batches of the
steps ahead are made by ``grain`` (its ``MapDataset`` over step numbers, mapped to the same batch
function, read by ``data.workers`` processes or, with 0, by threads of this one), so memory stays bounded
however many files there are, and the batches are those of the in-memory path bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grain
import jax
from absl import flags
import numpy as np

from sde_lib.data import counter_rng, scaling
from sde_lib.data.files import ImageFiles
from sde_lib.data.pairs import read_pairs
from sde_lib.data.sources import data_dims, load_split, parse

_STEPS_AHEAD = 10**12  # the length of grain's (lazily mapped) sequence of steps: never reached


class PerStep:
    """A condition whose rows are drawn at every training step rather than stored: ``len`` rows (one per
    example), and :meth:`pick` of examples ``rows`` with the step's ``key`` (None: evaluation, a fixed draw)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def pick(self, rows: np.ndarray, key: np.ndarray | None) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Choices(PerStep):
    """Several values of a condition per example: ``values`` ``(N, K, ...)``, of which the first ``counts[i]``
    are example i's (the rest padding)."""

    values: np.ndarray
    counts: np.ndarray

    def __len__(self):
        return len(self.values)

    def pick(self, rows: np.ndarray, key: np.ndarray | None) -> np.ndarray:
        """``(len(rows), ...)``: one value per row, drawn from ``(key, row)`` (the first with ``key`` None)."""
        if key is None:
            return self.values[rows, 0]
        which = counter_rng.hash_items(key, rows) % self.counts[rows].astype(np.uint64)
        return self.values[rows, which.astype(np.int64)]


def first_choice(cond: dict) -> dict:
    """Condition arrays with every :class:`PerStep` replaced by its evaluation draw (a caption's first value)."""
    return {k: v.pick(np.arange(len(v)), None) if isinstance(v, PerStep) else v for k, v in cond.items()}


def _place(x: np.ndarray, sharding, global_shape: tuple[int, ...]):
    """The host array itself, or a global ``jax.Array`` assembled from every process's rows."""
    if sharding is None:
        return x
    return jax.make_array_from_process_local_data(sharding, x, global_shape)


class Dataset:
    """One split of ``config.data`` in host memory, batched reproducibly.

    Args:
      data_cfg: ``config.data``.
      split: ``'train'`` or ``'test'``.
      batch_size: the global batch size B (summed over processes).
      seed: the run's seed (``config.seed``): shuffles, flips and dequantisation noise derive from it.
      process_index, process_count: this process's share; default ``jax.process_index()`` / ``count()``.
      cond: per-example condition arrays served with the images, e.g. ``{"label": (N,)}`` or
        ``{"tokens": (N, L)}`` (``sde_lib.conditioning``): batches become ``{"x": ..., **cond}``.
      workers: processes reading image files (0: threads of this process); in-memory data ignore it.

    With ``data_cfg.pairs`` (reflow) the training split is the pairs file's ``x`` (model space, used as is)
    and each batch also holds its rows' ``"noise"``.
    """

    def __init__(self, data_cfg, split: str, batch_size: int, seed: int, *, process_index=None, process_count=None,
                 cond: dict | None = None, workers: int = 0):
        self.spec = parse(data_cfg)
        self.split, self.pair_noise = split, None
        if split == "train" and self.spec.pairs:
            self.x, self.pair_noise = read_pairs(self.spec.pairs, tuple(data_dims(data_cfg)))
        else:
            self.x = load_split(self.spec, split)
        self.set_conditions(cond)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        if self.batch_size < 1 or self.batch_size % self.process_count:
            raise ValueError(
                f"batch size {batch_size} must be a positive multiple of the process count {self.process_count}"
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {process_index} outside 0..{self.process_count - 1}")
        self.local_batch_size = self.batch_size // self.process_count
        self.workers = int(workers)
        self._epoch_perm: tuple[int, np.ndarray] | None = None

    @property
    def lazy(self) -> bool:
        """Whether the examples are files read on demand (rather than an array in memory)."""
        return isinstance(self.x, ImageFiles)

    def set_conditions(self, cond: dict | None) -> None:
        """Serve ``cond`` (per-example arrays, row for row with the examples) with the images from now on (and
        the pairs' noise, which stays)."""
        cond = {k: v if isinstance(v, PerStep) else np.asarray(v) for k, v in (cond or {}).items()}
        if self.pair_noise is not None:
            cond["noise"] = self.pair_noise
        for k, v in cond.items():
            if len(v) != len(self.x):
                raise ValueError(f"{self.spec.dataset} {self.split}: {len(self.x)} examples but {len(v)} rows of {k!r}")
        self.cond = cond

    @property
    def discrete(self) -> bool:
        """Whether the data are integer levels (scaled to model space here) rather than floats."""
        return np.issubdtype(self.x.dtype, np.integer)

    @property
    def num_examples(self) -> int:
        return len(self.x)

    @property
    def dims(self) -> tuple[int, ...]:
        return self.x.shape[1:]

    @property
    def steps_per_epoch(self) -> int:
        if self.batch_size > self.num_examples:
            raise ValueError(f"batch size {self.batch_size} exceeds the {self.num_examples} examples of the split")
        return self.num_examples // self.batch_size

    def _local(self, rows: np.ndarray) -> np.ndarray:
        start = self.process_index * self.local_batch_size
        return rows[start : start + self.local_batch_size]

    def _transform(self, idx: np.ndarray, key: np.ndarray, flip: bool, dequantize: bool) -> np.ndarray:
        """Examples ``idx`` -> float32 model-space batch, randomness hashed from (key, example index)."""
        x = self.x[idx]
        if flip:
            heads = (counter_rng.hash_items(counter_rng.make_key(key, 1), idx) >> np.uint64(63)).astype(bool)
            x = np.where(heads[:, None, None, None], x[:, :, ::-1, :], x)
        if not self.discrete:
            return x
        if not dequantize:
            return scaling.scale(x, self.spec.levels, self.spec.centered)
        per_example = counter_rng.hash_items(counter_rng.make_key(key, 0), idx)[:, None]
        u = counter_rng.uniform(per_example, np.arange(int(np.prod(self.dims)))[None, :]).reshape(x.shape)
        return scaling.dequantize(x, u, self.spec.levels, self.spec.centered)

    def indices_at(self, step: int) -> tuple[int, np.ndarray]:
        """(epoch, global example indices ``(B,)``) of training step ``step``."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        if self._epoch_perm is None or self._epoch_perm[0] != epoch:
            key = counter_rng.make_key(self.seed, counter_rng.SHUFFLE, epoch)
            self._epoch_perm = (epoch, counter_rng.permutation(self.num_examples, key))
        return epoch, self._epoch_perm[1][pos * self.batch_size : (pos + 1) * self.batch_size]

    def batch_at(self, step: int) -> np.ndarray:
        """This process's rows ``(B/P, *dims)`` float32 of training step ``step``, augmented as configured."""
        epoch, idx = self.indices_at(step)
        key = counter_rng.make_key(self.seed, counter_rng.AUGMENT, epoch)
        return self._transform(self._local(idx), key, self.spec.random_flip, self.spec.uniform_dequantization)

    def x_model_space(self, n: int) -> np.ndarray:
        """The first ``n`` examples in model space, without flips or dequantisation noise (bin centres)."""
        idx = np.arange(min(int(n), self.num_examples))
        return self._transform(idx, counter_rng.make_key(self.seed, counter_rng.EVAL_NOISE, 0), False, False)

    def cond_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's condition rows of training step ``step`` (row for row with :meth:`batch_at`)."""
        rows = self._local(self.indices_at(step)[1])
        key = counter_rng.make_key(self.seed, counter_rng.CHOICE, step)
        return {k: v.pick(rows, key) if isinstance(v, PerStep) else v[rows] for k, v in self.cond.items()}

    def cond_rows(self, rows) -> dict[str, np.ndarray]:
        """The condition rows of examples ``rows`` (evaluation draws of :class:`PerStep`): evaluation, snapshots."""
        rows = np.asarray(rows)
        return {k: v.pick(rows, None) if isinstance(v, PerStep) else v[rows] for k, v in self.cond.items()}

    def host_item(self, step: int, k: int = 1):
        """The host arrays of the call starting at training ``step``: ``(B/P, *dims)`` (``(k, B/P, *dims)`` for
        k > 1), and with conditions ``{"x": that, name: rows}``."""
        steps = [step + i for i in range(k)]
        pick = (lambda a: a[0]) if k == 1 else np.stack
        x = pick([self.batch_at(s) for s in steps])
        if not self.cond:
            return x
        rows = [self.cond_at(s) for s in steps]
        return {"x": x, **{name: pick([r[name] for r in rows]) for name in self.cond}}

    def _host_items(self, start_step: int, k: int) -> Iterator:
        """Host items of the calls from ``start_step`` on; files are read ahead by grain (module docstring)."""
        if not self.lazy:
            step = start_step
            while True:
                yield self.host_item(step, k)
                step += k
        items = grain.MapDataset.range(start_step, start_step + k * _STEPS_AHEAD, k).map(lambda s: self.host_item(s, k))
        if self.workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's worker pool reads its absl flags; a library caller parsed none
                flags.FLAGS.mark_as_parsed()
            items = items.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers))
        else:
            items = items.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
        yield from items

    def iterate(self, start_step: int = 0, *, sharding=None, steps_per_call: int = 1) -> Iterator:
        """Endless batches from ``start_step``: ``(B, *dims)``, or ``(k, B, *dims)`` for k = steps_per_call > 1;
        with conditions, ``{"x": that, name: (B, ...) or (k, B, ...)}``.

        With ``sharding`` each item is a global ``jax.Array`` built from every process's rows (the
        sharding must split the batch axis: axis 0, or axis 1 when stacked); else a host NumPy array.
        """
        k = int(steps_per_call)
        if k < 1:
            raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
        lead = (self.batch_size,) if k == 1 else (k, self.batch_size)
        for item in self._host_items(int(start_step), k):
            if not self.cond:
                yield _place(item, sharding, (*lead, *self.dims))
            else:
                yield {name: _place(v, sharding, (*lead, *np.shape(v)[len(lead):])) for name, v in item.items()}

    def eval_batches(self, *, repeat: int = 0, dequantize: bool | None = None, sharding=None) -> Iterator:
        """The whole split in order, no flips: ``(x (B, *dims), mask (B,) bool)`` per global batch (``x`` a
        ``{"x", **cond}`` dict with conditions).

        The last batch is padded with copies of example 0, marked False in ``mask``. ``dequantize``
        (default: True for discrete data, as bits/dim needs) draws fresh noise per ``repeat``.
        """
        dequantize = self.discrete if dequantize is None else bool(dequantize)
        if dequantize and not self.discrete:
            raise ValueError("dequantize=True needs discrete data; this split is continuous")
        key = counter_rng.make_key(self.seed, counter_rng.EVAL_NOISE, repeat)
        b = self.batch_size
        for start in range(0, self.num_examples, b):
            idx = np.arange(start, start + b)
            mask = idx < self.num_examples
            idx = self._local(np.where(mask, idx, 0))
            x = _place(self._transform(idx, key, False, dequantize), sharding, (b, *self.dims))
            if self.cond:
                x = {"x": x, **{k: _place(v, sharding, (b, *v.shape[1:])) for k, v in self.cond_rows(idx).items()}}
            yield x, _place(self._local(mask), sharding, (b,))


def make_iterator(config, split: str = "train", start_step: int = 0, *, sharding=None, process_index=None,
                  process_count=None):  # fmt: skip
    """Training batches of ``config`` from ``start_step`` (``config.training.batch_size``, ``n_jitted_steps``)."""
    shard = dict(process_index=process_index, process_count=process_count)
    ds = Dataset(config.data, split, config.training.batch_size, config.seed, **shard)
    steps = config.training.get("n_jitted_steps", 1)
    return ds.iterate(start_step, sharding=sharding, steps_per_call=steps)


def eval_batches(config, split: str | None = None, *, repeat: int = 0, dequantize: bool | None = None, sharding=None,
                 process_index=None, process_count=None):  # fmt: skip
    """``Dataset.eval_batches`` of ``split`` (default ``config.eval.split``) at ``config.eval.batch_size``."""
    split = split or config.eval.get("split", "test")
    shard = dict(process_index=process_index, process_count=process_count)
    ds = Dataset(config.data, split, config.eval.batch_size, config.seed, **shard)
    return ds.eval_batches(repeat=repeat, dequantize=dequantize, sharding=sharding)
