"""The baseline without cross-attention: the mean embedding of the caption's words, added to the noise
embedding like a class label. Blind to word order, it cannot bind "a 3 left of a 7" apart from "a 7 left of a 3".

    python scripts/train.py --config=configs/canvas/latent_pooled.py --workdir=runs/canvas_latent_pooled
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]


def get_config():
    config = canvas_config("latent")
    config.condition.kind = "caption"
    config.model.context_pooled = True  # the bag-of-words baseline: no cross-attention, no word order
    return config
