"""Noise-conditioned residual MLP for vector data (B, D), or any (B, *dims) flattened to D = prod(dims)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import LabelEmbedding, check_cond, embed_noise, embedding_dim, linear


class MLP(nnx.Module):
    """out = W_out h_n + b_out, with h_1 = SiLU(W_1 x + b_1 + U_1 e) and, for l >= 2, the residual layers
    h_l = h_{l-1} + SiLU(W_l h_{l-1} + b_l + U_l e).

    e = SiLU(W_e emb(c) + b_e) is the embedded conditioning (width ``embed_dim``, default ``hidden``),
    projected and added to every hidden
    layer so the noise level reaches the whole depth; the skips keep a deep, wide MLP trainable in a few
    thousand steps. ``n_layers`` counts hidden layers. Input ``(B, *dims)`` with ``prod(dims) == dim`` is
    flattened to ``(B, dim)`` and the output reshaped back, so an 8x8 image is a 64-D vector here.
    Parameters: (E H + H) + (D H + H) + (n - 1)(H^2 + H) + n H^2 + (H D + D), with E the embedding
    width (``hidden`` for positional, ``2 hidden`` for Fourier features). The output layer uses
    default_init(init_scale), so ``init_scale=0`` starts the network at (almost) zero output.
    ``dropout`` > 0 drops units of every layer's update SiLU(...) in training (inverted dropout, one
    mask per layer from ``fold_in(key, layer)``).

    With ``out_dim`` the output is ``(B, out_dim)`` instead of the input's shape: the same network as a
    noise-conditional classifier's logits (``out_dim`` classes).

    ``input_fourier`` = (w_1, ..., w_K): angular frequencies of extra input features sin(w_k x_i),
    cos(w_k x_i) for every input value x_i (VDM, Kingma et al. 2021, arXiv 2107.00630, sec. 3.3),
    so the first layer sees D (1 + 2K) values. With w = 2 pi / (bin width of the quantised data in
    network-input units) they let the network express structure at the scale of one grey level, which
    the likelihood of dequantised data rewards at small noise; () disables them. (What dropout and
    these features did to the digits quick start is measured in docs/results.md.)
    """

    def __init__(self, dim: int, *, hidden: int = 128, n_layers: int = 3, embedding_type: str = "fourier",
                 fourier_scale: float = 16.0, init_scale: float = 0.0, dropout: float = 0.0,
                 input_fourier: tuple[float, ...] = (), embed_dim: int | None = None, num_classes: int = 0,
                 concat_dim: int = 0, out_dim: int | None = None, rngs: nnx.Rngs):
        for name, value in (("dim", dim), ("hidden", hidden), ("n_layers", n_layers)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = nnx.Dropout(dropout)
        self.input_fourier = tuple(float(w) for w in input_fourier)
        self.dim, self.embedding_type, self.fourier_scale, self.hidden = dim, embedding_type, float(fourier_scale), hidden
        self.embed_dim = emb = int(embed_dim or hidden)
        self.embed = linear(embedding_dim(embedding_type, emb), emb, rngs)
        self.label = LabelEmbedding(num_classes, embedding_dim(embedding_type, emb), rngs) if num_classes else None
        self.num_classes, self.concat_dim = int(num_classes), int(concat_dim)
        widths = [dim * (1 + 2 * len(self.input_fourier)) + self.concat_dim] + [hidden] * n_layers
        self.layers = nnx.List([linear(a, b, rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.cond = nnx.List([linear(emb, hidden, rngs, use_bias=False) for _ in range(n_layers)])
        self.out_dim = out_dim
        self.out = linear(hidden, out_dim or dim, rngs, scale=init_scale)

    def __call__(self, x: jax.Array, c_noise: jax.Array, cond=None, *, train: bool = False,
                 key: jax.Array | None = None):
        """(B, *dims), (B,) -> (B, *dims) (or (B, out_dim)). ``train=True`` applies dropout with masks drawn
        from ``key``."""
        cond = check_cond(cond, num_classes=self.num_classes, concat_channels=self.concat_dim, who="MLP")
        if train and self.dropout.rate > 0 and key is None:
            raise ValueError("MLP: train=True with dropout needs a PRNG key")
        if math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must have {self.dim} values per example, got shape {x.shape}")
        feats = embed_noise(c_noise, self.embedding_type, self.embed_dim, self.fourier_scale)
        if self.label is not None:
            feats = feats + self.label(cond.get("label"), x.shape[0])
        e = jax.nn.silu(self.embed(feats))
        h = x.reshape(x.shape[0], self.dim)
        if self.input_fourier:
            w = jnp.asarray(self.input_fourier, h.dtype)
            phase = (h[:, None, :] * w[:, None]).reshape(h.shape[0], -1)  # (B, K D)
            h = jnp.concatenate([h, jnp.sin(phase), jnp.cos(phase)], axis=-1)
        if self.concat_dim:
            if "concat" not in cond:
                raise ValueError("MLP: built with concat_dim > 0, so cond['concat'] is required")
            extra = jnp.asarray(cond["concat"], h.dtype).reshape(x.shape[0], -1)
            if extra.shape[1] != self.concat_dim:
                raise ValueError(f"cond['concat'] must hold {self.concat_dim} values per example, got {extra.shape[1]}")
            h = jnp.concatenate([h, extra], axis=-1)
        for i, (layer, cond) in enumerate(zip(self.layers, self.cond)):
            update = jax.nn.silu(layer(h) + cond(e))
            if train and self.dropout.rate > 0:
                update = self.dropout(update, deterministic=False, rngs=jax.random.fold_in(key, i))
            h = update if i == 0 else h + update
        out = self.out(h)
        return out if self.out_dim else out.reshape(x.shape)
