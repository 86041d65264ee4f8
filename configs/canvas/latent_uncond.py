"""The unconditional latent model: adherence at chance level.

    python scripts/train.py --config=configs/canvas/latent_uncond.py --workdir=runs/canvas_latent_uncond
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]


def get_config():
    config = canvas_config("latent")
    config.training.cond_drop_prob = 0.0  # nothing to drop
    return config
