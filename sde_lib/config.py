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
from sde_lib.losses import TIME_SAMPLINGS, WEIGHTINGS
from sde_lib.objectives import OBJECTIVES
from sde_lib.parameterization import PARAMETERIZATIONS
from sde_lib.sdes import SDES
from sde_lib.training import OPTIMIZERS, SCHEDULES

FLOAT_TUPLES = ("model.input_fourier",)  # tuple fields of numbers; every other tuple field holds ints
FREE_GROUPS = ("sampling.options", "condition.options")  # validated by their registries, not the schema


class _NoneOf:
    """The default of a field that may be None (``config_dict.placeholder(kind)``, made anew per config: a
    placeholder is a shared reference, so one instance in two configs would tie their values)."""

    def __init__(self, kind: type):
        self.kind = kind

    def __eq__(self, other):
        return other is None


_NONE_FLOAT, _NONE_STR = _NoneOf(float), _NoneOf(str)

# The schema: every field a config may have, as (default, help), in score_sde's groups with score_sde-like
# defaults (CIFAR-10-sized DDPM++, VP). ``default_config()`` builds it; ``describe()`` prints it.
SCHEMA = {
    "training": {
        "objective": ("score", "what the run optimises: score | classifier (a noise-conditional classifier, for "
                               "classifier guidance) | autoencoder (a latent run's first stage)"),
        "sde": ("vpsde", "the forward process: vpsde | subvpsde | vesde, or a Gaussian path: linear (rectified "
                         "flow / flow matching) | cosine | edm (sigma(t) = t on [0, model.sigma_max])"),
        "continuous": (True, "continuous time t (score_sde's continuous training); False: DDPM / SMLD's N steps"),
        "weighting": ("sigma2", "loss weight lambda(t): sigma2 (score_sde's sigma_t^2) | likelihood (g^2) | "
                                "likelihood_is (g^2 with importance-sampled t) | velocity ((g^2/2)^2: flow "
                                "matching's velocity error)"),
        "time_sampling": ("uniform", "training times: uniform | logit_normal (log sigma(t) ~ N(time_loc, "
                                     "time_scale^2): SD3's logit-normal t on the linear path)"),
        "time_loc": (0.0, "logit_normal: mean of log sigma(t) (logit t on the linear path)"),
        "time_scale": (1.0, "logit_normal: standard deviation of log sigma(t)"),
        "reduce_mean": (False, "average the loss over dimensions instead of summing"),
        "n_iters": (1_300_001, "updates to train to; raising it resumes a finished run"),
        "batch_size": (128, "global batch (a multiple of the devices)"),
        "log_freq": (50, "updates between lines of metrics.jsonl"),
        "eval_freq": (100, "updates between held-out losses"),
        "snapshot_freq": (50_000, "updates between numbered checkpoints (and samples/step_N.png)"),
        "snapshot_freq_for_preemption": (10_000, "updates between preemption checkpoints (the last two kept)"),
        "n_jitted_steps": (1, "updates per compiled call (unrolled)"),
        "snapshot_sampling": (True, "sample the EMA model at every snapshot"),
        "eps": (1e-5, "smallest training time"),
        "cond_drop_prob": (0.1, "conditional runs: share of examples trained on the null condition (for "
                                "classifier-free guidance)"),
        "compute_dtype": ("float32", "float32 | bfloat16 (mixed precision: bf16 network; float32 parameters, "
                                     "optimiser, loss)"),
        "rec_loss": ("l1", "autoencoder: reconstruction loss, l1 | l2 (summed over pixels)"),
        "kl_weight": (1e-6, "autoencoder: weight of KL(q(z | x) || N(0, I))"),
        "perceptual_weight": (0.0, "autoencoder: feature matching in the data set's classifier features"),
        "disc_weight": (0.0, "autoencoder: patch-GAN generator weight (0: no discriminator)"),
        "disc_start": (0, "autoencoder: updates before the discriminator joins"),
    },
    "sampling": {
        "sampler": ("pc", "sampler of snapshots and of load_run(...).sample() (scripts/sample.py --help lists them)"),
        "steps": (1000, "solver steps"),
        "options": (ml_collections.ConfigDict(), "the sampler's own options, e.g. {'snr': 0.16, 'n_steps': 1} for pc"),
        "denoise": (True, "finish with a Tweedie denoising step (one more evaluation)"),
        "eps": (_NONE_FLOAT, "end time; None: the SDE's default (1e-3 VP / sub-VP, 1e-5 VE)"),
        "batch_size": (64, "samples drawn at a snapshot"),
    },
    "eval": {
        "batch_size": (1024, "batch of held-out losses and bits/dim"),
        "num_samples": (50_000, "examples of bits/dim (the split's first ones)"),
        "bpd_num_repeats": (1, "dequantisation draws per example of bits/dim"),
        "split": ("test", "split of held-out losses and bits/dim: train | test"),
    },
    "data": {
        "dataset": ("cifar10", "toy | digits | fashion_mnist | cifar10 | npz | folder | canvas_digits | "
                               "canvas_fashion_mnist"),
        "toy_name": ("mixture", "toy data: mixture | checkerboard | moons | swiss_roll | ring2d | grid2d | gauss16d | "
                                "gauss64d"),
        "path": (_NONE_STR, "where the data files are; None: the data set's default location"),
        "image_size": (32, "image height and width (for vector data: unused)"),
        "num_channels": (3, "image channels (for vector data: the dimension D)"),
        "centered": (False, "scale data to [-1, 1] instead of [0, 1]"),
        "random_flip": (True, "flip training images left-right at random"),
        "uniform_dequantization": (False, "train on uniformly dequantised data instead of bin centres"),
        "levels": (256, "grey levels of discrete data; None: continuous data"),
        "seed": (0, "seed of the data's own train/test split (where a source has none)"),
        "resize": ("crop", "image files of another size: crop (the centred square, resized) | squash (resized "
                           "whole) | pad (centred on a black square)"),
        "captions": ("", "image folders: the captions file (metadata.jsonl or .csv: file_name, text; {split} is "
                         "replaced); '' = the split folder's metadata.jsonl / metadata.csv"),
        "layouts": ("", "image folders: the COCO instances file of the boxes ({split} is replaced); '' = the split "
                        "folder's instances.json"),
        "embeddings": ("", "image folders: the precomputed context (.npz: file_name, context, length or mask; "
                           "{split} is replaced); '' = the split folder's embeddings.npz"),
        "workers": (0, "image folders: processes that read and decode the files ahead of training (0: two "
                       "threads of the training process)"),
        "pairs": ("", "reflow: an .npz of coupled pairs (x, noise) from scripts/reflow.py; training draws them "
                      "instead of the data set's training split with fresh noise (the data set stays the "
                      "evaluation data)"),
    },
    "model": {
        "name": ("ddpmpp", "network: mlp | ncsnpp | ddpmpp (U-Nets) | classifier | autoencoder"),
        "parameterization": ("eps", "network output: score | eps | x0 | v | edm | velocity (alpha' x0 + sigma' eps)"),
        "sigma_data": (0.5, "EDM preconditioning: the data's standard deviation"),
        "beta_min": (0.1, "VP / sub-VP: beta(0)"),
        "beta_max": (20.0, "VP / sub-VP: beta(1)"),
        "sigma_min": (0.01, "VE: sigma(0); EDM path: the samplers' default end"),
        "sigma_max": (50.0, "VE: sigma(1); EDM path: T"),
        "num_scales": (1000, "N: discrete steps (DDPM / SMLD, ancestral sampling, noise label (N - 1) t)"),
        "dropout": (0.1, "dropout rate"),
        "nf": (128, "U-Net / autoencoder: base channels"),
        "ch_mult": ((1, 2, 2, 2), "U-Net / autoencoder: channel multiplier of each resolution"),
        "num_res_blocks": (4, "residual blocks per resolution"),
        "attn_resolutions": ((16,), "resolutions with attention (SpatialTransformers with cross-attention)"),
        "resblock_type": ("biggan", "U-Net residual block: biggan | ddpm"),
        "embedding_type": ("positional", "noise embedding: positional | fourier"),
        "fourier_scale": (16.0, "scale of the Fourier noise embedding"),
        "skip_rescale": (True, "U-Net: divide skip sums by sqrt(2)"),
        "init_scale": (0.0, "scale of the last layers' initialisation (0: near zero)"),
        "resamp_with_conv": (True, "U-Net: convolutions in up- and down-sampling"),
        "conditional": (True, "U-Net: condition on the noise level"),
        "progressive_input": ("none", "NCSN++ progressive input: none | input_skip | residual"),
        "hidden": (128, "MLP / classifier: width"),
        "n_layers": (3, "MLP / classifier: residual blocks"),
        "input_fourier": ((), "MLP: angular frequencies of sin/cos input features (VDM); () for none"),
        "embed_dim": (0, "MLP: width of the noise embedding; 0 = hidden"),
        "num_classes": (0, "label runs: classes of the class embedding (class num_classes is the null class); "
                           "classifiers: logits"),
        "concat_channels": (0, "channels concatenated to the input (condition kinds feeding concat)"),
        "remat": (False, "U-Net: recompute each level's activations in the backward pass"),
        "context_pooled": (False, "the bag-of-words baseline: the mean token embedding joins the noise "
                                  "embedding, no cross-attention"),
        "context_dim": (64, "width of the token encoder and of the cross-attention context"),
        "context_len": (12, "tokens per condition (captions: tokens + 1; layouts: 1 + 5 per box)"),
        "max_boxes": (2, "layouts: the most boxes one image's layout may hold"),
        "context_depth": (2, "self-attention blocks of the token encoder"),
        "transformer_depth": (1, "transformer blocks of each SpatialTransformer"),
        "num_heads": (4, "attention heads of the SpatialTransformers and the token encoder"),
        "z_channels": (4, "autoencoder: latent channels"),
        "mid_attention": (False, "autoencoder: self-attention in the middle blocks"),
    },
    "condition": {
        "kind": ("none", "what the run is conditioned on: none | label | caption | layout | embedding | image | "
                         "masked_image | a kind registered by condition.plugin"),
        "plugin": ("", "a Python file or module that registers condition kinds of your own (recorded with the run)"),
        "options": (ml_collections.ConfigDict(), "the kind's own options, e.g. {'factor': 2} for image, "
                                                 "{'masks': 'half,box,pixels'} for masked_image, "
                                                 "{'vocab_size': 1000} for caption"),
    },
    "first_stage": {
        "workdir": ("", "latent diffusion: the autoencoder run folder; '' = diffusion in data space"),
        "sample_latents": (True, "train on posterior samples (True) or posterior means of the encoder"),
    },
    "optim": {
        "optimizer": ("Adam", "Adam | AdamW"),
        "lr": (2e-4, "learning rate after warm-up"),
        "warmup": (5000, "updates of linear learning-rate warm-up"),
        "schedule": ("constant", "after warm-up: constant | cosine | linear decay to 0 at training.n_iters"),
        "grad_clip": (1.0, "global-norm gradient clipping; 0 disables it"),
        "beta1": (0.9, "Adam's beta1"),
        "eps": (1e-8, "Adam's epsilon"),
        "weight_decay": (0.0, "AdamW's weight decay"),
        "ema_rate": (0.9999, "EMA decay of the parameters sampling uses"),
        "ema_warmup": (True, "EMA decay min(ema_rate, (1 + step) / (10 + step)); runs recorded without it keep False"),
    },
    "seed": (42, "the run's seed: initial parameters, training noise, batch order"),
}


