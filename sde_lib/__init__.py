"""Continuous-time score-based generative modelling in JAX: SDEs, oracle, objectives, samplers, likelihood,
guidance and inpainting; training runs and their evaluation.

The package is layered (checked by import contracts in ``pyproject.toml``), top to bottom:

* ``cli``: what the command-line scripts share;
* ``evaluation``: ablations, metrics over checkpoints, conditional and canvas evaluation, reports;
* ``runs``: a run folder's owner, checkpoints, the assembly of a config into a run, the trainer, ``load_run``;
* ``config``: the config schema and its validation;
* ``objectives``, then ``training``: what a run optimises; the network, train state and step;
* ``bounds``: variational bounds on the negative log-likelihood (continuous time; DDPM's chain);
* ``guidance``, ``likelihood``, ``conditioning``, ``latent``, ``figures``, ``metrics``;
* ``sampling``, ``data``;
* core maths: ``sdes``, ``parameterization``, ``losses``, ``oracle``, ``operators``, ``step_control``; and
  ``errors``.

``load_run(workdir)`` opens a trained run for sampling and likelihoods.
"""

from sde_lib import bounds, guidance, likelihood, operators, oracle, sampling
from sde_lib.runs import Run, load_run
from sde_lib.sdes import SDE, CosinePath, EDMPath, GaussianPath, LinearPath, ReverseSDE, SubVPSDE, VESDE, VPSDE

__all__ = ["SDE", "CosinePath", "EDMPath", "GaussianPath", "LinearPath", "ReverseSDE", "Run", "SubVPSDE", "VESDE",
           "VPSDE", "bounds", "guidance", "likelihood", "load_run", "operators", "oracle", "sampling"]
