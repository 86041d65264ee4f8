"""A trained run folder, loaded for inference: ``load_run(workdir)``.

    r = sde_lib.load_run("runs/quickstart")         # newest checkpoint, EMA parameters
    x, info = r.sample(jax.random.PRNGKey(0), 64, sampler="unipc", steps=20)
    print(r.bpd(split="test")["bpd"])

Loading is read-only: it reads the folder's records and one checkpoint and never creates, renames or
deletes anything in the run folder (a damaged newest checkpoint is skipped with a warning, not moved
aside). The run's parts come from the same assembly as the trainer's (``sde_lib.runs.assemble``).
``r.score_fn`` is a pytree (:class:`~sde_lib.parameterization.ModelScore`), so samplers and likelihoods
compiled for one checkpoint are reused for every other checkpoint of the same run.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Any

import equinox as eqx
import jax
import numpy as np

from sde_lib import conditioning, sampling, training
from sde_lib.data import load_split
from sde_lib.data.pipeline import first_choice
from sde_lib.guidance import classifier_free
from sde_lib.likelihood import bits_per_dim, log_likelihood
from sde_lib.parameterization import noise_conditioning
from sde_lib.runs.assemble import Assembly, assemble
from sde_lib.runs.checkpoints import restore
from sde_lib.runs.folder import RunFolder
from sde_lib.sdes import SDE
from sde_lib.training import to_host

PARAMS = ("ema", "raw")


@dataclasses.dataclass
class Run:
    """A run's config, SDE and one checkpoint's parameters, with sampling and bits/dim.

    Attributes:
      folder: the run folder (read-only); assembly: the run's parts (condition kind and encoder, first
      stage, network structure); step: the checkpoint's step; params: ``"ema"`` or ``"raw"`` (which
      parameters ``score_fn`` uses); state: the restored ``TrainState``.
    """

    folder: RunFolder
    assembly: Assembly
    step: int
    params: str
    state: Any

    @property
    def workdir(self) -> str:
        return self.folder.given

    @property
    def config(self):
        return self.assembly.config

    @property
    def graphdef(self):
        return self.assembly.graphdef

    @property
    def first_stage(self):
        """Latent runs: the frozen autoencoder (:class:`sde_lib.latent.FirstStage`); else None."""
        return self.assembly.first_stage

    @property
    def kind(self) -> conditioning.ConditionKind | None:
        """The condition kind (None: unconditional)."""
        return self.assembly.kind

    @property
    def encoder(self):
        """The condition kind's encoder (a caption or layout tokenizer), or None."""
        return self.assembly.encoder

    @property
    def objective(self) -> str:
        return self.config.training.objective

    @property
    def sde(self) -> SDE:
        return self.assembly.sde

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one example in data space, e.g. ``(8, 8, 1)``."""
        return self.assembly.dims

    @property
    def model_dims(self) -> tuple[int, ...]:
        """Shape of one example the score network sees: ``dims``, or the latents of a latent run."""
        return self.assembly.model_dims

    @property
    def network_params(self):
        return self.state.ema if self.params == "ema" else self.state.params

    @property
    def score_fn(self):
        """``score_fn(x, t)`` of the chosen parameters (a pytree: parameters traced, not baked in);
        ``score_fn(x, t, cond)`` for a conditional run; for a latent run, the score of the scaled latents."""
        self._require("score")
        return self.assembly.score_fn(self.network_params)

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
        """Classes of a label-conditioned run or a classifier (0 otherwise)."""
        return int(self.config.model.num_classes)

    @property
    def null_cond(self):
        """The null condition of a conditional run (the unconditional branch of classifier-free guidance)."""
        if self.kind is None:
            raise ValueError(f"{self.workdir} is an unconditional run")
        return self.assembly.null_cond

    def condition(self, value, n: int) -> dict:
        """The network's ``cond`` ``{input: (n, ...)}`` of what a user gives for this run's condition kind: one
        value for all rows or ``n`` values (a class, a caption, boxes ``(k, 5)``, ...; see the kind's
        ``user_arg``). Errors name the value; a caption's unknown words are read as unknown, with a warning."""
        if self.kind is None:
            raise ValueError(f"{self.workdir} is unconditional: it takes no condition (config.condition.kind='none')")
        return self.assembly.user_condition(value, n)

    def _null_rows(self, n: int) -> dict:
        """The null condition repeated for ``n`` rows."""
        return jax.tree.map(lambda a: jax.numpy.broadcast_to(a, (int(n), *np.shape(a))), self.null_cond)

    def _user_condition(self, n: int, condition, options: dict):
        """The ``cond`` of ``sample``'s condition keywords (``condition=`` or the kind's own, e.g. ``label=``)."""
        by_arg = conditioning.by_user_arg()
        given = {k: options.pop(k) for k in list(options) if k in by_arg}
        if condition is not None:
            given["condition"] = condition
        given = {k: v for k, v in given.items() if v is not None}
        if len(given) > 1:
            raise ValueError(f"give one condition, got {', '.join(sorted(given))}")
        if not given:
            return None
        (arg, value), = given.items()
        if self.kind is None or (arg != "condition" and by_arg[arg] is not self.kind):
            takes = "no condition" if self.kind is None else f"{self.kind.user_arg}= ({self.kind.name})"
            raise ValueError(f"{arg}= does not apply to {self.workdir}: it takes {takes}")
        return self.condition(value, n)

    def sample(self, key: jax.Array, n: int, sampler: str | None = None, steps: int | None = None, *,
               condition=None, guidance: float | None = None, cond=None, eps: float | None = None,
               denoise: bool | None = None, x_init=None, decode: bool = True, **options):
        """``n`` samples ``(n, *dims)`` in data space and ``info`` (see :func:`sde_lib.sampling.sample`).

        ``sampler``, ``steps``, ``eps``, ``denoise`` and the sampler's options default to the run's
        ``config.sampling`` (its ``options`` apply when the sampler is the config's own). Conditional
        runs take their condition kind's keyword (``label=3``, ``prompt="a 3 left of a 7"``,
        ``layout=boxes``, ``cond_image=...``; one value or ``n``), or ``condition=`` the same, or a ready
        ``cond`` dict of network inputs; and ``guidance`` w: classifier-free guidance s_u + w (s_c - s_u)
        against the null condition (None: the conditional model itself). Without a condition a conditional
        run samples its unconditional branch. A latent run samples latents and returns decoded images
        (``decode=False``: the scaled latents).
        """
        self._require("score")
        s = self.config.sampling
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if steps is not None and int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        user = self._user_condition(n, condition, options)
        if user is not None and cond is not None:
            raise ValueError("give one condition: a cond dict or the run's condition keyword, not both")
        cond = user if cond is None else cond
        if guidance is not None and cond is None:
            raise ValueError("guidance needs a condition to guide towards (the run's condition keyword, or cond=)")
        if cond is None and self.kind is not None:
            cond = self._null_rows(n)  # the unconditional branch
        score = self.score_fn
        if guidance is not None:
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

        ``conditional``: of a conditional run, log p(x | c) with each example's own condition (otherwise
        the unconditional branch, log p(x)).

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
        if conditional and self.kind is None:
            raise ValueError(f"{self.workdir} is unconditional: conditional=True needs a conditional run")
        cond = None if self.kind is None else self._null_rows(len(data))
        if conditional:
            arrays = first_choice(self.assembly.condition_arrays(split))  # an image's first caption
            cond = {k: jax.numpy.asarray(v[: len(data)]) for k, v in arrays.items()}
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


def load_run(workdir: str, step: int | None = None, params: str = "ema", *, warn: bool = True) -> Run:
    """Load ``workdir``'s newest checkpoint (or ``step``) for inference; read-only.

    Args:
      workdir: a training run folder (``config.json`` and checkpoints).
      step: a checkpoint step; None for the newest readable one.
      params: ``"ema"`` (default) or ``"raw"``: the parameters ``score_fn`` and ``sample`` use.
      warn: warn (once) when the EMA is young for its horizon (see :meth:`Run.ema_horizon_warning`).

    Raises one-line errors for a missing folder or config, a run without checkpoints, an unknown step,
    and a checkpoint that does not fit the recorded config (:class:`sde_lib.errors.CheckpointMismatch`).
    """
    if params not in PARAMS:
        raise ValueError(f"params must be one of {PARAMS}, got {params!r}")
    folder = RunFolder(workdir)
    assembly = assemble(folder.read_config(), folder)
    state, step = restore(folder, assembly.target, step)
    run = Run(folder, assembly, step, params, state)
    message = run.ema_horizon_warning() if warn else None
    if message:
        warnings.warn(message, stacklevel=2)
    return run
