"""The throughput work keeps the maths: the fast GroupNorm and fused up-conv equal their plain forms,
bfloat16 mixed precision stays close to float32 with float32 state, and remat changes no gradient.

Gradients are read back from the train step itself: with clipping off, Adam's first moment after the
first update is exactly (1 - beta1) * gradient.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.digits import vp_ddpmpp as digits_unet
from models.layers import GroupNorm, conv3x3
from models.resample import upsample_conv3x3, upsample_nearest
from sde_lib import training
from sde_lib.runs.assemble import assemble


@pytest.mark.parametrize("c_in, c_out, size", [(3, 5, 4), (8, 16, 6)])
def test_upsample_conv3x3_is_conv_of_nearest_upsampling(c_in, c_out, size):
    conv = conv3x3(c_in, c_out, nnx.Rngs(0))
    conv.bias[...] = jax.random.normal(jax.random.PRNGKey(1), (c_out,))
    x = jax.random.normal(jax.random.PRNGKey(2), (2, size, size, c_in))
    fused, plain = jax.jit(lambda x: (upsample_conv3x3(conv, x), conv(upsample_nearest(x))))(x)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-5)


def test_group_norm_matches_flax():
    ours, ref = GroupNorm(32), nnx.GroupNorm(32, num_groups=8, epsilon=1e-6, rngs=nnx.Rngs(0))
    for module in (ours, ref):  # same, non-trivial affine parameters
        module.scale[...] = 1.0 + jnp.arange(32.0) / 10
        module.bias[...] = jnp.linspace(-1.0, 1.0, 32)
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 5, 32))  # mean far from zero
    np.testing.assert_allclose(*jax.jit(lambda x: (ours(x), ref(x)))(x), rtol=1e-5, atol=1e-5)
    assert jax.tree.structure(nnx.state(ours, nnx.Param)) == jax.tree.structure(nnx.state(ref, nnx.Param))


def _config(**overrides):
    """The digits U-Net config (8x8x1) cut to one level of width 8 (the middle keeps its attention): XLA
    compiles a train step in seconds, not the 30-40 s of the two-level network on this CPU."""
    c = digits_unet.get_config()
    m = c.model
    m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 8, (1,), 1, ()
    m.init_scale, m.dropout = 1.0, 0.1  # non-trivial gradients everywhere; dropout exercises the keys
    c.training.batch_size, c.training.n_jitted_steps = 4, 1
    c.optim.grad_clip = 0.0
    for name, value in overrides.items():
        group, field = name.split(".")
        c[group][field] = value
    return c


def _first_step(config):
    """(state after one update, metrics, gradient of that update) on a fixed batch."""
    optimizer = training.make_optimizer(config.optim)
    run = assemble(config)
    _, state = run.init_state(optimizer)
    step = training.make_train_step(config, optimizer, training.make_mesh(jax.devices()[:1]), run.objective())
    x0 = jax.random.uniform(jax.random.PRNGKey(3), (4, 8, 8, 1), minval=-1.0)
    lowered = step.lower(state, x0)
    new, metrics = lowered.compile()(state, x0)
    grads = jax.tree.map(lambda mu: mu / (1.0 - config.optim.beta1), optax.tree.get(new.opt_state, "mu"))
    return new, metrics, grads, lowered.as_text()


def _rel_error(a, b):
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, a, b))
    return float(diff / optax.tree.norm(b))


@pytest.fixture(scope="module")
def float32_step():
    return _first_step(_config())


def test_bfloat16_step_close_to_float32_with_float32_state(float32_step):
    ref_state, ref_metrics, ref_grads, ref_hlo = float32_step
    state, metrics, grads, hlo = _first_step(_config(**{"training.compute_dtype": "bfloat16"}))
    assert "bf16" in hlo and "bf16" not in ref_hlo  # the network really ran in bfloat16
    for leaf in jax.tree.leaves((state.params, state.opt_state, state.ema)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    assert metrics["loss"].dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (0.4% per rounding): a few per cent after a network's worth of them.
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=2e-2)
    assert _rel_error(grads, ref_grads) < 0.05


def test_remat_gives_the_same_gradients(float32_step):
    _, ref_metrics, ref_grads, _ = float32_step
    _, metrics, grads, hlo = _first_step(_config(**{"model.remat": True}))
    assert "optimization_barrier" in hlo  # nnx.remat is in the program
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-6)
    assert _rel_error(grads, ref_grads) < 1e-5
