"""Shared building blocks: score_sde's initialiser, noise-level embeddings, GroupNorm.

Embeddings map a per-example conditioning scalar ``c`` of shape ``(B,)`` (whatever the SDE-side adapter
chooses: a time, ``999 t``, ``log sigma``, EDM's ``log(sigma)/4``) to features ``(B, dim)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

EMBEDDING_TYPES = ("fourier", "positional")
COND_KEYS = ("label", "context", "context_mask", "concat", "tokens")


def default_init(scale: float = 1.0):
    """Variance scaling, fan-average, uniform (score_sde's ``default_init``).

    ``scale == 0`` becomes 1e-10 as in score_sde: the layer starts at (almost) zero yet keeps a
    non-degenerate random direction, which is how ``init_scale=0`` zeroes residual branches and outputs.
    """
    return jax.nn.initializers.variance_scaling(scale if scale > 0 else 1e-10, "fan_avg", "uniform")


def linear(d_in: int, d_out: int, rngs: nnx.Rngs, scale: float = 1.0, use_bias: bool = True) -> nnx.Linear:
    """Dense layer (also the 1x1 convolution / NIN on NHWC input) with default_init(scale), zero bias."""
    return nnx.Linear(d_in, d_out, use_bias=use_bias, kernel_init=default_init(scale),
                      bias_init=jax.nn.initializers.zeros, rngs=rngs)


def conv3x3(c_in: int, c_out: int, rngs: nnx.Rngs, scale: float = 1.0, stride: int = 1) -> nnx.Conv:
    """3x3 'SAME' convolution with default_init(scale) and zero bias (stride 2 pads one pixel at the end)."""
    return nnx.Conv(c_in, c_out, kernel_size=(3, 3), strides=(stride, stride), padding="SAME",
                    kernel_init=default_init(scale), bias_init=jax.nn.initializers.zeros, rngs=rngs)


def num_groups(channels: int) -> int:
    """score_sde's GroupNorm group count min(C // 4, 32); ValueError if that does not divide ``channels``."""
    g = min(channels // 4, 32)
    if g < 1 or channels % g:
        raise ValueError(f"GroupNorm needs channels >= 4 divisible by min(channels // 4, 32), got {channels}")
    return g


class GroupNorm(nnx.Module):
    """GroupNorm over the channels (last axis) with score_sde's group count and epsilon 1e-6.

    ``(B, *spatial, C) -> (B, *spatial, C)``. The same maths and parameters (``scale``, ``bias``, each
    ``(C,)``) as ``nnx.GroupNorm`` with its fast variance E[x^2] - E[x]^2, computed the way a CPU likes:
    per-channel sums over the spatial axes (the channel axis stays contiguous, so the reductions
    vectorise) are pooled into group statistics on the tiny ``(B, C)`` arrays, and the normalisation
    becomes one per-(example, channel) multiply-add, ``x a + d``, that XLA fuses into its neighbours.
    ``nnx.GroupNorm`` reduces over the minor axis of a ``(B, HW, G, C/G)`` view instead: 6x slower
    forward on this CPU. Statistics are float32 whatever ``x``'s dtype; the output has ``x``'s dtype.
    """

    def __init__(self, channels: int, epsilon: float = 1e-6):
        self.num_groups, self.epsilon = num_groups(channels), epsilon
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        b, c, g = x.shape[0], x.shape[-1], self.num_groups
        xf = x.reshape(b, -1, c).astype(jnp.float32)
        mean = jnp.mean(xf, axis=1).reshape(b, g, c // g).mean(-1)  # (B, G)
        mean_sq = jnp.mean(jnp.square(xf), axis=1).reshape(b, g, c // g).mean(-1)
        rstd = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
        a = jnp.repeat(rstd, c // g, axis=1) * self.scale[...]  # (B, C)
        d = self.bias[...] - jnp.repeat(mean, c // g, axis=1) * a
        shape = (b,) + (1,) * (x.ndim - 2) + (c,)
        return x * a.reshape(shape).astype(x.dtype) + d.reshape(shape).astype(x.dtype)


def positional_embedding(c: jax.Array, dim: int, max_positions: float = 10_000.0) -> jax.Array:
    """Transformer sinusoids: [sin(c w_k), cos(c w_k)], w_k = max_positions^(-k/(dim/2 - 1)); (B,) -> (B, dim).

    Odd ``dim`` is zero-padded by one column.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = c.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


def fourier_embedding(c: jax.Array, n_freqs: int, scale: float) -> jax.Array:
    """Gaussian Fourier features [sin(2 pi c w), cos(2 pi c w)], w ~ N(0, scale^2) of size ``n_freqs``.

    (B,) -> (B, 2 n_freqs). The frequencies are fixed (never trained, as in score_sde) and drawn from a
    fixed key, so they are a function of (n_freqs, scale) and the model's state holds trainable
    parameters only.
    """
    w = scale * jax.random.normal(jax.random.key(0), (n_freqs,), jnp.float32)
    args = 2.0 * jnp.pi * c.astype(jnp.float32)[:, None] * w[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def embed_noise(c: jax.Array, embedding_type: str, nf: int, fourier_scale: float) -> jax.Array:
    """score_sde's conditioning embedding: positional -> (B, nf); fourier -> (B, 2 nf)."""
    if embedding_type == "positional":
        return positional_embedding(c, nf)
    return fourier_embedding(c, nf, fourier_scale)


def embedding_dim(embedding_type: str, nf: int) -> int:
    """Width of :func:`embed_noise`'s output."""
    if embedding_type not in EMBEDDING_TYPES:
        raise ValueError(f"embedding_type must be one of {EMBEDDING_TYPES}, got {embedding_type!r}")
    return nf if embedding_type == "positional" else 2 * nf


def check_cond(cond, *, num_classes: int = 0, concat_channels: int = 0, context_dim: int = 0, tokens: bool = False,
               who: str = "model") -> dict:
    """Validate a condition dict against what a network was built for; returns it (``{}`` for None).

    ``label`` needs ``num_classes > 0`` (values 0..num_classes, the last the null class), ``concat`` needs
    ``concat_channels > 0``, ``context`` / ``context_mask`` need ``context_dim > 0``, ``tokens`` a token
    encoder. Unknown keys raise.
    """
    cond = {} if cond is None else dict(cond)
    unknown = set(cond) - set(COND_KEYS)
    if unknown:
        raise ValueError(f"{who}: unknown condition key(s) {sorted(unknown)}; known: {COND_KEYS}")
    for key, size, field in (("label", num_classes, "num_classes"), ("concat", concat_channels, "concat_channels"),
                             ("context", context_dim, "context_dim")):
        if key in cond and not size:
            raise ValueError(f"{who}: got cond[{key!r}] but the network was built with {field}=0")
    if "context_mask" in cond and "context" not in cond:
        raise ValueError(f"{who}: cond['context_mask'] without cond['context']")
    if "tokens" in cond and not tokens:
        raise ValueError(f"{who}: got cond['tokens'] but the network has no token encoder")
    return cond


class LabelEmbedding(nnx.Module):
    """A learned vector per class, added to the noise features: ``(B,)`` int labels -> ``(B, dim)``.

    Row ``num_classes`` is the null class (the unconditional branch of classifier-free guidance); a
    missing label means the null class, so ``model(x, c)`` of a conditional network is unconditional.
    """

    def __init__(self, num_classes: int, dim: int, rngs: nnx.Rngs):
        self.num_classes = int(num_classes)
        self.table = nnx.Embed(self.num_classes + 1, dim, embedding_init=jax.nn.initializers.normal(1.0), rngs=rngs)

    def __call__(self, label, batch: int) -> jax.Array:
        if label is None:
            label = jnp.full((batch,), self.num_classes, jnp.int32)
        label = jnp.asarray(label)
        if label.shape != (batch,) or not jnp.issubdtype(label.dtype, jnp.integer):
            raise ValueError(f"cond['label'] must be ({batch},) integers, got {label.dtype} {label.shape}")
        return self.table(label)
