"""The first stage of latent diffusion: a KL-regularised convolutional autoencoder (Rombach et al. 2022).

``AutoencoderKL``: images ``(B, H, W, C)`` -> a diagonal Gaussian posterior over latents
``(B, H / 2^(L-1), W / 2^(L-1), z_channels)`` -> images. Encoder: conv, per level ``num_res_blocks``
residual blocks (GroupNorm, SiLU, 3x3 conv, twice) and a stride-2 downsampling conv (all but the last
level), a middle block (residual, optional self-attention, residual), GroupNorm, SiLU and a conv to
``2 z_channels`` moments (mean and log-variance, ``double_z``) followed by a 1x1 ``quant_conv``. The
decoder mirrors it (1x1 ``post_quant_conv``, ``num_res_blocks + 1`` blocks per level, nearest upsampling
and a conv). Log-variances are clipped to [-30, 20] as in LDM.

``PatchDiscriminator``: a small convolutional critic that scores overlapping patches (pix2pix's
PatchGAN, as LDM's ``NLayerDiscriminator``), used after ``disc_start`` updates by the autoencoder loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import GroupNorm, conv3x3, linear


class AEResBlock(nnx.Module):
    """GN-SiLU-conv3x3-GN-SiLU-conv3x3 plus the input (a 1x1 projection when the width changes)."""

    def __init__(self, c_in: int, c_out: int, rngs: nnx.Rngs):
        self.norm0, self.conv0 = GroupNorm(c_in), conv3x3(c_in, c_out, rngs)
        self.norm1, self.conv1 = GroupNorm(c_out), conv3x3(c_out, c_out, rngs)
        self.shortcut = linear(c_in, c_out, rngs) if c_in != c_out else None

    def __call__(self, x):
        h = self.conv0(jax.nn.silu(self.norm0(x)))
        h = self.conv1(jax.nn.silu(self.norm1(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))


class AESelfAttention(nnx.Module):
    """Single-head self-attention over the H*W positions (LDM's AttnBlock), residual."""

    def __init__(self, c: int, rngs: nnx.Rngs):
        self.norm = GroupNorm(c)
        self.qkv = linear(c, 3 * c, rngs)
        self.out = linear(c, c, rngs)

    def __call__(self, x):
        b, h, w, c = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 3 * c), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / jnp.sqrt(c), axis=-1)
        return x + self.out(jnp.einsum("bij,bjc->bic", weights, v).reshape(b, h, w, c))


class _Mid(nnx.Module):
    def __init__(self, c: int, attn: bool, rngs: nnx.Rngs):
        self.block0, self.block1 = AEResBlock(c, c, rngs), AEResBlock(c, c, rngs)
        self.attn = AESelfAttention(c, rngs) if attn else None

    def __call__(self, x):
        x = self.block0(x)
        return self.block1(x if self.attn is None else self.attn(x))


class AutoencoderKL(nnx.Module):
    """Encoder, diagonal Gaussian posterior and decoder (module docstring); ``downsampling = 2^(L-1)``."""

    def __init__(self, *, in_channels: int, ch: int = 32, ch_mult=(1, 2), num_res_blocks: int = 1,
                 z_channels: int = 4, mid_attention: bool = False, rngs: nnx.Rngs):
        ch_mult = tuple(ch_mult)
        if not ch_mult or num_res_blocks < 1 or z_channels < 1:
            raise ValueError(f"need ch_mult, num_res_blocks >= 1 and z_channels >= 1, got {ch_mult}, "
                             f"{num_res_blocks}, {z_channels}")
        self.z_channels, self.levels = z_channels, len(ch_mult)
        widths = [ch * m for m in ch_mult]
        # Encoder.
        self.enc_in = conv3x3(in_channels, ch, rngs)
        enc, c = [], ch
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(AEResBlock(c, w, rngs))
                c = w
            if i != len(widths) - 1:
                enc.append(conv3x3(c, c, rngs, stride=2))
        self.enc = nnx.List(enc)
        self.enc_mid = _Mid(c, mid_attention, rngs)
        self.enc_norm = GroupNorm(c)
        self.enc_out = conv3x3(c, 2 * z_channels, rngs)
        self.quant_conv = linear(2 * z_channels, 2 * z_channels, rngs)
        # Decoder.
        self.post_quant_conv = linear(z_channels, z_channels, rngs)
        self.dec_in = conv3x3(z_channels, widths[-1], rngs)
        self.dec_mid = _Mid(widths[-1], mid_attention, rngs)
        dec, c = [], widths[-1]
        for i in reversed(range(len(widths))):
            for _ in range(num_res_blocks + 1):
                dec.append(AEResBlock(c, widths[i], rngs))
                c = widths[i]
            if i != 0:
                dec.append(conv3x3(c, c, rngs))  # after nearest upsampling
        self.dec = nnx.List(dec)
        self.dec_norm = GroupNorm(c)
        self.dec_out = conv3x3(c, in_channels, rngs)
        self._upsample_after = tuple(num_res_blocks + 1 + k * (num_res_blocks + 2) for k in range(len(widths) - 1))

    @property
    def downsampling(self) -> int:
        return 2 ** (self.levels - 1)

    def encode(self, x):
        """Images ``(B, H, W, C)`` -> posterior (mean, log-variance), each ``(B, h, w, z_channels)``."""
        h = self.enc_in(x)
        for layer in self.enc:
            h = layer(h)
        h = self.enc_out(jax.nn.silu(self.enc_norm(self.enc_mid(h))))
        mean, logvar = jnp.split(self.quant_conv(h), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z):
        """Latents ``(B, h, w, z_channels)`` -> images ``(B, H, W, C)``."""
        h = self.dec_mid(self.dec_in(self.post_quant_conv(z)))
        for i, layer in enumerate(self.dec):
            if i in self._upsample_after:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
            h = layer(h)
        return self.dec_out(jax.nn.silu(self.dec_norm(h)))

    def __call__(self, x, key: jax.Array | None = None):
        """Reconstruction, mean and log-variance; decodes a posterior sample with ``key``, else the mean."""
        mean, logvar = self.encode(x)
        z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar


def kl_divergence(mean, logvar):
    """KL(N(mean, e^logvar) || N(0, I)) summed over the latent dimensions: ``(B,)``."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return jnp.sum(kl.reshape(kl.shape[0], -1), axis=-1)


class PatchDiscriminator(nnx.Module):
    """Images ``(B, H, W, C)`` -> patch logits ``(B, H', W', 1)``: strided 3x3 convs with LeakyReLU."""

    def __init__(self, in_channels: int, ch: int = 32, layers: int = 2, *, rngs: nnx.Rngs):
        convs, c = [], in_channels
        for i in range(layers):
            convs.append(conv3x3(c, ch * 2**i, rngs, stride=2))
            c = ch * 2**i
        self.convs = nnx.List(convs)
        self.out = conv3x3(c, 1, rngs)

    def __call__(self, x):
        h = x
        for conv in self.convs:
            h = jax.nn.leaky_relu(conv(h), 0.2)
        return self.out(h)


class AutoencoderGAN(nnx.Module):
    """An autoencoder and its patch discriminator, trained together (parameters ``ae`` and ``disc``)."""

    def __init__(self, ae: AutoencoderKL, disc: PatchDiscriminator):
        self.ae, self.disc = ae, disc

    def encode(self, x):
        return self.ae.encode(x)

    def decode(self, z):
        return self.ae.decode(z)
