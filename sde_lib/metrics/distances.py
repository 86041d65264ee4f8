"""Distances between two sets of points ``(N, D)`` (classifier features or flattened images), in NumPy.

* Fréchet distance between Gaussians fitted to the sets:
  ``|mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2})``, with
  ``tr (C_1 C_2)^{1/2} = tr (C_1^{1/2} C_2 C_1^{1/2})^{1/2}`` (similar matrices), so only symmetric
  eigendecompositions are needed (float64; tiny negative eigenvalues from rounding are clipped).
* KID (Bińkowski et al. 2018, arXiv 1801.01401): unbiased MMD^2 with the kernel
  ``k(a, b) = (a.b / D + 1)^3``, averaged over random subsets, with the subsets' standard deviation.
* Precision / recall (Kynkäänniemi et al. 2019, arXiv 1904.06991): a set's manifold is the union of
  balls around its points of radius the distance to their k-th nearest neighbour in the set;
  precision = share of generated points inside the real manifold, recall = share of real points inside
  the generated one.
* Sliced Wasserstein-2: ``sqrt(mean_theta W_2^2(theta.X, theta.Y))`` over random unit directions theta;
  in one dimension W_2 between equal-size empirical sets pairs the sorted values.
* Nearest-neighbour distances, for the memorisation check (``report``).
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1024  # rows of a pairwise-distance block: bounds memory at _CHUNK x N floats


def _check_sets(a, b, names=("a", "b")) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    for x, name in zip((a, b), names):
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"{name}: expected an (N, D) array with N >= 2, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: contains NaN or Inf")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have dimensions {a.shape[1]} and {b.shape[1]}")
    return a, b


def gaussian_stats(f) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, float64) of the rows of ``f``."""
    f = np.asarray(f, np.float64)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_stats(mu1, c1, mu2, c2) -> float:
    """Fréchet (2-Wasserstein squared) distance between N(mu1, c1) and N(mu2, c2)."""
    s1 = _sqrt_psd(np.asarray(c1, np.float64))
    m = s1 @ np.asarray(c2, np.float64) @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None)).sum()
    d = np.sum((np.asarray(mu1) - np.asarray(mu2)) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt
    return float(max(d, 0.0))  # >= 0 in exact arithmetic; rounding can leave -1e-12


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
    """Unbiased MMD^2 of ``x (m, D)`` and ``y (n, D)`` with the cubic polynomial kernel (diagonals excluded)."""
    x, y = (np.asarray(v, np.float64) for v in _check_sets(x, y, ("x", "y")))
    m, n = len(x), len(y)
    kxx, kyy = _poly_kernel(x, x), _poly_kernel(y, y)
    within = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within - 2.0 * _poly_kernel(x, y).mean())


def kid(f1, f2, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: (mean, standard deviation) of unbiased MMD^2 over ``num_subsets`` random subset pairs.

    Each subset holds ``min(subset_size, N, M)`` points drawn without replacement, independently per
    subset. The deviation is the spread of one subset's estimate, as the KID paper reports it.
    """
    f1, f2 = _check_sets(f1, f2, ("f1", "f2"))
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"num_subsets={num_subsets} must be >= 1 and subset_size={subset_size} >= 2")
    m = min(subset_size, len(f1), len(f2))
    rng = np.random.default_rng(seed)
    est = [
        mmd2_unbiased(f1[rng.choice(len(f1), m, replace=False)], f2[rng.choice(len(f2), m, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(est)), float(np.std(est, ddof=1) if num_subsets > 1 else 0.0)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.clip(d, 0.0, None)


def knn_radii(f, k: int = 3) -> np.ndarray:
    """Distance ``(N,)`` from each row of ``f`` to its k-th nearest other row."""
    f = np.asarray(f, np.float32)
    if not 1 <= k < len(f):
        raise ValueError(f"k={k} must be in 1..{len(f) - 1} for a set of {len(f)} points")
    # Column k of the sorted distances skips the point itself (distance 0, column 0).
    out = [np.partition(_sq_dists(f[i : i + _CHUNK], f), k, axis=1)[:, k] for i in range(0, len(f), _CHUNK)]
    return np.sqrt(np.concatenate(out))


def in_manifold(queries, points, radii) -> np.ndarray:
    """``(Nq,)`` bool: whether each query lies in some ball ``|q - points_j| <= radii_j``."""
    q, p = np.asarray(queries, np.float32), np.asarray(points, np.float32)
    r2 = np.asarray(radii, np.float32)[None, :] ** 2
    return np.concatenate([(_sq_dists(q[i : i + _CHUNK], p) <= r2).any(1) for i in range(0, len(q), _CHUNK)])


def precision_recall_masks(f_real, f_fake, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Per-point memberships: fakes in the real manifold ``(M,)``, reals in the fake manifold ``(N,)``."""
    f_real, f_fake = _check_sets(f_real, f_fake, ("f_real", "f_fake"))
    return in_manifold(f_fake, f_real, knn_radii(f_real, k)), in_manifold(f_real, f_fake, knn_radii(f_fake, k))


def random_directions(dim: int, num_projections: int, seed: int = 0) -> np.ndarray:
    """``(dim, P)`` unit columns, uniform on the sphere (normalised Gaussians)."""
    theta = np.random.default_rng(seed).standard_normal((dim, num_projections))
    return theta / np.linalg.norm(theta, axis=0, keepdims=True)


def sliced_wasserstein_projected(px, py) -> float:
    """SW_2 from projections ``(N, P)`` of two equal-size sets: sorted values paired per direction."""
    px, py = np.sort(np.asarray(px, np.float64), 0), np.sort(np.asarray(py, np.float64), 0)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def nn_distances(queries, reference) -> np.ndarray:
    """Euclidean distance ``(Nq,)`` from each query to its nearest row of ``reference``."""
    q, r = np.asarray(queries, np.float32), np.asarray(reference, np.float32)
    return np.sqrt(np.concatenate([_sq_dists(q[i : i + _CHUNK], r).min(1) for i in range(0, len(q), _CHUNK)]))


def memorisation_flags(samples, train, test, *, percentile: float = 5.0) -> tuple[np.ndarray, float]:
    """(per-sample flags ``(N,)``: nearer to ``train`` than ``threshold``, threshold).

    ``threshold`` is the ``percentile``-th percentile of test-to-train nearest-neighbour distances: a
    sample set drawn like the test set is flagged at about ``percentile`` %, copies of training points at 100 %.
    """
    samples, train = _check_sets(samples, train, ("samples", "train"))
    test, train = _check_sets(test, train, ("test", "train"))
    threshold = float(np.percentile(nn_distances(test, train), percentile))
    return nn_distances(samples, train) < threshold, threshold
