"""Digits 8x8, VP SDE, a small DDPM++ U-Net (nf 32, two levels 8 -> 4, attention at 4x4, 0.75M parameters).

The convolutional counterpart of the residual-MLP recipe in ``_base.py`` (same data, likelihood
weighting with importance-sampled times and EDM preconditioning). Each update costs several times the
MLP's on a CPU, so it does not fit the 5-minute quick start; it is the "small U-Net on digits" of
``scripts/benchmark_likelihood.py`` and a template for image networks on small data:

    python scripts/train.py --config=configs/digits/vp_ddpmpp.py --workdir=runs/digits_unet

On a CPU-only machine add ``--cpu_devices=<cores>``: one device per core, 1.3x the updates per second on
2 cores (docs/throughput.md).
"""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    config = digits_config("vpsde")
    t = config.training
    t.n_iters = 2000
    t.batch_size = 128
    t.n_jitted_steps = 5

    m = config.model
    m.name = "ddpmpp"
    m.nf = 32
    m.ch_mult = (1, 2)
    m.num_res_blocks = 1
    m.attn_resolutions = (4,)
    m.resblock_type = "biggan"
    m.dropout = 0.1
    # Noise embedding from _base.py (Fourier features of scale 1 on log(sigma)/4): smooth in t, so the
    # bits/dim solve needs far fewer evaluations than with scale 16 (docs/results.md).
    return config
