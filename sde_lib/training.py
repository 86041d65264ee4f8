"""The network of a config, its train state, the optimiser and the jitted, data-parallel train step.

The state is a pytree ``TrainState(params, opt_state, ema, step, rng)``: ``params`` and ``ema`` are the
network's ``nnx.Param`` state (``nnx.split``), ``step`` counts completed updates and ``rng`` is the run's
base key. Update ``s`` (0-based, ``step`` before it) draws its randomness from ``fold_in(rng, s)``, so an
update is a pure function of (state, batch): a resumed run repeats an uninterrupted one bit for bit.

One update (score_sde's recipe on optax):

    g = clip_{global norm <= grad_clip}(grad_theta L(theta; x_s, key_s)),
    theta <- Adam(W)(theta, g, lr_s),     lr_s = lr * min((s + 1) / warmup, 1) * decay(s),
    ema <- r ema + (1 - r) theta,          r = optim.ema_rate, or min(ema_rate, (1 + s) / (10 + s))
                                           with optim.ema_warmup (:func:`ema_decay`).

Data parallelism: the step is a ``jax.jit`` with the state replicated over a ``Mesh`` axis ``'batch'``
and the batch split along it. The loss draws example i's time and noise from (key, i) and averages over
the global batch, so the result does not depend on the device count beyond float32 summation order.

Mixed precision (``training.compute_dtype='bfloat16'``): the step casts the float32 parameters and the
network input to bfloat16 for the forward and backward pass and the network output back to float32;
the loss, the gradients (the cast's transpose returns them in float32), the optimiser state, the EMA
and the parameters themselves stay float32. Evaluation and sampling run in float32.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import models
from sde_lib.parameterization import ModelScore
from sde_lib.sdes import get_sde

BATCH_AXIS = "batch"


class TrainState(NamedTuple):
    """Everything an update reads and writes; a pytree of arrays (checkpointed as is)."""

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array  # int32 scalar: completed updates
    rng: jax.Array  # uint32 (2,) base key


class Network(eqx.Module):
    """The raw network ``F(x_in (B, *dims), c_noise (B,)[, cond]) -> (B, *dims)`` of a parameter set.

    A pytree: ``params`` (the ``nnx.Param`` state) are its leaves and the ``graphdef`` a static,
    value-compared field, so jitted samplers and likelihoods trace the parameters and compile once per
    architecture, whichever checkpoint they come from.
    """

    graphdef: Any = eqx.field(static=True)
    params: Any

    # Identity hash for ``jax.jit(network)``, as for a closure (the parameters are not hashable).
    __hash__ = object.__hash__
    __eq__ = object.__eq__

    def __call__(self, x, c_noise, cond=None, *, train: bool = False, key: jax.Array | None = None):
        model = nnx.merge(self.graphdef, self.params)
        if cond is None:
            return model(x, c_noise, train=train, key=key)
        return model(x, c_noise, cond, train=train, key=key)


def learning_rate_schedule(optim_cfg, n_iters: int | None = None) -> Callable[[jax.Array], jax.Array]:
    """lr(count) = lr * min((count + 1) / warmup, 1) * decay(count).

    A linear warm-up whose first update is already > 0, times ``optim.schedule``'s decay:
    ``constant`` (score_sde's choice) is 1; ``cosine`` is (1 + cos(pi u)) / 2 and ``linear`` is 1 - u,
    with u = min(count / n_iters, 1), so the rate reaches 0 at the last update. A decay to zero removes
    the optimiser's noise floor at the end of a short run (it is what lets the digits quick start fit its
    budget); it needs ``n_iters`` (``config.training.n_iters``).
    """
    lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup)
    kind = optim_cfg.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise ValueError(f"config.optim.schedule must be one of {SCHEDULES}, got {kind!r}")
    if kind != "constant" and not n_iters:
        raise ValueError(f"config.optim.schedule={kind!r} needs config.training.n_iters > 0")

    def schedule(count):
        rate = lr if warmup <= 0 else lr * jnp.minimum((count + 1) / warmup, 1.0)
        if kind == "constant":
            return rate * jnp.ones_like(count, dtype=jnp.float32)
        u = jnp.minimum(count / n_iters, 1.0)
        return rate * (0.5 * (1.0 + jnp.cos(jnp.pi * u)) if kind == "cosine" else 1.0 - u)

    return schedule


SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("Adam", "AdamW")


def make_optimizer(optim_cfg, n_iters: int | None = None) -> optax.GradientTransformation:
    """Global-norm clipping (``grad_clip`` > 0) then Adam or AdamW with the warm-up and decay schedule.

    ``n_iters`` (``config.training.n_iters``) is the length of a decaying schedule.
    """
    schedule = learning_rate_schedule(optim_cfg, n_iters)
    kwargs = dict(b1=float(optim_cfg.beta1), eps=float(optim_cfg.eps))
    if optim_cfg.optimizer == "Adam":
        opt = optax.adam(schedule, **kwargs)
    elif optim_cfg.optimizer == "AdamW":
        opt = optax.adamw(schedule, weight_decay=float(optim_cfg.weight_decay), **kwargs)
    else:
        raise ValueError(f"config.optim.optimizer must be 'Adam' or 'AdamW', got {optim_cfg.optimizer!r}")
    if float(optim_cfg.grad_clip) > 0:
        return optax.chain(optax.clip_by_global_norm(float(optim_cfg.grad_clip)), opt)
    return opt


def ema_decay(step: jax.Array, ema_rate: float, warmup: bool) -> jax.Array:
    """EMA decay of update ``step`` (0-based): ``ema_rate``, or with warm-up min(ema_rate, (1 + s) / (10 + s)).

    The warm-up (as in flax's examples and EDM's ``ema_rampup``) averages over about the whole run while
    it is young, so a short run's EMA is not stuck near the initial parameters: without it, the initial
    parameters keep weight ema_rate^s (0.74 after 300 steps at 0.999); with it, 9 / (9 + s) or less.
    """
    if not warmup:
        return jnp.asarray(ema_rate, jnp.float32)
    s = jnp.asarray(step, jnp.float32)
    return jnp.minimum(ema_rate, (1.0 + s) / (10.0 + s))


def build_model(config, dims: tuple[int, ...], rngs: nnx.Rngs, *, cross_attention: bool = False,
                vocab_size: int = 0) -> nnx.Module:
    """``config.model``'s network for examples of shape ``dims`` (data, or a first stage's latents), with
    cross-attention and a token encoder over ``vocab_size`` tokens where the run's condition kind feeds them
    (``sde_lib.conditioning``), and a discriminator where the autoencoder objective asks for one."""
    t = config.training
    return models.get_model(config.model, dims, rngs, cross_attention=cross_attention, vocab_size=vocab_size,
                            discriminator=t.objective == "autoencoder" and t.disc_weight > 0)


def init_model(config, dims: tuple[int, ...], seed: int | None = None, **network):
    """``(graphdef, params)`` of ``config``'s network initialised from ``seed`` (default ``config.seed``);
    ``network``: :func:`build_model`'s keywords."""
    model = build_model(config, dims, nnx.Rngs(config.seed if seed is None else seed), **network)
    # Splitting on Param alone fails loudly if a network ever grows non-parameter state.
    return nnx.split(model, nnx.Param)


