"""Experiment configs: the schema with its defaults, and one-shot validation.

The schema is :func:`default_config` (score_sde's groups and field names; score_sde-like values). Every
file in ``configs/`` starts from it and overrides values, never adds names: :func:`validate_config`
rejects any field the defaults do not have, a value of the wrong type, and impossible values, each
with one line naming the field (``config.optim.lr must be > 0, got -1.0``).

Every list of names a field may take lives with what it names (SDEs in ``sdes``, weightings in
``losses``, parameterisations in ``parameterization``, networks and embeddings in ``models``, data sets
in ``data``, schedules and optimisers in ``training``, objectives in ``objectives``, samplers and their
options in the sampler registry, condition kinds in the condition-kind registry); the validation here
reads those lists and registries, all of which live below this module. ``sampling.options`` holds the
sampler's own options (e.g. ``{"eta": 0.5}`` for ddim, ``{"snr": 0.16, "n_steps": 1}`` for pc),
validated against the registry, so a run's samples are fully described by its config;
``condition.options`` holds the condition kind's own (e.g. ``{"factor": 2}`` for ``image``). For vector
data (``data.dataset='toy'``) ``data.num_channels`` is the dimension D and ``image_size`` is unused.
"""

from __future__ import annotations

import math

import ml_collections
from ml_collections import config_dict

import models
from models.layers import EMBEDDING_TYPES
from models.unet import PROGRESSIVE_INPUT, RESBLOCK_TYPES
from sde_lib import conditioning, sampling
from sde_lib.data import SPLITS, parse, toy
from sde_lib.losses import WEIGHTINGS
from sde_lib.objectives import OBJECTIVES
from sde_lib.parameterization import PARAMETERIZATIONS
from sde_lib.sdes import SDES
from sde_lib.training import OPTIMIZERS, SCHEDULES

FLOAT_TUPLES = ("model.input_fourier",)  # tuple fields of numbers; every other tuple field holds ints
FREE_GROUPS = ("sampling.options", "condition.options")  # validated by their registries, not the schema


