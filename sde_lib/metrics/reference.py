"""Real image sets the metrics compare against, with labels, and the map from samples to classifier input.

Every labelled image data set (digits, Fashion-MNIST, CIFAR-10) is cut three ways, all fixed by the data:

* ``test``: the test split, the reference every sample set is compared with;
* ``held``: ``min(len(test), len(train) // 2)`` training images, first in a seeded permutation of the
  train split: the disjoint real set that measures each metric's **real-vs-real floor**;
* ``rest``: the other training images, on which the feature classifier is trained, so that ``held``
  and ``test`` are both unseen by it and the floor measures sampling noise alone.

Classifier input (:func:`to_unit`): images in [0, 1] at their levels' bin centres (k + 1/2) / L.
Samples are accepted as integer levels 0..L-1 or as floats in the data pipeline's model space
([0, 1], or [-1, 1] when ``config.data.centered``); floats are quantised with ``unscale`` first, as
writing them to image files would, so that samples and real images take the same set of values.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sde_lib.data import load_split, parse, scale, unscale
from sde_lib.data.sources import DataSpec, load_labels

LABELLED = ("digits", "fashion_mnist", "cifar10")
NUM_CLASSES = 10
_HELD_SEED = 20190413  # fixed: the held-out set must not move with any run's seed


@dataclasses.dataclass(frozen=True)
class RealSets:
    """Integer-level images ``(N, H, W, C)`` and int32 labels ``(N,)`` of the three parts (module doc)."""

    test: np.ndarray
    test_labels: np.ndarray
    held: np.ndarray
    held_labels: np.ndarray
    rest: np.ndarray
    rest_labels: np.ndarray

    @property
    def train(self) -> np.ndarray:
        """All training images (``held`` and ``rest``): what a generative model may have memorised."""
        return np.concatenate([self.held, self.rest])


def image_spec(data_cfg) -> DataSpec:
    """``config.data`` parsed, checked to name a labelled image data set (ValueError otherwise)."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if spec.dataset not in LABELLED:
        raise ValueError(f"config.data.dataset={spec.dataset!r}: sample metrics need one of {LABELLED}")
    return spec


@functools.lru_cache(maxsize=4)
def real_sets(spec: DataSpec) -> RealSets:
    """The test / held / rest parts of ``spec``'s data set (see the module docstring); cached per spec."""
    spec = image_spec(spec)
    parts = {}
    for split in ("train", "test"):
        x, y = load_split(spec, split), load_labels(spec, split)
        if len(x) != len(y):
            raise ValueError(f"{spec.dataset} {split}: {len(x)} images but {len(y)} labels")
        parts[split] = (x, y)
    (train, train_y), (test, test_y) = parts["train"], parts["test"]
    n_held = min(len(test), len(train) // 2)
    perm = np.random.default_rng(_HELD_SEED).permutation(len(train))
    held, rest = perm[:n_held], perm[n_held:]
    return RealSets(test, test_y, train[held], train_y[held], train[rest], train_y[rest])


def to_unit(samples, spec: DataSpec, name: str = "samples") -> np.ndarray:
    """Samples ``(N, H, W, C)`` (integer levels or model-space floats) -> float32 bin centres in [0, 1]."""
    x = np.asarray(samples)
    dims = (spec.image_size, spec.image_size, spec.num_channels)
    if x.ndim != 4 or x.shape[1:] != dims:
        raise ValueError(f"{name}: expected shape (N, {', '.join(map(str, dims))}), got {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() >= spec.levels):
            raise ValueError(f"{name}: integer levels in [{x.min()}, {x.max()}], outside 0..{spec.levels - 1}")
        levels = x
    elif np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: contains NaN or Inf")
        levels = unscale(x, spec.levels, spec.centered)
    else:
        raise ValueError(f"{name}: dtype {x.dtype} is neither integer levels nor float")
    return scale(levels, spec.levels, centered=False)
