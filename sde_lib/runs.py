"""A trained run directory, loaded for inference: ``load_run(workdir)``.

    r = sde_lib.load_run("runs/quickstart")         # newest checkpoint, EMA parameters
    x, info = r.sample(jax.random.PRNGKey(0), 64, sampler="unipc", steps=20)
    print(r.bpd(split="test")["bpd"])

Loading is read-only: it reads ``config.json`` and one checkpoint and never creates, renames or deletes
anything in the run folder (a damaged newest checkpoint is skipped with a warning, not moved aside).
``r.score_fn`` is a pytree (:class:`~sde_lib.parameterization.ModelScore`), so samplers and likelihoods
compiled for one checkpoint are reused for every other checkpoint of the same run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from typing import Any

import equinox as eqx
import jax
import numpy as np
from flax import nnx

from sde_lib import checkpoint as ckpt_lib
from sde_lib import conditioning, latent, sampling, text, training
from sde_lib.config import get_sde
from sde_lib.data import data_dims, load_labels, load_split
from sde_lib.guidance import classifier_free
from sde_lib.likelihood import bits_per_dim, log_likelihood
from sde_lib.parameterization import noise_conditioning
from sde_lib.sdes import SDE

PARAMS = ("ema", "raw")


def to_host(x) -> np.ndarray:
    """A replicated (or process-local) array as NumPy, also when other processes hold copies."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def abstract_state(config):
    """``(graphdef, abstract TrainState)`` of ``config`` on this process's first device: a restore target."""
    optimizer = training.make_optimizer(config.optim, config.training.n_iters)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: training.build_model(config, nnx.Rngs(0))), nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          jax.eval_shape(lambda: training.init_train_state(config, optimizer)[1]))
    return graphdef, target


def checkpoint_steps(workdir: str) -> list[int]:
    """Every step with a committed checkpoint in ``workdir`` (snapshots and preemption copies), ascending."""
    checkpoints = ckpt_lib.Checkpointer(workdir, read_only=True)
    try:
        return sorted({s for s, _ in checkpoints.steps()})
    finally:
        checkpoints.close()


