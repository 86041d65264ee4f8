"""Cross-attention to captions in pixel space (16 x 16), for the pixel-vs-latent comparison.

    python scripts/train.py --config=configs/canvas/pixel_caption.py --workdir=runs/canvas_pixel_caption
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]


def get_config():
    config = canvas_config("pixel")
    config.condition.kind = "caption"
    return config