def default_config() -> ml_collections.ConfigDict:
    """The schema: every field a config may have, with score_sde-like defaults (CIFAR-10-sized DDPM++, VP)."""
    c = ml_collections.ConfigDict()
    c.training = t = ml_collections.ConfigDict()
    t.objective = "score"  # score | classifier (noise-conditional, for classifier guidance) | autoencoder
    t.sde = "vpsde"
    t.continuous = True
    t.weighting = "sigma2"  # sigma2: score_sde's lambda = sigma_t^2; likelihood(_is): g^2, optionally importance-sampled t
    t.reduce_mean = False
    t.n_iters = 1_300_001
    t.batch_size = 128
    t.log_freq = 50
    t.eval_freq = 100
    t.snapshot_freq = 50_000
    t.snapshot_freq_for_preemption = 10_000
    t.n_jitted_steps = 1
    t.snapshot_sampling = True
    t.eps = 1e-5  # smallest training time
    t.cond_drop_prob = 0.1  # conditional runs: share of examples trained on the null condition (CFG)
    t.compute_dtype = "float32"  # "bfloat16": mixed precision (bf16 compute; float32 parameters, optimiser, loss)
    t.rec_loss = "l1"  # autoencoder: reconstruction loss, l1 | l2 (summed over pixels)
    t.kl_weight = 1e-6  # autoencoder: weight of KL(q(z | x) || N(0, I))
    t.perceptual_weight = 0.0  # autoencoder: feature matching in the data set's classifier features
    t.disc_weight = 0.0  # autoencoder: patch-GAN generator weight (0: no discriminator)
    t.disc_start = 0  # autoencoder: updates before the discriminator joins

    c.sampling = s = ml_collections.ConfigDict()
    s.sampler = "pc"
    s.steps = 1000
    s.options = ml_collections.ConfigDict()  # the sampler's own options, e.g. {"snr": 0.16, "n_steps": 1} for pc
    s.denoise = True
    s.eps = config_dict.placeholder(float)  # None: the SDE's default end time
    s.batch_size = 64

    c.eval = e = ml_collections.ConfigDict()
    e.batch_size = 1024
    e.num_samples = 50_000
    e.bpd_num_repeats = 1
    e.split = "test"

    c.data = d = ml_collections.ConfigDict()
    d.dataset = "cifar10"
    d.toy_name = "mixture"
    d.path = config_dict.placeholder(str)  # None: the dataset's default location
    d.image_size = 32
    d.num_channels = 3
    d.centered = False
    d.random_flip = True
    d.uniform_dequantization = False
    d.levels = 256
    d.seed = 0

    c.model = m = ml_collections.ConfigDict()
    m.name = "ddpmpp"
    m.parameterization = "eps"
    m.sigma_data = 0.5
    m.beta_min = 0.1
    m.beta_max = 20.0
    m.sigma_min = 0.01
    m.sigma_max = 50.0
    m.num_scales = 1000
    m.dropout = 0.1
    m.nf = 128
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 4
    m.attn_resolutions = (16,)
    m.resblock_type = "biggan"
    m.embedding_type = "positional"
    m.fourier_scale = 16.0
    m.skip_rescale = True
    m.init_scale = 0.0
    m.resamp_with_conv = True
    m.conditional = True
    m.progressive_input = "none"
    m.hidden = 128
    m.n_layers = 3
    m.input_fourier = ()  # MLP: angular frequencies of sin/cos input features (VDM); () for none
    m.embed_dim = 0  # MLP: width of the noise embedding; 0 = hidden
    m.num_classes = 0  # label runs: classes of the class embedding (index num_classes is the null class); classifiers
    m.concat_channels = 0  # > 0: cond["concat"] channels concatenated to the input (condition kinds feeding concat)
    m.remat = False  # U-Net: recompute each level's activations in the backward pass (nnx.remat)
    m.context_pooled = False  # baseline: the mean token embedding added to the noise embedding, no cross-attention
    m.context_dim = 64  # width of the token encoder and of the context (condition kinds feeding tokens)
    m.context_len = 12  # tokens per condition (captions: words + 1)
    m.context_depth = 2  # self-attention blocks of the token encoder
    m.transformer_depth = 1  # transformer blocks of each SpatialTransformer (at model.attn_resolutions)
    m.num_heads = 4  # attention heads of the SpatialTransformers and the token encoder
    m.z_channels = 4  # autoencoder: latent channels
    m.mid_attention = False  # autoencoder: self-attention in the middle blocks

    c.condition = cd = ml_collections.ConfigDict()  # what the run is conditioned on (sde_lib.conditioning)
    cd.kind = "none"  # none | label | caption | layout | image | a kind registered by condition.plugin
    cd.plugin = ""  # a Python file or module registering condition kinds of your own (recorded with the run)
    cd.options = ml_collections.ConfigDict()  # the kind's own options, e.g. {"factor": 2} for image

    c.first_stage = f = ml_collections.ConfigDict()  # latent diffusion: the frozen autoencoder run
    f.workdir = ""  # an autoencoder run directory; "" = diffusion in data space
    f.sample_latents = True  # train on posterior samples (True) or posterior means of the encoder

    c.optim = o = ml_collections.ConfigDict()
    o.optimizer = "Adam"
    o.lr = 2e-4
    o.warmup = 5000
    o.schedule = "constant"  # after warm-up: constant | cosine | linear decay to 0 at training.n_iters
    o.grad_clip = 1.0  # global-norm clip; 0 disables clipping
    o.beta1 = 0.9
    o.eps = 1e-8
    o.weight_decay = 0.0
    o.ema_rate = 0.9999
    o.ema_warmup = True  # decay min(ema_rate, (1 + step) / (10 + step)); runs recorded without it keep False

    c.seed = 42
    return c


# ----------------------------------------------------------------------------------------- validation
def _fail(field: str, message: str):
    raise ValueError(f"config.{field} {message}")


def _check_names(cfg, schema, prefix: str):
    """Same field names as the schema, recursively, and values of the schema's types."""
    for name in cfg.keys():
        field = prefix + name
        if field in FREE_GROUPS:
            if not isinstance(cfg[name], (ml_collections.ConfigDict, dict)):
                _fail(field, f"must be a group of fields, got {cfg[name]!r}")
            continue
        if name not in schema:
            _fail(field, f"is not a known field (known in this group: {', '.join(sorted(schema.keys()))})")
        ref, value = schema[name], cfg[name]
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(value, (ml_collections.ConfigDict, dict)):
                _fail(field, f"must be a group of fields, got {value!r}")
            _check_names(value, ref, field + ".")
        else:
            _check_type(field, value, schema.get_type(name))
    for name in schema.keys():
        if name not in cfg:
            _fail(prefix + name, "is missing")


def _check_type(field: str, value, expected: type):
    if value is None:
        return  # None means "use the default behaviour"; the value checks decide whether it is allowed
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif expected in (tuple, list):
        kinds = (int, float) if field in FLOAT_TUPLES else int
        ok = isinstance(value, (tuple, list)) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
    else:
        ok = isinstance(value, expected)
    if not ok:
        _fail(field, f"must be of type {expected.__name__}, got {value!r}")


