"""The first stage: a KL autoencoder of the digit canvases, 16 x 16 x 1 -> 4 x 4 x 4 latents.

    python scripts/train.py --config=configs/canvas/autoencoder.py --workdir=runs/canvas_ae
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]


def get_config():
    return canvas_config("autoencoder")
