"""Shared settings of the scikit-learn 8x8 digits experiments (17 grey levels, 1437/360 split).

A small DDPM++ (nf 32, two levels 8 -> 4, one BigGAN block per level, attention at 4x4: 0.75M
parameters) so that training reaches a good test bits/dim in minutes on 2 CPU cores. Uniform
dequantisation matches the bits/dim evaluation; no flips (digits are not mirror-symmetric).
"""

from sde_lib.config import default_config


def digits_config(sde: str):
    config = default_config()
    t = config.training
    t.sde = sde
    t.reduce_mean = True
    t.n_iters = 3000
    t.batch_size = 128
    t.log_freq = 50
    t.eval_freq = 500
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 250

    s = config.sampling
    s.sampler = "ode_tsit5"
    s.steps = 100
    s.batch_size = 64

    e = config.eval
    e.batch_size = 360
    e.num_samples = 360

    d = config.data
    d.dataset = "digits"
    d.image_size = 8
    d.num_channels = 1
    d.levels = 17
    d.centered = True
    d.random_flip = False
    d.uniform_dequantization = True

    m = config.model
    m.name = "ddpmpp"
    m.nf = 32
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.attn_resolutions = (4,)
    m.dropout = 0.1

    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.ema_rate = 0.999
    return config
