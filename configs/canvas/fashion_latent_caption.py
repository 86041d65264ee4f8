"""Latent diffusion with cross-attention to captions on the Fashion-MNIST canvas ("a sandal above a bag"),
in the 4 x 4 x 8 latents of ``runs/fashion_canvas_ae``, from the exported files with the BPE tokenizer.

    python scripts/train.py --config=configs/canvas/fashion_latent_caption.py \\
        --workdir=runs/fashion_canvas_latent_caption
    python scripts/sample.py --workdir=runs/fashion_canvas_latent_caption --prompt "a sandal above a bag" --guidance 3
"""

import os
import runpy

fashion_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_fashion.py"))["fashion_config"]


def get_config():
    config = fashion_config("latent")
    config.condition.kind = "caption"
    return config
