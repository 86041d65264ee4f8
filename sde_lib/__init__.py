"""Continuous-time score-based generative modelling in JAX: SDEs, oracle, objectives, samplers, likelihood,
guidance and inpainting.

``load_run(workdir)`` (``sde_lib.runs``) opens a trained run for sampling and likelihoods.
"""

from sde_lib import guidance, likelihood, oracle, sampling
from sde_lib.runs import Run, load_run
from sde_lib.sdes import SDE, ReverseSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "ReverseSDE", "Run", "SubVPSDE", "VESDE", "VPSDE", "guidance", "likelihood", "load_run", "oracle",
           "sampling"]
