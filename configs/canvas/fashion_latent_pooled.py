"""The bag-of-words baseline on the Fashion-MNIST canvas: the mean embedding of the caption's tokens added to
the noise embedding, no cross-attention (blind to word order).

    python scripts/train.py --config=configs/canvas/fashion_latent_pooled.py --workdir=runs/fashion_canvas_latent_pooled
"""

import os
import runpy

fashion_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_fashion.py"))["fashion_config"]


def get_config():
    config = fashion_config("latent")
    config.condition.kind = "caption"
    config.model.context_pooled = True
    return config
