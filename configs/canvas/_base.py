"""Shared settings of the compositional canvas experiments (``sde_lib.data.canvas``): digits on a 16 x 16
canvas, 17 grey levels, centred, no flips (positions carry meaning) and no dequantisation.

``canvas_config(kind)`` gives the autoencoder (``"autoencoder"``), or a diffusion model in the latent
space of ``runs/canvas_ae`` (``"latent"``) or in pixel space (``"pixel"``); the experiment files pick
the conditioning (caption, layout, pooled caption, none).
"""

from sde_lib.config import default_config


def canvas_config(kind: str):
    config = default_config()
    d = config.data
    d.dataset = "canvas_digits"
    d.image_size, d.num_channels, d.levels = 16, 1, 17
    d.centered = True
    d.random_flip = False
    t = config.training
    t.batch_size = 128
    t.n_jitted_steps = 1  # a U-Net step is unrolled k times per call: k = 1 keeps compiles short
    t.log_freq = 100
    t.eval_freq = 500
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 500
    t.snapshot_sampling = False
    e = config.eval
    e.batch_size = 500
    e.num_samples = 500
    o = config.optim
    o.lr = 1e-3
    o.warmup = 100
    o.ema_rate = 0.995
    m = config.model
    if kind == "autoencoder":
        t.objective = "autoencoder"
        t.n_iters = 2000
        t.batch_size = 64
        t.rec_loss = "l1"
        t.kl_weight = 1e-6
        m.name = "autoencoder"
        m.nf = 16  # 16 x 16 canvases of 8 x 8 digits: a narrow first stage is enough and 4x cheaper
        m.ch_mult = (1, 2, 2)  # 16 x 16 -> 4 x 4 latents
        m.num_res_blocks = 1
        m.z_channels = 4
        return config
    t.sde = "vpsde"
    t.n_iters = 3000
    t.batch_size = 64
    t.weighting = "sigma2"
    t.reduce_mean = True
    t.cond_drop_prob = 0.1
    s = config.sampling
    s.sampler = "dpm_solver_pp_3m"
    s.steps = 20
    s.denoise = False
    m.name = "ddpmpp"
    m.parameterization = "edm"
    m.embedding_type = "fourier"
    m.fourier_scale = 1.0
    m.dropout = 0.0
    m.resblock_type = "biggan"
    m.num_res_blocks = 1
    m.context_dim = 64
    m.context_len = 12
    m.num_heads = 4
    if kind == "latent":
        config.first_stage.workdir = "runs/canvas_ae"
        m.sigma_data = 1.0  # latents are scaled to unit standard deviation
        m.nf = 32
        m.ch_mult = (1, 2)  # 4 x 4 latents -> 2 x 2
        m.attn_resolutions = (4, 2)
    else:
        m.nf = 32
        m.ch_mult = (1, 2, 2)  # 16 -> 8 -> 4
        m.attn_resolutions = (8, 4)
    return config
