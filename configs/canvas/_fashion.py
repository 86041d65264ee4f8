"""Shared settings of the Fashion-MNIST canvas (``canvas_fashion_mnist``: 32 x 32, 16-pixel slots, 256 grey
levels) trained from the files of ``scripts/export_canvas.py`` through the generic folder path, sized for a
budget of about 40 minutes of 2-core CPU time for all four runs (autoencoder, caption, layout, pooled).

``fashion_config(kind)`` (``"autoencoder"`` or ``"latent"``) starts from the digit canvas's
``canvas_config(kind)`` (``_base.py``) and changes only what the size and the budget ask for:

* data: the folder ``out/canvas_fashion_files`` (override ``data.path``), 32 x 32, 1 channel, 256 levels;
* autoencoder: 32 -> 4 (``ch_mult`` (1, 2, 4, 4)), so the latents are 4 x 4 x 8 (``z_channels`` 8), the
  digits' latent grid with twice the channels, and the latent U-Net stays the digits' one; nf 8 instead of
  16 (the 32 x 32 layers are most of the cost), batch 32 instead of 64, 1500 steps instead of 2000;
* latent models: the digits' U-Net (nf 32, ``ch_mult`` (1, 2), SpatialTransformers at 4 x 4 and 2 x 2),
  batch 32 instead of 64, 2000 steps instead of 3000.

What that trades is measured in docs/latent.md ("The Fashion-MNIST canvas (from files)").
"""

import os
import runpy

canvas_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["canvas_config"]

FILES = "out/canvas_fashion_files"  # python scripts/export_canvas.py --canvas=canvas_fashion_mnist --out=FILES
AE_WORKDIR = "runs/fashion_canvas_ae"


def fashion_config(kind: str):
    if kind not in ("autoencoder", "latent"):
        raise ValueError(f"fashion_config: kind must be 'autoencoder' or 'latent', got {kind!r}")
    config = canvas_config(kind)
    d = config.data
    d.dataset = "folder"
    d.path = FILES
    d.image_size, d.num_channels, d.levels = 32, 1, 256
    t, m = config.training, config.model
    if kind == "autoencoder":
        t.n_iters = 1500
        t.batch_size = 32
        m.nf = 8  # the full-resolution layers are most of the cost: 8 channels there, widening below
        m.ch_mult = (1, 2, 4, 4)  # 32 -> 16 -> 8 -> 4: 4 x 4 x 8 latents, 2 x 2 latent pixels per slot
        m.z_channels = 8
        return config
    t.n_iters = 2000
    t.batch_size = 32  # half the digits' batch for 2000 steps instead of 3000: steps matter more than batch here
    config.first_stage.workdir = AE_WORKDIR
    return config
