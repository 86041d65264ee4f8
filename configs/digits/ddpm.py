"""DDPM on the 8x8 digits (Ho et al. 2020): the discrete-time baseline beside the continuous VP model.

The same data and residual MLP as ``vp.py`` (``_base.py``), trained as DDPM: the epsilon loss of the
1000-step chain with betas linear from 1e-4 to 0.02 (``training.continuous=False``), the network
conditioned on the timestep 999 t through sinusoidal features, no preconditioning, a fixed EMA rate;
sampled by ancestral steps over the chain. Its bits/dim is computed through the same probability-flow
ODE as the continuous model's (README, "DDPM").
"""

import os
import runpy

digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vpsde")
    t = config.training
    t.continuous = False
    t.weighting = "sigma2"
    # The chain's first step has sigma ~ 0.01, the continuous VP SDE's sigma at t = 1e-3: below that the
    # network was never trained, so bits/dim integrates the PF-ODE from there (training.eps).
    t.eps = 1e-3
    m = config.model
    m.parameterization = "eps"
    m.embedding_type = "positional"
    m.embed_dim = 0  # = hidden, as DDPM's timestep embedding width
    config.sampling.sampler = "ancestral"
    config.sampling.steps = 1000
    return config
