"""Latent diffusion's first stage: a trained autoencoder run, frozen, and the latent scale.

A latent run names an autoencoder run in ``config.first_stage.workdir``. :func:`load_first_stage` opens
it read-only (its newest checkpoint's EMA parameters, or the step a latent run recorded), checks that it
is an autoencoder of the latent run's images, and gives ``encode`` / ``decode``. The diffusion model
works on ``scale * z`` with ``scale = 1 / std(z)`` over training latents (LDM's ``scale_by_std``), so
the latents have unit variance like the data the SDE defaults are made for. The scale is computed
once, when the latent run starts, and stored in the latent run's folder (``latent_scale.json``, beside
its checkpoints, with the autoencoder run and step it belongs to); encode and decode apply it, so no
caller can forget it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SCALE_FILE = "latent_scale.json"


@dataclasses.dataclass
class FirstStage:
    """A frozen autoencoder: ``encode(x, key=None) -> scale z`` and ``decode(scale z) -> x``."""

    workdir: str
    step: int
    config: Any
    graphdef: Any
    params: Any
    scale: float = 1.0

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
        """Scaled latents of images: the posterior mean, or a posterior sample with ``key``."""
        mean, logvar = self.moments(self.params, x)
        z = mean if key is None else mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.scale * z

    def decode(self, z_scaled):
        """Images from scaled latents."""
        return nnx.merge(self.graphdef, self.params).decode(z_scaled / self.scale)


def load_first_stage(config, step: int | None = None) -> FirstStage:
    """The autoencoder run of ``config.first_stage.workdir`` (read-only), checked against ``config.data``.

    One-line errors: a missing or non-run folder, a run that is not an autoencoder, images of another
    size or channel count, no checkpoint (or not the recorded ``step``).
    """
    from sde_lib.data import data_dims
    from sde_lib.runs import load_run

    workdir = config.first_stage.workdir
    if not workdir or not os.path.isdir(workdir):
        raise FileNotFoundError(f"config.first_stage.workdir={workdir!r}: no such autoencoder run folder")
    run = load_run(workdir, step, warn=False)
    if run.config.training.objective != "autoencoder":
        raise ValueError(f"config.first_stage.workdir={workdir!r} is a {run.config.training.objective!r} run, "
                         f"not an autoencoder")
    mine, theirs = tuple(data_dims(config.data)), tuple(data_dims(run.config.data))
    if mine != theirs:
        raise ValueError(f"config.first_stage.workdir={workdir!r} is an autoencoder of {theirs} images, but "
                         f"config.data holds {mine}")
    params = run.state.ema
    if isinstance(params, nnx.State) and "ae" in params:  # trained with a discriminator: keep the autoencoder
        graphdef, params = nnx.split(nnx.merge(run.graphdef, params).ae, nnx.Param)
    else:
        graphdef = run.graphdef
    return FirstStage(os.path.abspath(workdir), run.step, run.config, graphdef, params)


def compute_scale(first_stage: FirstStage, images: np.ndarray, key: jax.Array, batch: int = 512) -> float:
    """1 / std of posterior-sampled latents of ``images`` (model space), LDM's ``scale_by_std``."""
    moments = jax.jit(first_stage.moments)
    zs = []
    for i in range(0, len(images), batch):
        mean, logvar = moments(first_stage.params, jnp.asarray(images[i:i + batch]))
        noise = jax.random.normal(jax.random.fold_in(key, i), mean.shape)
        zs.append(np.asarray(mean + jnp.exp(0.5 * logvar) * noise, np.float64))
    std = float(np.std(np.concatenate(zs)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"the autoencoder's latents have std {std}; cannot scale them")
    return 1.0 / std


def save_scale(workdir: str, first_stage: FirstStage) -> None:
    with open(os.path.join(workdir, SCALE_FILE + ".tmp"), "w") as f:
        json.dump({"scale": first_stage.scale, "first_stage": first_stage.workdir, "step": first_stage.step}, f)
    os.replace(os.path.join(workdir, SCALE_FILE + ".tmp"), os.path.join(workdir, SCALE_FILE))


def read_scale(workdir: str) -> dict | None:
    """The stored ``{"scale", "first_stage", "step"}`` of a latent run, or None before its first start."""
    path = os.path.join(workdir, SCALE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the latent scale ({err})") from None


def first_stage_of(config, workdir: str) -> FirstStage:
    """The first stage of an existing latent run in ``workdir``: the recorded autoencoder step and scale."""
    stored = read_scale(workdir)
    if stored is None:
        raise FileNotFoundError(f"{workdir}: a latent run without {SCALE_FILE}; it has not started training")
    stage = load_first_stage(config, stored["step"])
    stage.scale = float(stored["scale"])
    return stage


def model_dims(config) -> tuple[int, ...]:
    """Shape of one example the score network sees: the data's, or the first stage's latents'."""
    from sde_lib.checkpoint import read_config
    from sde_lib.data import data_dims

    dims = tuple(data_dims(config.data))
    workdir = config.first_stage.workdir
    if not workdir:
        return dims
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"config.first_stage.workdir={workdir!r}: no such autoencoder run folder")
    ae = read_config(workdir).model
    f = 2 ** (len(ae.ch_mult) - 1)
    return dims[0] // f, dims[1] // f, int(ae.z_channels)
