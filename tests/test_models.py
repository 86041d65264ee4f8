"""Score networks: shapes, noise conditioning, dropout, the split/merge jit pattern, parameter counts.

Parameter counts are checked against closed-form per-layer counts written here independently of the
models (GroupNorm 2C, 3x3 conv 9 a b + b, dense a b + b), walking the NCSN++ layout of
Song et al. 2021 (arXiv 2011.13456, appendix H).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import models
from models import MLP, UNet, count_params
from sde_lib.config import default_config


# ------------------------------------------------------------------------------- closed-form counts
def _gn(c):
    return 2 * c


def _conv3(a, b):
    return 9 * a * b + b


def _dense(a, b):
    return a * b + b


def _res(a, b, temb, shortcut):
    return _gn(a) + _conv3(a, b) + (_dense(temb, b) if temb else 0) + _gn(b) + _conv3(b, b) + (_dense(a, b) if shortcut else 0)


def _attn(c):
    return _gn(c) + 4 * _dense(c, c)


def unet_count(*, image_size, num_channels, nf, ch_mult, num_res_blocks, attn_resolutions, resblock_type,
               embedding_type, conditional=True, progressive_input="none", resamp_with_conv=True):
    """Parameters of the NCSN++ layout, summed layer by layer."""
    biggan, temb = resblock_type == "biggan", 4 * nf if conditional else 0
    emb = nf if embedding_type == "positional" else 2 * nf
    total = _dense(emb, 4 * nf) + _dense(4 * nf, 4 * nf) if conditional else 0
    total += _conv3(num_channels, nf)
    skips, c, c_pyr = [nf], nf, num_channels
    for i, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            total += _res(c, nf * mult, temb, c != nf * mult)
            c = nf * mult
            total += _attn(c) if image_size // 2**i in attn_resolutions else 0
            skips.append(c)
        if i < len(ch_mult) - 1:
            total += _res(c, c, temb, True) if biggan else (_conv3(c, c) if resamp_with_conv else 0)
            if progressive_input == "residual":
                total, c_pyr = total + _conv3(c_pyr, c), c
            skips.append(c)
    total += 2 * _res(c, c, temb, False) + _attn(c)
    for i in reversed(range(len(ch_mult))):
        for _ in range(num_res_blocks + 1):
            a = c + skips.pop()
            total += _res(a, nf * ch_mult[i], temb, True)
            c = nf * ch_mult[i]
        total += _attn(c) if image_size // 2**i in attn_resolutions else 0
        if i > 0:
            total += _res(c, c, temb, True) if biggan else (_conv3(c, c) if resamp_with_conv else 0)
    return total + _gn(c) + _conv3(c, num_channels)


def mlp_count(d, hidden, n_layers, embedding_type):
    e = hidden if embedding_type == "positional" else 2 * hidden
    return (e * hidden + hidden) + (d * hidden + hidden) + (n_layers - 1) * (hidden**2 + hidden) \
        + n_layers * hidden**2 + (hidden * d + d)  # fmt: skip


# ------------------------------------------------------------------------------------------ fixtures
SMALL = dict(image_size=8, num_channels=1, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
             resblock_type="ddpm", embedding_type="positional", dropout=0.5)
NCSN = dict(image_size=16, num_channels=3, nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
            resblock_type="biggan", embedding_type="fourier", progressive_input="residual", dropout=0.1)


def _random_unet(kw):
    """A U-Net with N(0, 0.1^2) parameters drawn by NumPy into the abstract model.

    Eager initialisation compiles one XLA program per weight shape (about a minute on a loaded 2-core
    machine); the forward-pass tests need random weights (a nonzero output layer), not score_sde's init.
    """
    graphdef, state = nnx.split(nnx.eval_shape(lambda: UNet(**kw, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    state = jax.tree.map(lambda a: jnp.asarray(0.1 * rng.standard_normal(a.shape), a.dtype), state)
    return graphdef, state


def _functional(graphdef):
    """The jit pattern training and samplers use: a pure function of the split state."""

    @functools.partial(jax.jit, static_argnames="train")
    def apply(state, x, c, train=False, key=None):
        return nnx.merge(graphdef, state)(x, c, train=train, key=key)

    return apply


@pytest.fixture(scope="module")
def small():
    graphdef, state = _random_unet(SMALL)
    return _functional(graphdef), state


def _inputs(shape, seed=0):
    x = jax.random.normal(jax.random.key(seed), shape)
    return x, jnp.linspace(0.0, 999.0, shape[0])


def _distinct_rows(out):
    """Smallest L1 distance between consecutive rows of a batch."""
    flat = out.reshape(out.shape[0], -1)
    return float(jnp.min(jnp.abs(flat[1:] - flat[:-1]).sum(-1)))


# ------------------------------------------------------------------------------------------------ MLP
def test_mlp_shape_conditioning_and_count():
    model = MLP(3, hidden=16, n_layers=2, embedding_type="fourier", fourier_scale=1.0, init_scale=1.0,
                rngs=nnx.Rngs(0))
    out = model(jnp.ones((4, 3)), jnp.array([0.0, 1.0, 2.0, 3.0]))
    assert out.shape == (4, 3)
    assert _distinct_rows(out) > 1e-4  # identical inputs, different conditioning -> different outputs
    assert count_params(model) == mlp_count(3, 16, 2, "fourier")
    positional = nnx.eval_shape(lambda: MLP(5, hidden=8, n_layers=3, embedding_type="positional", rngs=nnx.Rngs(0)))
    assert count_params(positional) == mlp_count(5, 8, 3, "positional")
    # init_scale = 0 (score_sde's default) starts the network at (almost) zero output
    zero = MLP(3, hidden=16, n_layers=2, embedding_type="fourier", init_scale=0.0, rngs=nnx.Rngs(0))
    assert float(jnp.max(jnp.abs(zero(jnp.ones((4, 3)), jnp.ones(4))))) < 1e-4


def test_mlp_input_fourier_features():
    """sin / cos(w x) features widen the first layer to D (1 + 2K) inputs and change the output."""
    w = (3.0, 6.0)
    model = MLP(4, hidden=16, n_layers=2, fourier_scale=1.0, init_scale=1.0, input_fourier=w, rngs=nnx.Rngs(0))
    assert model.layers[0].kernel.shape == (4 * 5, 16)
    assert count_params(model) == mlp_count(4, 16, 2, "fourier") + 4 * 4 * 16
    x, c = jnp.linspace(-1.0, 1.0, 8).reshape(2, 4), jnp.zeros(2)
    plain = MLP(4, hidden=16, n_layers=2, fourier_scale=1.0, init_scale=1.0, rngs=nnx.Rngs(0))
    assert model(x, c).shape == x.shape and float(jnp.max(jnp.abs(model(x, c) - plain(x, c)))) > 1e-3


def test_mlp_dropout():
    model = MLP(3, hidden=32, n_layers=3, fourier_scale=1.0, init_scale=1.0, dropout=0.5, rngs=nnx.Rngs(0))
    x, c = jnp.ones((4, 3)), jnp.arange(4.0)
    off = model(x, c)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(model(x, c, train=False, key=jax.random.key(1))))
    on1, on1b, on2 = (model(x, c, train=True, key=jax.random.key(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(np.asarray(on1), np.asarray(on1b))  # the key decides the masks
    assert float(jnp.max(jnp.abs(on1 - on2))) > 1e-3 and float(jnp.max(jnp.abs(on1 - off))) > 1e-3
    with pytest.raises(ValueError, match="key"):
        model(x, c, train=True)
    with pytest.raises(ValueError, match="dropout"):
        MLP(3, dropout=1.0, rngs=nnx.Rngs(0))


def test_mlp_flattens_images():
    """An 8x8x1 image is a 64-D vector to the MLP: same output as the flattened input, reshaped back."""
    model = MLP(64, hidden=16, n_layers=3, embedding_type="fourier", fourier_scale=1.0, init_scale=1.0,
                rngs=nnx.Rngs(0))
    x, c = _inputs((3, 8, 8, 1))
    out = model(x, c)
    assert out.shape == x.shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(x.reshape(3, 64), c)).reshape(x.shape), atol=1e-6)
    with pytest.raises(ValueError, match="64 values"):
        model(jnp.ones((2, 7, 7, 1)), jnp.ones(2))


# --------------------------------------------------------------------------------------------- U-Net
def test_unet_shape_and_conditioning(small):
    apply, state = small
    x, c = _inputs((3, 8, 8, 1))
    out = apply(state, x, c)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
    same = apply(state, jnp.broadcast_to(x[:1], x.shape), c)  # one image at three noise levels
    assert _distinct_rows(same) > 1e-3
    np.testing.assert_array_equal(np.asarray(out), np.asarray(apply(state, x, c)))  # eval is deterministic


def test_unet_dropout(small):
    apply, state = small
    x, c = _inputs((2, 8, 8, 1))
    off = apply(state, x, c)
    on1, on1b, on2 = (apply(state, x, c, True, jax.random.key(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(np.asarray(on1), np.asarray(on1b))  # the key decides the masks
    assert float(jnp.max(jnp.abs(on1 - on2))) > 1e-3
    assert float(jnp.max(jnp.abs(on1 - off))) > 1e-3
    with pytest.raises(ValueError, match="key"):
        apply(state, x, c, True)


def test_ncsnpp_shape_and_conditioning():
    graphdef, state = _random_unet(NCSN)
    x, c = _inputs((2, 16, 16, 3))
    out = _functional(graphdef)(state, jnp.broadcast_to(x[:1], x.shape), jnp.array([-3.0, 2.0]))
    assert out.shape == x.shape and _distinct_rows(out) > 1e-3


@pytest.mark.parametrize("kw", [
    SMALL,
    NCSN,
    {**SMALL, "resblock_type": "biggan", "embedding_type": "fourier", "attn_resolutions": (8, 4)},
    {**SMALL, "conditional": False, "resamp_with_conv": False, "ch_mult": (1, 2, 3), "num_res_blocks": 2},
    {**NCSN, "progressive_input": "none", "ch_mult": (1, 2, 2, 1), "nf": 16},
])  # fmt: skip
def test_unet_param_count_matches_formula(kw):
    kw = {k: v for k, v in kw.items() if k != "dropout"}
    model = nnx.eval_shape(lambda: UNet(**kw, rngs=nnx.Rngs(0)))
    assert count_params(model) == unet_count(**kw)


def test_ddpmpp_cifar10_count():
    """score_sde's DDPM++ cont. CIFAR-10 network (nf 128, ch_mult 1,2,2,2, 4 BigGAN blocks, attention at
    16x16) has 61.8M parameters; building it here takes ~30 s, so the formula (checked against built
    models above) stands in for it."""
    n = unet_count(image_size=32, num_channels=3, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4,
                   attn_resolutions=(16,), resblock_type="biggan", embedding_type="positional")
    assert round(n / 1e6, 1) == 61.8


@pytest.mark.parametrize("kw, field", [
    ({"progressive_input": "input_skip"}, "progressive_input"),
    ({"resblock_type": "resnet"}, "resblock_type"),
    ({"embedding_type": "learned"}, "embedding_type"),
    ({"image_size": 6, "ch_mult": (1, 2, 2)}, "image_size"),
    ({"nf": 2}, "GroupNorm"),
])  # fmt: skip
def test_unet_rejects_unsupported_settings(kw, field):
    with pytest.raises(ValueError, match=field):
        UNet(**{**SMALL, **kw}, rngs=nnx.Rngs(0))


# ------------------------------------------------------------------------------------------ registry
def test_get_model_from_config():
    cfg = default_config()
    cfg.data.image_size, cfg.data.num_channels = 16, 3
    for k, v in NCSN.items():
        if k in cfg.model:
            cfg.model[k] = v
    cfg.model.name = "ncsnpp"
    model = nnx.eval_shape(lambda: models.get_model(cfg.model, (16, 16, 3), nnx.Rngs(0)))
    assert isinstance(model, UNet)
    expect = {k: v for k, v in NCSN.items() if k != "dropout"}
    assert count_params(model) == unet_count(**expect)

    cfg.model.update(name="mlp", hidden=8, n_layers=2, embedding_type="positional")
    cfg.data.update(dataset="toy", toy_name="mixture", num_channels=2)
    mlp = nnx.eval_shape(lambda: models.get_model(cfg.model, (2,), nnx.Rngs(0)))
    assert isinstance(mlp, MLP) and count_params(mlp) == mlp_count(2, 8, 2, "positional")
    digits_mlp = nnx.eval_shape(lambda: models.get_model(cfg.model, (8, 8, 1), nnx.Rngs(0)))  # D = 8 * 8 * 1
    assert count_params(digits_mlp) == mlp_count(64, 8, 2, "positional")

    bad = ml_collections.ConfigDict(cfg.to_dict())
    bad.model.name = "transformer"
    with pytest.raises(ValueError, match="config.model.name"):
        models.get_model(bad.model, (8, 8, 1), nnx.Rngs(0))
    cfg.model.name = "ddpmpp"
    with pytest.raises(ValueError, match="square"):
        models.get_model(cfg.model, (2,), nnx.Rngs(0))