def init_train_state(config, optimizer: optax.GradientTransformation, dims: tuple[int, ...], **network):
    """``(graphdef, TrainState)`` at step 0; parameters from ``config.seed``, training keys from its fold 1."""
    graphdef, params = init_model(config, dims, **network)
    return graphdef, _fresh_state(config, optimizer, params)


def _fresh_state(config, optimizer: optax.GradientTransformation, params) -> TrainState:
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    return TrainState(params, optimizer.init(params), jax.tree.map(jnp.copy, params), jnp.zeros((), jnp.int32), rng)


def abstract_train_state(config, dims: tuple[int, ...], **network):
    """``(graphdef, abstract TrainState)`` on this process's first device, computing nothing: a restore target."""
    optimizer = make_optimizer(config.optim, config.training.n_iters)
    # The network is built once, abstractly (building a U-Net is seconds of Python even without arithmetic);
    # the rest of the state follows from the parameters' shapes.
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config, dims, nnx.Rngs(0), **network)),
                                 nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          jax.eval_shape(lambda p: _fresh_state(config, optimizer, p), params))
    return graphdef, target


def score_fn(config, graphdef, params) -> ModelScore:
    """``score_fn(x, t)`` of ``params`` under ``config``'s SDE and parameterisation (a pytree: the
    parameters are traced by jitted samplers and likelihoods, not baked in)."""
    m = config.model
    return ModelScore(Network(graphdef, params), get_sde(config), m.parameterization, float(m.sigma_data))


