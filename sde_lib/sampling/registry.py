"""The sampler registry: every sampler declares, next to its solver, what :func:`~sde_lib.sampling.sample` needs.

A :class:`Sampler` names its family, default time grid, score evaluations per step and at start-up,
its own validated :class:`Option` s, and how it runs:

* ``terms="score"``: a fixed-step diffrax solver built by ``solver(sde, steps, options)`` that receives
  ``ODETerm(score)`` (our own solvers, ``base.ScoreSolver``);
* ``terms="probability_flow"``: a diffrax solver on the probability-flow ODE drift;
* ``terms="reverse_sde"``: a diffrax solver on the reverse SDE with a per-sample Brownian path;
* ``adaptive(sde, score_fn, x, row_keys, cond, eps, options) -> (x, nfe (B,), trajectory, solved (B,))``:
  an error-controlled solve per sample (``solver`` unused, no grid); ``solved`` is False where a row's
  solve failed (e.g. reached ``max_steps``).

Adding a sampler is one solver class and one :func:`register` call in its module; listings
(``available_samplers``, the ablation, the README table) and NFE arithmetic read the registry::

    register(Sampler("ddim", family="exponential", grid="logsnr", doc="DDIM; eta = 1 is ancestral",
                     options=(Option("eta", 0.0, "stochasticity in [0, 1]", real_option(minimum=0, maximum=1)),),
                     solver=lambda sde, steps, o: DDIM(sde, eta=float(o["eta"]))))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from sde_lib.checks import integer_option, real_option

FAMILIES = ("sde", "ode", "exponential", "edm")
TERMS = ("score", "probability_flow", "reverse_sde")


@dataclasses.dataclass(frozen=True)
class Option:
    """A keyword option of a sampler: its default, a one-line description, and a validity check."""

    name: str
    default: Any
    doc: str = ""
    check: Callable[[Any], bool] | None = None


# Options every sampler takes, so that one option set can drive a whole ablation: the grid options
# apply to fixed-step samplers (``time_grid`` is validated by ``grids.check_time_grid``), the tolerance
# options to adaptive ones; each kind ignores the other's.
COMMON_OPTIONS = (
    Option("time_grid", None, "fixed steps: uniform | quadratic | logsnr | edm | an array (default: the sampler's)"),
    Option("rho", 7.0, "fixed steps: exponent of the edm grid", real_option(positive=True)),
    Option("rtol", 1e-5, "adaptive: relative tolerance", real_option(positive=True)),
    Option("atol", 1e-5, "adaptive: absolute tolerance", real_option(positive=True)),
    Option("max_steps", 4096, "adaptive: step cap of each solve", integer_option(minimum=1)),
    Option("dt0", None, "adaptive: first step size (default (T - eps) / 100)", real_option(positive=True)),
    Option("save_trajectory", False, "True for every step, or a diffrax.SaveAt"),
    Option("progress", False, "fixed steps: tqdm progress bar"),
)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler's declaration (see the module docstring).

    Attributes:
      name: the name :func:`sample` takes.
      family: ``"sde"`` (stochastic), ``"ode"``, ``"exponential"`` or ``"edm"``: listings and ablations.
      doc: one line for the README's table and ``--help`` listings.
      grid: default time grid of a fixed-step sampler; None for adaptive samplers.
      nfe_per_step: score evaluations per step, or ``fn(options) -> int``.
      startup_nfe: evaluations spent once before the first step (e.g. Tsit5's first stage).
      options: the sampler's own options beyond those of its kind.
      terms, solver: how a fixed-step sampler runs; adaptive: how an adaptive one does.
      nfe_doc: the NFE formula for listings when ``nfe_per_step`` is a function of the options.
      defaults: this sampler's own defaults of common options (e.g. looser tolerances for an SDE solve).
    """

    name: str
    family: str
    doc: str = ""
    grid: str | None = "uniform"
    nfe_per_step: int | Callable[[dict], int] = 1
    startup_nfe: int = 0
    options: tuple[Option, ...] = ()
    terms: str = "score"
    solver: Callable | None = None
    adaptive: Callable | None = None
    nfe_doc: str = ""
    defaults: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"sampler {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if (self.adaptive is None) == (self.solver is None):
            raise ValueError(f"sampler {self.name!r}: give exactly one of solver (fixed steps) or adaptive")
        if self.adaptive is None and (self.terms not in TERMS or self.grid is None):
            raise ValueError(f"sampler {self.name!r}: a fixed-step sampler needs terms in {TERMS} and a grid")

    @property
    def is_adaptive(self) -> bool:
        return self.adaptive is not None

    @property
    def all_options(self) -> tuple[Option, ...]:
        return COMMON_OPTIONS + self.options

    def parse_options(self, options: dict) -> dict:
        """Defaults merged with ``options``, each validated; one ValueError naming a bad option."""
        known = {o.name: o for o in self.all_options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for sampler {self.name!r}; it takes {sorted(known)}")
        merged = {name: o.default for name, o in known.items()}
        merged.update(self.defaults)
        merged.update(options)
        if not self.is_adaptive and merged["time_grid"] is None:
            merged["time_grid"] = self.grid
        for name, o in known.items():
            value = merged[name]
            reason = ""
            try:
                ok = o.check is None or value is None and o.default is None or bool(o.check(value))
            except (TypeError, ValueError) as err:
                ok, reason = False, str(err).replace("the value ", "it ")
            if not ok:
                raise ValueError(f"invalid value {value!r} for option {name!r} of sampler {self.name!r}"
                                 + (f": {reason}" if reason else "") + (f" ({o.doc})" if o.doc else ""))
        return merged

    def step_nfe(self, options: dict | None = None) -> int:
        """Score evaluations per step (start-up and denoising excluded)."""
        if self.is_adaptive:
            raise ValueError(f"sampler {self.name!r} is adaptive: its NFE per step varies")
        n = self.nfe_per_step
        return int(n(self.parse_options(options or {})) if callable(n) else n)


_REGISTRY: dict[str, Sampler] = {}


def register(sampler: Sampler, *, replace: bool = False) -> Sampler:
    """Add ``sampler`` to the registry (``replace=True`` to redefine a name); returns it."""
    if sampler.name in _REGISTRY and not replace:
        raise ValueError(f"a sampler named {sampler.name!r} is already registered")
    _REGISTRY[sampler.name] = sampler
    return sampler


def unregister(name: str) -> None:
    """Remove a sampler (e.g. one a test registered)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Sampler:
    """The registered sampler ``name``; one ValueError listing the names otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def available_samplers() -> list[str]:
    """Names accepted by :func:`~sde_lib.sampling.sample`: by family (``FAMILIES``), then registration order."""
    return sorted(_REGISTRY, key=lambda name: FAMILIES.index(_REGISTRY[name].family))


def sampler_family(name: str) -> str:
    """``"sde"``, ``"ode"``, ``"exponential"`` or ``"edm"``; deterministic unless ``"sde"``."""
    return get(name).family


def nfe_per_step(name: str, **options) -> int:
    """Score evaluations per step of a fixed-step sampler (excluding start-up evaluations and denoising)."""
    return get(name).step_nfe(options)


def min_nfe(name: str, **options) -> int:
    """Score evaluations of one step of a fixed-step sampler, start-up evaluations included."""
    return get(name).startup_nfe + nfe_per_step(name, **options)


def steps_for_nfe(name: str, nfe: int, **options) -> int:
    """The largest number of steps whose total NFE (start-up included, no denoising) is <= ``nfe``."""
    spec = get(name)
    if int(nfe) < min_nfe(name, **options):
        raise ValueError(f"an NFE budget of {nfe} is below the {min_nfe(name, **options)} of one {name!r} step")
    return (int(nfe) - spec.startup_nfe) // spec.step_nfe(options)


def _nfe_text(spec: Sampler) -> str:
    if spec.is_adaptive:
        return "adaptive"
    if spec.nfe_doc:
        return spec.nfe_doc
    per = spec.step_nfe()
    core = "steps" if per == 1 else f"{per} x steps"
    return f"{spec.startup_nfe} + {core}" if spec.startup_nfe else core


def markdown_table() -> str:
    """The README's sampler table, generated from the registry (name, family, NFE, default grid, options)."""
    lines = ["| name | family | NFE | default grid | own options | notes |", "|---|---|---|---|---|---|"]
    for name in available_samplers():
        spec = _REGISTRY[name]
        options = ", ".join(f"`{o.name}`" for o in spec.options) or "-"
        if spec.defaults:
            options += " (" + ", ".join(f"{k} = {v:g}" for k, v in spec.defaults.items()) + " by default)"
        doc = spec.doc.replace("|", "\\|")  # a literal bar inside a table cell
        lines.append(f"| `{name}` | {spec.family} | {_nfe_text(spec)} | {spec.grid or '-'} | {options} | {doc} |")
    return "\n".join(lines) + "\n"
