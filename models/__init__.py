"""Score networks in flax nnx. They map (x, c_noise) to an output of x's shape and know nothing about SDEs
(nor about the rest of the framework: this package imports nothing from ``sde_lib``).

Every model is called as ``model(x, c_noise, cond=None, *, train=False, key=None)`` with ``x`` of shape
``(B, *dims)``, ``c_noise`` of shape ``(B,)`` (the conditioning the parameterisation adapter picks) and
an optional condition dict: ``{"label": (B,) int}`` (class embedding; index ``num_classes`` is the null
class), ``{"concat": (B, *spatial, C)}`` (channel concatenation), ``{"context": (B, L, C),
"context_mask": (B, L)}`` or ``{"tokens": (B, L) int}`` (cross-attention, or a pooled token embedding,
through the network's own token encoder); ``train=True`` with a PRNG ``key`` turns dropout on. Models hold
parameters only (no RNG state), so the functional pattern is ``graphdef, params = nnx.split(model)`` and ``nnx.merge(graphdef, params)``.
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from models.layers import default_init, fourier_embedding, positional_embedding
from models.autoencoder import AutoencoderGAN, AutoencoderKL, PatchDiscriminator
from models.mlp import MLP
from models.unet import UNet

UNET_NAMES = ("ncsnpp", "ddpmpp")
MODEL_NAMES = ("mlp",) + UNET_NAMES + ("classifier", "autoencoder")


def get_model(m, dims: tuple[int, ...], rngs: nnx.Rngs, *, cross_attention: bool = False, vocab_size: int = 0,
              discriminator: bool = False) -> nnx.Module:
    """Build ``m.name`` (``m`` is ``config.model``) for examples of shape ``dims``.

    'mlp': :class:`MLP` on one example flattened to D = prod(dims) (e.g. 64 for 8x8 digits);
    'ncsnpp' and 'ddpmpp': :class:`UNet` on ``dims = (H, W, C)`` images with H = W. The two names are
    the same network, as in score_sde, whose DDPM++ configs also build ``ncsnpp``; with
    ``cross_attention`` its attention blocks attend to a context of width ``m.context_dim`` (or, with
    ``m.context_pooled``, a pooled one joins the noise embedding), and with ``vocab_size`` > 0 it owns a
    token encoder over that many tokens that makes the context from ``cond["tokens"]``;
    'classifier': the MLP with ``num_classes`` logits (a noise-conditional classifier);
    'autoencoder': :class:`AutoencoderKL` (``nf`` channels, ``ch_mult``, ``num_res_blocks``,
    ``z_channels``), with a patch discriminator when ``discriminator``.
    """
    dims = tuple(int(d) for d in dims)
    if m.name == "classifier":
        return MLP(math.prod(dims), hidden=m.hidden, n_layers=m.n_layers, embedding_type=m.embedding_type,
                   fourier_scale=m.fourier_scale, init_scale=1.0, dropout=m.dropout,
                   embed_dim=m.get("embed_dim") or None, out_dim=m.num_classes, rngs=rngs)
    if m.name == "autoencoder":
        ae = AutoencoderKL(in_channels=dims[-1], ch=m.nf, ch_mult=m.ch_mult, num_res_blocks=m.num_res_blocks,
                           z_channels=m.z_channels, mid_attention=m.mid_attention, rngs=rngs)
        return AutoencoderGAN(ae, PatchDiscriminator(dims[-1], m.nf, rngs=rngs)) if discriminator else ae
    if m.name == "mlp":
        return MLP(math.prod(dims), hidden=m.hidden, n_layers=m.n_layers, embedding_type=m.embedding_type,
                   fourier_scale=m.fourier_scale, init_scale=m.init_scale, dropout=m.dropout,
                   input_fourier=tuple(m.get("input_fourier", ())), embed_dim=m.get("embed_dim") or None,
                   num_classes=m.num_classes, concat_dim=m.concat_channels * math.prod(dims[:-1]), rngs=rngs)
    if m.name in UNET_NAMES:
        if len(dims) != 3 or dims[0] != dims[1]:
            raise ValueError(f"config.model.name={m.name!r} needs square (H, W, C) images, got examples of shape {dims}")
        return UNet(image_size=dims[0], num_channels=dims[2], nf=m.nf, ch_mult=m.ch_mult,
                    num_res_blocks=m.num_res_blocks, attn_resolutions=m.attn_resolutions, dropout=m.dropout,
                    resblock_type=m.resblock_type, embedding_type=m.embedding_type,
                    fourier_scale=m.fourier_scale, skip_rescale=m.skip_rescale, init_scale=m.init_scale,
                    resamp_with_conv=m.resamp_with_conv, conditional=m.conditional,
                    progressive_input=m.progressive_input, num_classes=m.num_classes,
                    concat_channels=m.concat_channels, remat=m.remat,
                    context_dim=m.context_dim if cross_attention else 0, context_vocab=vocab_size,
                    context_len=m.context_len, context_depth=m.context_depth, transformer_depth=m.transformer_depth,
                    num_heads=m.num_heads, context_pooled=m.context_pooled, rngs=rngs)
    raise ValueError(f"config.model.name must be one of {MODEL_NAMES}, got {m.name!r}")


def count_params(model: nnx.Module) -> int:
    """Number of scalars in the model's ``nnx.Param`` leaves (works on ``nnx.eval_shape`` models too)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["AutoencoderGAN", "AutoencoderKL", "MLP", "MODEL_NAMES", "PatchDiscriminator", "UNET_NAMES", "UNet",
           "count_params", "default_init", "fourier_embedding", "get_model", "positional_embedding"]
