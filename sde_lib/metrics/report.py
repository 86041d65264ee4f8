"""``evaluate_samples``: every sample metric, its bootstrap error bar and its real-vs-real floor.

Protocol (the same for every entry compared, so that numbers are comparable across samplers and steps):

* ``n`` points per set: the first ``n`` samples; ``n`` seeded draws without replacement from the test
  split (the reference) and from the ``held`` training images (the floor's stand-in for samples);
* the value compares samples with the test draw; the floor compares the held draw with the same test
  draw, i.e. what a perfect sampler would score at this ``n``;
* features: the data set's cached classifier (``classifier``), whose test accuracy is reported;
* error bars, from ``num_bootstrap`` seeded resamples with replacement:
  FD and SWD resample both sets; precision, recall and memorisation resample the per-point indicators
  (manifolds and threshold held fixed, since duplicated points would shrink k-NN radii);
  KID (whose unbiased estimator is biased by duplicates) uses the spread of ``kid_subsets`` estimates on
  ``n // 2`` points, scaled by 1/sqrt(2) to ``n`` points under the 1/n variance law;
* memorisation, in data space: the share of samples whose nearest training image is closer than the
  ``percentile``-th percentile of test-to-train nearest distances; for the floor the training images
  exclude the held ones (which would otherwise match themselves), so the floor sits near ``percentile`` %.
"""

from __future__ import annotations

import weakref

import numpy as np

from sde_lib.metrics import distances, reference
from sde_lib.metrics.classifier import FeatureClassifier, get_classifier

METRICS = ("fd", "kid", "precision", "recall", "swd", "memorisation")

# The floor compares two real draws, so it depends on the data, the classifier, n, seed and the options, never
# on the samples; ablations and guidance tables evaluate one entry after another with the same (n, seed), and
# recomputing it was half of an image ablation's metric time. Each classifier keeps the floors it computed,
# keyed on everything they depend on (the generator's state included), so a cached floor is the same numbers.
_FLOORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _flat(u: np.ndarray) -> np.ndarray:
    return u.reshape(len(u), -1)


def _boot_std(stat, sizes: tuple[int, ...], rng: np.random.Generator, num: int) -> float:
    """Standard deviation of ``stat(*idx)`` over ``num`` resamples (one index array per size)."""
    vals = [stat(*(rng.integers(m, size=m) for m in sizes)) for _ in range(num)]
    return float(np.std(vals, ddof=1))


