"""Counter-based randomness for the data pipeline: every draw is a pure function of integer words.

Splits, shuffles and augmentation must be reproducible forever and resumable at any step, so nothing
here keeps state or depends on a library's generator stream (NumPy reserves the right to change
those). A key is a 64-bit hash of a tuple of words such as ``(seed, PURPOSE, epoch)``; a draw for item
``i`` hashes ``(key, i)`` with the splitmix64 finaliser (Steele et al. 2014), a bijection on 64-bit words
with full avalanche, so nearby counters give independent-looking values.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1

# Purposes keep the streams of one seed apart (a split permutation never equals an epoch shuffle).
SPLIT, SHUFFLE, AUGMENT, EVAL_NOISE, TOY, CANVAS, CHOICE = range(7)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on a ``uint64`` array (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def make_key(*words: int) -> np.ndarray:
    """A 0-d ``uint64`` key hashing the integer ``words`` in order (negative words taken mod 2**64)."""
    key = np.zeros((), np.uint64)
    for w in words:
        with np.errstate(over="ignore"):
            key = _mix(key + _GOLDEN + np.uint64(int(w) & _MASK64))
    return key


def hash_items(key: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``uint64`` hashes of ``(key, item)`` for every entry of the integer array ``items`` (same shape)."""
    with np.errstate(over="ignore"):
        return _mix(key + (np.asarray(items).astype(np.uint64) + np.uint64(1)) * _GOLDEN)


def uniform(key: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Float64 draws in [0, 1) on the grid j / 2**53, one per entry of ``items`` (same shape)."""
    return (hash_items(key, items) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def permutation(n: int, key: np.ndarray) -> np.ndarray:
    """A permutation of ``range(n)`` (``int64``): the order of the item hashes under ``key``."""
    return np.argsort(hash_items(key, np.arange(n)), kind="stable")
