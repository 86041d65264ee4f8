"""Learned inpainting of the digits (Palette-style: the masked image and its mask concatenated to the input):
the quick start's residual MLP and recipe (``_base.py``) conditioned on ``condition.kind='masked_image'``,
a fresh random mask per example and step (halves, boxes and random pixels with equal probability:
``sde_lib.conditioning.images``), ``model.concat_channels`` 2 (image and mask), condition dropout 0.1 (the
null condition: nothing observed, the unconditional model).

    python scripts/train.py --config=configs/digits/inpaint.py --workdir=runs/digits_inpaint
    python scripts/sample.py --workdir=runs/digits_inpaint --masked_image test:0 --mask left_half --mask centre_box
"""

import os
import runpy

import ml_collections

digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vpsde")
    config.condition.kind = "masked_image"
    config.condition.options = ml_collections.ConfigDict({"masks": "half,box,pixels"})
    config.model.concat_channels = 2
    config.training.cond_drop_prob = 0.1
    return config