def to_host(x) -> np.ndarray:
    """A replicated (or process-local) array as NumPy, also when other processes hold copies."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``'batch'`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def check_batch_sizes(config, mesh: Mesh, fields=("training.batch_size", "eval.batch_size")) -> None:
    """Raise ValueError unless each config ``field`` (a batch size) is a multiple of the mesh's devices."""
    for field in fields:
        group, name = field.split(".")
        size = config[group][name]
        if size % mesh.size:
            raise ValueError(f"config.{field}={size} must be a multiple of the {mesh.size} devices")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """Split the batch axis: axis 0, or axis 1 of ``(k, B, *dims)`` blocks of ``k`` jitted steps."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXIS) if stacked else PartitionSpec(BATCH_AXIS))


def make_train_step(config, optimizer: optax.GradientTransformation, mesh: Mesh, objective):
    """Jitted ``step(state, batch) -> (state, metrics)``; the input state is donated.

    ``batch``: ``(B, *dims)`` or a dict ``{"x": (B, *dims), condition arrays}``, each with a leading
    ``k`` axis when k = ``training.n_jitted_steps`` > 1 (a ``lax.scan`` of k updates). ``objective``: what
    the run optimises (``sde_lib.objectives``; a run's is assembled by ``sde_lib.runs.assemble``).
    ``metrics``: ``loss``, ``grad_norm`` (before clipping) and the objective's own, each ``(k,)``.
    """
    ema_rate = float(config.optim.ema_rate)
    warmup = bool(config.optim.ema_warmup)
    k = int(config.training.n_jitted_steps)
    dtype = jnp.dtype(config.training.compute_dtype)

    def update(state: TrainState, batch):
        key = jax.random.fold_in(state.rng, state.step)
        (loss, aux), grads = jax.value_and_grad(
            lambda p: objective.loss(p, batch, key, state.step, dtype=dtype), has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        r = ema_decay(state.step, ema_rate, warmup)
        ema = jax.tree.map(lambda e, p: r * e + (1.0 - r) * p, state.ema, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return TrainState(params, opt_state, ema, state.step + 1, state.rng), metrics

    def step(state, batch):
        if k == 1:
            state, metrics = update(state, batch)
            return state, jax.tree.map(lambda m: m[None], metrics)
        # Unrolled: XLA:CPU runs convolutions inside a while loop ~20x slower (a U-Net step on digits:
        # 0.08 vs 1.5 steps/s); the unrolled program is the same k updates at k times the compile size.
        return jax.lax.scan(update, state, batch, unroll=True)

    rep = replicated(mesh)
    return jax.jit(step, in_shardings=(rep, batch_sharding(mesh, stacked=k > 1)), out_shardings=(rep, rep),
                   donate_argnums=0)


def make_eval_step(mesh: Mesh, objective):
    """Jitted ``eval(params, batch, mask (B,), key) -> mean loss over the rows in mask`` of ``objective``.

    A fixed ``key`` gives the held-out loss the same times and noise at every evaluation.
    """

    def evaluate(params, batch, mask, key):
        per_example = objective.eval_losses(params, batch, key)
        return jnp.sum(jnp.where(mask, per_example, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(evaluate, in_shardings=(rep, data, data, rep), out_shardings=rep)
