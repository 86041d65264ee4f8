"""score_sde's ``default_cifar10_configs`` on this schema (Song et al. 2021, arXiv 2011.13456).

Training 1.3M iterations at batch 128, Adam lr 2e-4 with 5000 warmup steps, gradient clipping at 1;
data 32x32x3 with random flips and no dequantisation. Mapping of score_sde names: ``model.ema_rate`` ->
``optim.ema_rate``; ``likelihood_weighting=False`` -> ``weighting='sigma2'``; ``noise_removal`` ->
``sampling.denoise``; the network's input centring and ``scale_by_sigma`` -> the data pipeline and
``model.parameterization``.
"""

from sde_lib.config import default_config


def cifar10_config():
    config = default_config()
    t = config.training
    t.continuous = True
    t.weighting = "sigma2"
    t.n_iters = 1_300_001
    t.batch_size = 128
    t.snapshot_freq = 50_000
    t.snapshot_freq_for_preemption = 10_000
    t.log_freq = 50
    t.eval_freq = 100
    t.n_jitted_steps = 5

    s = config.sampling
    s.steps = 1000
    s.snr = 0.16
    s.n_steps_each = 1
    s.denoise = True

    d = config.data
    d.dataset = "cifar10"
    d.image_size = 32
    d.num_channels = 3
    d.levels = 256
    d.random_flip = True
    d.uniform_dequantization = False

    m = config.model
    m.beta_min, m.beta_max = 0.1, 20.0
    m.sigma_min, m.sigma_max = 0.01, 50.0
    m.num_scales = 1000
    m.dropout = 0.1
    m.nf = 128
    m.ch_mult = (1, 2, 2, 2)
    m.num_res_blocks = 4
    m.attn_resolutions = (16,)
    m.resamp_with_conv = True
    m.conditional = True
    m.skip_rescale = True
    m.resblock_type = "biggan"
    m.progressive = "none"
    m.init_scale = 0.0
    m.fourier_scale = 16.0

    o = config.optim
    o.optimizer = "Adam"
    o.lr = 2e-4
    o.beta1 = 0.9
    o.eps = 1e-8
    o.weight_decay = 0.0
    o.warmup = 5000
    o.grad_clip = 1.0
    config.seed = 42
    return config


def ddpmpp_config(sde: str):
    """score_sde's ``{vp,subvp}/cifar10_ddpmpp_continuous``: DDPM++ cont., 61.8M parameters."""
    config = cifar10_config()
    config.training.sde = sde
    config.training.reduce_mean = True
    config.sampling.sampler = "euler_maruyama"  # score_sde: pc, predictor euler_maruyama, corrector none
    config.data.centered = True
    m = config.model
    m.name = "ddpmpp"
    m.parameterization = "eps"  # score_sde: score = -model / sigma_t
    m.embedding_type = "positional"
    m.progressive_input = "none"
    config.optim.ema_rate = 0.9999
    return config
