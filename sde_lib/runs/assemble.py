"""Assembly: a validated config and its run folder become what the run is made of, in one place.

    a = assemble(config, folder)      # the trainer (start, resume, fork) and load_run alike
    a.sde, a.kind, a.encoder, a.first_stage, a.dims, a.model_dims, a.graphdef, a.target
    a.objective(), a.null_cond, a.condition_arrays("train"), a.user_condition(value, n), a.score_fn(params)

What a run folder records is read from it: the condition kind's encoder (a caption vocabulary), and for a
latent run the autoencoder run, its step and the latent scale. A run that has not started yet (no
``config.json``) gets them from its data: the encoder fitted to the training split's conditions, the
newest checkpoint of ``config.first_stage.workdir`` and the scale of its training latents; ``new`` then
holds what the trainer must record. A fork takes them from the run it forks (``source``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from sde_lib import conditioning, data, objectives, training
from sde_lib.config import validate_config
from sde_lib.latent import FirstStage, compute_scale
from sde_lib.metrics import get_classifier
from sde_lib.metrics.canvas import get_evaluator
from sde_lib.runs.checkpoints import restore
from sde_lib.runs.folder import RunFolder
from sde_lib.sdes import SDE, get_sde

SCALE_EXAMPLES = 2048  # training examples whose latents set a latent run's scale


@dataclasses.dataclass
class Assembly:
    """A run's parts (module docstring). ``target`` is the abstract ``TrainState`` (a restore target)."""

    config: ml_collections.ConfigDict
    kind: conditioning.ConditionKind | None
    encoder: Any
    first_stage: FirstStage | None
    graphdef: Any
    target: Any
    new: dict = dataclasses.field(default_factory=dict)  # {"encoder": state, "first_stage": record} to record

    @property
    def sde(self) -> SDE:
        return get_sde(self.config)

    @property
    def dims(self) -> tuple[int, ...]:
        """Shape of one example in data space, e.g. ``(8, 8, 1)``."""
        return tuple(data.data_dims(self.config.data))

    @property
    def model_dims(self) -> tuple[int, ...]:
        """Shape of one example the network sees: ``dims``, or the first stage's latents of a latent run."""
        return self.dims if self.first_stage is None else self.first_stage.latent_dims(self.dims)

    @property
    def context(self) -> conditioning.Context:
        return conditioning.Context(self.config, self.encoder, self.dims, self.model_dims)

    @property
    def null_cond(self) -> dict | None:
        """One null condition (no batch axis), or None for unconditional runs."""
        return None if self.kind is None else self.kind.null(self.context)

    def condition_arrays(self, split: str) -> dict | None:
        """The encoded conditions of ``split``, row for row with its examples (None: unconditional)."""
        if self.kind is None:
            return None
        values = self.kind.read(self.config, split)
        return self.kind.encode(values, self.context, source=f"{self.config.data.dataset} {split} {self.kind.name}s")

    def user_condition(self, value, n: int) -> dict:
        """``{input: (n, ...)}`` of what a user gives (``Run.sample``'s keyword, ``sample.py``'s flag)."""
        if self.kind is None:
            raise ValueError("this run is unconditional: it takes no condition")
        return {k: jnp.asarray(v) for k, v in self.kind.from_user(value, int(n), self.context).items()}

    def init_state(self, optimizer):
        """``(graphdef, TrainState)`` at step 0."""
        return training.init_train_state(self.config, optimizer, self.model_dims, **_network(self.kind, self.encoder))

    def score_fn(self, params):
        return training.score_fn(self.config, self.graphdef, params)

    def objective(self):
        """What the train step optimises: the config's objective with the null condition (condition dropout),
        the frozen first stage of a latent run and the perceptual features of an autoencoder run."""
        return objectives.make(self.config, self.graphdef, null_cond=self.null_cond, first_stage=self.first_stage,
                               perceptual=_perceptual(self.config))


def _network(kind, encoder) -> dict:
    """``training.build_model``'s keywords for a condition kind: cross-attention and the token vocabulary."""
    if kind is None:
        return {}
    return {"cross_attention": kind.network_input in ("tokens", "context"), "vocab_size": kind.vocab_size(encoder)}


