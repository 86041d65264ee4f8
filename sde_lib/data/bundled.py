"""The data sets that come with the machine, as arrays: scikit-learn's 8x8 digits and Debian's Fashion-MNIST
(``apt-get install dataset-fashion-mnist``), with their labels, and the seeded train/test split of sources
that have no split of their own. ``sources`` serves them as data sets; ``canvas`` composes them.
"""

from __future__ import annotations

import os

import numpy as np

from sde_lib.data import counter_rng, readers

FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"


def split_indices(n: int, split: str, seed: int) -> np.ndarray:
    """Sorted indices of ``split`` in the seeded 80/20 split of ``n`` examples: example i goes to train iff
    it is among the first floor(4n/5) of ``counter_rng.permutation(n, make_key(seed, SPLIT))``."""
    perm = counter_rng.permutation(n, counter_rng.make_key(seed, counter_rng.SPLIT))
    n_train = (4 * n) // 5
    return np.sort(perm[:n_train] if split == "train" else perm[n_train:])


def digits(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 8, 8, 1) int64 levels 0..16, labels (N,) int32)`` of ``split`` (1437 train, 360 test)."""
    from sklearn.datasets import load_digits  # lazily: scikit-learn's import costs a second

    bunch = load_digits()
    idx = split_indices(len(bunch.images), split, seed)
    images = bunch.images[idx, :, :, None]
    if not np.array_equal(images, np.round(images)):
        raise ValueError("sklearn load_digits: expected integer grey levels")
    return images.astype(np.int64), bunch.target[idx].astype(np.int32)


def _idx_file(folder: str, split: str, what: str) -> str:
    prefix = "train" if split == "train" else "t10k"
    stem = os.path.join(folder, f"{prefix}-{what}-idx{3 if what == 'images' else 1}-ubyte")
    for candidate in (stem, stem + ".gz"):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"Fashion-MNIST {'file' if what == 'images' else what} not found: {stem}[.gz] "
                            f"(apt-get install dataset-fashion-mnist, or set config.data.path)")


def fashion_mnist(folder: str, split: str) -> tuple[np.ndarray, str]:
    """``(images (N, 28, 28, 1) uint8, file)`` of ``split`` under ``folder``."""
    path = _idx_file(folder, split, "images")
    x = readers.read_idx(path)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise ValueError(f"{path}: expected uint8 images (N, 28, 28), got {x.dtype} {x.shape}")
    return x[..., None], path


def fashion_mnist_labels(folder: str, split: str) -> np.ndarray:
    """The labels ``(N,)`` int32 of ``split`` under ``folder``."""
    return readers.read_idx(_idx_file(folder, split, "labels")).astype(np.int32)
