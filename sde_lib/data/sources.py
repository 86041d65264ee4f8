"""Data sets as in-memory arrays: ``load_split(config.data, split)`` and ``data_dims(config.data)``.

Discrete data come back as integer levels (uint8 when L <= 256, else int32) of shape
``(N, H, W, C)`` (or ``(N, D)``); continuous data (toy sets, float ``.npz``) as float32 ``(N, D)`` or
``(N, H, W, C)``, used unscaled. Splits are ``'train'`` and ``'test'``; where a source has no split of its
own, example i goes to train iff it is among the first floor(4N/5) of the permutation
``counter_rng.permutation(N, make_key(config.data.seed, SPLIT))`` (digits: 1437 train, 360 test).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sde_lib.data import bundled, canvas, readers, toy
from sde_lib.data.bundled import FASHION_MNIST_PATH, split_indices

DATASETS = ("toy", "digits", "fashion_mnist", "cifar10", "npz", "folder", "canvas_digits", "canvas_fashion_mnist")
SPLITS = ("train", "test")
# dataset -> (image_size, num_channels, levels) fixed by the source.
_NATIVE = {"digits": (8, 1, 17), "fashion_mnist": (28, 1, 256), "cifar10": (32, 3, 256),
           "canvas_digits": (16, 1, 17), "canvas_fashion_mnist": (32, 1, 256)}


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The ``config.data`` fields the pipeline uses, validated; ``None`` where the data decide."""

    dataset: str
    toy_name: str | None
    path: str | None
    image_size: int | None
    num_channels: int | None
    levels: int | None
    centered: bool
    random_flip: bool
    uniform_dequantization: bool
    seed: int
    pairs: str | None = None


def parse(data_cfg) -> DataSpec:
    """Validate ``config.data`` (a ConfigDict or dict); one ``ValueError`` naming the offending field."""

    def get(name, default=None):
        return data_cfg[name] if name in data_cfg and data_cfg[name] is not None else default

    dataset = get("dataset")
    if dataset not in DATASETS:
        raise ValueError(f"config.data.dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")
    size, channels, levels = get("image_size"), get("num_channels"), get("levels")
    if levels is not None and int(levels) < 2:
        raise ValueError(f"config.data.levels must be >= 2, got {levels}")
    if dataset in _NATIVE:
        fields = ("image_size", "num_channels", "levels")
        for field, given, native in zip(fields, (size, channels, levels), _NATIVE[dataset]):
            if given is not None and int(given) != native:
                raise ValueError(f"config.data.{field}={given} but {dataset} has {field} {native}")
        size, channels, levels = _NATIVE[dataset]
    if dataset == "folder":
        if size is None or channels not in (1, 3):
            raise ValueError("config.data.image_size and num_channels (1 or 3) are required for dataset='folder'")
        if levels not in (None, 256):
            raise ValueError(f"config.data.levels={levels} but image files have 256 levels")
        levels = 256
    path = get("path", FASHION_MNIST_PATH if dataset == "fashion_mnist" else None)
    toy_name = get("toy_name", "mixture") if dataset == "toy" else None
    if toy_name is not None and toy_name not in toy.TOY_NAMES:
        raise ValueError(f"config.data.toy_name must be one of {', '.join(toy.TOY_NAMES)}; got {toy_name!r}")
    return DataSpec(
        dataset, toy_name, path,
        None if size is None else int(size), None if channels is None else int(channels),
        None if levels is None else int(levels),
        bool(get("centered", False)), bool(get("random_flip", False)),
        bool(get("uniform_dequantization", False)), int(get("seed", 0)), get("pairs") or None,
    )  # fmt: skip


def _cifar10(folder: str, split: str) -> np.ndarray:
    nested = os.path.join(folder, "cifar-10-batches-bin")
    folder = nested if os.path.isdir(nested) else folder
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    return np.concatenate([readers.read_cifar_bin(os.path.join(folder, n)) for n in names])


def _npz(path: str, split: str, seed: int) -> np.ndarray:
    arrays = readers.read_npz(path)
    if "train" in arrays and "test" in arrays:
        return arrays[split]
    if "x" in arrays:
        x = arrays["x"]
    elif len(arrays) == 1:
        x = next(iter(arrays.values()))
    else:
        raise ValueError(f"{path}: expected arrays 'train' and 'test', or 'x', or one array; found {sorted(arrays)}")
    return x[split_indices(len(x), split, seed)]


def _folder(spec: DataSpec, split: str) -> np.ndarray:
    sub = os.path.join(spec.path, split)
    if os.path.isdir(os.path.join(spec.path, "train")) and os.path.isdir(os.path.join(spec.path, "test")):
        files = readers.list_images(sub)
    else:
        files = readers.list_images(spec.path)
        files = [files[i] for i in split_indices(len(files), split, spec.seed)]
        if not files:
            raise ValueError(f"{spec.path}: the {split} split of its images is empty")
    return np.stack([readers.read_image(f, spec.num_channels, spec.image_size) for f in files])


