"""Golden values of the networks' forward passes on fixed parameters: a refactor or optimisation that
changes what the U-Net or the MLP computes (not just how) fails here.

Parameters are drawn from their position in the parameter tree (leaf i ~ N(0, 0.09 / fan) from
fold_in(7, i)), so the values do not depend on initialisers; the tree itself (paths, shapes, order) is
the checkpoint format and must not change either. The numbers were recorded with the code of the
architecture issue (float32, CPU); the tolerance allows for reordered float32 arithmetic only.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models


def fixed_params(model, scale=0.3):
    graphdef, params = nnx.split(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    new = [scale * jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(7), i), leaf.shape, leaf.dtype)
           / np.sqrt(max(1, leaf.shape[0] if leaf.ndim else 1)) for i, leaf in enumerate(leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, new))


@nnx.jit
def forward(model, x, c_noise, cond=None):
    """One compiled forward pass: eager op-by-op dispatch of a U-Net costs more than compiling it."""
    return model(x, c_noise, cond)


def fingerprint(out):
    """(sum, mean |out|, a position-weighted sum): sensitive to values and to their order."""
    flat = np.asarray(out, np.float64).ravel()
    return float(flat.sum()), float(np.abs(flat).mean()), float(flat @ np.sin(np.arange(flat.size)))


def check(out, golden):
    got = fingerprint(out)
    scale = float(np.sqrt(np.mean(np.asarray(out, np.float64) ** 2)) * np.sqrt(np.asarray(out).size))
    np.testing.assert_allclose(got, golden, rtol=0, atol=2e-5 * scale)


def test_unet_forward_golden():
    u = fixed_params(models.UNet(
        image_size=8, num_channels=2, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
        resblock_type="biggan", embedding_type="fourier", fourier_scale=1.0, num_classes=3,
        progressive_input="residual", rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 2))
    out = forward(u, x, jnp.array([-1.0, 0.0, 0.7]), {"label": jnp.array([0, 2, 3])})
    check(out, GOLDEN["unet"])


def test_ddpm_unet_forward_golden():
    u = fixed_params(models.UNet(
        image_size=8, num_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(8,),
        resblock_type="ddpm", embedding_type="positional", skip_rescale=False, resamp_with_conv=True,
        rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
    check(forward(u, x, jnp.array([3.0, 800.0])), GOLDEN["ddpm_unet"])


def test_mlp_forward_golden():
    m = fixed_params(models.MLP(6, hidden=16, n_layers=3, embedding_type="positional", num_classes=2, embed_dim=8,
                                rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 6))
    out = m(x, jnp.array([0.0, 10.0, 500.0, 999.0]), {"label": jnp.array([0, 1, 2, 1])})
    check(out, GOLDEN["mlp"])


@pytest.mark.parametrize("name", ["unet", "mlp"])
def test_golden_fingerprint_detects_a_change(name):
    """The tolerance is far below the effect of a real change (one output value nudged by 1e-3)."""
    out = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 2)), np.float64)
    changed = out.copy()
    changed.flat[5] += 1e-3
    with pytest.raises(AssertionError):
        check(changed, fingerprint(out))


GOLDEN = {
    "unet": (-50.79881777614355, 0.15024099124517912, 0.4313718857827205),
    "ddpm_unet": (-27.04555980116129, 0.21129343594657257, -0.17126599703035067),
    "mlp": (3.847173474729061, 0.16029889478037754, -0.027292897455353266),
}
