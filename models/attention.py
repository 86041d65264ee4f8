"""Attention for conditioning: multi-head (cross-)attention, LDM's SpatialTransformer, a small text encoder.

Rombach et al. 2022 (arXiv 2112.10752) condition the U-Net on a token sequence through cross-attention:
a :class:`SpatialTransformer` at chosen resolutions turns the feature map ``(B, H, W, C)`` into H*W
tokens and runs ``depth`` pre-LayerNorm transformer blocks on them (self-attention, cross-attention to
the context ``(B, L, C_ctx)`` with a ``(B, L)`` mask, gated-GELU feed-forward, each a residual), between
a GroupNorm + 1x1 projection in and a zero-initialised 1x1 projection out, so that at initialisation
the block is the identity and a pretrained U-Net is unchanged by inserting it.

The context comes from a :class:`TokenEncoder` trained jointly with the U-Net (LDM's
``cond_stage_trainable``): token and position embeddings and a few pre-LayerNorm self-attention blocks
over a caption's words or a layout's box tokens; padding tokens are masked everywhere.
:class:`BagOfWords` is the baseline without order: the mean embedding of the tokens, one vector.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import linear

PAD, BOS = 0, 1  # the padding and beginning token ids of every tokenizer (sde_lib.text)


def attention(q, k, v, mask=None):
    """Scaled dot-product attention, heads in axis 2: q ``(B, N, H, D)``, k/v ``(B, L, H, D)``,
    ``mask`` ``(B, L)`` (True = attend). Logits and softmax in float32."""
    logits = jnp.einsum("bnhd,blhd->bhnl", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhnl,blhd->bnhd", w, v)


class MultiHeadAttention(nnx.Module):
    """``x (B, N, C)`` attends to ``context (B, L, C_ctx)`` (itself when None) with ``heads`` heads of
    ``head_dim``; q, k, v without bias, output projection with bias (LDM's CrossAttention)."""

    def __init__(self, dim: int, context_dim: int | None, heads: int, head_dim: int, rngs: nnx.Rngs):
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q = linear(dim, inner, rngs, use_bias=False)
        self.k = linear(context_dim or dim, inner, rngs, use_bias=False)
        self.v = linear(context_dim or dim, inner, rngs, use_bias=False)
        self.out = linear(inner, dim, rngs)

    def __call__(self, x, context=None, mask=None):
        context = x if context is None else context
        split = lambda a: a.reshape(*a.shape[:2], self.heads, self.head_dim)  # noqa: E731
        h = attention(split(self.q(x)), split(self.k(context)), split(self.v(context)), mask)
        return self.out(h.reshape(*h.shape[:2], -1))


class GEGLU(nnx.Module):
    """Gated-GELU feed-forward: W_2 (a * gelu(g)) with [a, g] = W_1 x, inner width ``mult * dim``."""

    def __init__(self, dim: int, rngs: nnx.Rngs, mult: int = 4):
        self.proj = linear(dim, 2 * mult * dim, rngs)
        self.out = linear(mult * dim, dim, rngs)

    def __call__(self, x):
        a, g = jnp.split(self.proj(x), 2, axis=-1)
        return self.out(a * jax.nn.gelu(g))


class TransformerBlock(nnx.Module):
    """Pre-LayerNorm residual block: self-attention, cross-attention to a context (if ``context_dim``),
    gated-GELU feed-forward."""

    def __init__(self, dim: int, context_dim: int | None, heads: int, head_dim: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.self_attn = MultiHeadAttention(dim, None, heads, head_dim, rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs) if context_dim else None
        self.cross_attn = MultiHeadAttention(dim, context_dim, heads, head_dim, rngs) if context_dim else None
        self.norm3 = nnx.LayerNorm(dim, rngs=rngs)
        self.ff = GEGLU(dim, rngs)

    def __call__(self, x, context=None, context_mask=None, self_mask=None):
        x = x + self.self_attn(self.norm1(x), mask=self_mask)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nnx.Module):
    """LDM's SpatialTransformer on ``(B, H, W, C)``: GroupNorm, 1x1 projection to ``heads * head_dim``,
    ``depth`` transformer blocks with cross-attention to ``context``, zero-initialised 1x1 projection back,
    residual. Identity at initialisation."""

    def __init__(self, channels: int, context_dim: int, *, heads: int, head_dim: int, depth: int,
                 norm: nnx.Module, rngs: nnx.Rngs):
        inner = heads * head_dim
        self.norm = norm
        self.proj_in = linear(channels, inner, rngs)
        self.blocks = nnx.List([TransformerBlock(inner, context_dim, heads, head_dim, rngs) for _ in range(depth)])
        # Exact zeros (not default_init's near-zero): the block is the identity at initialisation.
        self.proj_out = nnx.Linear(inner, channels, kernel_init=jax.nn.initializers.zeros,
                                   bias_init=jax.nn.initializers.zeros, rngs=rngs)

    def __call__(self, x, ctx):
        """``x (B, H, W, C)``; ``ctx = (context (B, L, context_dim), mask (B, L) or None)``."""
        context, context_mask = ctx
        b, hh, ww, c = x.shape
        h = self.proj_in(self.norm(x)).reshape(b, hh * ww, -1)
        for block in self.blocks:
            h = block(h, context, context_mask)
        return x + self.proj_out(h).reshape(b, hh, ww, c)


class TokenEncoder(nnx.Module):
    """Token ids ``(B, L)`` -> context ``(B, L, dim)`` and mask ``(B, L)`` (False at padding): embeddings
    of tokens and positions, ``depth`` pre-LayerNorm self-attention blocks, a final LayerNorm."""

    def __init__(self, vocab_size: int, max_len: int, dim: int, *, depth: int, heads: int, rngs: nnx.Rngs):
        self.max_len = max_len
        self.tokens = nnx.Embed(vocab_size, dim, embedding_init=jax.nn.initializers.normal(0.02), rngs=rngs)
        self.positions = nnx.Param(0.02 * jax.random.normal(rngs.params(), (max_len, dim)))
        self.blocks = nnx.List([TransformerBlock(dim, None, heads, dim // heads, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)

    def __call__(self, ids):
        ids = jnp.asarray(ids)
        if ids.ndim != 2 or ids.shape[1] > self.max_len:
            raise ValueError(f"token ids must be (B, L <= {self.max_len}), got {ids.shape}")
        mask = ids != PAD
        h = self.tokens(ids) + self.positions[...][: ids.shape[1]]
        for block in self.blocks:
            h = block(h, self_mask=mask)
        return self.norm(h), mask


class BagOfWords(nnx.Module):
    """Token ids ``(B, L)`` -> the mean embedding of the non-padding tokens ``(B, dim)``: no word order."""

    def __init__(self, vocab_size: int, dim: int, rngs: nnx.Rngs):
        self.tokens = nnx.Embed(vocab_size, dim, embedding_init=jax.nn.initializers.normal(1.0), rngs=rngs)

    def __call__(self, ids):
        mask = (jnp.asarray(ids) != PAD)[..., None]
        return jnp.sum(self.tokens(ids) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
