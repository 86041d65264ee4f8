"""score_sde's ``ve/cifar10_ncsnpp_continuous``: NCSN++ cont. (VE), 62.8M parameters.

Fourier features of log sigma (scale 16), residual input pyramid, EMA 0.999, data in [0, 1], PC
sampling (reverse diffusion + Langevin, snr 0.16). Differences: score_sde's ``fir=True`` resampling
filter is not implemented (nearest / mean resampling; same parameters), and its ``scale_by_sigma``
(output / sigma) is ``parameterization='eps'`` here (score = -output / sigma, the sign absorbed by
the last layer).
"""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
cifar10_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["cifar10_config"]


def get_config():
    config = cifar10_config()
    config.training.sde = "vesde"
    m = config.model
    m.name = "ncsnpp"
    m.embedding_type = "fourier"
    m.progressive_input = "residual"
    config.optim.ema_rate = 0.999
    return config
