"""Shared settings of the 2-D toy experiments: a ring of 8 Gaussians (``mixture``) and an MLP.

The mixture has an exact density (``sde_lib.data.toy_density``), so likelihoods and samples can be
checked against the truth. Continuous data: no levels, no dequantisation, no flips.
"""

from sde_lib.config import default_config


def toy_config(sde: str):
    config = default_config()
    t = config.training
    t.sde = sde
    t.n_iters = 20_000
    t.batch_size = 512
    t.log_freq = 200
    t.eval_freq = 1000
    t.snapshot_freq = 5000
    t.snapshot_freq_for_preemption = 1000
    t.reduce_mean = True

    s = config.sampling
    s.sampler = "ode_tsit5"
    s.steps = 100
    s.batch_size = 2000

    e = config.eval
    e.batch_size = 2000
    e.num_samples = 10_000

    d = config.data
    d.dataset = "toy"
    d.toy_name = "mixture"
    d.num_channels = 2  # vector data: the dimension D
    d.image_size = 1  # unused for vectors
    d.levels = None
    d.random_flip = False
    d.centered = False  # no rescaling: the toy data are used as drawn

    m = config.model
    m.name = "mlp"
    m.hidden = 128
    m.n_layers = 3
    m.dropout = 0.0
    m.embedding_type = "positional"

    o = config.optim
    o.lr = 1e-3
    o.warmup = 500
    o.ema_rate = 0.999
    return config
