"""Toy vector data sets, each a pure function of (name, seed, split, n).

* ``mixture`` (= ``ring2d``) and every other ``sde_lib.oracle.builtin_mixture`` name: exact draws of a
  Gaussian mixture, whose density ``toy_density`` returns for exact likelihood checks;
* ``checkerboard``: uniform on the 8 dark squares of a 4x4 board covering [-2, 2]^2;
* ``moons``: two interleaved unit half-circles, centred, plus N(0, 0.1^2) noise;
* ``swiss_roll``: the 2-D spiral (t cos t, t sin t) / 5 with t ~ U[1.5 pi, 4.5 pi], plus N(0, 0.05^2).
"""

from __future__ import annotations

import numpy as np

from sde_lib import oracle
from sde_lib.data import counter_rng

MIXTURES = ("ring2d", "grid2d", "gauss16d", "gauss64d")
SHAPES = ("checkerboard", "moons", "swiss_roll")
TOY_NAMES = ("mixture",) + SHAPES + MIXTURES
# Fixed split sizes: the toy sets are finite so that epochs, shuffles and held-out splits work as for
# images; 50k draws are far more than the 2-D models can overfit.
SIZES = {"train": 50_000, "test": 10_000}
_SPLIT_CODE = {"train": 0, "test": 1}


def toy_density(name: str) -> oracle.GaussianMixture:
    """The exact data density of a mixture toy set (``mixture`` or a built-in mixture name)."""
    if name == "mixture":
        name = "ring2d"
    if name not in MIXTURES:
        raise ValueError(f"config.data.toy_name={name!r} has no closed-form density; use 'mixture' or {MIXTURES}")
    return oracle.builtin_mixture(name)


def toy_dim(name: str) -> int:
    """Dimension D of the toy set ``name``."""
    return 2 if name in SHAPES else toy_density(name).dim


def _normals(key, n: int, d: int) -> np.ndarray:
    """``(n, d)`` standard normals by Box-Muller from counter uniforms (u1 moved into (0, 1])."""
    u = counter_rng.uniform(key, np.arange(2 * n * d).reshape(2, n, d))
    return np.sqrt(-2.0 * np.log1p(-u[0])) * np.cos(2.0 * np.pi * u[1])


def toy_samples(name: str, seed: int, split: str, n: int) -> np.ndarray:
    """``(n, D)`` float32 draws of the toy set ``name``; a different stream per (seed, split)."""
    return _draw(name, seed, split, n)[0]


def toy_labels(name: str, seed: int, split: str, n: int) -> np.ndarray:
    """``(n,)`` int32 class of each draw of :func:`toy_samples` (a mixture component's label); only the
    mixture toy sets have labels."""
    labels = _draw(name, seed, split, n)[1]
    if labels is None:
        raise ValueError(f"toy set {name!r} has no classes; the mixture sets ('mixture', {MIXTURES}) do")
    return labels


def _draw(name: str, seed: int, split: str, n: int):
    """(draws, labels or None) of the toy set ``name``."""
    if name not in TOY_NAMES:
        raise ValueError(f"config.data.toy_name={name!r} is not one of {TOY_NAMES}")
    code = _SPLIT_CODE[split]
    key_u = counter_rng.make_key(seed, counter_rng.TOY, code, 0)
    key_z = counter_rng.make_key(seed, counter_rng.TOY, code, 1)
    u = counter_rng.uniform(key_u, np.arange(2 * n).reshape(n, 2))
    if name not in SHAPES:
        # Exact draws from the oracle's parameters: component by inverse CDF, then mean + std * z.
        gmm = toy_density(name)
        cdf = np.cumsum(np.asarray(gmm.weights, np.float64))
        comp = np.minimum(np.searchsorted(cdf / cdf[-1], u[:, 0], side="right"), len(cdf) - 1)
        z = _normals(key_z, n, gmm.dim)
        x = np.asarray(gmm.means, np.float64)[comp] + np.asarray(gmm.stds, np.float64)[comp, None] * z
        return x.astype(np.float32), np.asarray(gmm.labels)[comp].astype(np.int32)
    elif name == "checkerboard":
        # Cell c in 0..7 -> row i = c // 2 and a column j with i + j even.
        cell = np.floor(u[:, 0] * 8).astype(np.int64)
        row = cell // 2
        col = 2 * (cell % 2) + row % 2
        frac = counter_rng.uniform(key_z, np.arange(2 * n).reshape(n, 2))
        x = np.stack([col, row], axis=-1) + frac - 2.0
    elif name == "moons":
        theta = np.pi * u[:, 1]
        upper = u[:, 0] < 0.5
        x = np.where(
            upper[:, None],
            np.stack([np.cos(theta), np.sin(theta)], axis=-1),
            np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=-1),
        )
        x = x - np.array([0.5, 0.25]) + 0.1 * _normals(key_z, n, 2)
    else:
        t = 1.5 * np.pi * (1.0 + 2.0 * u[:, 0])
        x = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) / 5.0 + 0.05 * _normals(key_z, n, 2)
    return x.astype(np.float32), None
