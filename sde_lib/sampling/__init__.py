"""Samplers: reverse-time SDE, probability-flow ODE, exponential integrators and EDM, all on diffrax.

Each solver module registers its samplers (``registry.register``) on import; the import order below is
the order of :func:`available_samplers`.
"""

from sde_lib.sampling import stochastic, probability_flow, exponential, adams, edm  # noqa: F401  (registration)
from sde_lib.sampling.api import default_eps, sample
from sde_lib.sampling.calibration import Calibration, Teacher, calibrate, optimize_grid, teacher_solve
from sde_lib.sampling.grids import TIME_GRIDS, time_grid
from sde_lib.sampling.registry import (
    Option,
    Sampler,
    available_samplers,
    min_nfe,
    nfe_per_step,
    register,
    sampler_family,
    steps_for_nfe,
    unregister,
)

__all__ = [
    "Calibration",
    "Option",
    "Sampler",
    "TIME_GRIDS",
    "Teacher",
    "available_samplers",
    "calibrate",
    "default_eps",
    "min_nfe",
    "nfe_per_step",
    "optimize_grid",
    "register",
    "sample",
    "sampler_family",
    "steps_for_nfe",
    "teacher_solve",
    "time_grid",
    "unregister",
]
