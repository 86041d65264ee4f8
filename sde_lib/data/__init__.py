"""The data pipeline (NumPy on the host, no TensorFlow).

Sources (``config.data.dataset``):

* ``toy``: 2-D ``mixture`` (the oracle's ``ring2d``; any ``builtin_mixture`` name also works, with exact
  density ``toy_density``), ``checkerboard``, ``moons``, ``swiss_roll``; 50k train / 10k test draws.
* ``digits``: scikit-learn's bundled 8x8 digits, 17 levels, seeded 80/20 split: 1437 train, 360 test.
* ``fashion_mnist``: ``{train,t10k}-images-idx3-ubyte[.gz]`` under ``config.data.path`` (default: Debian's
  ``dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist); 28x28x1, 256 levels.
* ``cifar10``: the binary version, ``data_batch_{1..5}.bin`` / ``test_batch.bin`` in ``path`` (or in
  ``path/cifar-10-batches-bin``); 32x32x3, 256 levels.
* ``npz``: arrays ``train`` and ``test``, else ``x`` (or the sole array) split 80/20 by seed; integer
  arrays are levels 0..``levels``-1, float arrays continuous data used as they are; layout
  ``(N, H, W, C)`` or ``(N, D)``.
* ``folder``: image files in ``path/train`` and ``path/test``, else in ``path`` split 80/20 by seed, read
  lazily; converted to grey or RGB (``num_channels``), other sizes made ``image_size`` square by
  ``resize``; labels from class subfolders, captions from ``metadata.jsonl`` / ``.csv``, layouts from a
  COCO instances file, precomputed embeddings from an ``.npz`` (``files``).

Scaling convention (bits/dim must use the same one). Level k of L owns the bin [k/L, (k+1)/L):

* without dequantisation  x = (k + 1/2) / L   (bin centres: range [1/(2L), 1 - 1/(2L)]);
* with ``uniform_dequantization``  x = (k + u) / L,  u ~ U[0, 1)  (range [0, 1));
* ``centered``: y = 2x - 1 in either case; ``unscale`` maps back with k = clip(floor(x L), 0, L-1);
* bits/dim of a density p on model space, D dimensions:
  ``-(E_u[log p(x)] / D + log(bin width)) / ln 2`` with bin width 1/L (2/L centred): ``likelihood.bits_per_dim``.

Shuffles, flips and noise are pure functions of (seed, epoch, example index) (``pipeline``'s docstring);
``Dataset.batch_at(step)`` gives any step's batch, so resumed runs see the batches of uninterrupted ones.
"""

from sde_lib.data import readers
from sde_lib.data.pipeline import Dataset, eval_batches, make_iterator
from sde_lib.data.scaling import dequantize, dequantize_interval, model_range, quantize, scale, to_uint8, unscale
from sde_lib.data.sources import (
    DATASETS,
    FASHION_MNIST_PATH,
    SPLITS,
    DataSpec,
    data_dims,
    load_captions,
    load_class_names,
    load_embeddings,
    load_labels,
    load_layouts,
    load_split,
    parse,
    split_indices,
)
from sde_lib.data.toy import TOY_NAMES, toy_density

__all__ = [
    "DATASETS",
    "FASHION_MNIST_PATH",
    "SPLITS",
    "TOY_NAMES",
    "DataSpec",
    "Dataset",
    "data_dims",
    "dequantize",
    "dequantize_interval",
    "model_range",
    "quantize",
    "readers",
    "eval_batches",
    "load_captions",
    "load_class_names",
    "load_embeddings",
    "load_labels",
    "load_layouts",
    "load_split",
    "make_iterator",
    "parse",
    "scale",
    "split_indices",
    "toy_density",
    "to_uint8",
    "unscale",
]
