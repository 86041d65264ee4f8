"""Offline sample-quality metrics for image data, in the feature space of a small per-data-set classifier.

``evaluate_samples(samples, config.data)`` gives Fréchet distance, KID, precision / recall (classifier
features), sliced Wasserstein distance (pixels) and a memorisation rate, each with a bootstrap error
bar and its real-vs-real floor (``report``). The pieces: ``reference`` (the real sets and the input
convention), ``classifier`` (the cached feature network), ``distances`` (the metrics on arrays).
"""

from sde_lib.metrics.classifier import (
    DEFAULT_CONFIGS,
    ClassifierConfig,
    ConvNet,
    FeatureClassifier,
    cache_path,
    get_classifier,
)
from sde_lib.metrics.distances import (
    frechet_from_stats,
    gaussian_stats,
    kid,
    memorisation_flags,
    mmd2_unbiased,
    nn_distances,
    precision_recall_masks,
    sliced_wasserstein_projected,
)
from sde_lib.metrics.reference import RealSets, real_sets, to_unit
from sde_lib.metrics.report import METRICS, evaluate_samples

__all__ = [
    "DEFAULT_CONFIGS",
    "METRICS",
    "ClassifierConfig",
    "ConvNet",
    "FeatureClassifier",
    "RealSets",
    "cache_path",
    "evaluate_samples",
    "frechet_from_stats",
    "gaussian_stats",
    "get_classifier",
    "kid",
    "memorisation_flags",
    "mmd2_unbiased",
    "nn_distances",
    "precision_recall_masks",
    "real_sets",
    "sliced_wasserstein_projected",
    "to_unit",
]
