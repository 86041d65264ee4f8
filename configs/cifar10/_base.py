"""score_sde's ``default_cifar10_configs`` (Song et al. 2021, arXiv 2011.13456) on this schema.

The schema's defaults (``sde_lib.config.default_config``) are score_sde's CIFAR-10 values: 1.3M
iterations at batch 128, Adam lr 2e-4 with 5000 warm-up steps, gradient clipping at 1, EMA 0.9999,
32x32x3 data with random flips and no dequantisation, PC sampling with 1000 steps (snr 0.16, one
corrector step) and the final denoising step; only what differs is set here. Mapping of score_sde
names: ``model.ema_rate`` -> ``optim.ema_rate``; ``likelihood_weighting=False`` -> ``weighting='sigma2'``;
``noise_removal`` -> ``sampling.denoise``; ``sampling.snr`` / ``n_steps_each`` -> pc's
``sampling.options``; the network's input centring and ``scale_by_sigma`` -> the data pipeline and
``model.parameterization``. The data files are the user's: pass ``--config.data.path=DIR``.
"""

from sde_lib.config import default_config


def cifar10_config():
    config = default_config()
    config.training.n_jitted_steps = 5
    return config


def ddpmpp_config(sde: str):
    """score_sde's ``{vp,subvp}/cifar10_ddpmpp_continuous``: DDPM++ cont., 61.8M parameters."""
    config = cifar10_config()
    config.training.sde = sde
    config.training.reduce_mean = True
    config.sampling.sampler = "euler_maruyama"  # score_sde: pc, predictor euler_maruyama, corrector none
    config.data.centered = True
    return config
