"""Super-resolution of the digits, 4x4 -> 8x8 (SR3-style: the low-resolution image concatenated to the input):
the quick start's residual MLP and recipe (``_base.py``) conditioned on ``condition.kind='image'`` with
``factor`` 2 (each 2 x 2 block's mean, repeated to 8 x 8, and a mask channel: ``model.concat_channels`` 2),
condition dropout 0.1 (the null condition: no image) for classifier-free guidance.

    python scripts/train.py --config=configs/digits/sr.py --workdir=runs/digits_sr
    python scripts/sample.py --workdir=runs/digits_sr --cond_image test:0 --cond_image test:1 --num 8
"""

import os
import runpy

import ml_collections

digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vpsde")
    config.condition.kind = "image"
    config.condition.options = ml_collections.ConfigDict({"factor": 2})  # a field, so the command line can set it
    config.model.concat_channels = 2
    config.training.cond_drop_prob = 0.1
    return config
