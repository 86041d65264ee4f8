"""Shared settings of the scikit-learn 8x8 digits experiments (17 grey levels, 1437/360 split).

A residual MLP on the flattened 64-D image (4 layers of width 512, a 128-wide noise embedding, 1.1M
parameters) rather than a U-Net: on 2 CPU cores its step is cheap and compiles in seconds, so 5000
updates fit in the quick start's budget. The recipe that lowers bits/dim (Song et al. 2021, arXiv
2101.09258): likelihood weighting with importance-sampled times (uniform in log-SNR), EDM
preconditioning so the network sees log(sigma)/4 (Fourier features) and thus resolves the small noise
levels that dominate the likelihood, and an EMA short enough (0.995) that a few thousand updates wash
out the initial parameters. Uniform dequantisation matches the bits/dim evaluation; no flips (digits
are not mirror-symmetric). How each choice was measured: docs/results.md.
"""

from sde_lib.config import default_config


def digits_config(sde: str):
    config = default_config()
    t = config.training
    t.sde = sde
    t.weighting = "likelihood_is"
    t.reduce_mean = True
    t.n_iters = 5000
    t.batch_size = 256
    t.n_jitted_steps = 10  # ten updates per dispatch: the small step is otherwise dominated by overhead
    t.log_freq = 100
    t.eval_freq = 500
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 500
    t.snapshot_sampling = False

    s = config.sampling
    s.sampler = "dpm_solver_pp_3m"
    s.steps = 20

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
    m.name = "mlp"
    m.parameterization = "edm"
    m.hidden = 512
    m.n_layers = 4
    m.embed_dim = 128  # a narrow noise embedding: cheaper than width 512, and it overfits later
    m.embedding_type = "fourier"
    # The EDM conditioning is log(sigma)/4, spanning ~3 units from eps to T. Fourier features of scale 16
    # (score_sde's, made for log sigma itself) put ~100 oscillations over that range: the trained score
    # wiggles in t and every adaptive solve pays for it; scale 1 is smooth (docs/results.md).
    m.fourier_scale = 1.0
    m.dropout = 0.0

    o = config.optim
    o.lr = 1.5e-3
    o.warmup = 100
    o.ema_rate = 0.995
    return config
