"""The condition-kind registry: ``register(kind)``, ``get(name)``, ``kind_of(config)``, ``load_plugin(spec)``.

A :class:`ConditionKind` is everything the framework above the network knows about one kind of
condition. A run names its kind in ``config.condition.kind`` (``"none"``: unconditional); the data
pipeline, the objectives (condition dropout), the trainer, ``load_run`` and ``scripts/sample.py`` ask the
kind, never an if-chain of their own. A kind says

* how its values are **read** from a data set: ``read(config, split)``, row for row with the images;
* how they are **encoded** into the arrays batches carry and the network receives in ``cond``:
  ``encode(values, ctx) -> {input name: (N, ...) array}``, with an **encoder** fitted to the training
  values where the kind needs one (a caption vocabulary: ``fit_encoder``), saved with the run
  (``encoder_state`` / ``load_encoder``);
* its **null** value, one row without a batch axis: the condition dropped, for condition dropout in
  training and for the unconditional branch of classifier-free guidance;
* which **network input** it feeds (:data:`NETWORK_INPUTS`): a class embedding (``label``), token ids
  read by the network's own token encoder and cross-attention (``tokens``), precomputed embeddings for
  cross-attention (``context`` with ``context_mask``), or channels concatenated to the input (``concat``);
* how a **user** gives one: ``user_arg`` is the keyword of ``Run.sample`` and the flag of
  ``scripts/sample.py``; ``parse_cli`` reads the flag's text into labelled rows (with the values of the
  kind's own further flags, ``cli_flags``: an inpainting run's ``--mask``), ``from_user`` turns values into
  the encoded arrays, ``describe`` labels a row and ``preview`` shows it (an image condition's picture);
* its **validation**: ``validate(config)`` raises one ValueError naming the config field.

A new kind is one subclass and one :func:`register` call, in the kind's own file. A kind outside this
package is found through ``config.condition.plugin`` (a Python file or module, imported by
:func:`load_plugin` before the config is validated, and recorded with the run so that ``load_run`` and
``sample.py`` import it too).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np

NETWORK_INPUTS = ("label", "tokens", "context", "concat")


@dataclasses.dataclass(frozen=True)
class Context:
    """What encoding needs besides the values: the run's config, the kind's encoder (or None), the shape of
    one example in data space (``dims``) and as the network sees it (``model_dims``: latents of a latent run)."""

    config: Any
    encoder: Any
    dims: tuple[int, ...]
    model_dims: tuple[int, ...]


class ConditionKind:
    """One kind of condition (module docstring). Subclasses set the class attributes and override what
    applies; ``options`` are the kind's own fields of ``config.condition.options`` with their defaults."""

    name: str = ""
    network_input: str = ""
    user_arg: str = ""
    help: str = ""
    options: Mapping[str, Any] = {}
    cli_flags: Mapping[str, str] = {}  # further repeatable flags of sample.py the kind reads: {name: help}

    # ---------------------------------------------------------------------------------- config
    def validate(self, config) -> None:
        """Raise one ValueError naming the field when ``config`` cannot train this kind."""

    def option(self, config, name: str):
        """``config.condition.options.<name>``, or the kind's default."""
        given = config.condition.options
        return given[name] if name in given else self.options[name]

    # ------------------------------------------------------------------------------------ data
    def read(self, config, split: str) -> Sequence:
        """The values of ``config.data``'s ``split`` (``'train'`` | ``'test'``), row for row with
        ``data.load_split``."""
        raise NotImplementedError

    def fit_encoder(self, config, values: Sequence):
        """The encoder fitted to the training values (None for kinds that need none)."""
        return None

    def encoder_state(self, encoder) -> dict | None:
        """The encoder as JSON, saved with the run (None: nothing to save)."""
        return None

    def load_encoder(self, config, state: dict):
        """The encoder of a saved ``state`` (a one-line ValueError if the state is not this kind's)."""
        return None

    def vocab_size(self, encoder) -> int:
        """Tokens of the network's token encoder (``tokens`` input), else 0."""
        return 0

    def encode(self, values: Sequence, ctx: Context, *, source: str) -> dict[str, np.ndarray]:
        """Arrays ``{input: (N, ...)}`` of ``values``; ``source`` names them in errors (a file, a split, an
        argument)."""
        raise NotImplementedError

    def null(self, ctx: Context) -> dict[str, np.ndarray]:
        """One null condition, without a batch axis."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ user
    def from_user(self, value, n: int, ctx: Context) -> dict[str, np.ndarray]:
        """Arrays ``(n, ...)`` of what a user gives ``Run.sample``: one value for all rows, or ``n`` values."""
        values = self.user_values(value, n)
        return self.encode(values, ctx, source=self.user_arg)

    def user_values(self, value, n: int) -> list:
        """``value`` repeated ``n`` times, or the ``n`` values of a list / array with ``n`` rows."""
        if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim > self.value_ndim):
            values = list(value)
            if len(values) != n:
                raise ValueError(f"{self.user_arg}: {len(values)} values for {n} samples")
            return values
        return [value] * n

    value_ndim = 0  # array dimensions of one value (a box list: 2), to tell one value from a list of them

    def parse_cli(self, text: str, ctx: Context, **flags) -> list[tuple[str, Any]]:
        """``--<user_arg>=text`` -> labelled rows ``[(label, value), ...]`` (one grid row each); ``flags``: the
        values (lists of strings) of the kind's ``cli_flags``, passed only to kinds that declare some."""
        return [(text, text)]

    def describe(self, value) -> str:
        """A grid label for one value."""
        return str(value)

    def preview(self, value, ctx: Context) -> np.ndarray | None:
        """A picture of one value in model space ``ctx.dims`` (shown before its row of samples), or None."""
        return None


