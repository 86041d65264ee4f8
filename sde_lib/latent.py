"""Latent diffusion's first stage: a trained autoencoder, frozen, with the latent scale.

A latent run trains its score network on ``scale * z``, z the autoencoder's latents of the images, with
``scale = 1 / std(z)`` over training latents (LDM's ``scale_by_std``), so the latents have unit variance
like the data the SDE defaults are made for. :class:`FirstStage` applies the scale inside ``encode`` and
``decode``, so no caller can forget it. Which autoencoder run and step a latent run uses, and its scale,
are recorded in the latent run's folder; ``sde_lib.runs.assemble`` opens the autoencoder run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass
class FirstStage:
    """A frozen autoencoder: ``encode(x, key=None) -> scale z`` and ``decode(scale z) -> x``.

    Attributes: the autoencoder run's folder (``workdir``), checkpoint ``step`` and ``config``; the
    network structure and its EMA parameters (``graphdef``, ``params``); the latent ``scale``.
    """

    workdir: str
    step: int
    config: Any
    graphdef: Any
    params: Any
    scale: float = 1.0
    _moments: Any = dataclasses.field(init=False, repr=False, compare=False)
    _decode: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # One compiled program each, reused by every call: run eagerly, a first decode compiled ~180 one-op
        # programs (~10 s of a CPU core in every sampling command and evaluation of a latent run).
        self._moments = jax.jit(self.moments)
        self._decode = jax.jit(lambda params, z: nnx.merge(self.graphdef, params).decode(z / self.scale))

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.config.model.ch_mult) - 1)

    def latent_dims(self, image_dims) -> tuple[int, int, int]:
        h, w, _ = image_dims
        return h // self.downsampling, w // self.downsampling, int(self.config.model.z_channels)

    def moments(self, params, x):
        """Posterior (mean, log-variance) of images ``x`` (traceable: ``params`` may be traced)."""
        return nnx.merge(self.graphdef, params).encode(x)

    def encode(self, x, key=None):
        """Scaled latents of images ``(B, H, W, C)``: the posterior mean, or a posterior sample with ``key``."""
        mean, logvar = self._moments(self.params, x)
        z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.scale * z

    def decode(self, z_scaled):
        """Images from scaled latents."""
        return self._decode(self.params, z_scaled)

    def record(self) -> dict:
        """What a latent run stores of its first stage: the autoencoder run, its step and the scale."""
        return {"scale": self.scale, "first_stage": self.workdir, "step": self.step}


def compute_scale(first_stage: FirstStage, images: np.ndarray, key: jax.Array, batch: int = 512) -> float:
    """1 / std of posterior-sampled latents of ``images`` (model space), LDM's ``scale_by_std``."""
    zs = []
    for i in range(0, len(images), batch):
        mean, logvar = first_stage._moments(first_stage.params, jnp.asarray(images[i:i + batch]))
        noise = jax.random.normal(jax.random.fold_in(key, i), mean.shape)
        zs.append(np.asarray(mean + jnp.exp(0.5 * logvar) * noise, np.float64))
    std = float(np.std(np.concatenate(zs)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"the autoencoder's latents have std {std}; cannot scale them")
    return 1.0 / std