def _check(x: np.ndarray, spec: DataSpec, source: str) -> np.ndarray:
    """Validate shape and values of a loaded split; returns it in its canonical dtype."""
    if x.ndim not in (2, 4) or len(x) == 0:
        raise ValueError(f"{source}: expected a non-empty (N, D) or (N, H, W, C) array, got shape {x.shape}")
    if x.ndim == 4:
        h, w, c = x.shape[1:]
        if h != w or (spec.image_size not in (None, h)) or (spec.num_channels not in (None, c)):
            raise ValueError(
                f"{source}: images of shape {x.shape[1:]}, config.data asks for "
                f"image_size={spec.image_size}, num_channels={spec.num_channels}"
            )
    if np.issubdtype(x.dtype, np.floating):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{source}: contains NaN or Inf")
        for field in ("centered", "uniform_dequantization", "random_flip"):
            if getattr(spec, field) and not (field == "random_flip" and x.ndim == 4):
                raise ValueError(f"config.data.{field}=True does not apply to the continuous data in {source}")
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{source}: dtype {x.dtype} is neither integer levels nor float")
    if spec.levels is None:
        raise ValueError(f"config.data.levels is required for the integer data in {source}")
    if x.min() < 0 or x.max() >= spec.levels:
        raise ValueError(f"{source}: values in [{x.min()}, {x.max()}], outside the levels 0..{spec.levels - 1}")
    if spec.random_flip and x.ndim != 4:
        raise ValueError(f"config.data.random_flip=True needs images, {source} holds vectors {x.shape}")
    return x.astype(np.uint8 if spec.levels <= 256 else np.int32)


def load_split(data_cfg, split: str) -> np.ndarray:
    """The whole ``split`` ('train' | 'test') of ``config.data``'s data set, validated (see module doc)."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if spec.dataset in ("cifar10", "npz", "folder") and not spec.path:
        raise ValueError(f"config.data.path is required for dataset={spec.dataset!r} (where the data files are)")
    if spec.dataset == "toy":
        return _check(toy.toy_samples(spec.toy_name, spec.seed, split, toy.SIZES[split]), spec, f"toy:{spec.toy_name}")
    if spec.dataset == "digits":
        x, source = bundled.digits(split, spec.seed)[0], "sklearn load_digits"
    elif spec.dataset == "fashion_mnist":
        x, source = bundled.fashion_mnist(spec.path, split)
    elif spec.dataset == "cifar10":
        x, source = _cifar10(spec.path, split), spec.path
    elif spec.dataset.startswith("canvas"):
        x, source = canvas.canvases(spec.dataset, split, spec.seed)[0], spec.dataset
    elif spec.dataset == "npz":
        x, source = _npz(spec.path, split, spec.seed), spec.path
    else:
        x, source = _folder(spec, split), spec.path
    return _check(x, spec, source)


def load_labels(data_cfg, split: str) -> np.ndarray:
    """The class labels ``(N,)`` int32 of ``split``, row for row with :func:`load_split`.

    Digits: scikit-learn's targets; Fashion-MNIST: ``{train,t10k}-labels-idx1-ubyte[.gz]``; CIFAR-10: the
    first byte of each record; toy mixtures: each draw's component label; ``.npz``: arrays
    ``train_labels`` / ``test_labels`` beside ``train`` / ``test``, or ``y`` beside ``x`` (split alike).
    """
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if spec.dataset == "toy":
        return toy.toy_labels(spec.toy_name, spec.seed, split, toy.SIZES[split])
    if spec.dataset == "digits":
        return bundled.digits(split, spec.seed)[1]
    if spec.dataset == "fashion_mnist":
        return bundled.fashion_mnist_labels(spec.path, split)
    if spec.dataset == "cifar10":
        folder = os.path.join(spec.path, "cifar-10-batches-bin")
        folder = folder if os.path.isdir(folder) else spec.path
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
        x = [np.fromfile(os.path.join(folder, n), np.uint8) for n in names]  # validated by load_split
        return np.concatenate([a[:: readers.CIFAR_RECORD] for a in x]).astype(np.int32)
    if spec.dataset == "npz":
        arrays = readers.read_npz(spec.path)
        if f"{split}_labels" in arrays:
            return np.asarray(arrays[f"{split}_labels"]).astype(np.int32)
        if "y" in arrays and "x" in arrays:
            return np.asarray(arrays["y"])[split_indices(len(arrays["y"]), split, spec.seed)].astype(np.int32)
        raise ValueError(f"{spec.path}: no labels (arrays train_labels / test_labels, or y beside x)")
    raise ValueError(f"dataset {spec.dataset!r} has no labels")


def load_captions(data_cfg, split: str) -> list[str]:
    """The captions of a canvas data set's ``split``, row for row with :func:`load_split`."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if not spec.dataset.startswith("canvas"):
        raise ValueError(f"dataset {spec.dataset!r} has no captions (the canvas data sets do)")
    return canvas.canvases(spec.dataset, split, spec.seed)[1]


def load_layouts(data_cfg, split: str) -> np.ndarray:
    """The layouts ``(N, 2, 5)`` (class, x0, y0, x1, y1; class -1 unused) of a canvas data set's ``split``."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if not spec.dataset.startswith("canvas"):
        raise ValueError(f"dataset {spec.dataset!r} has no layouts (the canvas data sets do)")
    return canvas.canvases(spec.dataset, split, spec.seed)[2]


def load_layout_classes(data_cfg) -> tuple[str, ...]:
    """The names of the classes a layout data set's boxes hold (index = class id)."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if not spec.dataset.startswith("canvas"):
        raise ValueError(f"dataset {spec.dataset!r} has no layouts (the canvas data sets do)")
    return canvas.SPECS[spec.dataset].class_names


def data_dims(data_cfg) -> tuple[int, ...]:
    """Shape of one example: ``(H, W, C)`` for images, ``(D,)`` for vectors."""
    spec = parse(data_cfg)
    if spec.dataset == "toy":
        return (toy.toy_dim(spec.toy_name),)
    if spec.dataset == "npz":
        return load_split(spec, "train").shape[1:]
    return (spec.image_size, spec.image_size, spec.num_channels)
