"""Class-conditional digits: the quick start's residual MLP and recipe (``_base.py``) with a learned class
embedding (10 classes, null class 10) and condition dropout 0.1, so that one network gives p(x | y) and
p(x): classifier-free guidance, class-conditional samples and conditional bits/dim.

    python scripts/train.py --config=configs/digits/cond_vp.py --workdir=runs/digits_cond
    python scripts/sample.py --workdir=runs/digits_cond --label all --guidance 2 --num 8
"""

import os
import runpy

digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vpsde")
    config.condition.kind = "label"
    config.model.num_classes = 10
    config.training.cond_drop_prob = 0.1
    return config
