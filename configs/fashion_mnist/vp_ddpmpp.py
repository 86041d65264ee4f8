"""Fashion-MNIST 28x28, VP SDE, DDPM++.

Images stay at their native 28x28 (no padding, no resizing, so bits/dim is comparable with 28x28
results): three levels 28 -> 14 -> 7 divide evenly, attention at 14x14. Random flips are off
(left-right flips of clothes are plausible, but the test split is scored unflipped).
"""

from sde_lib.config import default_config


def get_config():
    config = default_config()
    t = config.training
    t.sde = "vpsde"
    t.reduce_mean = True
    t.n_iters = 200_000
    t.snapshot_freq = 10_000
    t.snapshot_freq_for_preemption = 2000
    t.eval_freq = 1000

    config.sampling.sampler = "euler_maruyama"

    d = config.data
    d.dataset = "fashion_mnist"
    d.image_size = 28
    d.num_channels = 1
    d.levels = 256
    d.centered = True
    d.random_flip = False

    m = config.model
    m.name = "ddpmpp"
    m.nf = 64
    m.ch_mult = (1, 2, 2)
    m.num_res_blocks = 2
    m.attn_resolutions = (14,)
    m.dropout = 0.1

    config.optim.ema_rate = 0.9999
    return config
