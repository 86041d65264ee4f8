"""Latent diffusion conditioned on layouts (the COCO boxes of the exported files as tokens) on the
Fashion-MNIST canvas.

    python scripts/train.py --config=configs/canvas/fashion_latent_layout.py --workdir=runs/fashion_canvas_latent_layout
"""

import os
import runpy

fashion_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_fashion.py"))["fashion_config"]


def get_config():
    config = fashion_config("latent")
    config.condition.kind = "layout"
    config.model.context_len = 11  # BOS and 5 tokens for each of 2 boxes
    return config
