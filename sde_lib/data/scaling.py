"""Maps between discrete levels k in {0, ..., L-1} and model space (host-side, NumPy).

The convention (binding for bits/dim; see ``sde_lib.data``'s module docstring):

* level k owns the bin [k/L, (k+1)/L) of [0, 1]; centred data use y = 2x - 1, bin [2k/L - 1, 2(k+1)/L - 1);
* ``scale``:      x = (k + 1/2) / L, the bin centre (no dequantisation);
* ``dequantize``: x = (k + u) / L with u ~ U[0, 1), uniform over the bin;
* ``unscale``:    k = clip(floor(x L), 0, L-1) inverts both, and quantises model samples;
* ``bin_width``:  1/L (or 2/L centred), so a density p on model space gives the discrete model
  P(k) >= exp(E_u log p(x)) * bin_width**D and  bits/dim = -(E_u log p(x) / D + log bin_width) / ln 2.
"""

from __future__ import annotations

import numpy as np


def bin_width(levels: int, centered: bool) -> float:
    """Width of one level's bin in model space: 1/L on [0, 1], 2/L on [-1, 1]."""
    return (2.0 if centered else 1.0) / levels


def _to_model(x01, centered: bool):
    return 2.0 * x01 - 1.0 if centered else x01


def scale(k: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Integer levels ``k`` (any shape) -> float32 bin centres (k + 1/2) / L (centred: 2x - 1)."""
    return _to_model((np.asarray(k, np.float64) + 0.5) / levels, centered).astype(np.float32)


def _float32_at_least(e: np.ndarray) -> np.ndarray:
    f = e.astype(np.float32)
    return np.where(f < e, np.nextafter(f, np.float32(np.inf)), f)


def _float32_below(e: np.ndarray) -> np.ndarray:
    f = e.astype(np.float32)
    return np.where(f >= e, np.nextafter(f, np.float32(-np.inf)), f)


def dequantize(k: np.ndarray, u: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Levels ``k`` and offsets ``u`` in [0, 1) (same shape) -> float32 (k + u) / L (centred: 2x - 1).

    Computed in float64 and clamped to the float32 numbers inside the bin, so rounding to float32 never
    moves a value into the next level's bin.
    """
    k = np.asarray(k, np.float64)
    lo = _to_model(k / levels, centered)
    hi = _to_model((k + 1.0) / levels, centered)
    x = (lo + np.asarray(u, np.float64) * (hi - lo)).astype(np.float32)
    return np.clip(x, _float32_at_least(lo), _float32_below(hi))


def unscale(x: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Model-space values (any real numbers) -> ``int32`` levels floor(x L) clipped to [0, L-1].

    Found by comparison with the same float64 bin edges ``dequantize`` clamps to (not by computing
    floor(x L), which rounds when centred values near 0 are shifted by 1), so it inverts it exactly.
    """
    edges = _to_model(np.arange(levels + 1, dtype=np.float64) / levels, centered)
    k = np.searchsorted(edges, np.asarray(x, np.float64), side="right") - 1
    return np.clip(k, 0, levels - 1).astype(np.int32)


def to_uint8(x: np.ndarray, levels: int, centered: bool) -> np.ndarray:
    """Model-space values -> 8-bit grey values round(k * 255 / (L-1)) for writing images."""
    k = unscale(x, levels, centered)
    return np.round(k * (255.0 / (levels - 1))).astype(np.uint8)
