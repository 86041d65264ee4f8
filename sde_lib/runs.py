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
import time
import warnings
from typing import Any

import jax
import numpy as np
from flax import nnx

import models
from sde_lib import checkpoint as ckpt_lib
from sde_lib import sampling, training
from sde_lib.config import get_sde
from sde_lib.data import data_dims, load_labels, load_split
from sde_lib.guidance import classifier_free
from sde_lib.likelihood import bits_per_dim, log_likelihood
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
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.get_model(config.model, data_dims(config.data),
                                                                      nnx.Rngs(0))), nnx.Param)
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

    @property
    def sde(self) -> SDE:
        return get_sde(self.config)

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(8, 8, 1)``."""
        return tuple(data_dims(self.config.data))

    @property
    def score_fn(self):
        """``score_fn(x, t)`` of the chosen parameters (a pytree: parameters traced, not baked in)."""
        p = self.state.ema if self.params == "ema" else self.state.params
        return training.score_fn(self.config, self.graphdef, p)

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
        if not self.num_classes:
            raise ValueError(f"{self.workdir} is an unconditional run (config.model.num_classes=0)")
        return {"label": self.num_classes}

    def label_cond(self, label, n: int) -> dict:
        """``{"label": (n,)}`` from one class or ``n`` classes, checked against the run's classes."""
        labels = np.broadcast_to(np.asarray(label), (int(n),)).astype(np.int32)
        if not self.num_classes:
            raise ValueError(f"{self.workdir} is unconditional: it takes no label (config.model.num_classes=0)")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}, got {sorted(set(labels.tolist()))}")
        return {"label": jax.numpy.asarray(labels)}

    def sample(self, key: jax.Array, n: int, sampler: str | None = None, steps: int | None = None, *,
               label=None, guidance: float | None = None, cond=None, eps: float | None = None,
               denoise: bool | None = None, x_init=None, **options):
        """``n`` samples ``(n, *dims)`` in data space and ``info`` (see :func:`sde_lib.sampling.sample`).

        ``sampler``, ``steps``, ``eps``, ``denoise`` and the sampler's options default to the run's
        ``config.sampling`` (its ``options`` apply when the sampler is the config's own). Conditional
        runs take ``label`` (one class or ``(n,)``) or a ``cond`` dict, and ``guidance`` w: classifier-free
        guidance s_u + w (s_c - s_u) against the null condition (None: the conditional model itself);
        without a condition a conditional run samples its unconditional branch.
        """
        s = self.config.sampling
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if label is not None:
            if cond is not None:
                raise ValueError("give label or cond, not both")
            cond = self.label_cond(label, n)
        score = self.score_fn
        if guidance is not None:
            if cond is None:
                raise ValueError("guidance needs a condition (label or cond)")
            score = classifier_free(score, self.null_cond, float(guidance))
        name = sampler or s.sampler
        opts = {**(dict(s.options) if name == s.sampler else {}), **options}
        return sampling.sample(self.sde, score, key, (int(n), *self.dims), sampler=name,
                               steps=int(steps or s.steps), x_init=x_init, cond=cond,
                               eps=s.eps if eps is None else eps, denoise=s.denoise if denoise is None else denoise,
                               **opts)

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
    run = Run(workdir, config, int(step), params, graphdef, state)
    message = run.ema_horizon_warning() if warn else None
    if message:
        warnings.warn(message, stacklevel=2)
    return run