@dataclasses.dataclass
class Run:
    """A run's config, SDE and one checkpoint's parameters, with sampling and bits/dim.

    Attributes:
      workdir: the run directory; config: its recorded config; step: the checkpoint's step;
      params: ``"ema"`` or ``"raw"`` (which parameters ``score_fn`` uses); graphdef, state: the network
      structure and the restored ``TrainState``.
    """

    workdir: str
    config: Any
    step: int
    params: str
    graphdef: Any
    state: Any
    first_stage: Any = None  # latent runs: the frozen autoencoder (sde_lib.latent.FirstStage)
    tokenizer: Any = None  # caption and layout runs

    @property
    def objective(self) -> str:
        return self.config.training.objective

    @property
    def sde(self) -> SDE:
        return get_sde(self.config)

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one example in data space, e.g. ``(8, 8, 1)``."""
        return tuple(data_dims(self.config.data))

    @property
    def model_dims(self) -> tuple[int, ...]:
        """Shape of one example the score network sees: ``dims``, or the latents of a latent run."""
        return self.dims if self.first_stage is None else self.first_stage.latent_dims(self.dims)

    @property
    def network_params(self):
        return self.state.ema if self.params == "ema" else self.state.params

    @property
    def score_fn(self):
        """``score_fn(x, t)`` of the chosen parameters (a pytree: parameters traced, not baked in); for a
        latent run, the score of the scaled latents."""
        self._require("score")
        return training.score_fn(self.config, self.graphdef, self.network_params)

    @property
    def log_prob_fn(self):
        """A classifier run's ``log_prob_fn(x, t, cond) -> (B,)``: log p_t(y | x) of ``cond["label"]``."""
        self._require("classifier")
        return NoisyClassifier(training.Network(self.graphdef, self.network_params), self.sde,
                               self.config.model.parameterization)

    def _require(self, objective: str) -> None:
        if self.objective != objective:
            raise ValueError(f"{self.workdir} is a {self.objective!r} run; this needs a {objective!r} run")

    def decode(self, z) -> jax.Array:
        """Data-space images of a latent run's samples (identity for data-space runs)."""
        return z if self.first_stage is None else self.first_stage.decode(z)

    def ema_horizon_warning(self) -> str | None:
        """A sentence when the EMA has not yet forgotten its initial parameters (None otherwise).

        The initial parameters keep weight prod_s r_s in the EMA: r^step at a fixed decay r (0.74 after
        300 steps at r = 0.999), far less with ``optim.ema_warmup`` (``training.ema_decay``).
        """
        o = self.config.optim
        if self.params != "ema":
            return None
        s = np.arange(self.step, dtype=np.float64)
        decay = np.full_like(s, float(o.ema_rate))
        if o.get("ema_warmup", False):
            decay = np.minimum(decay, (1.0 + s) / (10.0 + s))
        left = float(np.exp(np.sum(np.log(decay))))
        if left < 0.05:
            return None
        return (f"{self.workdir} is young for its EMA: step {self.step} at ema_rate {o.ema_rate} leaves "
                f"{left:.0%} of the initial parameters in the EMA; its samples may be poor "
                f"(train longer, or use the raw parameters: params='raw', sample.py --params raw)")

    @property
    def num_classes(self) -> int:
        """Classes of a class-conditional run (0: unconditional)."""
        return int(self.config.model.get("num_classes", 0))

    @property
    def null_cond(self):
        """The null condition of a conditional run (the unconditional branch of classifier-free guidance)."""
        null = conditioning.null_condition(self.config, self.tokenizer)
        if null is None:
            raise ValueError(f"{self.workdir} is an unconditional run")
        return null

    def prompt_cond(self, prompts, n: int) -> dict:
        """``{"tokens": (n, L)}`` of one caption or ``n`` captions (caption runs). Unknown words map to the
        unknown token and are reported in a warning; a prompt longer than the model's context is an error."""
        if self.config.model.context != "caption":
            raise ValueError(f"{self.workdir} is not conditioned on captions (config.model.context="
                             f"{self.config.model.context!r})")
        prompts = [prompts] * int(n) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != int(n):
            raise ValueError(f"{len(prompts)} prompts for {n} samples")
        ids, unknown = self.tokenizer.encode_batch(prompts)
        if unknown:
            warnings.warn(f"words outside the vocabulary of {self.workdir} (read as unknown): {unknown}", stacklevel=2)
        return {"tokens": jax.numpy.asarray(ids)}

    def layout_cond(self, layouts, n: int) -> dict:
        """``{"tokens": (n, L)}`` of one layout (boxes ``(k, 5)``: class, x0, y0, x1, y1) or ``n`` layouts."""
        if self.config.model.context != "layout":
            raise ValueError(f"{self.workdir} is not conditioned on layouts (config.model.context="
                             f"{self.config.model.context!r})")
        boxes = np.asarray(layouts, np.float64)
        boxes = np.broadcast_to(boxes, (int(n), *boxes.shape)) if boxes.ndim == 2 else boxes
        return {"tokens": jax.numpy.asarray(self.tokenizer.encode_batch(boxes))}

    def label_cond(self, label, n: int) -> dict:
        """``{"label": (n,)}`` from one class or ``n`` classes, checked against the run's classes."""
        labels = np.broadcast_to(np.asarray(label), (int(n),)).astype(np.int32)
        if not self.num_classes:
            raise ValueError(f"{self.workdir} is unconditional: it takes no label (config.model.num_classes=0)")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}, got {sorted(set(labels.tolist()))}")
        return {"label": jax.numpy.asarray(labels)}

    def sample(self, key: jax.Array, n: int, sampler: str | None = None, steps: int | None = None, *,
               label=None, prompt=None, layout=None, guidance: float | None = None, cond=None,
               eps: float | None = None, denoise: bool | None = None, x_init=None, decode: bool = True,
               **options):
        """``n`` samples ``(n, *dims)`` in data space and ``info`` (see :func:`sde_lib.sampling.sample`).

        ``sampler``, ``steps``, ``eps``, ``denoise`` and the sampler's options default to the run's
        ``config.sampling`` (its ``options`` apply when the sampler is the config's own). Conditional
        runs take ``label`` (one class or ``(n,)``), ``prompt`` (a caption or ``n``), ``layout`` (boxes)
        or a ``cond`` dict, and ``guidance`` w: classifier-free guidance s_u + w (s_c - s_u) against the
        null condition (None: the conditional model itself); without a condition a conditional run
        samples its unconditional branch. A latent run samples latents and returns decoded images
        (``decode=False``: the scaled latents).
        """
        self._require("score")
        s = self.config.sampling
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        given = [c for c in (label, prompt, layout, cond) if c is not None]
        if len(given) > 1:
            raise ValueError("give one of label, prompt, layout or cond")
        if label is not None:
            cond = self.label_cond(label, n)
        elif prompt is not None:
            cond = self.prompt_cond(prompt, n)
        elif layout is not None:
            cond = self.layout_cond(layout, n)
        score = self.score_fn
        if guidance is not None:
            if cond is None:
                raise ValueError("guidance needs a condition (label or cond)")
            score = classifier_free(score, self.null_cond, float(guidance))
        name = sampler or s.sampler
        opts = {**(dict(s.options) if name == s.sampler else {}), **options}
        x, info = sampling.sample(self.sde, score, key, (int(n), *self.model_dims), sampler=name,
                                  steps=int(steps or s.steps), x_init=x_init, cond=cond,
                                  eps=s.eps if eps is None else eps,
                                  denoise=s.denoise if denoise is None else denoise, **opts)
        return (self.decode(x) if decode else x), info

    def log_likelihood(self, x, key: jax.Array, **options):
        """log p(x) of continuous data ``x`` ``(B, *dims)`` in model space (see ``likelihood.log_likelihood``)."""
        options.setdefault("eps", self.config.training.eps)
        return log_likelihood(self.sde, self.score_fn, x, key, **options)

    def bpd(self, split: str | None = None, *, num: int | None = None, n_dequant: int | None = None,
            trace: str = "hutchinson", seed: int = 0, batch_size: int | None = None, conditional: bool = False) -> dict:
        """Bits/dim (discrete data) or nats/dim (continuous data) of the PF-ODE model on ``split``.

        ``conditional``: of a class-conditional run, log p(x | y) with each example's own label
        (otherwise the unconditional branch, log p(x)).

        Uses the first ``num`` examples (default ``config.eval.num_samples``) of ``split`` (default
        ``config.eval.split``) and, for discrete data, ``n_dequant`` uniform dequantisation draws (default
        ``config.eval.bpd_num_repeats``). Returns ``{"split", "num", "bpd" | "nats_per_dim", "*_stderr",
        "nfe", "trace", "seconds", "step"}``; for continuous data also ``"nll"`` in nats per example.
        """
        self._require("score")
        if self.first_stage is not None:
            raise ValueError(f"{self.workdir} is a latent run: its decoder has no density, so it has no bits/dim")
        d, e = self.config.data, self.config.eval
        split = split or e.split
        for name, value in (("num", num), ("n_dequant", n_dequant), ("batch_size", batch_size)):
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        data = load_split(d, split)[: int(num or e.num_samples)]
        cond = self.label_cond(load_labels(d, split)[: len(data)], len(data)) if conditional else None
        batch_size = int(batch_size or e.batch_size)
        start = time.perf_counter()
        key = jax.random.PRNGKey(seed)
        if d.levels is None:  # continuous data: the density itself, in nats per dimension
            logp, info = self.log_likelihood(np.asarray(data, np.float32), key, trace=trace, batch_size=batch_size,
                                             cond=cond)
            per_dim = -to_host(logp) / math.prod(data.shape[1:])
            return {"step": self.step, "split": split, "num": len(data), "nats_per_dim": float(np.mean(per_dim)),
                    "nats_per_dim_stderr": float(np.std(per_dim) / math.sqrt(len(per_dim))),
                    "nll": float(-np.mean(to_host(logp))), "nfe": float(np.mean(to_host(info["nfe"]))),
                    "trace": trace, "seconds": time.perf_counter() - start}
        bpd, info = bits_per_dim(self.sde, self.score_fn, data, key, levels=d.levels,
                                 scale=(-1.0, 1.0) if d.centered else (0.0, 1.0),
                                 n_dequant=int(n_dequant or e.bpd_num_repeats), trace=trace,
                                 batch_size=batch_size, eps=self.config.training.eps, cond=cond)
        bpd = to_host(bpd)
        return {"step": self.step, "split": split, "num": len(data), "bpd": float(np.mean(bpd)),
                "bpd_stderr": float(np.std(bpd) / math.sqrt(len(bpd))), "nfe": float(np.mean(to_host(info["nfe"]))),
                "trace": trace, "seconds": time.perf_counter() - start}


