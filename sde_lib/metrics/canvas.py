"""The canvas evaluator: a framework-trained classifier of the four canvas slots, and the adherence metrics.

The network (3x3 convolutions, each later one halving the resolution, a dense feature layer, then one
head per slot over ``C + 1`` outcomes: a class or empty) is trained on the canvas training split with a
fixed seed and cached as ``.npz`` beside the other metric classifiers (``metrics.classifier``'s cache).
Its penultimate layer is the feature space of FD / KID on canvases.

* **adherence**: share of samples whose predicted slots satisfy the caption exactly
  (``data.canvas.satisfies``: the named objects in the stated place or relation, nothing else);
* **binding**: adherence on the order-swapped captions ("a 7 left of a 3" after "a 3 left of a 7");
* **composition**: adherence on captions whose combination no training canvas shows (held out);
* the ceiling: the same on real test canvases (and on their autoencoder reconstructions).
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

from sde_lib.data import canvas as canvas_data
from sde_lib.data.scaling import scale, unscale
from sde_lib.metrics.classifier import CACHE_ENV, DEFAULT_CACHE, ConvNet

_VERSION = 1
_BATCH = 500


@dataclasses.dataclass(frozen=True)
class SlotClassifierConfig:
    channels: tuple[int, ...] = (32, 64)
    feature_dim: int = 128
    epochs: int = 6
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0


class SlotNet(ConvNet):
    """The metric classifiers' :class:`ConvNet` with one head per slot: canvases ``(B, S, S, 1)`` in [0, 1] ->
    slot logits ``(B, 4, C + 1)``; ``features`` ``(B, feature_dim)``."""

    def __init__(self, size: int, num_classes: int, cfg: SlotClassifierConfig, *, rngs: nnx.Rngs):
        super().__init__(size, 1, cfg, rngs=rngs, num_outputs=len(canvas_data.SLOTS) * (num_classes + 1))
        self.num_classes = num_classes

    def __call__(self, x):
        return super().__call__(x).reshape(x.shape[0], len(canvas_data.SLOTS), self.num_classes + 1)


class CanvasEvaluator:
    """A trained :class:`SlotNet` for one canvas data set: slot predictions (-1 = empty) and features.

    :meth:`features` are the penultimate activations divided by their root mean square over the first
    1000 test canvases (as the digits classifier's), so FD and KID's cubic kernel see features of unit
    size whatever scale training gave them (raw activations made KID's kernel values explode).
    """

    def __init__(self, name: str, model: SlotNet):
        self.spec = canvas_data.SPECS[name]
        graphdef, self._state = nnx.split(model)
        self._feature_scale = None

        @jax.jit
        def forward(state, x):
            net = nnx.merge(graphdef, state)
            f = net.features(x)
            return f, jnp.argmax(net.head(f).reshape(x.shape[0], len(canvas_data.SLOTS), -1), -1)

        self._forward = forward

    def unit(self, samples) -> np.ndarray:
        """Samples (integer levels, or model-space floats in [-1, 1]) -> canvases in [0, 1]."""
        x = np.asarray(samples)
        levels = x if np.issubdtype(x.dtype, np.integer) else unscale(x, self.spec.levels, True)
        return scale(levels, self.spec.levels, centered=False)

    def _run(self, samples, which: int) -> np.ndarray:
        u = self.unit(samples)
        out = []
        for i in range(0, len(u), _BATCH):
            chunk = u[i:i + _BATCH]
            pad = np.zeros((_BATCH - len(chunk), *u.shape[1:]), np.float32)
            out.append(np.asarray(self._forward(self._state, np.concatenate([chunk, pad]))[which])[: len(chunk)])
        return np.concatenate(out)

    def slots(self, samples) -> np.ndarray:
        """``(N, 4)`` predicted class per slot, -1 for empty."""
        pred = self._run(samples, 1)
        return np.where(pred == len(self.spec.class_names), -1, pred)

    def unit_features_fn(self, u):
        """Traceable features of canvases ``u`` in [0, 1] (inside a jitted loss)."""
        return self._forward(self._state, u)[0]

    def features(self, samples) -> np.ndarray:
        if self._feature_scale is None:
            real = canvas_data.canvases(self.spec.name, "test")[0][:1000]
            self._feature_scale = float(np.sqrt(np.mean(self._run(real, 0).astype(np.float64) ** 2)))
        return self._run(samples, 0) / self._feature_scale

    def adherence(self, samples, captions) -> np.ndarray:
        """``(N,)`` bool: sample i shows exactly ``captions[i]``."""
        return np.array([canvas_data.satisfies(c, s, self.spec) for c, s in zip(captions, self.slots(samples))])

    def state_arrays(self) -> dict[str, np.ndarray]:
        leaves = jax.tree_util.tree_flatten_with_path(self._state)[0]
        return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _slot_targets(layouts, num_classes: int) -> np.ndarray:
    slots = canvas_data.slot_labels(layouts)
    return np.where(slots < 0, num_classes, slots).astype(np.int32)


def _train(name: str, cfg: SlotClassifierConfig) -> SlotNet:
    spec = canvas_data.SPECS[name]
    x, _, layouts = canvas_data.canvases(name, "train")
    u = scale(x, spec.levels, centered=False)
    y = _slot_targets(layouts, len(spec.class_names))
    model = SlotNet(spec.size, len(spec.class_names), cfg, rngs=nnx.Rngs(cfg.seed))
    graphdef, params = nnx.split(model)
    opt = optax.adam(cfg.learning_rate)

    def loss_fn(p, xb, yb):
        logits = nnx.merge(graphdef, p)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).sum(-1).mean()

    @jax.jit
    def step(p, s, xb, yb):
        updates, s = opt.update(jax.grad(loss_fn)(p, xb, yb), s, p)
        return optax.apply_updates(p, updates), s

    state, rng = opt.init(params), np.random.default_rng(cfg.seed)
    steps = len(u) // cfg.batch_size
    for _ in range(cfg.epochs):
        for idx in rng.permutation(len(u))[: steps * cfg.batch_size].reshape(steps, -1):
            params, state = step(params, state, u[idx], y[idx])
    return nnx.merge(graphdef, params)


def cache_path(name: str, cfg: SlotClassifierConfig, cache_dir: str | None = None) -> str:
    key = {"evaluator": dataclasses.asdict(cfg), "canvas": name, "version": _VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE
    return os.path.join(os.path.expanduser(folder), f"{name}-slots-{digest}.npz")


def get_evaluator(name: str, cfg: SlotClassifierConfig | None = None, *, cache_dir: str | None = None,
                  retrain: bool = False) -> CanvasEvaluator:
    """The cached slot classifier of canvas data set ``name``, trained (and cached) first if absent."""
    if name not in canvas_data.SPECS:
        raise ValueError(f"no canvas data set {name!r}; choose from {', '.join(canvas_data.SPECS)}")
    cfg = cfg or SlotClassifierConfig()
    spec = canvas_data.SPECS[name]
    path = cache_path(name, cfg, cache_dir)
    template = SlotNet(spec.size, len(spec.class_names), cfg, rngs=nnx.Rngs(0))
    if os.path.isfile(path) and not retrain:
        graphdef, state = nnx.split(template)
        with np.load(path, allow_pickle=False) as f:
            stored = dict(f)
        leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
        try:
            values = [jnp.asarray(stored[jax.tree_util.keystr(p)]) for p, _ in leaves]
        except KeyError:
            raise ValueError(f"{path}: not a slot classifier of this version; delete it to retrain") from None
        return CanvasEvaluator(name, nnx.merge(graphdef, jax.tree_util.tree_unflatten(treedef, values)))
    evaluator = CanvasEvaluator(name, _train(name, cfg))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp.npz"
    np.savez(tmp, **evaluator.state_arrays())
    os.replace(tmp, path)
    return evaluator
