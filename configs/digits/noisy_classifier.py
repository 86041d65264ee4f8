"""A noise-conditional digits classifier for classifier guidance (score_sde's noise-conditional classifier):
log p_t(y | x_t) of noisy digits under the VP SDE of ``vp.py``, conditioned on EDM's log(sigma)/4 like the
score networks (``training.objective='classifier'``).

    python scripts/train.py --config=configs/digits/noisy_classifier.py --workdir=runs/digits_classifier
"""

import os
import runpy

digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vpsde")
    config.training.objective = "classifier"
    config.condition.kind = "label"  # the labels are the classifier's targets
    config.training.n_iters = 3000
    m = config.model
    m.name = "classifier"
    m.num_classes = 10
    m.hidden = 256
    m.n_layers = 3
    m.embed_dim = 128
    m.dropout = 0.1
    config.optim.lr = 1e-3
    return config