class NoisyClassifier(eqx.Module):
    """``log_prob_fn(x, t, cond) -> (B,)``: log p_t(y | x) of a noise-conditional classifier network."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__

    network: Any
    sde: SDE
    parameterization: str = eqx.field(static=True)

    def __call__(self, x, t, cond):
        t = jax.numpy.broadcast_to(t, x.shape[:1])
        logits = self.network(x, noise_conditioning(self.sde, t, self.parameterization))
        log_p = jax.nn.log_softmax(logits.astype(jax.numpy.float32), axis=-1)
        return jax.numpy.take_along_axis(log_p, cond["label"][:, None], axis=1)[:, 0]


def _tokenizer(config, workdir: str):
    """A caption run's saved vocabulary (checked against the data's), or a layout run's tokenizer."""
    tok = conditioning.tokenizer_for(config)
    if isinstance(tok, text.WordTokenizer) and os.path.isfile(os.path.join(workdir, text.VOCAB_FILE)):
        saved = text.WordTokenizer.load(workdir)
        if saved.words != tok.words:
            raise ValueError(f"{workdir}: vocab.json differs from the vocabulary of its data's captions")
        return saved
    return tok


def load_run(workdir: str, step: int | None = None, params: str = "ema", *, warn: bool = True) -> Run:
    """Load ``workdir``'s newest checkpoint (or ``step``) for inference; read-only.

    Args:
      workdir: a training run directory (``config.json`` and checkpoints).
      step: a checkpoint step; None for the newest readable one.
      params: ``"ema"`` (default) or ``"raw"``: the parameters ``score_fn`` and ``sample`` use.
      warn: warn (once) when the EMA is young for its horizon (see :meth:`Run.ema_horizon_warning`).

    Raises one-line errors for a missing folder or config, a run without checkpoints, an unknown step,
    and a checkpoint that does not fit the recorded config (:class:`sde_lib.checkpoint.CheckpointMismatch`).
    """
    from sde_lib.config import validate_config

    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
    config = validate_config(ckpt_lib.read_config(workdir))
    graphdef, target = abstract_state(config)
    checkpoints = ckpt_lib.Checkpointer(workdir, async_writes=False, read_only=True)
    try:
        if step is None:
            state, step = checkpoints.restore_latest(target)
            if state is None:
                raise FileNotFoundError(f"{workdir}: no checkpoint to load (has it trained a snapshot yet?)")
        else:
            state = checkpoints.restore(int(step), target)
    finally:
        checkpoints.close()
    run = Run(workdir, config, int(step), params, graphdef, state,
              first_stage=latent.first_stage_of(config, workdir) if config.first_stage.workdir else None,
              tokenizer=_tokenizer(config, workdir))
    message = run.ema_horizon_warning() if warn else None
    if message:
        warnings.warn(message, stacklevel=2)
    return run
