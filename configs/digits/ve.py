"""Digits 8x8, VE SDE (sigma 0.01 -> 12); the shared residual-MLP likelihood recipe of ``_base.py``.

The VE model keeps the earlier recipe, a 512-wide noise embedding of Fourier scale 16 for 2500 steps:
the shared 128-wide embedding and 5000 steps, and Fourier scale 1, both measured worse for VE
(docs/results.md).

sigma_max = 12 is about the largest distance between two centred 8x8 digits (64 pixels in [-1, 1]),
the VE rule of thumb of Song & Ermon 2020 (arXiv 2006.09011); sigma_min = 0.01 is well below the
dequantisation bin width 2/17.
"""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vesde")
    config.model.sigma_min = 0.01
    config.model.sigma_max = 12.0
    config.model.embed_dim = 0  # = hidden (512)
    config.model.fourier_scale = 16.0
    config.training.n_iters = 2500
    return config
