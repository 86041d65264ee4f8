"""Latent diffusion with cross-attention to captions (the seed system): the U-Net of ``_base.py`` on the
4 x 4 x 4 latents of ``runs/canvas_ae`` with SpatialTransformers attending to a jointly trained caption
encoder; condition dropout 0.1 for classifier-free guidance.

    python scripts/train.py --config=configs/canvas/latent_caption.py --workdir=runs/canvas_latent_caption \\
        [--config.first_stage.workdir=runs/canvas_ae]
    python scripts/sample.py --workdir=runs/canvas_latent_caption --prompt "a 3 left of a 7" --guidance 3
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]


def get_config():
    config = canvas_config("latent")
    config.condition.kind = "caption"
    return config
