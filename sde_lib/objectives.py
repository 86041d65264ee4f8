"""What a training run optimises (``config.training.objective``), as per-example losses of a batch.

A batch is ``{"x": (B, *dims), ...condition arrays}`` (``sde_lib.data.Dataset``): every other key is a
network input of the run's condition kind (``"label"``, ``"tokens"``, ``"concat"``, ...; see
``sde_lib.conditioning``), passed to the network as its ``cond``. Every objective exposes

    loss(params, batch, key, step, *, dtype) -> (mean loss, metrics)      # training (dropout on)
    eval_losses(params, batch, key) -> (B,)                                # held-out, deterministic

* ``"score"``: denoising score matching (``sde_lib.losses``) of the network's score. Conditional runs
  replace each example's condition by the null one with probability ``training.cond_drop_prob``, so
  one network learns p(x | c) and p(x) (classifier-free guidance). A latent run (``first_stage``)
  first encodes the images with the frozen autoencoder: posterior samples or means, times the run's
  latent scale.
* ``"classifier"``: a noise-conditional classifier for classifier guidance (score_sde's
  noise-conditional classifier): cross-entropy of log p_t(y | x_t) with x_t = alpha_t x_0 + sigma_t z,
  t ~ U(eps, T), the network conditioned on the parameterisation's c_noise.
* ``"autoencoder"``: LDM's first stage: reconstruction (L1 or L2, summed over pixels) + ``kl_weight``
  KL(q(z | x) || N(0, I)), plus an optional feature-matching perceptual term in a framework-trained
  classifier's features and an optional patch-GAN hinge loss after ``disc_start`` updates.

Mixed precision (``dtype`` bfloat16): parameters and network inputs are cast for the network only;
losses are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from models.autoencoder import kl_divergence
from sde_lib import losses
from sde_lib.latent import FirstStage
from sde_lib.parameterization import noise_conditioning
from sde_lib.sdes import SDE, batch_broadcast, get_sde, per_sample_keys
from sde_lib.training import Network

OBJECTIVES = ("score", "classifier", "autoencoder")


def _cast(params, dtype):
    return params if dtype == jnp.float32 else jax.tree.map(lambda p: p.astype(dtype), params)


def split_batch(batch):
    """``(x, cond or None)`` of a batch dict (or a bare array); a reflow batch's ``"noise"`` is not a condition."""
    if not isinstance(batch, dict):
        return batch, None
    cond = {k: v for k, v in batch.items() if k not in ("x", "noise")}
    return batch["x"], cond or None


def drop_conditions(cond, null, prob: float, key):
    """Each row's condition replaced by ``null`` (one condition, no batch axis) with probability ``prob``."""
    if cond is None or prob <= 0:
        return cond
    b = jax.tree.leaves(cond)[0].shape[0]
    drop = jax.random.bernoulli(key, prob, (b,))
    return jax.tree.map(lambda c, n: jnp.where(batch_broadcast(drop, c), jnp.asarray(n, c.dtype), c), cond, null)


@dataclasses.dataclass(frozen=True)
class ScoreObjective:
    network: Callable  # (params) -> callable model(x, c_noise, cond=None, *, train, key)
    per_example: Callable  # losses.get_loss_fn(..., per_example=True)
    null_cond: Any = None
    drop_prob: float = 0.0
    first_stage: FirstStage | None = None
    sample_latents: bool = True  # encode to posterior samples (True) or posterior means

    def _inputs(self, batch, key, train: bool):
        x, cond = split_batch(batch)
        if self.first_stage is not None:
            x = self.first_stage.encode(x, jax.random.fold_in(key, 3) if self.sample_latents else None)
        if train:
            cond = drop_conditions(cond, self.null_cond, self.drop_prob, jax.random.fold_in(key, 2))
        return x, cond

    def loss(self, params, batch, key, step, *, dtype=jnp.float32):
        key_loss, key_dropout = jax.random.split(key)
        x0, cond = self._inputs(batch, key, train=True)
        net = self.network(_cast(params, dtype))

        def model_fn(x, c):
            return net(x.astype(dtype), c, cond, train=True, key=key_dropout).astype(jnp.float32)

        noise = batch.get("noise") if isinstance(batch, dict) else None  # reflow's coupled noise
        return jnp.mean(self.per_example(model_fn, key_loss, x0, noise)), {}

    def eval_losses(self, params, batch, key):
        x0, cond = self._inputs(batch, key, train=False)
        net = self.network(params)
        return self.per_example(lambda x, c: net(x, c, cond), key, x0)


