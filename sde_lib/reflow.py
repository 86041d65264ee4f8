"""Reflow (Liu et al. 2023, arXiv 2209.03003): couple prior draws with a model's ODE outputs, and measure how
straight the model's probability-flow paths are.

One round of rectification trains a new model on the pairs (x_i, z_i) that the model's own probability-flow
ODE couples, x_i = ODE(prior_std z_i) at t = eps, with x_t = alpha_t x_i + sigma_t z_i in place of independent
data and noise (``config.data.pairs``; ``scripts/reflow.py`` does both steps). The new model's paths are
straighter, so few-step samplers make less error.

Straightness of the paths x_t from x_T to x_eps (one per prior draw), with the chord c = (x_T - x_eps) / (T - eps):

* ``straightness``, Liu et al.'s S = 1 / (T - eps) int_eps^T || c - dx_t/dt ||^2 dt (0 for straight paths
  traversed at constant speed), averaged over draws and divided by the mean || c ||^2 to make it unit-free.
  It depends on the clock: it is the linear path's measure (VP's t-velocity grows like 1 / sqrt(t) near
  t = 0 and S diverges logarithmically as eps -> 0);
* ``length_ratio``, the path length int || dx_t/dt || dt over the chord length || x_T - x_eps || (>= 1, 1 for
  straight paths), which no change of clock alters: the measure to compare processes with.

Both are computed on the polyline of a fine trajectory (``steps`` solver steps on a dense grid; the polyline
length approaches the arc length from below, and S with the segments' mean velocities is that of the
polyline), so they cost the trajectory's evaluations only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sde_lib import sampling
from sde_lib.sdes import SDE, standard_normal


def make_pairs(sde: SDE, score_fn, key: jax.Array, n: int, dims: tuple[int, ...], *, sampler: str = "ode_adaptive",
               steps: int = 50, batch_size: int = 1000, eps: float | None = None,
               **options) -> tuple[np.ndarray, np.ndarray, dict]:
    """``n`` coupled pairs ``(x, noise)``, each ``(n, *dims)``: noise_i standard normal (row i from (key, i)) and
    x_i the deterministic ``sampler``'s probability-flow solve from x_T = prior_std noise_i down to ``eps``
    (no denoising step). Solved in chunks of ``batch_size`` rows (one compilation). ``info``: ``nfe`` (mean
    evaluations per pair). A failed or non-finite solve raises one ValueError naming how many.
    """
    if sampling.sampler_family(sampler) == "sde":
        raise ValueError(f"sampler {sampler!r} is stochastic; reflow couples noise with the deterministic ODE's output")
    if int(n) < 1 or int(batch_size) < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    n, size = int(n), min(int(batch_size), int(n))
    noise = np.asarray(standard_normal(key, (n, *dims)))
    xs, nfes, bad = [], [], 0
    for start in range(0, n, size):
        z = noise[start:start + size]
        pad = size - len(z)  # the last chunk is padded to the chunk shape and the padding dropped
        x_init = sde.prior_std * jnp.asarray(np.concatenate([z, np.repeat(z[-1:], pad, axis=0)]) if pad else z)
        x, info = sampling.sample(sde, score_fn, key, x_init.shape, sampler, steps, x_init=x_init, eps=eps,
                                  **options)
        keep = size - pad
        xs.append(np.asarray(x)[:keep])
        nfes.append(np.broadcast_to(np.asarray(info["nfe"]), (size,))[:keep])
        bad += int(np.sum(~np.asarray(info["ok"])[:keep]))
    if bad:
        raise ValueError(f"the {sampler!r} solve failed or was not finite for {bad} of {n} pairs")
    return np.concatenate(xs), noise, {"nfe": float(np.mean(np.concatenate(nfes)))}


def straightness(sde: SDE, score_fn, key: jax.Array, n: int, dims: tuple[int, ...], *, steps: int = 200,
                 sampler: str = "dpm_solver_pp_3m", time_grid: str = "logsnr", eps: float | None = None) -> dict:
    """Straightness and length ratio (module docstring) of the probability-flow paths of ``n`` prior draws.

    The trajectory is ``sampler`` on ``steps`` steps of ``time_grid``, from prior draws of ``key``. Returns
    ``{"straightness", "length_ratio", "length_ratio_stderr", "n", "steps", "nfe"}`` (floats and ints).
    """
    x_T = sde.prior_sampling(key, (int(n), *dims))
    _, info = sampling.sample(sde, score_fn, key, x_T.shape, sampler, steps, x_init=x_T, eps=eps,
                              time_grid=time_grid, save_trajectory=True)
    ts, ys = (np.asarray(a, np.float64) for a in info["trajectory"])  # (K + 1,), (K + 1, n, *dims)
    ys = ys.reshape(ys.shape[0], ys.shape[1], -1)
    dt = -np.diff(ts)  # > 0: the solve runs from T down to eps
    seg = np.diff(ys, axis=0)  # (K, n, D)
    span = ts[0] - ts[-1]
    chord = (ys[0] - ys[-1]) / span  # (n, D): c = (x_T - x_eps) / (T - eps)
    velocity = -seg / dt[:, None, None]  # dx/dt of each segment
    s = np.sum(dt[:, None] * np.sum((chord[None] - velocity) ** 2, axis=-1), axis=0) / span  # (n,)
    length = np.sum(np.linalg.norm(seg, axis=-1), axis=0)
    ratio = length / np.linalg.norm(ys[0] - ys[-1], axis=-1)
    return {"straightness": float(np.mean(s) / np.mean(np.sum(chord**2, axis=-1))),
            "length_ratio": float(np.mean(ratio)), "length_ratio_stderr": float(np.std(ratio) / math.sqrt(len(ratio))),
            "n": int(n), "steps": int(steps), "nfe": float(np.mean(np.asarray(info["nfe"])))}
