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

from sde_lib import bounds, conditioning, sampling, training
from sde_lib.checks import integer, real
from sde_lib.data import load_split
from sde_lib.data.pipeline import first_choice
from sde_lib.guidance import classifier_free
from sde_lib.likelihood import bits_per_dim, log_likelihood
from sde_lib.parameterization import noise_conditioning
from sde_lib.runs.assemble import Assembly, assemble
from sde_lib.runs.checkpoints import restore
from sde_lib.runs.folder import RunFolder
from sde_lib.sdes import SDE, SubVPSDE, VPSDE
from sde_lib.training import to_host

PARAMS = ("ema", "raw")
BPD_METHODS = ("ode", "elbo")


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
        n = integer(n, "n", minimum=1)
        steps = s.steps if steps is None else integer(steps, "steps", minimum=1)
        guidance = None if guidance is None else real(guidance, "guidance")
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
            score = classifier_free(score, self.null_cond, guidance)
        name = sampler or s.sampler
        opts = {**(dict(s.options) if name == s.sampler else {}), **options}
        x, info = sampling.sample(self.sde, score, key, (n, *self.model_dims), sampler=name,
                                  steps=steps, x_init=x_init, cond=cond,
                                  eps=s.eps if eps is None else eps,
                                  denoise=s.denoise if denoise is None else denoise, **opts)
        return (self.decode(x) if decode else x), info

    def log_likelihood(self, x, key: jax.Array, **options):
        """log p(x) of continuous data ``x`` ``(B, *dims)`` in model space (see ``likelihood.log_likelihood``)."""
        options.setdefault("eps", self.config.training.eps)
        return log_likelihood(self.sde, self.score_fn, x, key, **options)

    def bpd(self, split: str | None = None, *, num: int | None = None, n_dequant: int | None = None,
            trace: str = "hutchinson", seed: int = 0, batch_size: int | None = None, conditional: bool = False,
            method: str = "ode", decoder: str = "discretized", variance: str = "small") -> dict:
        """Bits/dim (discrete data) or nats/dim (continuous data) on ``split``: of the PF-ODE model (``method=
        "ode"``, exact up to dequantisation) or a variational bound of the reverse-time model (``"elbo"``).

        ``"elbo"`` is DDPM's own chain bound for a DDPM run (``training.continuous=False`` with a VP SDE;
        ``decoder`` "discretized", Ho et al.'s, or "gaussian"; reverse ``variance`` "small", the posterior's as
        the ancestral sampler draws, or "large", beta; :func:`sde_lib.bounds.ddpm_bits_per_dim`) and
        the continuous-time bound otherwise (:func:`sde_lib.bounds.elbo_bits_per_dim`, from
        ``training.eps``); ``n_dequant`` is then the number of Monte-Carlo draws per example (dequantisation,
        time and noise; default ``config.eval.bpd_num_repeats``, at least 2 for the continuous bound so that
        its Monte-Carlo error can be estimated).

        ``conditional``: of a conditional run, log p(x | c) with each example's own condition (otherwise
        the unconditional branch, log p(x)).

        Uses the first ``num`` examples (default ``config.eval.num_samples``) of ``split`` (default
        ``config.eval.split``) and, for discrete data, ``n_dequant`` uniform dequantisation draws (default
        ``config.eval.bpd_num_repeats``). Returns ``{"split", "num", "method", "bpd" | "nats_per_dim",
        "*_stderr", "bpd_median", "nfe", "trace", "seconds", "step"}`` (``bpd_stderr``: over examples; the median
        over examples shows a heavy tail); for continuous data
        also ``"nll"`` in nats per example. ``"elbo"`` adds ``"mc_stderr"`` (the Monte-Carlo standard error of
        the mean bound over these examples) and the mean terms in bits/dim: ``"prior_bpd"``, ``"decoder_bpd"``
        and ``"steps_bpd"`` (DDPM), ``"prior_bpd"``, ``"diffusion_bpd"`` and ``"constant_bpd"`` (continuous).
        """
        self._require("score")
        if method not in BPD_METHODS:
            raise ValueError(f"method must be one of {BPD_METHODS}, got {method!r}")
        if self.first_stage is not None:
            raise ValueError(f"{self.workdir} is a latent run: its decoder has no density, so it has no bits/dim")
        d, e = self.config.data, self.config.eval
        split = split or e.split
        num = e.num_samples if num is None else integer(num, "num", minimum=1)
        n_dequant = e.bpd_num_repeats if n_dequant is None else integer(n_dequant, "n_dequant", minimum=1)
        batch_size = e.batch_size if batch_size is None else integer(batch_size, "batch_size", minimum=1)
        seed = integer(seed, "seed", minimum=0)
        data = load_split(d, split)[:num]
        if conditional and self.kind is None:
            raise ValueError(f"{self.workdir} is unconditional: conditional=True needs a conditional run")
        cond = None if self.kind is None else self._null_rows(len(data))
        if conditional:
            arrays = first_choice(self.assembly.condition_arrays(split))  # an image's first caption
            cond = {k: jax.numpy.asarray(v[: len(data)]) for k, v in arrays.items()}
        start = time.perf_counter()
        key = jax.random.PRNGKey(seed)
        if method == "elbo":
            return {"step": self.step, "split": split, "num": len(data), "method": method,
                    **self._bound(data, key, n_dequant, batch_size, cond, decoder, variance),
                    "seconds": time.perf_counter() - start}
        if d.levels is None:  # continuous data: the density itself, in nats per dimension
            logp, info = self.log_likelihood(np.asarray(data, np.float32), key, trace=trace, batch_size=batch_size,
                                             cond=cond)
            per_dim = -to_host(logp) / math.prod(data.shape[1:])
            return {"step": self.step, "split": split, "num": len(data), "method": method,
                    "nats_per_dim": float(np.mean(per_dim)),
                    "nats_per_dim_stderr": float(np.std(per_dim) / math.sqrt(len(per_dim))),
                    "nll": float(-np.mean(to_host(logp))), "nfe": float(np.mean(to_host(info["nfe"]))),
                    "trace": trace, "seconds": time.perf_counter() - start}
        bpd, info = bits_per_dim(self.sde, self.score_fn, data, key, levels=d.levels,
                                 scale=(-1.0, 1.0) if d.centered else (0.0, 1.0),
                                 n_dequant=n_dequant, trace=trace,
                                 batch_size=batch_size, eps=self.config.training.eps, cond=cond)
        bpd = to_host(bpd)
        return {"step": self.step, "split": split, "num": len(data), "method": method, "bpd": float(np.mean(bpd)),
                "bpd_stderr": float(np.std(bpd) / math.sqrt(len(bpd))), "bpd_median": float(np.median(bpd)),
                "nfe": float(np.mean(to_host(info["nfe"]))),
                "trace": trace, "seconds": time.perf_counter() - start}

    @property
    def is_ddpm(self) -> bool:
        """A DDPM run: trained on the discrete chain of a VP SDE (``training.continuous=False``)."""
        return not self.config.training.continuous and isinstance(self.sde, VPSDE) and not isinstance(self.sde,
                                                                                                       SubVPSDE)

    def _bound(self, data, key, n_draws: int, batch_size: int, cond, decoder: str, variance: str) -> dict:
        """:meth:`bpd`'s ``"elbo"`` fields of ``data`` (the run's split, levels or continuous values)."""
        d = self.config.data
        scale = (-1.0, 1.0) if d.centered else (0.0, 1.0)
        if self.is_ddpm:
            if d.levels is None:
                raise ValueError(f"{self.workdir}: DDPM's bound needs discrete data (config.data.levels)")
            bpd, info = bounds.ddpm_bits_per_dim(self.sde, self.score_fn.eps, data, key, levels=d.levels,
                                                 scale=scale, decoder=decoder, variance=variance, n_draws=n_draws,
                                                 cond=cond, batch_size=batch_size)
            draws = to_host(info["bpd_draws"])
            terms = {"prior_bpd": info["prior_bpd"], "decoder_bpd": info["decoder_bpd"],
                     "steps_bpd": np.sum(to_host(info["terms_bpd"])[:, 1:], axis=1)}
            extra = {"decoder": decoder, "variance": variance, "nfe": float(self.sde.N * n_draws)}
        else:
            if n_draws < 2:
                raise ValueError("the continuous bound needs n_dequant >= 2 draws to estimate its Monte-Carlo error")
            eps = self.config.training.eps
            if d.levels is None:
                x = jax.numpy.asarray(np.asarray(data, np.float32))
                nll, info = bounds.elbo(self.sde, self.score_fn, x, key, n_draws=n_draws, eps=eps, cond=cond,
                                        batch_size=batch_size)
                dim = math.prod(data.shape[1:])
                draws = to_host(info["draws"]) / dim
                per = np.mean(draws, axis=0)
                return {"nats_per_dim": float(np.mean(per)),
                        "nats_per_dim_stderr": float(np.std(per) / math.sqrt(len(per))),
                        "mc_stderr": _mc_stderr(draws), "nll": float(np.mean(to_host(nll))), "nfe": float(n_draws)}
            bpd, info = bounds.elbo_bits_per_dim(self.sde, self.score_fn, data, key, levels=d.levels, scale=scale,
                                                 n_draws=n_draws, eps=eps, cond=cond, batch_size=batch_size)
            draws = to_host(info["bpd_draws"])
            terms = {"prior_bpd": info["prior_bpd"], "diffusion_bpd": info["diffusion_bpd"]}
            extra = {"constant_bpd": float(info["constant_bpd"]), "nfe": float(n_draws)}
        per = np.mean(draws, axis=0)
        return {"bpd": float(np.mean(per)), "bpd_stderr": float(np.std(per) / math.sqrt(len(per))),
                "bpd_median": float(np.median(per)), "mc_stderr": _mc_stderr(draws),
                **{k: float(np.mean(to_host(v))) for k, v in terms.items()}, **extra}


def _mc_stderr(draws: np.ndarray) -> float:
    """Monte-Carlo standard error of the mean over examples of ``draws`` ``(n_draws, B)`` averaged over draws:
    sqrt(sum_i var_i / n_draws) / B from each example's spread over its draws (NaN for one draw). For the
    continuous bound's stratified times the spread between strata is counted too: an upper estimate."""
    if draws.shape[0] < 2:
        return float("nan")
    return float(np.sqrt(np.sum(np.var(draws, axis=0, ddof=1) / draws.shape[0])) / draws.shape[1])


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