@dataclasses.dataclass(frozen=True)
class ClassifierObjective:
    network: Callable
    sde: SDE
    parameterization: str
    eps: float

    def _per_example(self, net, batch, key):
        x0, cond = split_batch(batch)
        labels = cond["label"]

        def draw(k):
            kt, kz = jax.random.split(k)
            return jax.random.uniform(kt, (), minval=self.eps, maxval=self.sde.T), \
                jax.random.normal(kz, x0.shape[1:], x0.dtype)

        t, z = jax.vmap(draw)(per_sample_keys(key, x0.shape[0]))
        mean, std = self.sde.marginal_prob(x0, t)
        xt = mean + batch_broadcast(std, x0) * z
        logits = net(xt, noise_conditioning(self.sde, t, self.parameterization))
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels), \
            jnp.argmax(logits, -1) == labels

    def loss(self, params, batch, key, step, *, dtype=jnp.float32):
        key_loss, key_dropout = jax.random.split(key)
        net = self.network(_cast(params, dtype))
        ce, correct = self._per_example(lambda x, c: net(x.astype(dtype), c, train=True, key=key_dropout),
                                        batch, key_loss)
        return jnp.mean(ce), {"accuracy": jnp.mean(correct)}

    def eval_losses(self, params, batch, key):
        net = self.network(params)
        return self._per_example(lambda x, c: net(x, c), batch, key)[0]


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective:
    network: Callable  # params -> AutoencoderKL, or a module with .ae and .disc
    rec_loss: str
    kl_weight: float
    perceptual: Callable | None = None  # images (model space) -> features
    perceptual_weight: float = 0.0
    disc_weight: float = 0.0
    disc_start: int = 0

    def _parts(self, params, batch, key, dtype):
        x = split_batch(batch)[0]
        model = self.network(_cast(params, dtype))
        ae = model.ae if self.disc_weight > 0 else model
        recon, mean, logvar = ae(x.astype(dtype), key)
        recon, mean, logvar = (a.astype(jnp.float32) for a in (recon, mean, logvar))
        diff = recon - x
        per_pixel = jnp.abs(diff) if self.rec_loss == "l1" else jnp.square(diff)
        rec = jnp.sum(per_pixel.reshape(x.shape[0], -1), axis=-1)
        kl = kl_divergence(mean, logvar)
        per_example = rec + self.kl_weight * kl
        if self.perceptual is not None and self.perceptual_weight > 0:
            f_x, f_r = self.perceptual(x), self.perceptual(recon)
            per_example = per_example + self.perceptual_weight * jnp.sum(jnp.square(f_x - f_r), axis=-1)
        return model, x, recon, per_example, rec, kl

    def loss(self, params, batch, key, step, *, dtype=jnp.float32):
        model, x, recon, per_example, rec, kl = self._parts(params, batch, key, dtype)
        loss = jnp.mean(per_example)
        metrics = {"rec": jnp.mean(rec), "kl": jnp.mean(kl)}
        if self.disc_weight > 0:
            on = (step >= self.disc_start).astype(jnp.float32)
            # The generator term must not train the critic: it sees the critic's parameters as constants.
            frozen = self.network(jax.tree.map(jax.lax.stop_gradient, _cast(params, dtype))).disc
            g_loss = -jnp.mean(frozen(recon.astype(dtype)).astype(jnp.float32))
            # The critic's hinge loss must not train the autoencoder: it sees reconstructions as constants.
            real = model.disc(x.astype(dtype)).astype(jnp.float32)
            fake = model.disc(jax.lax.stop_gradient(recon).astype(dtype)).astype(jnp.float32)
            d_loss = 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))  # hinge
            loss = loss + on * (self.disc_weight * g_loss + d_loss)
            metrics.update(g_loss=g_loss, d_loss=d_loss)
        return loss, metrics

    def eval_losses(self, params, batch, key):
        return self._parts(params, batch, None, jnp.float32)[3]


def loss_fn(config, per_example: bool = False):
    """``loss(model_fn, key, x0)`` of ``config.training`` / ``config.model`` (see :mod:`sde_lib.losses`)."""
    t, m = config.training, config.model
    return losses.get_loss_fn(get_sde(config), continuous=t.continuous, weighting=t.weighting,
                              reduce_mean=t.reduce_mean, parameterization=m.parameterization, eps=t.eps,
                              sigma_data=m.sigma_data, per_example=per_example, time_sampling=t.time_sampling,
                              time_loc=t.time_loc, time_scale=t.time_scale)


def make(config, graphdef, *, null_cond=None, first_stage: FirstStage | None = None, perceptual=None):
    """The objective of ``config.training.objective`` for the network ``graphdef``.

    ``null_cond``: the null condition of a conditional score run (condition dropout); ``first_stage``:
    the frozen autoencoder of a latent run; ``perceptual``: feature function of the autoencoder loss.
    """
    t, m = config.training, config.model
    network = lambda params: Network(graphdef, params)  # noqa: E731
    if t.objective == "score":
        return ScoreObjective(network, loss_fn(config, per_example=True), null_cond, float(t.cond_drop_prob),
                              first_stage, bool(config.first_stage.sample_latents))
    if t.objective == "classifier":
        return ClassifierObjective(network, get_sde(config), m.parameterization, float(t.eps))
    if t.objective == "autoencoder":
        return AutoencoderObjective(lambda params: nnx.merge(graphdef, params), t.rec_loss, float(t.kl_weight),
                                    perceptual, float(t.perceptual_weight),
                                    float(t.disc_weight), int(t.disc_start))
    raise ValueError(f"config.training.objective must be one of {OBJECTIVES}, got {t.objective!r}")