def _positive(cfg, field: str, allow_zero: bool = False):
    """Finite and > 0 (>= 0 with ``allow_zero``); NaN fails both comparisons."""
    group, name = field.split(".") if "." in field else (None, field)
    value = cfg[group][name] if group else cfg[name]
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        _fail(field, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _one_of(cfg, field: str, choices):
    group, name = field.split(".")
    value = cfg[group][name]
    if value not in choices:
        _fail(field, f"must be one of {', '.join(map(str, choices))}; got {value!r}")


def _in_range(cfg, field: str, lo: float, hi: float, closed_lo: bool = True):
    group, name = field.split(".")
    value = cfg[group][name]
    if not ((lo <= value if closed_lo else lo < value) and value < hi):
        _fail(field, f"must be in {'[' if closed_lo else '('}{lo}, {hi}), got {value!r}")


def validate_sampler(name: str, available) -> str:
    """Return ``name`` if it is in ``available`` sampler names, else one ValueError naming the field."""
    if name not in available:
        _fail("sampling.sampler", f"must be one of {', '.join(available)}; got {name!r}")
    return name


def _unet_checks(cfg):
    m = cfg.model
    if not m.ch_mult or any(v < 1 for v in m.ch_mult):
        _fail("model.ch_mult", f"must be a non-empty tuple of positive ints, got {m.ch_mult!r}")
    for mult in m.ch_mult:
        c = m.nf * mult
        groups = min(c // 4, 32)
        if groups < 1 or c % groups:
            _fail("model.nf", f"gives {c} channels (nf * ch_mult), which GroupNorm's min(C // 4, 32) groups do not divide")
    factor = 2 ** (len(m.ch_mult) - 1)
    if cfg.data.image_size % factor and not cfg.first_stage.workdir:  # a latent run's U-Net sees the latents
        _fail("data.image_size", f"must be divisible by 2**(len(model.ch_mult)-1) = {factor}, got {cfg.data.image_size}")
    _one_of(cfg, "model.resblock_type", RESBLOCK_TYPES)
    _one_of(cfg, "model.progressive_input", PROGRESSIVE_INPUT)


def validate_config(config, samplers=None) -> ml_collections.ConfigDict:
    """Check ``config`` once after parsing; return it unchanged or raise one ValueError naming the field.

    ``samplers``: the allowed ``sampling.sampler`` names; None reads ``sde_lib.sampling.available_samplers()``.
    The data fields are checked by the data pipeline's own parser (``sde_lib.data.parse``), the condition
    by its kind (``condition.plugin`` is imported first, so that a kind of the user's own exists).
    """
    _check_names(config, default_config(), "")
    s, d, m = config.sampling, config.data, config.model

    _one_of(config, "training.sde", SDES)
    _one_of(config, "training.weighting", WEIGHTINGS)
    for f in ("n_iters", "batch_size", "log_freq", "eval_freq", "snapshot_freq", "snapshot_freq_for_preemption",
              "n_jitted_steps"):
        _positive(config, "training." + f)
    _in_range(config, "training.eps", 0.0, 1.0, closed_lo=False)

    validate_sampler(s.sampler, sampling.available_samplers() if samplers is None else samplers)
    if s.sampler in sampling.available_samplers():
        try:
            sampling.registry.get(s.sampler).parse_options(dict(s.options))
        except ValueError as err:
            _fail("sampling.options", str(err))
    for f in ("steps", "batch_size"):
        _positive(config, "sampling." + f)
    if s.eps is not None:
        _in_range(config, "sampling.eps", 0.0, 1.0, closed_lo=False)

    for f in ("batch_size", "num_samples", "bpd_num_repeats"):
        _positive(config, "eval." + f)
    _one_of(config, "eval.split", SPLITS)

    for f in ("image_size", "num_channels"):
        _positive(config, "data." + f)
    _positive(config, "data.seed", allow_zero=True)

    _one_of(config, "model.name", models.MODEL_NAMES)
    _one_of(config, "model.parameterization", PARAMETERIZATIONS)
    _positive(config, "model.sigma_data")
    if not 0 < m.beta_min < m.beta_max:
        _fail("model.beta_min", f"must satisfy 0 < beta_min < beta_max, got {m.beta_min} and {m.beta_max}")
    if not 0 < m.sigma_min < m.sigma_max:
        _fail("model.sigma_min", f"must satisfy 0 < sigma_min < sigma_max, got {m.sigma_min} and {m.sigma_max}")
    _positive(config, "model.num_scales")
    _in_range(config, "model.dropout", 0.0, 1.0)
    for f in ("nf", "num_res_blocks", "fourier_scale", "hidden", "n_layers"):
        _positive(config, "model." + f)
    _positive(config, "model.init_scale", allow_zero=True)
    _positive(config, "model.embed_dim", allow_zero=True)
    _positive(config, "model.num_classes", allow_zero=True)
    _positive(config, "model.concat_channels", allow_zero=True)
    _in_range(config, "training.cond_drop_prob", 0.0, 1.0)
    _one_of(config, "training.compute_dtype", ("float32", "bfloat16"))
    _check_objective(config)
    _check_condition(config)
    if any(not (math.isfinite(w) and w > 0) for w in m.input_fourier):
        _fail("model.input_fourier", f"must hold positive angular frequencies, got {m.input_fourier!r}")
    if m.input_fourier and m.name != "mlp":
        _fail("model.input_fourier", f"is an option of the 'mlp' network, got model.name={m.name!r}")
    _one_of(config, "model.embedding_type", EMBEDDING_TYPES)
    if m.name in models.UNET_NAMES:
        if d.dataset == "toy":
            _fail("model.name", f"{m.name!r} is an image network, but data.dataset is 'toy' (use 'mlp')")
        _unet_checks(config)

    _one_of(config, "optim.optimizer", OPTIMIZERS)
    _one_of(config, "optim.schedule", SCHEDULES)
    _positive(config, "optim.lr")
    for f in ("warmup", "grad_clip", "weight_decay"):
        _positive(config, "optim." + f, allow_zero=True)
    _positive(config, "optim.eps")
    _in_range(config, "optim.beta1", 0.0, 1.0)
    _in_range(config, "optim.ema_rate", 0.0, 1.0)
    _positive(config, "seed", allow_zero=True)

    spec = parse(d)  # the data pipeline's own checks (data set, native sizes and levels, toy names)
    if spec.dataset == "toy" and d.num_channels != toy.toy_dim(spec.toy_name):
        _fail("data.num_channels", f"must be {toy.toy_dim(spec.toy_name)} (the dimension of toy {spec.toy_name!r}), "
                                   f"got {d.num_channels}")
    return config


def _check_objective(config):
    """The objective and the network fit together."""
    t, m = config.training, config.model
    _one_of(config, "training.objective", OBJECTIVES)
    _one_of(config, "training.rec_loss", ("l1", "l2"))
    for f in ("kl_weight", "perceptual_weight", "disc_weight", "disc_start"):
        _positive(config, "training." + f, allow_zero=True)
    for f in ("context_dim", "context_len", "context_depth", "transformer_depth", "num_heads", "z_channels"):
        _positive(config, "model." + f)
    wants = {"classifier": "classifier", "autoencoder": "autoencoder"}.get(t.objective)
    if wants and m.name != wants:
        _fail("model.name", f"must be {wants!r} for training.objective={t.objective!r}, got {m.name!r}")
    if not wants and m.name in ("classifier", "autoencoder"):
        _fail("training.objective", f"must be {m.name!r} for model.name={m.name!r}, got {t.objective!r}")
    if config.first_stage.workdir and t.objective != "score":
        _fail("first_stage.workdir", f"applies to score runs, not training.objective={t.objective!r}")


def _check_condition(config):
    """The condition kind exists and takes this config; the network's conditional inputs are the kind's."""
    t, m, c = config.training, config.model, config.condition
    conditioning.load_plugin(c.plugin)
    kind = conditioning.kind_of(config)  # raises for an unknown kind
    unknown = sorted(set(c.options.keys()) - set(kind.options if kind else ()))
    if unknown:
        _fail(f"condition.options.{unknown[0]}", f"is not an option of condition.kind={c.kind!r} "
                                                 f"(its options: {', '.join(kind.options) if kind else 'none'})")
    feeds = kind.network_input if kind else None
    if t.objective == "classifier":
        if feeds != "label":
            _fail("condition.kind", f"must be a label kind for training.objective='classifier' (its targets), "
                                    f"got {c.kind!r}")
        if m.num_classes < 2:
            _fail("model.num_classes", f"must be >= 2 for a classifier, got {m.num_classes}")
    elif t.objective == "autoencoder" and kind is not None:
        _fail("condition.kind", f"must be 'none' for training.objective='autoencoder', got {c.kind!r}")
    elif m.num_classes and feeds != "label":
        _fail("model.num_classes", f"is the class embedding of a label condition; condition.kind={c.kind!r} does not "
                                   f"feed labels (set condition.kind='label', or model.num_classes=0)")
    if m.concat_channels and feeds != "concat":
        _fail("model.concat_channels", f"needs a condition kind feeding channels (e.g. condition.kind='image'), got "
                                       f"condition.kind={c.kind!r}")
    if m.context_pooled and feeds not in ("tokens", "context"):
        _fail("model.context_pooled", f"pools a caption or layout; condition.kind={c.kind!r} feeds no tokens")
    if kind is not None:
        kind.validate(config)
