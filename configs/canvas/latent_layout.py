"""Latent diffusion conditioned on layouts: the boxes (class, x0, y0, x1, y1) as tokens (LDM's layout2img),
cross-attended like captions.

    python scripts/train.py --config=configs/canvas/latent_layout.py --workdir=runs/canvas_latent_layout
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]


def get_config():
    config = canvas_config("latent")
    config.condition.kind = "layout"
    config.model.context_len = 11  # BOS and 5 tokens for each of 2 boxes
    return config
