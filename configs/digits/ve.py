"""Digits 8x8, VE SDE; NCSN++-style Fourier features of log sigma and the residual input pyramid.

sigma_max = 12 is about the largest distance between two centred 8x8 digits (64 pixels in [-1, 1]),
the VE rule of thumb of Song & Ermon 2020 (arXiv 2006.09011).
"""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vesde")
    m = config.model
    m.name = "ncsnpp"
    m.sigma_min = 0.01
    m.sigma_max = 12.0
    m.embedding_type = "fourier"
    m.fourier_scale = 16.0
    m.progressive_input = "residual"
    return config