def assemble(config, folder: RunFolder | None = None, *, source: RunFolder | None = None) -> Assembly:
    """The parts of ``config``'s run in ``folder`` (None: a run that exists nowhere yet, e.g. a benchmark).

    ``source``: the run a new run forks from (its encoder and first stage carry over). One-line errors for
    data the condition kind cannot read, a missing or unsuitable first stage, and unreadable records.
    """
    config = validate_config(config)
    started = folder if folder is not None and folder.has_config else source
    kind = conditioning.kind_of(config)
    new = {}
    encoder = None
    if kind is not None:
        state = started.read_encoder() if started is not None else None
        if state is not None:
            try:
                encoder = kind.load_encoder(config, state)
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{started.given}: the saved condition encoder does not fit condition.kind="
                                 f"{kind.name!r} ({err})") from None
        else:  # a first start (or a run from before encoders were saved): fitted to the training conditions
            encoder = kind.fit_encoder(config, kind.read(config, "train"))
            state = kind.encoder_state(encoder)
            if state is not None:
                new["encoder"] = state
    first_stage = None
    if config.first_stage.workdir:
        record = started.read_first_stage() if started is not None else None
        if record is None and folder is not None and folder.read_only:
            raise FileNotFoundError(f"{folder.given}: a latent run without its first-stage record "
                                    f"(latent_scale.json); it has not started training")
        first_stage = load_first_stage(config, None if record is None else int(record["step"]))
        if record is None:
            images = data.Dataset(config.data, "train", 1, config.seed).x_model_space(SCALE_EXAMPLES)
            first_stage.scale = compute_scale(first_stage, images, jax.random.PRNGKey(config.seed))
            new["first_stage"] = first_stage.record()
        else:
            first_stage.scale = float(record["scale"])
    dims = tuple(data.data_dims(config.data))
    model_dims = dims if first_stage is None else first_stage.latent_dims(dims)
    graphdef, target = training.abstract_train_state(config, model_dims, **_network(kind, encoder))
    return Assembly(config, kind, encoder, first_stage, graphdef, target, new)


def load_first_stage(config, step: int | None = None) -> FirstStage:
    """The autoencoder run of ``config.first_stage.workdir`` (read-only; its newest checkpoint or ``step``,
    EMA parameters), checked against ``config.data``; the scale is the caller's.

    One-line errors: a missing or non-run folder, a run that is not an autoencoder, images of another size
    or channel count, no checkpoint (or not the recorded ``step``).
    """
    workdir = config.first_stage.workdir
    if not workdir or not os.path.isdir(workdir):
        raise FileNotFoundError(f"config.first_stage.workdir={workdir!r}: no such autoencoder run folder")
    folder = RunFolder(workdir)
    ae_config = validate_config(folder.read_config())
    if ae_config.training.objective != "autoencoder":
        raise ValueError(f"config.first_stage.workdir={workdir!r} is a {ae_config.training.objective!r} run, "
                         f"not an autoencoder")
    mine, theirs = tuple(data.data_dims(config.data)), tuple(data.data_dims(ae_config.data))
    if mine != theirs:
        raise ValueError(f"config.first_stage.workdir={workdir!r} is an autoencoder of {theirs} images, but "
                         f"config.data holds {mine}")
    ae = assemble(ae_config, folder)
    state, step = restore(folder, ae.target, step)
    params, graphdef = state.ema, ae.graphdef
    if isinstance(params, nnx.State) and "ae" in params:  # trained with a discriminator: keep the autoencoder
        graphdef, params = nnx.split(nnx.merge(graphdef, params).ae, nnx.Param)
    return FirstStage(folder.path, step, ae_config, graphdef, params)


def _perceptual(config):
    """The feature function of the autoencoder's perceptual term (None when its weight is 0)."""
    if config.training.objective != "autoencoder" or not config.training.perceptual_weight:
        return None
    d = config.data
    net = get_evaluator(d.dataset) if d.dataset.startswith("canvas") else get_classifier(d)
    return lambda x: net.unit_features_fn((x + 1.0) / 2.0 if d.centered else x)
