"""What a run optimises (``sde_lib.objectives``), term by term and gradient path by gradient path: the
autoencoder's reconstruction and KL terms, and the patch-GAN's two losses, each training only its own
network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models.autoencoder import AutoencoderGAN, AutoencoderKL, PatchDiscriminator, kl_divergence
from sde_lib.objectives import AutoencoderObjective

X = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1), minval=-1.0, maxval=1.0)
KEY = jax.random.PRNGKey(1)


@pytest.fixture(scope="module")
def gan():
    """``(graphdef, params)`` of a tiny autoencoder with its patch critic (built once: initialising a network
    compiles every initializer for every parameter shape)."""
    ae = AutoencoderKL(in_channels=1, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=2, rngs=nnx.Rngs(0))
    return nnx.split(AutoencoderGAN(ae, PatchDiscriminator(1, 8, rngs=nnx.Rngs(1))), nnx.Param)


@pytest.mark.parametrize("rec_loss", ["l1", "l2"])
def test_autoencoder_loss_is_reconstruction_plus_weighted_kl(gan, rec_loss):
    graphdef, params = nnx.split(nnx.merge(*gan).ae, nnx.Param)
    make = lambda w: AutoencoderObjective(lambda p: nnx.merge(graphdef, p), rec_loss, w)  # noqa: E731
    loss_of = lambda w: jax.jit(lambda p: make(w).loss(p, {"x": X}, KEY, 0))(params)  # noqa: E731
    loss, metrics = loss_of(1e-3)
    recon, mean, logvar = nnx.merge(graphdef, params)(X, KEY)  # the same posterior sample
    diff = (recon - X).reshape(4, -1)
    rec = jnp.sum(jnp.abs(diff) if rec_loss == "l1" else jnp.square(diff), axis=1)  # summed over pixels
    kl = kl_divergence(mean, logvar)
    np.testing.assert_allclose(metrics["rec"], jnp.mean(rec), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], jnp.mean(kl), rtol=1e-5)
    np.testing.assert_allclose(loss, jnp.mean(rec + 1e-3 * kl), rtol=1e-5)
    # The KL term enters with exactly its weight: the loss is affine in kl_weight with slope mean KL.
    np.testing.assert_allclose(loss_of(2e-3)[0] - loss, 1e-3 * jnp.mean(kl), rtol=1e-3)
    # Held-out losses use the posterior mean, so they need no key and repeat exactly.
    e = make(1e-3).eval_losses(params, {"x": X}, None)
    assert e.shape == (4,) and np.array_equal(e, make(1e-3).eval_losses(params, {"x": X}, None))


def test_the_critic_and_the_autoencoder_each_train_on_their_own_term(gan):
    """loss = rec + w_kl KL + on * (w_d g_loss + d_loss), g_loss = -mean D(recon) with the critic held
    fixed, d_loss = the hinge loss on real and (fixed) reconstructed images. The critic's gradient must be
    d_loss's alone and the autoencoder's must not contain d_loss: a missing stop-gradient on either side
    trains one network on the other's objective."""
    graphdef, params = gan
    obj = AutoencoderObjective(lambda p: nnx.merge(graphdef, p), "l1", 1e-6, disc_weight=0.5, disc_start=10)
    grad = jax.jit(jax.grad(lambda p, step: obj.loss(p, {"x": X}, KEY, step)[0]))
    grads = {s: grad(params, jnp.asarray(s)) for s in (0, 10)}
    before = jax.tree.leaves(grads[0]["disc"])
    assert all(np.all(np.asarray(g) == 0) for g in before)  # before disc_start the critic does not train

    model = nnx.merge(graphdef, params)
    recon = model.ae(X, KEY)[0]

    def critic_loss(disc_params):
        disc = nnx.merge(nnx.split(model.disc, nnx.Param)[0], disc_params)
        real, fake = disc(X), disc(recon)
        return 0.5 * (jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)))

    def generator_loss(ae_params):
        ae = nnx.merge(nnx.split(model.ae, nnx.Param)[0], ae_params)
        r, mean, logvar = ae(X, KEY)
        rec = jnp.sum(jnp.abs(r - X).reshape(4, -1), axis=1)
        return jnp.mean(rec + 1e-6 * kl_divergence(mean, logvar)) - 0.5 * jnp.mean(model.disc(r))

    want_disc = jax.jit(jax.grad(critic_loss))(nnx.split(model.disc, nnx.Param)[1])
    want_ae = jax.jit(jax.grad(generator_loss))(nnx.split(model.ae, nnx.Param)[1])
    for got, want in ((grads[10]["disc"], want_disc), (grads[10]["ae"], want_ae)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
