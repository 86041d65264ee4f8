"""Noise-conditioned MLP for vector data x of shape (B, D)."""

from __future__ import annotations

import jax
from flax import nnx

from models.layers import embed_noise, embedding_dim, linear


class MLP(nnx.Module):
    """out = W_out h_n + b_out with h_l = SiLU(W_l h_{l-1} + b_l + U_l e) and h_0 = x.

    e = SiLU(W_e emb(c) + b_e) is the embedded conditioning (width ``hidden``), added to every hidden
    layer so the noise level reaches the whole depth. ``n_layers`` counts hidden layers. Parameters:
    (E H + H) + (D H + H) + (n - 1)(H^2 + H) + n H^2 + (H D + D), with E the embedding width
    (``hidden`` for positional, ``2 hidden`` for Fourier features). The output layer uses
    default_init(init_scale), so ``init_scale=0`` starts the network at (almost) zero output.
    """

    def __init__(self, dim: int, *, hidden: int = 128, n_layers: int = 3, embedding_type: str = "fourier",
                 fourier_scale: float = 16.0, init_scale: float = 0.0, rngs: nnx.Rngs):
        for name, value in (("dim", dim), ("hidden", hidden), ("n_layers", n_layers)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.embedding_type, self.fourier_scale, self.hidden = embedding_type, float(fourier_scale), hidden
        self.embed = linear(embedding_dim(embedding_type, hidden), hidden, rngs)
        widths = [dim] + [hidden] * n_layers
        self.layers = nnx.List([linear(a, b, rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.cond = nnx.List([linear(hidden, hidden, rngs, use_bias=False) for _ in range(n_layers)])
        self.out = linear(hidden, dim, rngs, scale=init_scale)

    def __call__(self, x: jax.Array, c_noise: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        """(B, D), (B,) -> (B, D). ``train`` and ``key`` are accepted for a uniform model signature (no dropout)."""
        del train, key
        e = jax.nn.silu(self.embed(embed_noise(c_noise, self.embedding_type, self.hidden, self.fourier_scale)))
        h = x
        for layer, cond in zip(self.layers, self.cond):
            h = jax.nn.silu(layer(h) + cond(e))
        return self.out(h)
