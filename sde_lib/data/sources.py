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

from sde_lib.data import bundled, canvas, files, readers, toy
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
    resize: str = "crop"
    captions: str = ""
    layouts: str = ""
    embeddings: str = ""
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
    resize = get("resize", "crop")
    if resize not in files.RESIZE:
        raise ValueError(f"config.data.resize must be one of {', '.join(files.RESIZE)}; got {resize!r}")
    return DataSpec(
        dataset, toy_name, path,
        None if size is None else int(size), None if channels is None else int(channels),
        None if levels is None else int(levels),
        bool(get("centered", False)), bool(get("random_flip", False)),
        bool(get("uniform_dequantization", False)), int(get("seed", 0)),
        resize, get("captions", ""), get("layouts", ""), get("embeddings", ""),
        get("pairs") or None,
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


def _folder(spec: DataSpec, split: str) -> files.ImageFiles:
    """A folder's split as a lazy array (``files.ImageFiles``): headers checked, pixels read on indexing."""
    root, names, _, _ = files.index(spec.path, split, spec.seed)
    return files.ImageFiles(root, names, spec.image_size, spec.num_channels, spec.resize)


def _check(x: np.ndarray, spec: DataSpec, source: str) -> np.ndarray:
    """Validate shape and values of a loaded split; returns it in its canonical dtype (image files: uint8 of
    the asked size by construction, read lazily, so only the flags are checked)."""
    if isinstance(x, files.ImageFiles):
        return x
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
    if spec.dataset == "folder":
        root, _, labels, _ = files.index(spec.path, split, spec.seed)
        if labels is None:
            raise ValueError(f"{root}: no labels (put the images in one subfolder per class)")
        return np.asarray(labels, np.int32)
    raise ValueError(f"dataset {spec.dataset!r} has no labels")


_CLASS_NAMES = {"digits": tuple(str(i) for i in range(10)),
                "fashion_mnist": canvas.FASHION_NAMES,
                "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}


def load_class_names(data_cfg) -> tuple[str, ...]:
    """The names of a labelled data set's classes (index = label): a folder's class subfolders, the
    bundled sets' own names, or the labels' numbers (``"0"``, ``"1"``, ...) of ``.npz`` and toy data."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if spec.dataset == "folder":
        names = files.index(spec.path, "train", spec.seed)[3]
        if not names:
            raise ValueError(f"{spec.path}: no labels (put the images in one subfolder per class)")
        return names
    if spec.dataset in _CLASS_NAMES:
        return _CLASS_NAMES[spec.dataset]
    return tuple(str(c) for c in range(int(load_labels(spec, "train").max()) + 1))


def load_captions(data_cfg, split: str) -> list:
    """The captions of ``split``, row for row with :func:`load_split`: a str per canvas, or a list of str per
    image of a folder (several captions allowed; ``files.load_captions``)."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if spec.dataset == "folder":
        root, names, _, _ = files.index(spec.path, split, spec.seed)
        return files.load_captions(root, names, split, spec.captions)
    if not spec.dataset.startswith("canvas"):
        raise ValueError(f"dataset {spec.dataset!r} has no captions (image folders with metadata.jsonl and the "
                         f"canvas data sets do)")
    return canvas.canvases(spec.dataset, split, spec.seed)[1]


def load_layouts(data_cfg, split: str, max_boxes: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(layouts (N, max_boxes, 5), class names)`` of ``split``: boxes (class, x0, y0, x1, y1) in [0, 1],
    rows of class -1 unused; from a folder's COCO instances file or a canvas data set."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if spec.dataset == "folder":
        root, names, _, _ = files.index(spec.path, split, spec.seed)
        return files.load_layouts(root, names, split, max_boxes, spec.resize, spec.layouts)
    if not spec.dataset.startswith("canvas"):
        raise ValueError(f"dataset {spec.dataset!r} has no layouts (image folders with a COCO instances.json and "
                         f"the canvas data sets do)")
    if max_boxes < canvas.MAX_OBJECTS:
        raise ValueError(f"config.model.max_boxes={max_boxes}, but {spec.dataset} layouts hold up to "
                         f"{canvas.MAX_OBJECTS} boxes")
    layouts = canvas.canvases(spec.dataset, split, spec.seed)[2]
    padded = np.full((len(layouts), max_boxes, 5), -1.0, np.float32)
    padded[:, :layouts.shape[1]] = layouts
    return padded, canvas.SPECS[spec.dataset].class_names


def load_embeddings(data_cfg, split: str, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(context (N, L, D) float32, mask (N, L) bool)`` of ``split``: a folder's embeddings.npz (matched by
    file name), or an ``.npz`` data set's arrays ``<split>_context`` with ``<split>_length`` or ``<split>_mask``;
    ``width``: the D the model takes (a one-line error naming the file otherwise)."""
    spec = data_cfg if isinstance(data_cfg, DataSpec) else parse(data_cfg)
    if spec.dataset == "folder":
        root, names, _, _ = files.index(spec.path, split, spec.seed)
        return files.load_embeddings(root, names, split, spec.embeddings, width)
    if spec.dataset != "npz":
        raise ValueError(f"dataset {spec.dataset!r} has no embeddings (image folders with embeddings.npz and .npz "
                         f"data sets with <split>_context arrays do)")
    arrays = readers.read_npz(spec.path)
    if f"{split}_context" not in arrays:
        raise ValueError(f"{spec.path}: no array {split}_context (N, L, D) of precomputed embeddings")
    context = np.asarray(arrays[f"{split}_context"], np.float32)
    if f"{split}_mask" in arrays:
        mask = np.asarray(arrays[f"{split}_mask"], bool)
    elif f"{split}_length" in arrays:
        mask = np.arange(context.shape[1])[None, :] < np.asarray(arrays[f"{split}_length"])[:, None]
    else:
        raise ValueError(f"{spec.path}: no array {split}_length or {split}_mask beside {split}_context")
    if context.ndim != 3 or mask.shape != context.shape[:2] or not np.all(mask.any(axis=1)):
        raise ValueError(f"{spec.path}: {split}_context must be (N, L, D) and its mask (N, L) with a True in every "
                         f"row, got {context.shape} and {mask.shape}")
    if width is not None and context.shape[2] != width:
        raise ValueError(f"{spec.path}: {split}_context is {context.shape[2]} wide, but config.model.context_dim is "
                         f"{width}")
    return context, mask


def data_dims(data_cfg) -> tuple[int, ...]:
    """Shape of one example: ``(H, W, C)`` for images, ``(D,)`` for vectors."""
    spec = parse(data_cfg)
    if spec.dataset == "toy":
        return (toy.toy_dim(spec.toy_name),)
    if spec.dataset == "npz":
        return load_split(spec, "train").shape[1:]
    return (spec.image_size, spec.image_size, spec.num_channels)