def default_config() -> ml_collections.ConfigDict:
    """The schema (:data:`SCHEMA`): every field a config may have, with its default."""

    def build(node):
        if isinstance(node, dict):
            c = ml_collections.ConfigDict()
            for name, value in node.items():
                c[name] = build(value)
            return c
        default = node[0]
        if isinstance(default, _NoneOf):
            return config_dict.placeholder(default.kind)
        return ml_collections.ConfigDict(default) if isinstance(default, ml_collections.ConfigDict) else default

    return build(SCHEMA)


def describe(config) -> str:
    """Every field of ``config`` with its value, the schema's default where it differs, and its help; free
    groups (``sampling.options``, ``condition.options``) show their contents."""
    lines = []

    def walk(node, schema, prefix):
        for name, entry in schema.items():
            field = prefix + name
            if isinstance(entry, dict):
                walk(node[name], entry, field + ".")
                continue
            value, default = node[name], entry[0]
            shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
            default = default.to_dict() if isinstance(default, ml_collections.ConfigDict) else (
                None if isinstance(default, _NoneOf) else default)
            note = "" if shown == default else f"  (default {default!r})"
            lines.append(f"{field} = {shown!r}{note}\n    {entry[1]}")

    walk(config, SCHEMA, "")
    return "\n".join(lines)


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
    _one_of(config, "training.time_sampling", TIME_SAMPLINGS)
    _positive(config, "training.time_scale")
    if not math.isfinite(config.training.time_loc):
        _fail("training.time_loc", f"must be finite, got {config.training.time_loc!r}")
    if config.training.time_sampling != "uniform" and config.training.weighting == "likelihood_is":
        _fail("training.time_sampling", "must be 'uniform' with training.weighting='likelihood_is' (it draws its "
                                        "own times)")
    if m.parameterization == "velocity" and not config.training.continuous:
        _fail("model.parameterization", "'velocity' needs continuous time (training.continuous=True)")
    if d.pairs and (config.condition.kind != "none" or config.first_stage.workdir or d.random_flip):
        _fail("data.pairs", "takes unconditional data-space runs without flips (condition.kind='none', no "
                            "first_stage.workdir, data.random_flip=False)")
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
    _positive(config, "data.workers", allow_zero=True)
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
    for f in ("context_dim", "context_len", "context_depth", "transformer_depth", "num_heads", "z_channels",
              "max_boxes"):
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
