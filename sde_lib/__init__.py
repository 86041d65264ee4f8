"""Continuous-time score-based generative modelling in JAX: SDEs, oracle, objectives, samplers, likelihood."""

from sde_lib import likelihood, oracle, sampling
from sde_lib.sdes import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "ReverseSDE", "SubVPSDE", "VESDE", "VPSDE", "likelihood", "oracle", "sampling"]
