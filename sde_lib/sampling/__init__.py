"""Samplers: reverse-time SDE, probability-flow ODE, exponential integrators and EDM, all on diffrax."""

from sde_lib.sampling.api import (
    available_samplers,
    default_eps,
    min_nfe,
    nfe_per_step,
    sample,
    sampler_family,
    steps_for_nfe,
)
from sde_lib.sampling.grids import TIME_GRIDS, time_grid

__all__ = [
    "TIME_GRIDS",
    "available_samplers",
    "default_eps",
    "min_nfe",
    "nfe_per_step",
    "sample",
    "sampler_family",
    "steps_for_nfe",
    "time_grid",
]
