"""The first stage of the Fashion-MNIST canvas: a KL autoencoder, 32 x 32 x 1 -> 4 x 4 x 8 latents, trained on
the exported files (``_fashion.py``).

    python scripts/export_canvas.py --canvas=canvas_fashion_mnist --out=out/canvas_fashion_files
    python scripts/train.py --config=configs/canvas/fashion_autoencoder.py --workdir=runs/fashion_canvas_ae
"""

import os
import runpy

fashion_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_fashion.py"))["fashion_config"]


def get_config():
    return fashion_config("autoencoder")
