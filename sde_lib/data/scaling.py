"""Maps between discrete levels k in {0, ..., L-1} and model space (host-side, NumPy): the one home of
quantisation and dequantisation (the data pipeline, bits/dim and the metrics all use these).

The convention (binding for bits/dim; see ``sde_lib.data``'s module docstring and
``sde_lib.likelihood.bits_per_dim``): the L levels tile an interval [lo, hi] of model space, level k
owning the bin [lo + (hi - lo) k / L, lo + (hi - lo)(k + 1) / L); image data use [0, 1], or [-1, 1]
when ``centered``:

* ``scale``:      x = (k + 1/2) / L, the bin centre (no dequantisation);
* ``dequantize``: x = (k + u) / L with u ~ U[0, 1), uniform over the bin;
* ``unscale``:    k = clip(floor(x L), 0, L-1) inverts both, and quantises model samples;
* ``quantize`` / ``dequantize_interval``: the same on any interval [lo, hi] (e.g. a mixture's data
  quantised on [-3, 3] for a bits/dim check).
"""

from __future__ import annotations

import numpy as np


def model_range(centered: bool) -> tuple[float, float]:
    """The interval [lo, hi] the levels tile in model space: (-1, 1) centred, else (0, 1)."""
    return (-1.0, 1.0) if centered else (0.0, 1.0)


def scale(k: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Integer levels ``k`` (any shape) -> float32 bin centres (k + 1/2) / L (centred: 2x - 1)."""
    lo, hi = model_range(centered)
    return (lo + (hi - lo) * (np.asarray(k, np.float64) + 0.5) / levels).astype(np.float32)


def _float32_at_least(e: np.ndarray) -> np.ndarray:
    f = e.astype(np.float32)
    return np.where(f < e, np.nextafter(f, np.float32(np.inf)), f)


def _float32_below(e: np.ndarray) -> np.ndarray:
    f = e.astype(np.float32)
    return np.where(f >= e, np.nextafter(f, np.float32(-np.inf)), f)


def dequantize(k: np.ndarray, u: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Levels ``k`` and offsets ``u`` in [0, 1) (same shape) -> float32 (k + u) / L (centred: 2x - 1)."""
    return dequantize_interval(k, u, levels, *model_range(centered))


def dequantize_interval(k: np.ndarray, u: np.ndarray, levels: int, lo: float, hi: float) -> np.ndarray:
    """Levels ``k`` and offsets ``u`` in [0, 1) -> float32 lo + (hi - lo)(k + u) / L.

    Computed in float64 and clamped to the float32 numbers inside the bin, so rounding to float32 never
    moves a value into the next level's bin.
    """
    k = np.asarray(k, np.float64)
    a = lo + (hi - lo) * k / levels
    b = lo + (hi - lo) * (k + 1.0) / levels
    x = (a + np.asarray(u, np.float64) * (b - a)).astype(np.float32)
    return np.clip(x, _float32_at_least(a), _float32_below(b))


def quantize(x: np.ndarray, levels: int, lo: float, hi: float) -> np.ndarray:
    """Continuous ``x`` -> int32 levels floor((x - lo) L / (hi - lo)), clipped to 0..L-1 (the inverse of
    :func:`dequantize_interval`, found by comparison with the same float64 bin edges)."""
    edges = lo + (hi - lo) * np.arange(levels + 1, dtype=np.float64) / levels
    k = np.searchsorted(edges, np.asarray(x, np.float64), side="right") - 1
    return np.clip(k, 0, levels - 1).astype(np.int32)


def unscale(x: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Model-space values (any real numbers) -> ``int32`` levels floor(x L) clipped to [0, L-1].

    Found by comparison with the same float64 bin edges ``dequantize`` clamps to (not by computing
    floor(x L), which rounds when centred values near 0 are shifted by 1), so it inverts it exactly.
    """
    return quantize(x, levels, *model_range(centered))


def to_uint8(x: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Model-space values -> 8-bit grey values round(k * 255 / (L-1)) for writing images."""
    k = unscale(x, levels, centered)
    return np.round(k * (255.0 / (levels - 1))).astype(np.uint8)
