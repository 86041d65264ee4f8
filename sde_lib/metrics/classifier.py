"""A small CNN classifier per data set whose penultimate layer is the feature space of the sample metrics.

Inception features are meaningless for 8x8 digits and cannot be downloaded here, so (as the "Fréchet
LeNet distance" on MNIST) each data set gets its own classifier, trained on the ``rest`` part of its
training split (``reference``) with a fixed seed, and cached as ``.npz`` (no pickle) in

    ``cache_dir`` argument  >  $SCORE_SDE_CLASSIFIER_CACHE  >  ~/.cache/score_sde_jax/classifiers

under ``{dataset}-{hash}.npz``, the hash covering the classifier config and what fixes the data.
Architecture: 3x3 convolutions (the first keeps the resolution, each later one halves it), ReLU,
flatten, a dense ReLU layer of ``feature_dim`` units (the features), a dense layer to 10 logits.
Training: AdamW on cross-entropy with a fixed seed (initialisation and batch order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sde_lib.metrics import reference

CACHE_ENV = "SCORE_SDE_CLASSIFIER_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "score_sde_jax", "classifiers")
_BATCH = 500  # feature / accuracy batch: every call reuses one compiled shape
_VERSION = 1  # bump when the network or the training procedure changes, so old caches are not reused


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Conv widths (first conv stride 1, later ones stride 2), feature width and training settings."""

    channels: tuple[int, ...]
    feature_dim: int
    epochs: int
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"ClassifierConfig.channels={self.channels} must be positive widths")
        for field in ("feature_dim", "epochs", "batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"ClassifierConfig.{field}={getattr(self, field)} must be >= 1")


DEFAULT_CONFIGS = {
    "digits": ClassifierConfig(channels=(16, 32), feature_dim=64, epochs=15),
    "fashion_mnist": ClassifierConfig(channels=(16, 32, 64), feature_dim=128, epochs=4),
    "cifar10": ClassifierConfig(channels=(32, 64, 128), feature_dim=256, epochs=15),
}


class ConvNet(nnx.Module):
    """Images ``(B, H, W, C)`` in [0, 1] -> logits ``(B, num_outputs)`` (10 classes by default);
    ``features`` gives ``(B, feature_dim)``. ``cfg`` needs ``channels`` and ``feature_dim``."""

    def __init__(self, image_size: int, num_channels: int, cfg: ClassifierConfig, *, rngs: nnx.Rngs,
                 num_outputs: int = reference.NUM_CLASSES):
        convs, c_in, size = [], num_channels, image_size
        for i, c in enumerate(cfg.channels):
            stride = 1 if i == 0 else 2
            convs.append(nnx.Conv(c_in, c, (3, 3), strides=stride, padding="SAME", rngs=rngs))
            c_in, size = c, -(-size // stride)
        self.convs = nnx.List(convs)
        self.hidden = nnx.Linear(size * size * c_in, cfg.feature_dim, rngs=rngs)
        self.head = nnx.Linear(cfg.feature_dim, num_outputs, rngs=rngs)

    def features(self, x):
        h = 2.0 * x - 1.0
        for conv in self.convs:
            h = nnx.relu(conv(h))
        return nnx.relu(self.hidden(h.reshape(h.shape[0], -1)))

    def __call__(self, x):
        return self.head(self.features(x))


def _train(model: ConvNet, x: np.ndarray, y: np.ndarray, cfg: ClassifierConfig) -> ConvNet:
    """``cfg.epochs`` epochs of AdamW, each over a fresh seeded permutation (left-over images skipped).

    One jitted step driven from the host: on CPU, XLA runs these small convolutions about ten times
    slower inside a ``lax.scan`` than as a stand-alone jitted step.
    """
    graphdef, params = nnx.split(model)
    opt = optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps = len(x) // cfg.batch_size
    if steps < 1:
        raise ValueError(f"ClassifierConfig.batch_size={cfg.batch_size} exceeds the {len(x)} training images")

    def loss_fn(p, xb, yb):
        logits = nnx.merge(graphdef, p)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    @jax.jit
    def step(p, s, xb, yb):
        updates, s = opt.update(jax.grad(loss_fn)(p, xb, yb), s, p)
        return optax.apply_updates(p, updates), s

    state, rng = opt.init(params), np.random.default_rng(cfg.seed)
    for _ in range(cfg.epochs):
        for idx in rng.permutation(len(x))[: steps * cfg.batch_size].reshape(steps, -1):
            params, state = step(params, state, x[idx], y[idx])
    return nnx.merge(graphdef, params)


def _batched(fn, x: np.ndarray) -> np.ndarray:
    """``fn`` over ``x`` in padded batches of ``_BATCH`` rows (one compiled shape), concatenated."""
    out = []
    for start in range(0, len(x), _BATCH):
        chunk = x[start : start + _BATCH]
        pad = np.zeros((_BATCH - len(chunk), *x.shape[1:]), x.dtype)
        out.append(np.asarray(fn(np.concatenate([chunk, pad])))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


class FeatureClassifier:
    """A trained :class:`ConvNet` with its data spec, config and test accuracy (``accuracy``, in [0, 1]).

    Features are the penultimate activations divided by ``feature_scale``, their root mean square over
    the classifier's training images, so that distances (and KID's cubic kernel) see features of unit
    size whatever scale training happened to give them.
    """

    def __init__(self, model: ConvNet, spec, cfg: ClassifierConfig, accuracy: float | None = None,
                 feature_scale: float | None = None):  # fmt: skip
        self.spec, self.config = spec, cfg
        graphdef, self._state = nnx.split(model)

        @jax.jit
        def forward(state, x):  # one compiled function serves features and predictions
            net = nnx.merge(graphdef, state)
            f = net.features(x)
            return f, jnp.argmax(net.head(f), -1).astype(jnp.int32)

        self._forward = forward
        self.feature_scale = 1.0
        if feature_scale is None:
            sets = reference.real_sets(spec)
            feature_scale = float(np.sqrt(np.mean(self.features(sets.rest, "rest").astype(np.float64) ** 2)))
        self.feature_scale = float(feature_scale)
        self.accuracy = self.test_accuracy() if accuracy is None else float(accuracy)

    def features(self, samples, name: str = "samples") -> np.ndarray:
        """Samples (levels or model-space floats, see ``reference.to_unit``) -> ``(N, feature_dim)`` float32."""
        return self.unit_features(reference.to_unit(samples, self.spec, name))

    def unit_features(self, u: np.ndarray) -> np.ndarray:
        """Features of images ``u (N, H, W, C)`` already in [0, 1] (``reference.to_unit``'s output)."""
        return _batched(lambda b: self._forward(self._state, b)[0], np.asarray(u, np.float32)) / self.feature_scale

    def unit_features_fn(self, u):
        """Traceable features ``(B, feature_dim)`` of images ``u`` in [0, 1] (inside a jitted loss)."""
        return self._forward(self._state, u)[0] / self.feature_scale

    def predict(self, samples, name: str = "samples") -> np.ndarray:
        """Predicted classes ``(N,)`` int32."""
        x = reference.to_unit(samples, self.spec, name)
        return _batched(lambda b: self._forward(self._state, b)[1], x)

    def test_accuracy(self) -> float:
        sets = reference.real_sets(self.spec)
        return float(np.mean(self.predict(sets.test, "test") == sets.test_labels))

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Parameters keyed by their pytree path (the ``.npz`` layout)."""
        leaves = jax.tree_util.tree_flatten_with_path(self._state)[0]
        return {jax.tree_util.keystr(path): np.asarray(v) for path, v in leaves}


def cache_path(data_cfg, cfg: ClassifierConfig | None = None, cache_dir: str | None = None) -> str:
    """Where the classifier of ``data_cfg`` with ``cfg`` (default: the data set's) is cached."""
    spec = reference.image_spec(data_cfg)
    cfg = cfg or DEFAULT_CONFIGS[spec.dataset]
    # The digits split is drawn from config.data.seed; the other data sets ship their own splits.
    key = {"classifier": dataclasses.asdict(cfg), "dataset": spec.dataset, "version": _VERSION,
           "split_seed": spec.seed if spec.dataset == "digits" else None}  # fmt: skip
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return os.path.join(os.path.expanduser(folder), f"{spec.dataset}-{digest}.npz")


def _load(path: str, spec, cfg: ClassifierConfig) -> FeatureClassifier:
    model = ConvNet(spec.image_size, spec.num_channels, cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    with np.load(path, allow_pickle=False) as f:
        stored = dict(f)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    values = []
    for p, v in leaves:
        name = jax.tree_util.keystr(p)
        if name not in stored or stored[name].shape != v.shape or not {"accuracy", "feature_scale"} <= stored.keys():
            raise ValueError(f"{path}: {name}, accuracy or feature_scale missing or misshapen; delete it to retrain")
        values.append(jnp.asarray(stored[name]))
    state = jax.tree_util.tree_unflatten(treedef, values)
    return FeatureClassifier(nnx.merge(graphdef, state), spec, cfg, stored["accuracy"], stored["feature_scale"])


def get_classifier(data_cfg, cfg: ClassifierConfig | None = None, *, cache_dir: str | None = None,
                   retrain: bool = False) -> FeatureClassifier:  # fmt: skip
    """The cached classifier of ``data_cfg``'s data set, trained (and cached) first if absent or ``retrain``."""
    spec = reference.image_spec(data_cfg)
    cfg = cfg or DEFAULT_CONFIGS[spec.dataset]
    path = cache_path(spec, cfg, cache_dir)
    if os.path.isfile(path) and not retrain:
        return _load(path, spec, cfg)
    sets = reference.real_sets(spec)
    model = ConvNet(spec.image_size, spec.num_channels, cfg, rngs=nnx.Rngs(cfg.seed))
    model = _train(model, reference.to_unit(sets.rest, spec, "rest"), sets.rest_labels, cfg)
    clf = FeatureClassifier(model, spec, cfg)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp.npz"  # written whole, then renamed: readers never see half a file
    np.savez(tmp, accuracy=np.float64(clf.accuracy), feature_scale=np.float64(clf.feature_scale), **clf.state_arrays())
    os.replace(tmp, path)
    return clf
