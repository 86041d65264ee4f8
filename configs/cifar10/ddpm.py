"""DDPM on CIFAR-10 (Ho et al. 2020, arXiv 2006.11239) as score_sde's ``vp/ddpm/cifar10`` records it.

The discrete-time special case of the VP SDE: the epsilon loss of DDPM's Markov chain over N = 1000
steps with betas linear from 1e-4 to 0.02 (``VPSDE(beta_min=0.1, beta_max=20, N=1000)``: its discrete
betas are beta_min / N ... beta_max / N), the DDPM network (128 channels, multipliers (1, 2, 2, 2), two
res blocks per level, attention at 16x16, dropout 0.1, sinusoidal timestep embedding, no skip
rescaling) and ancestral sampling over the 1000 steps with a final denoising step (DDPM's noise-free
last step). The data files are the user's: ``--config.data.path=DIR``.
"""

import os
import runpy

cifar10_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["cifar10_config"]


def get_config():
    config = cifar10_config()
    t = config.training
    t.continuous = False
    t.reduce_mean = True
    config.sampling.sampler = "ancestral"
    config.data.centered = True
    m = config.model
    m.num_res_blocks = 2
    m.resblock_type = "ddpm"
    m.skip_rescale = False
    return config
