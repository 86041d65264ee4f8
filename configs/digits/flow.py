"""Digits 8x8, flow matching on the linear path (rectified flow): x_t = (1 - t) x_0 + t z, the network
predicts the velocity z - x_0 and the loss is || F - (z - x_0) ||^2 at logit-normal times (SD3's recipe,
Esser et al. 2024, arXiv 2403.03206: logit(t) ~ N(0, 1)).

Everything else is the VP quick start's (``_base.py``): the same residual MLP, noise embedding (the
velocity network sees log(sigma(t)) / 4, as the EDM-preconditioned VP network does), optimiser, EMA,
batch and 5000 updates, so the two differ only in the path and the objective (docs/flow.md).
"""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("linear")
    config.model.parameterization = "velocity"
    config.training.weighting = "velocity"
    config.training.time_sampling = "logit_normal"
    return config
