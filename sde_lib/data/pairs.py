"""Coupled (x, noise) pairs for reflow (Liu et al. 2023, arXiv 2209.03003): an ``.npz`` file with arrays ``x``
and ``noise`` of equal shape ``(N, *dims)``, float32, in model space.

Row i couples a generated example x_i (a probability-flow ODE solve from the prior draw prior_std * noise_i)
with its own noise; a run with ``config.data.pairs`` trains on x_t = alpha_t x_i + sigma_t noise_i instead of
on independent data and noise. :func:`write_pairs` refuses to replace an existing file unless asked.
"""

from __future__ import annotations

import os

import numpy as np

from sde_lib.data import readers


def read_pairs(path: str, dims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, noise)``, each ``(N, *dims)`` float32, from ``path``; one error naming the file when it is missing,
    lacks an array, holds another shape or non-finite values."""
    arrays = readers.read_npz(path)
    missing = [k for k in ("x", "noise") if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a pairs file (no array {missing[0]!r}; scripts/reflow.py writes x and noise)")
    x, noise = (np.asarray(arrays[k], np.float32) for k in ("x", "noise"))
    if x.shape != noise.shape or x.shape[1:] != tuple(dims) or len(x) == 0:
        raise ValueError(f"{path}: x {x.shape} and noise {noise.shape} must both be (N, *{tuple(dims)}) with N > 0")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(noise))):
        raise ValueError(f"{path}: x or noise holds NaN or Inf")
    return x, noise


def write_pairs(path: str, x, noise, *, overwrite: bool = False, **meta) -> None:
    """Write ``x`` and ``noise`` ``(N, *dims)`` (and scalar ``meta`` arrays, e.g. the source run and step) to
    ``path`` atomically; refuses an existing file unless ``overwrite``."""
    if os.path.exists(path) and not overwrite:
        raise ValueError(f"{path} exists; choose another pairs file or pass --overwrite to replace it")
    x, noise = np.asarray(x, np.float32), np.asarray(noise, np.float32)
    if x.shape != noise.shape:
        raise ValueError(f"x {x.shape} and noise {noise.shape} must have one shape")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, x=x, noise=noise, **{k: np.asarray(v) for k, v in meta.items()})
    os.replace(tmp, path)
