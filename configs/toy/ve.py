"""2-D toy mixture, VE SDE; Fourier features of log sigma, as NCSN++ embeds the VE noise level.

sigma_max = 5 exceeds the largest distance between ring modes (4), the VE rule of thumb of
Song & Ermon 2020 (arXiv 2006.09011), so the prior covers the data.
"""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
toy_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["toy_config"]


def get_config():
    config = toy_config("vesde")
    config.model.sigma_min = 0.01
    config.model.sigma_max = 5.0
    config.model.embedding_type = "fourier"
    config.model.fourier_scale = 1.0  # log sigma spans [-4.6, 1.6]: scale 16 would alias; 1 resolves it smoothly
    return config