def _compare(u_test, f_test, u_x, f_x, u_train, rng, *, num_bootstrap, k, kid_subsets, theta, percentile):
    """Every metric of one set (images ``u_x``, features ``f_x``) against the test draw: {name: (value, err)}."""
    n = len(u_x)
    out = {}
    s_t, s_x = distances.gaussian_stats(f_test), distances.gaussian_stats(f_x)

    def fd(a, b):
        return distances.frechet_from_stats(*distances.gaussian_stats(f_test[a]), *distances.gaussian_stats(f_x[b]))

    out["fd"] = (distances.frechet_from_stats(*s_t, *s_x), _boot_std(fd, (n, n), rng, num_bootstrap))

    _, spread = distances.kid(f_test, f_x, num_subsets=kid_subsets, subset_size=n // 2, seed=int(rng.integers(2**31)))
    out["kid"] = (distances.mmd2_unbiased(f_test, f_x), spread / np.sqrt(2.0))

    prec, rec = distances.precision_recall_masks(f_test, f_x, k)
    for name, mask in (("precision", prec), ("recall", rec)):
        out[name] = (float(mask.mean()), _boot_std(lambda i, m=mask: m[i].mean(), (n,), rng, num_bootstrap))

    pt, px = _flat(u_test) @ theta, _flat(u_x) @ theta
    out["swd"] = (distances.sliced_wasserstein_projected(pt, px),
                  _boot_std(lambda a, b: distances.sliced_wasserstein_projected(pt[a], px[b]), (n, n), rng, num_bootstrap))  # fmt: skip

    flags, _ = distances.memorisation_flags(_flat(u_x), _flat(u_train), _flat(u_test), percentile=percentile)
    out["memorisation"] = (float(flags.mean()), _boot_std(lambda i: flags[i].mean(), (n,), rng, num_bootstrap))
    return out


def evaluate_samples(samples, data_cfg, *, n: int | None = None, seed: int = 0,
                     classifier: FeatureClassifier | None = None, cache_dir: str | None = None,
                     num_bootstrap: int = 50, k: int = 3, kid_subsets: int = 50, swd_projections: int = 128,
                     percentile: float = 5.0) -> dict:  # fmt: skip
    """Sample-quality metrics of ``samples`` against ``config.data``'s test split, with floors.

    Args:
      samples: ``(N, H, W, C)`` integer levels, or floats in the data pipeline's model space
        ([-1, 1] if ``config.data.centered`` else [0, 1]); quantised to levels before use.
      data_cfg: ``config.data`` of a labelled image data set (digits, fashion_mnist, cifar10).
      n: points per set (default and maximum: min(N, test size, held size)).
      seed: fixes the test / held draws, bootstrap resamples, KID subsets and SWD directions.
      classifier: a :class:`FeatureClassifier` (default: ``get_classifier(data_cfg, cache_dir=cache_dir)``).

    Returns:
      A flat dict: ``n``, ``dataset``, ``classifier_accuracy`` and, for each name in ``METRICS``,
      ``name``, ``name_err``, ``name_floor``, ``name_floor_err`` (see the module docstring).
    """
    spec = reference.image_spec(data_cfg)
    clf = classifier or get_classifier(spec, cache_dir=cache_dir)
    if clf.spec.dataset != spec.dataset:
        raise ValueError(f"classifier was trained on {clf.spec.dataset}, config.data.dataset is {spec.dataset}")
    if num_bootstrap < 2 or kid_subsets < 2:
        raise ValueError(f"num_bootstrap={num_bootstrap} and kid_subsets={kid_subsets} must be >= 2")
    u_s = reference.to_unit(samples, spec)
    sets = reference.real_sets(spec)
    n_max = min(len(u_s), len(sets.test), len(sets.held))
    n = n_max if n is None else int(n)
    if not 2 * (k + 1) <= n <= n_max:
        raise ValueError(f"n={n} must be in {2 * (k + 1)}..{n_max} (samples, test and held-out sizes, and k={k})")
    rng = np.random.default_rng(seed)
    test = reference.to_unit(sets.test[np.sort(rng.choice(len(sets.test), n, replace=False))], spec)
    held = reference.to_unit(sets.held[np.sort(rng.choice(len(sets.held), n, replace=False))], spec)
    u_s = u_s[:n]
    f_test, f_s, f_held = (clf.unit_features(u) for u in (test, u_s, held))
    opts = dict(num_bootstrap=num_bootstrap, k=k, kid_subsets=kid_subsets, percentile=percentile,
                theta=distances.random_directions(_flat(test).shape[1], swd_projections, seed))  # fmt: skip
    value = _compare(test, f_test, u_s, f_s, reference.to_unit(sets.train, spec), rng, **opts)
    key = (repr(spec), n, seed, swd_projections, repr({k: v for k, v in opts.items() if k != "theta"}),
           repr(rng.bit_generator.state))
    floors = _FLOORS.setdefault(clf, {})
    if key not in floors:
        floors[key] = _compare(test, f_test, held, f_held, reference.to_unit(sets.rest, spec), rng, **opts)
    floor = floors[key]
    out = {"n": n, "dataset": spec.dataset, "classifier_accuracy": clf.accuracy}
    for name in METRICS:
        out[name], out[f"{name}_err"] = value[name]
        out[f"{name}_floor"], out[f"{name}_floor_err"] = floor[name]
    return out