_KINDS: dict[str, ConditionKind] = {}


def register(kind: ConditionKind) -> ConditionKind:
    """Add ``kind`` under ``kind.name``. Registering a name again replaces the kind only when it comes from
    the same class (a plugin imported twice); another kind of the same name or ``user_arg`` is an error."""
    if not kind.name or kind.name == "none":
        raise ValueError(f"a condition kind needs a name other than 'none', got {kind.name!r}")
    if kind.network_input not in NETWORK_INPUTS:
        raise ValueError(f"condition kind {kind.name!r}: network_input must be one of {NETWORK_INPUTS}, "
                         f"got {kind.network_input!r}")
    for other in _KINDS.values():
        same = type(other).__qualname__ == type(kind).__qualname__ and other.name == kind.name
        if not same and (other.name == kind.name or other.user_arg == kind.user_arg):
            raise ValueError(f"condition kind {kind.name!r} (user_arg {kind.user_arg!r}) clashes with the "
                             f"registered {other.name!r} (user_arg {other.user_arg!r})")
        clash = ({other.user_arg} & set(kind.cli_flags)) | ({kind.user_arg} & set(other.cli_flags))
        if not same and clash:
            raise ValueError(f"condition kind {kind.name!r}: the flag {clash.pop()!r} is both a user_arg and a "
                             f"cli_flag (of {kind.name!r} and {other.name!r})")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _KINDS.pop(name, None)


def available() -> list[str]:
    """Registered kind names, in registration order."""
    return list(_KINDS)


def registered() -> list[ConditionKind]:
    return list(_KINDS.values())


def get(name: str) -> ConditionKind:
    if name not in _KINDS:
        raise ValueError(f"config.condition.kind must be 'none' or one of {', '.join(_KINDS)}; got {name!r} "
                         f"(a kind of your own: set config.condition.plugin to the file that registers it)")
    return _KINDS[name]


def kind_of(config) -> ConditionKind | None:
    """The kind ``config.condition.kind`` names, or None for an unconditional run."""
    name = config.condition.kind
    return None if name == "none" else get(name)


def by_user_arg() -> dict[str, ConditionKind]:
    """``{user_arg: kind}`` of every registered kind (the keywords ``Run.sample`` accepts)."""
    return {k.user_arg: k for k in _KINDS.values()}


def load_plugin(spec: str) -> None:
    """Import ``spec`` (a ``.py`` file path or a module name) once, so that the kinds it registers exist.

    A file already imported (by path: e.g. a test module pytest imported) is not imported again.
    """
    if not spec:
        return
    if not (spec.endswith(".py") or os.sep in spec):
        try:
            importlib.import_module(spec)
        except ImportError as err:
            raise ValueError(f"config.condition.plugin={spec!r} cannot be imported ({err})") from None
        return
    path = os.path.abspath(spec)
    if not os.path.isfile(path):
        raise ValueError(f"config.condition.plugin={spec!r}: no such file")
    if any(os.path.abspath(getattr(m, "__file__", None) or "") == path for m in list(sys.modules.values())):
        return
    name = "sde_lib_plugin_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise ValueError(f"config.condition.plugin={spec!r} failed to import: {type(err).__name__}: {err}") from None
