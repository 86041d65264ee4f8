"""Configs: every file loads and validates; bad names and values stop with one line naming the field."""

import glob
import importlib.util
import os

import ml_collections
import pytest

import sde_lib
from sde_lib.config import default_config, describe, validate_config, validate_sampler
from sde_lib.runs.folder import upgrade
from sde_lib.sdes import CosinePath, EDMPath, LinearPath, get_sde

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    f for f in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    if not os.path.basename(f).startswith("_")
)  # fmt: skip


def load(path):
    spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_config_files_exist():
    names = {os.path.relpath(f, os.path.join(ROOT, "configs")) for f in CONFIG_FILES}
    for sde in ("vp", "subvp", "ve"):
        assert f"toy/{sde}.py" in names and f"digits/{sde}.py" in names
    assert {"default.py", "fashion_mnist/vp_ddpmpp.py", "cifar10/vp_ddpmpp_continuous.py",
            "cifar10/subvp_ddpmpp_continuous.py", "cifar10/ve_ncsnpp_continuous.py"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_validates(path):
    config = load(path)
    assert validate_config(config) is config  # sampler names from sde_lib.sampling.available_samplers()
    sde = get_sde(config)
    assert sde.N == config.model.num_scales


def test_score_sde_cifar10_hyperparameters():
    vp = load(os.path.join(ROOT, "configs/cifar10/vp_ddpmpp_continuous.py"))
    ve = load(os.path.join(ROOT, "configs/cifar10/ve_ncsnpp_continuous.py"))
    for c in (vp, ve):
        assert (c.optim.lr, c.optim.warmup, c.optim.grad_clip, c.training.batch_size) == (2e-4, 5000, 1.0, 128)
        assert (c.model.nf, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions) == (128, (1, 2, 2, 2), 4, (16,))
    assert (vp.optim.ema_rate, ve.optim.ema_rate) == (0.9999, 0.999)
    assert (vp.model.embedding_type, ve.model.embedding_type) == ("positional", "fourier")
    assert (vp.model.progressive_input, ve.model.progressive_input) == ("none", "residual")
    assert vp.training.n_iters == 1_300_001 and vp.data.centered and not ve.data.centered


def _set(config, field, value):
    """Set a dotted field on a fresh, unlocked copy (bypassing ml_collections' type lock)."""
    d = config.to_dict()
    *groups, name = field.split(".")
    node = d
    for g in groups:
        node = node.setdefault(g, {})
    node[name] = value
    return ml_collections.ConfigDict(d)


BAD = [
    ("optim.lr", -1.0, "config.optim.lr must be > 0, got -1.0"),
    ("optim.lr", float("nan"), "config.optim.lr must be > 0"),
    ("optim.lr", "fast", "config.optim.lr must be of type float"),
    ("optim.ema_rate", 1.5, "config.optim.ema_rate must be in [0.0, 1.0)"),
    ("optim.optimizer", "SGD", "config.optim.optimizer must be one of"),
    ("model.beta_min", 30.0, "config.model.beta_min must satisfy 0 < beta_min < beta_max"),
    ("model.sigma_max", 0.001, "config.model.sigma_min must satisfy 0 < sigma_min < sigma_max"),
    ("training.sde", "cld", "config.training.sde must be one of"),
    ("training.batch_size", 0, "config.training.batch_size must be > 0"),
    ("training.weighting", "uniform", "config.training.weighting must be one of"),
    ("training.time_sampling", "beta", "config.training.time_sampling must be one of"),
    ("training.time_scale", 0.0, "config.training.time_scale must be > 0"),
    ("training.weighting", "likelihood_is", "config.training.time_sampling must be 'uniform' with"),
    ("training.continuous", False, "config.model.parameterization 'velocity' needs continuous time"),
    ("data.pairs", "pairs.npz", "config.data.pairs takes unconditional data-space runs without flips"),
    ("model.name", "transformer", "config.model.name must be one of"),
    ("model.parameterization", "flow", "config.model.parameterization must be one of"),
    ("model.ch_mult", (), "config.model.ch_mult must be a non-empty tuple"),
    ("model.nf", 2, "config.model.nf gives 2 channels"),
    ("model.dropout", 1.0, "config.model.dropout must be in [0.0, 1.0)"),
    ("model.progressive_input", "output_skip", "config.model.progressive_input must be one of"),
    ("model.conditional", 1, "config.model.conditional must be of type bool"),
    ("data.dataset", "imagenet", "config.data.dataset must be one of"),
    ("data.image_size", 30, "config.data.image_size must be divisible by 2**(len(model.ch_mult)-1) = 8"),
    ("data.levels", 1, "config.data.levels must be >= 2"),
    ("sampling.sampler", "magic", "config.sampling.sampler must be one of"),
    ("sampling.eps", 0.0, "config.sampling.eps must be in (0.0, 1.0)"),
    ("sampling.options", {"snr": -1.0}, "config.sampling.options invalid value -1.0 for option 'snr'"),
    ("sampling.options", {"eta": 0.5}, "config.sampling.options unknown option(s) ['eta'] for sampler 'pc'"),
    ("eval.split", "valid", "config.eval.split must be one of"),
    ("condition.kind", "magic", "config.condition.kind must be 'none' or one of label, caption, layout, embedding, "
                                 "image"),
    ("condition.options", {"factor": 2}, "config.condition.options.factor is not an option of condition.kind='none'"),
    ("condition.plugin", "no/such/kinds.py", "config.condition.plugin='no/such/kinds.py': no such file"),
    ("condition.kind", "label", "config.model.num_classes must be >= 2 for condition.kind='label', got 0"),
    ("model.num_classes", 10, "config.model.num_classes is the class embedding of a label condition"),
    ("model.concat_channels", 3, "config.model.concat_channels needs a condition kind feeding channels"),
    ("model.foo", 1, "config.model.foo is not a known field"),
    ("extra.x", 1, "config.extra is not a known field"),
]


# The base each field's value is checked against: the combinations need a partner field set.
PARTNERS = {"training.weighting='likelihood_is'": {"training.time_sampling": "logit_normal"},
            "training.continuous=False": {"model.parameterization": "velocity"},
            "data.pairs='pairs.npz'": {"data.random_flip": True}}


@pytest.mark.parametrize("field, value, message", BAD, ids=[b[0] + "=" + repr(b[1]) for b in BAD])
def test_bad_values_name_the_field(field, value, message):
    config = default_config()
    for partner, partner_value in PARTNERS.get(f"{field}={value!r}", {}).items():
        config = _set(config, partner, partner_value)
    with pytest.raises(ValueError) as err:
        validate_config(_set(config, field, value))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_toy_dimension_and_image_networks():
    toy = load(os.path.join(ROOT, "configs/toy/vp.py"))
    with pytest.raises(ValueError, match="config.data.num_channels must be 2"):
        validate_config(_set(toy, "data.num_channels", 3))
    with pytest.raises(ValueError, match="config.model.name 'ddpmpp' is an image network"):
        validate_config(_set(toy, "model.name", "ddpmpp"))


def test_missing_field():
    d = default_config().to_dict()
    del d["optim"]["warmup"]
    with pytest.raises(ValueError, match=r"^config.optim.warmup is missing$"):
        validate_config(ml_collections.ConfigDict(d))


def test_validate_sampler_with_explicit_list():
    assert validate_sampler("pc", ["pc", "ode_tsit5"]) == "pc"
    with pytest.raises(ValueError, match="config.sampling.sampler"):
        validate_config(default_config(), samplers=["ode_tsit5"])


@pytest.mark.parametrize("name, cls, params", [
    ("vpsde", sde_lib.VPSDE, {"beta_min": 0.2, "beta_max": 10.0}),
    ("subvpsde", sde_lib.SubVPSDE, {"beta_min": 0.2, "beta_max": 10.0}),
    ("vesde", sde_lib.VESDE, {"sigma_min": 0.02, "sigma_max": 30.0}),
    ("linear", LinearPath, {}),
    ("cosine", CosinePath, {}),
    ("edm", EDMPath, {"sigma_min": 0.002, "sigma_max": 80.0}),
])  # fmt: skip
def test_get_sde(name, cls, params):
    config = default_config()
    config.training.sde = name
    config.model.update(params)
    config.model.num_scales = 500
    sde = get_sde(config)
    assert type(sde) is cls and sde.N == 500
    for k, v in params.items():
        assert getattr(sde, k if k != "sigma_max" or cls is not EDMPath else "T") == v


@pytest.mark.parametrize("recorded, kind", [
    ({"model": {"context": "caption"}}, "caption"),
    ({"model": {"context": "layout", "context_len": 11}}, "layout"),
    ({"model": {"context": "none", "num_classes": 10}}, "label"),
    ({"model": {"context": "none"}}, "none"),
])  # fmt: skip
def test_configs_recorded_before_condition_kinds_upgrade(recorded, kind):
    """A run recorded with ``model.context`` / ``model.num_classes`` (and no ``condition`` group) reads back
    with the condition kind it trained with, and without the retired field."""
    raw = default_config().to_dict()
    del raw["condition"]
    for group, fields in recorded.items():
        raw[group].update(fields)
    config = upgrade(raw)
    assert config.condition.kind == kind and "context" not in config.model
    assert config.optim.ema_warmup is True  # recorded; only a missing field takes the legacy False


def test_describe_lists_every_field_with_its_default_and_help():
    config = load(os.path.join(ROOT, "configs/digits/vp.py"))
    text = describe(config)
    lines = text.splitlines()
    fields = [line.split(" = ")[0] for line in lines if not line.startswith(" ")]
    assert len(fields) == len(lines) // 2 and all(lines[i + 1].strip() for i in range(0, len(lines), 2))
    assert "training.n_iters" in fields and "condition.kind" in fields and "seed" in fields
    assert "data.dataset = 'digits'  (default 'cifar10')" in lines and "training.sde = 'vpsde'" in lines
