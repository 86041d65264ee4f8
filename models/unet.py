"""NCSN++ / DDPM++ U-Net (Song et al. 2021, arXiv 2011.13456, section H), NHWC layout.

score_sde's ``ncsnpp`` network with its hyperparameters and their meaning; DDPM++ is the same network
with DDPM-style choices (positional embedding, no input pyramid). Supported subset, errors otherwise:

* no output pyramid (score_sde's ``progressive='none'``) and ``progressive_input`` 'none' or 'residual';
* non-FIR resampling: nearest-neighbour up, 2x2 average (or strided 3x3 conv) down. score_sde's VE
  NCSN++ config sets ``fir=True`` (a fixed [1, 3, 3, 1] blur); FIR filters hold no parameters, so the
  parameter count matches, but the resampling filter differs;
* the network takes the input as given: score_sde's ``2x - 1`` for uncentred data and
  ``scale_by_sigma`` belong to the data pipeline and the parameterisation adapter here.

Dropout: ``model(x, c, train=True, key=k)`` drops with per-block keys ``fold_in(k, block_index)``;
``train=False`` (the default, for sampling and evaluation) is deterministic. The model holds no RNG
state, so ``nnx.split(model)`` gives parameters only.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import BOS, BagOfWords, SpatialTransformer, TokenEncoder
from models.layers import (
    GroupNorm,
    LabelEmbedding,
    check_cond,
    conv3x3,
    embed_noise,
    embedding_dim,
    linear,
    num_groups,
)
from models.resample import downsample_mean, upsample_conv3x3, upsample_nearest

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE_INPUT = ("none", "residual")


def _skip(x, h, skip_rescale: bool):
    """Residual sum, divided by sqrt(2) with ``skip_rescale`` so the variance does not grow with depth."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class ResBlock(nnx.Module):
    """Pre-activation residual block: GN-SiLU-[resample]-conv3x3-(+Dense(SiLU(temb)))-GN-SiLU-dropout-conv3x3.

    ``biggan=False`` is score_sde's ResnetBlockDDPMpp (NIN shortcut when channels change);
    ``biggan=True`` is ResnetBlockBigGANpp, which may resample (``up``/``down``) inside the block and
    uses a 1x1 conv shortcut whenever channels or resolution change. The last conv uses
    default_init(init_scale): ``init_scale=0`` makes every block start as (almost) the identity.
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int | None, *, index: int, biggan: bool,
                 up: bool = False, down: bool = False, dropout: float = 0.0, skip_rescale: bool = True,
                 init_scale: float = 0.0, rngs: nnx.Rngs):
        self.index, self.up, self.down, self.skip_rescale = index, up, down, skip_rescale
        self.norm0 = GroupNorm(c_in)
        self.conv0 = conv3x3(c_in, c_out, rngs)
        self.temb = linear(temb_dim, c_out, rngs) if temb_dim else None
        self.norm1 = GroupNorm(c_out)
        self.dropout = nnx.Dropout(dropout)
        self.conv1 = conv3x3(c_out, c_out, rngs, scale=init_scale)
        needs_shortcut = c_in != c_out or (biggan and (up or down))
        self.shortcut = linear(c_in, c_out, rngs) if needs_shortcut else None

    def __call__(self, x, temb, train: bool, key):
        h = jax.nn.silu(self.norm0(x))
        if self.up:
            # Both branches upsample after their linear maps, which commute with nearest upsampling:
            # the fused up-conv halves the 3x3 conv's work, the 1x1 shortcut runs on a quarter of the pixels.
            h = upsample_conv3x3(self.conv0, h)
            x = upsample_nearest(x if self.shortcut is None else self.shortcut(x))
        else:
            if self.down:
                h, x = downsample_mean(h), downsample_mean(x)
            h = self.conv0(h)
            if self.shortcut is not None:
                x = self.shortcut(x)
        if self.temb is not None:
            h = h + self.temb(jax.nn.silu(temb))[:, None, None, :]
        h = jax.nn.silu(self.norm1(h))
        h = self.dropout(h, deterministic=not train,
                         rngs=None if key is None else jax.random.fold_in(key, self.index))
        return _skip(x, self.conv1(h), self.skip_rescale)


class AttnBlock(nnx.Module):
    """Single-head self-attention over the H*W positions with 1x1 q, k, v and output projections."""

    def __init__(self, c: int, *, skip_rescale: bool, init_scale: float, rngs: nnx.Rngs):
        self.skip_rescale = skip_rescale
        self.norm = GroupNorm(c)
        self.q, self.k, self.v = (linear(c, c, rngs) for _ in range(3))
        self.out = linear(c, c, rngs, scale=init_scale)

    def __call__(self, x, ctx=None):
        del ctx  # self-attention only (a SpatialTransformer takes the context)
        b, hh, ww, c = x.shape
        h = self.norm(x)
        q, k, v = (f(h).reshape(b, hh * ww, c) for f in (self.q, self.k, self.v))
        # Logits and softmax in float32 (at least), whatever the compute dtype.
        logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
        logits = logits / math.sqrt(c)
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = jnp.einsum("bij,bjc->bic", w, v).reshape(b, hh, ww, c)
        return _skip(x, self.out(h), self.skip_rescale)


class Resample(nnx.Module):
    """DDPM-type resampling between levels: nearest up or mean-pool down, or a conv variant with ``with_conv``.

    Down with conv is a stride-2 3x3 conv; up with conv is nearest up followed by a 3x3 conv.
    """

    def __init__(self, c_in: int, c_out: int, *, up: bool, with_conv: bool, rngs: nnx.Rngs):
        self.up = up
        self.conv = conv3x3(c_in, c_out, rngs, stride=1 if up else 2) if with_conv else None

    def __call__(self, x):
        if self.up:
            return upsample_nearest(x) if self.conv is None else upsample_conv3x3(self.conv, x)
        return downsample_mean(x) if self.conv is None else self.conv(x)


class Level(nnx.Module):
    """One resolution of the encoder or decoder: residual blocks, attention, and the resampler.

    In the encoder and the middle, ``attn[j]`` (if any) follows ``blocks[j]``; in the decoder the
    attention follows the last block. ``pyramid`` is the strided conv of ``progressive_input='residual'``.
    """

    def __init__(self, blocks, attn, resample, pyramid=None):
        self.blocks = nnx.List(blocks)
        self.attn = nnx.List(attn)
        self.resample = resample
        self.pyramid = pyramid

    def encode(self, h, pyramid, temb, train: bool, key, skip_rescale: bool, ctx=None):
        """Encoder level: ``(h, pyramid) -> (skip features [after each block, after downsampling], pyramid)``.
        ``ctx``: (context, mask) for SpatialTransformer blocks, or None."""
        hs = []
        for j, block in enumerate(self.blocks):
            h = block(h, temb, train, key)
            h = self.attn[j](h, ctx) if j < len(self.attn) else h
            hs.append(h)
        if self.resample is not None:
            h = self._resample(h, temb, train, key)
            if self.pyramid is not None:
                pyramid = h = _skip(self.pyramid(pyramid), h, skip_rescale)
            hs.append(h)
        return hs, pyramid

    def decode(self, h, skips, temb, train: bool, key, ctx=None):
        """Decoder level: each block takes ``h`` concatenated with the next of ``skips``, then attention and upsampling."""
        for block, skip in zip(self.blocks, skips, strict=True):
            h = block(jnp.concatenate([h, skip], axis=-1), temb, train, key)
        for a in self.attn:
            h = a(h, ctx)
        return h if self.resample is None else self._resample(h, temb, train, key)

    def _resample(self, h, temb, train, key):
        if isinstance(self.resample, ResBlock):
            return self.resample(h, temb, train, key)
        return self.resample(h)


class UNet(nnx.Module):
    """NCSN++/DDPM++ U-Net: (x (B, H, W, C), c_noise (B,)) -> (B, H, W, C).

    Encoder: conv3x3, then per level ``num_res_blocks`` residual blocks (attention after each where the
    resolution is in ``attn_resolutions``) and, except at the last level, a downsampling step (a BigGAN
    residual block with ``resblock_type='biggan'``, else :class:`Resample`). With
    ``progressive_input='residual'`` the input image is also downsampled by strided convs and added to
    the features after every downsampling. Middle: ResBlock-Attn-ResBlock. Decoder: per level
    ``num_res_blocks + 1`` blocks on the concatenated skip features, attention, upsampling. Output:
    GN-SiLU-conv3x3 with default_init(init_scale). Channels at level i: ``nf * ch_mult[i]``;
    conditioning: embedding -> Dense(4 nf) -> SiLU -> Dense(4 nf), only if ``conditional``.

    ``cond``: with ``num_classes`` > 0 a learned class embedding is added to the noise features
    (``cond["label"]``, the null class ``num_classes`` when absent; needs ``conditional``); with
    ``concat_channels`` > 0, ``cond["concat"]`` ``(B, H, W, concat_channels)`` is concatenated to the input.
    With ``context_dim`` > 0 the attention blocks are LDM's SpatialTransformers (self- and cross-attention
    to ``cond["context"]`` ``(B, L, context_dim)`` with ``cond["context_mask"]`` ``(B, L)``); with
    ``context_vocab`` > 0 the network also owns a token encoder trained with it, and takes
    ``cond["tokens"]`` ``(B, L)`` (a caption's or layout's token ids; the empty sequence when absent).
    ``context_pooled`` is the baseline without cross-attention: the tokens' mean embedding, projected,
    joins the noise embedding like a class label, blind to word order.

    Precision: the network computes in the promoted dtype of ``x`` and its parameters (bfloat16 when the
    train step casts both, see ``training.compute_dtype``); GroupNorm statistics and the attention
    softmax stay float32. ``remat=True`` wraps each level (encoder levels, middle, decoder levels) in
    ``nnx.remat``: the backward pass keeps only the levels' outputs and recomputes their insides, which
    trades about one extra forward pass for the activation memory of the blocks.
    """

    def __init__(self, *, image_size: int, num_channels: int, nf: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16,), dropout: float = 0.1,
                 resblock_type: str = "biggan", embedding_type: str = "positional", fourier_scale: float = 16.0,
                 skip_rescale: bool = True, init_scale: float = 0.0, resamp_with_conv: bool = True,
                 conditional: bool = True, progressive_input: str = "none", num_classes: int = 0,
                 concat_channels: int = 0, remat: bool = False, context_dim: int = 0, context_vocab: int = 0,
                 context_len: int = 12, context_depth: int = 2, transformer_depth: int = 1, num_heads: int = 4,
                 context_pooled: bool = False, rngs: nnx.Rngs):
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        if resblock_type not in RESBLOCK_TYPES:
            raise ValueError(f"resblock_type must be one of {RESBLOCK_TYPES}, got {resblock_type!r}")
        if progressive_input not in PROGRESSIVE_INPUT:
            raise ValueError(f"progressive_input must be one of {PROGRESSIVE_INPUT}, got {progressive_input!r}")
        if not ch_mult or int(num_res_blocks) < 1:
            raise ValueError(f"need a non-empty ch_mult and num_res_blocks >= 1, got {ch_mult}, {num_res_blocks}")
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2**(len(ch_mult)-1)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for mult in ch_mult:  # fail before building anything
            num_groups(nf * mult)

        self.embedding_type, self.fourier_scale, self.nf = embedding_type, float(fourier_scale), nf
        self.skip_rescale, self.residual_input = skip_rescale, progressive_input == "residual"
        temb_dim = 4 * nf if conditional else None
        self.temb0 = linear(embedding_dim(embedding_type, nf), 4 * nf, rngs) if conditional else None
        self.temb1 = linear(4 * nf, 4 * nf, rngs) if conditional else None
        if num_classes and not conditional:
            raise ValueError("num_classes > 0 needs conditional=True (the label joins the noise embedding)")
        self.label = LabelEmbedding(num_classes, embedding_dim(embedding_type, nf), rngs) if num_classes else None
        self.num_classes, self.concat_channels = int(num_classes), int(concat_channels)
        self.remat = bool(remat)
        self.context_dim, self.context_len, self.context_pooled = int(context_dim), int(context_len), context_pooled
        if context_pooled and not (context_vocab and conditional):
            raise ValueError("context_pooled needs context_vocab > 0 and conditional=True")
        encoder = proj = None
        if context_vocab and context_pooled:
            encoder = BagOfWords(context_vocab, context_dim, rngs)
            proj = linear(context_dim, embedding_dim(embedding_type, nf), rngs)
        elif context_vocab:
            encoder = TokenEncoder(context_vocab, context_len, context_dim, depth=context_depth, heads=num_heads,
                                   rngs=rngs)
        self.context_encoder, self.context_proj = encoder, proj
        cross = self.context_dim and not context_pooled

        counter = itertools.count()  # block indices seed the per-block dropout keys

        def block(c_in, c_out, **kw):
            return ResBlock(c_in, c_out, temb_dim, index=next(counter), biggan=resblock_type == "biggan",
                            dropout=dropout, skip_rescale=skip_rescale, init_scale=init_scale, rngs=rngs, **kw)

        def attn(c):
            if cross:
                if c % num_heads:
                    raise ValueError(f"{c} channels are not divisible by num_heads={num_heads}")
                return SpatialTransformer(c, context_dim, heads=num_heads, head_dim=c // num_heads,
                                          depth=transformer_depth, norm=GroupNorm(c), rngs=rngs)
            return AttnBlock(c, skip_rescale=skip_rescale, init_scale=init_scale, rngs=rngs)

        def resample(c, up):
            if resblock_type == "biggan":
                return block(c, c, up=up, down=not up)
            return Resample(c, c, up=up, with_conv=resamp_with_conv, rngs=rngs)

        n_levels = len(ch_mult)
        self.conv_in = conv3x3(num_channels + self.concat_channels, nf, rngs)
        skips, c, c_pyr, down = [nf], nf, num_channels + self.concat_channels, []
        for i, mult in enumerate(ch_mult):
            res = image_size // 2**i
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(block(c, nf * mult))
                c = nf * mult
                if res in attn_resolutions:
                    attns.append(attn(c))
                skips.append(c)
            rs = pyr = None
            if i != n_levels - 1:
                rs = resample(c, up=False)
                if self.residual_input:
                    pyr, c_pyr = conv3x3(c_pyr, c, rngs, stride=2), c
                skips.append(c)
            down.append(Level(blocks, attns, rs, pyr))
        self.down = nnx.List(down)

        self.mid = Level([block(c, c), block(c, c)], [attn(c)], None)

        up = []
        for i in reversed(range(n_levels)):
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(c + skips.pop(), nf * ch_mult[i]))
                c = nf * ch_mult[i]
            attns = [attn(c)] if image_size // 2**i in attn_resolutions else []
            up.append(Level(blocks, attns, resample(c, up=True) if i != 0 else None))
        self.up = nnx.List(up)

        self.norm_out = GroupNorm(c)
        self.conv_out = conv3x3(c, num_channels, rngs, scale=init_scale)

    def __call__(self, x: jax.Array, c_noise: jax.Array, cond=None, *, train: bool = False,
                 key: jax.Array | None = None):
        """(B, H, W, C), (B,) -> (B, H, W, C). ``train=True`` with dropout > 0 needs a PRNG ``key``."""
        cond = check_cond(cond, num_classes=self.num_classes, concat_channels=self.concat_channels,
                          context_dim=self.context_dim, tokens=self.context_encoder is not None, who="UNet")
        if train and key is None and self.mid.blocks[0].dropout.rate > 0:
            raise ValueError("key is required when train=True and dropout > 0")
        key = key if train else None
        dtype = jnp.result_type(x, self.conv_in.kernel[...])
        x, temb = x.astype(dtype), None
        if self.temb0 is not None:
            e = embed_noise(c_noise, self.embedding_type, self.nf, self.fourier_scale).astype(dtype)
            if self.label is not None:
                e = e + self.label(cond.get("label"), x.shape[0])
            if self.context_pooled:
                e = e + self.context_proj(self.context_encoder(self._tokens(cond, x.shape[0]))).astype(dtype)
            temb = self.temb1(jax.nn.silu(self.temb0(e)))
        ctx = None
        if self.context_dim and not self.context_pooled:
            if "context" in cond:
                ctx = (jnp.asarray(cond["context"], dtype), cond.get("context_mask"))
            else:
                context, mask = self.context_encoder(self._tokens(cond, x.shape[0]))
                ctx = (context.astype(dtype), mask)
        if self.concat_channels:
            if "concat" not in cond:
                raise ValueError("UNet: built with concat_channels > 0, so cond['concat'] is required")
            extra = jnp.asarray(cond["concat"], x.dtype)
            if extra.shape != (*x.shape[:3], self.concat_channels):
                raise ValueError(f"cond['concat'] must have shape {(*x.shape[:3], self.concat_channels)}, "
                                 f"got {extra.shape}")
            x = jnp.concatenate([x, extra], axis=-1)

        def encode(level, h, pyramid, temb, key):
            return level.encode(h, pyramid, temb, train, key, self.skip_rescale, ctx)

        def decode(level, h, skips, temb, key):
            return level.decode(h, skips, temb, train, key, ctx)

        if self.remat:  # keep only each level's outputs for the backward pass; recompute the rest
            encode, decode = nnx.remat(encode), nnx.remat(decode)

        hs, pyramid = [self.conv_in(x)], x
        for level in self.down:
            out, pyramid = encode(level, hs[-1], pyramid, temb, key)
            hs += out
        h = encode(self.mid, hs[-1], None, temb, key)[0][-1]
        for level in self.up:
            skips = [hs.pop() for _ in level.blocks]
            h = decode(level, h, skips, temb, key)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))

    def _tokens(self, cond, batch: int):
        """``cond["tokens"]``, or the empty sequence (the null condition) for every row."""
        if "tokens" in cond:
            return cond["tokens"]
        if self.context_encoder is None:
            raise ValueError("UNet: cross-attention without a token encoder needs cond['context']")
        return jnp.zeros((batch, self.context_len), jnp.int32).at[:, 0].set(BOS)
