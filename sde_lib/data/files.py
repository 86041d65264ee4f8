"""Image folders as data sets (``data.dataset='folder'``): images read lazily, and their labels, captions,
layouts and precomputed embeddings from the files the ecosystem uses.

Layout of ``config.data.path``: one folder per split, ``path/train`` and ``path/test``, or ``path`` alone,
split 80/20 by ``data.seed``. In a split folder:

    *.png, *.jpg, ...      the images, any size: made ``image_size`` square by ``data.resize`` (``crop``:
                           the centred square, then resized; ``squash``: resized whole; ``pad``: centred on
                           a black square), grey or RGB by ``num_channels``
    <class>/*.png          class subfolders (torchvision's ImageFolder): the labels; class names = the
                           subfolder names, sorted (a folder of class folders has no loose images)
    metadata.jsonl         captions (Hugging Face imagefolder): one JSON object a line, ``file_name`` (relative
    (or metadata.csv)      to the split folder) and ``text``; several lines of one file = several captions
                           (training draws one per step)
    instances.json         layouts (COCO instances): ``images`` (id, file_name, width, height),
                           ``annotations`` (image_id, bbox [x, y, w, h] in pixels, category_id),
                           ``categories`` (id, name); boxes map through the same resize as their image
    embeddings.npz         precomputed context (CLIP / T5 features made elsewhere): ``file_name`` (N,),
                           ``context`` (N, L, D) and ``length`` (N,) or ``mask`` (N, L)

``data.captions``, ``data.layouts`` and ``data.embeddings`` name other files (``{split}`` is replaced by the
split; a relative path is relative to the split folder). Every malformed record is one ValueError naming
the file and the record (line, image or annotation).

Images are never all in memory: :class:`ImageFiles` is an array-like over the files whose indexing
decodes the rows asked for (the data pipeline reads them in worker processes through ``grain``). Their
headers are checked when a split is opened, so an unreadable file stops a command before it writes.
"""

from __future__ import annotations

import csv
import functools
import json
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from sde_lib.data.bundled import split_indices
from sde_lib.data.readers import IMAGE_SUFFIXES

RESIZE = ("crop", "squash", "pad")
CAPTION_FILES, LAYOUT_FILE, EMBEDDING_FILE = ("metadata.jsonl", "metadata.csv"), "instances.json", "embeddings.npz"


# ------------------------------------------------------------------------------------------- index
def index(path: str, split: str, seed: int) -> tuple[str, tuple[str, ...], tuple[int, ...] | None, tuple[str, ...]]:
    """``(split folder, image paths relative to it, labels or None, class names)`` of a split, sorted.

    Class subfolders give labels (their names sorted are the classes); loose images have none. Listing a
    folder of many files is slow, so the answer is kept until a folder's modification time changes.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"image folder not found: {path}")
    return _index(path, split, seed, _mtimes(path))


def _mtimes(path: str) -> tuple[int, ...]:
    """Modification times of ``path`` and the folders below it, two levels deep (splits and classes)."""
    times = [os.stat(path).st_mtime_ns]
    for entry in os.scandir(path):
        if entry.is_dir():
            times.append(entry.stat().st_mtime_ns)
            times += [e.stat().st_mtime_ns for e in os.scandir(entry.path) if e.is_dir()]
    return tuple(times)


@functools.lru_cache(maxsize=8)
def _index(path: str, split: str, seed: int, mtimes: tuple[int, ...]):
    del mtimes  # the cache key only
    own = os.path.isdir(os.path.join(path, "train")) and os.path.isdir(os.path.join(path, "test"))
    root = os.path.join(path, split) if own else path
    entries = sorted(os.listdir(root))
    loose = [n for n in entries if n.lower().endswith(IMAGE_SUFFIXES)]
    classes = [n for n in entries if os.path.isdir(os.path.join(root, n)) and not n.startswith(".")]
    if loose and classes and not own:
        classes = [c for c in classes if c not in ("train", "test")]
    if loose or not classes:
        files, labels, names = loose, None, ()
    else:
        files, labels = [], []
        for c, name in enumerate(classes):
            members = sorted(n for n in os.listdir(os.path.join(root, name)) if n.lower().endswith(IMAGE_SUFFIXES))
            files += [f"{name}/{n}" for n in members]
            labels += [c] * len(members)
        names = tuple(classes)
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {root}")
    if not own:
        keep = split_indices(len(files), split, seed)
        files = [files[i] for i in keep]
        labels = None if labels is None else [labels[i] for i in keep]
        if not files:
            raise ValueError(f"{path}: the {split} split of its images is empty")
    return root, tuple(files), None if labels is None else tuple(labels), names


def _file_in(root: str, given: str, split: str, default: str | tuple[str, ...]) -> str | None:
    """The path of a metadata file: ``given`` (``{split}`` replaced; relative to the split folder), or the
    first of the ``default`` names present in the split folder; None when there is none."""
    if given:
        path = given.replace("{split}", split)
        path = path if os.path.isabs(path) else os.path.join(root, path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file")
        return path
    for name in (default,) if isinstance(default, str) else default:
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


# ------------------------------------------------------------------------------------------ images
def _resize(im: Image.Image, size: int, policy: str) -> Image.Image:
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if policy == "squash":
        return im.resize((size, size), Image.Resampling.LANCZOS)
    if policy == "crop":
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        return im.resize((size, size), Image.Resampling.LANCZOS, box=box)
    s = max(w, h)  # pad: centred on a black square
    square = Image.new(im.mode, (s, s))
    square.paste(im, ((s - w) // 2, (s - h) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS)


def box_map(width: float, height: float, policy: str) -> tuple[float, float, float, float]:
    """``(ox, oy, sx, sy)``: a pixel point (x, y) of an image of that size lands at ((x - ox) / sx, (y - oy) / sy)
    of the square the image becomes under the resize ``policy``."""
    if policy == "squash":
        return 0.0, 0.0, float(width), float(height)
    s = min(width, height) if policy == "crop" else max(width, height)
    return (width - s) / 2.0, (height - s) / 2.0, float(s), float(s)


def read_image(path: str, num_channels: int, image_size: int, policy: str = "crop") -> np.ndarray:
    """One image as ``(image_size, image_size, num_channels)`` uint8 (module docstring: ``policy``)."""
    try:
        with Image.open(path) as im:
            x = np.asarray(_resize(im.convert("L" if num_channels == 1 else "RGB"), image_size, policy), np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: cannot read as an image ({e})") from None
    return x.reshape(image_size, image_size, num_channels)


class ImageFiles:
    """The images of a split as a read-only array ``(N, S, S, C)`` uint8 that decodes on indexing.

    ``x[i]``, ``x[a:b]`` and ``x[index_array]`` read those files only; ``len``, ``shape``, ``dtype`` and
    ``ndim`` are those of the array it stands for. Picklable (worker processes rebuild nothing).
    """

    def __init__(self, root: str, files: tuple[str, ...], image_size: int, num_channels: int, policy: str,
                 check: bool = True):
        self.root, self.files, self.policy = root, tuple(files), policy
        self.shape = (len(self.files), int(image_size), int(image_size), int(num_channels))
        self.dtype, self.ndim = np.dtype(np.uint8), 4
        if check:
            self._check_headers()

    def _check_headers(self) -> None:
        """Open every file's header (not its pixels): a file that is no image stops here, named."""
        for name in self.files:
            path = os.path.join(self.root, name)
            try:
                with Image.open(path) as im:
                    im.size  # noqa: B018  (the header is parsed on open; size needs nothing more)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"{path}: cannot read as an image ({e})") from None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return read_image(os.path.join(self.root, self.files[int(key)]), self.shape[3], self.shape[1], self.policy)
        rows = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        for j, i in enumerate(rows.tolist()):
            out[j] = self[i]
        return out

    def __array__(self, dtype=None, copy=None):
        x = self[:]
        return x if dtype is None else x.astype(dtype)


# ----------------------------------------------------------------------------------------- captions
def _caption_records(path: str):
    """``(where, record)`` of a metadata.jsonl (one JSON object a line) or metadata.csv (a header row)."""
    if path.endswith(".csv"):
        with open(path, newline="") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                yield f"{path} line {i}", row
        return
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i}: not a JSON object ({e.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {i}: not a JSON object")
            yield f"{path} line {i}", record


def load_captions(root: str, files: tuple[str, ...], split: str, given: str = "", column: str = "text") -> list:
    """Every image's captions, ``[[str, ...], ...]`` row for row with ``files``, from metadata.jsonl / .csv."""
    path = _file_in(root, given, split, CAPTION_FILES)
    if path is None:
        raise FileNotFoundError(f"{root}: no captions (metadata.jsonl or metadata.csv with file_name and {column}; "
                                f"or set config.data.captions)")
    rows = {name: i for i, name in enumerate(files)}
    captions = [[] for _ in files]
    for where, record in _caption_records(path):
        name, text = record.get("file_name"), record.get(column)
        if not name:
            raise ValueError(f"{where}: no file_name")
        if name not in rows:
            raise ValueError(f"{where}: file_name {name!r} is not an image of {root}")
        texts = text if isinstance(text, list) else [text]
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ValueError(f"{where}: empty or missing {column!r} for {name!r}")
        captions[rows[name]] += [t.strip() for t in texts]
    missing = [files[i] for i, c in enumerate(captions) if not c]
    if missing:
        raise ValueError(f"{path}: {len(missing)} image(s) have no caption, e.g. {missing[0]!r}")
    return captions


# ------------------------------------------------------------------------------------------ layouts
def load_layouts(root: str, files: tuple[str, ...], split: str, max_boxes: int, policy: str, given: str = ""):
    """``(layouts (N, max_boxes, 5) float32, class names)`` from a COCO instances file: per image its boxes
    (class, x0, y0, x1, y1) in [0, 1] of the square image (annotation order; rows of class -1 unused).

    Classes are the categories sorted by id (class k = the k-th). Boxes are mapped through the image's
    resize; parts outside a cropped square are clipped, boxes wholly outside it dropped.
    """
    path = _file_in(root, given, split, LAYOUT_FILE)
    if path is None:
        raise FileNotFoundError(f"{root}: no layouts ({LAYOUT_FILE}, COCO instances; or set config.data.layouts)")
    try:
        with open(path) as f:
            coco = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise ValueError(f"{path}: not COCO instances (no list {key!r})")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    cls = {c["id"]: k for k, c in enumerate(categories)}
    names = tuple(str(c["name"]) for c in categories)
    rows = {name: i for i, name in enumerate(files)}
    images = {}
    for im in coco["images"]:
        if im.get("file_name") not in rows:
            raise ValueError(f"{path}: image id {im.get('id')} file_name {im.get('file_name')!r} is not an image of "
                             f"{root}")
        images[im["id"]] = (rows[im["file_name"]], float(im["width"]), float(im["height"]), im["file_name"])
    layouts = np.full((len(files), int(max_boxes), 5), -1.0, np.float32)
    count = np.zeros(len(files), np.int64)
    for ann in sorted(coco["annotations"], key=lambda a: a.get("id", 0)):
        where = f"{path} annotation {ann.get('id')}"
        if ann.get("image_id") not in images:
            raise ValueError(f"{where}: unknown image_id {ann.get('image_id')}")
        if ann.get("category_id") not in cls:
            raise ValueError(f"{where}: unknown category_id {ann.get('category_id')}")
        row, width, height, name = images[ann["image_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width + 1e-6 or y + h > height + 1e-6:
            raise ValueError(f"{where} ({name}): box {ann['bbox']} is outside the {width:g} x {height:g} image "
                             f"or of zero area")
        ox, oy, sx, sy = box_map(width, height, policy)
        box = np.clip([(x - ox) / sx, (y - oy) / sy, (x + w - ox) / sx, (y + h - oy) / sy], 0.0, 1.0)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # wholly outside the centred square the image was cropped to
        if count[row] >= max_boxes:
            raise ValueError(f"{where} ({name}): more than model.max_boxes={max_boxes} boxes in one image")
        layouts[row, count[row]] = (cls[ann["category_id"]], *box)
        count[row] += 1
    return layouts, names


# --------------------------------------------------------------------------------------- embeddings
def load_embeddings(root: str, files: tuple[str, ...], split: str, given: str = "", width: int | None = None):
    """``(context (N, L, D) float32, mask (N, L) bool)`` row for row with ``files`` from an embeddings.npz;
    ``width``: the D the model takes (checked here, where the file can be named)."""
    path = _file_in(root, given, split, EMBEDDING_FILE)
    if path is None:
        raise FileNotFoundError(f"{root}: no embeddings ({EMBEDDING_FILE}; or set config.data.embeddings)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = dict(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read as .npz without pickle ({e})") from None
    for key in ("file_name", "context"):
        if key not in arrays:
            raise ValueError(f"{path}: no array {key!r} (needs file_name, context, and length or mask)")
    names, context = [str(n) for n in arrays["file_name"]], np.asarray(arrays["context"], np.float32)
    if context.ndim != 3 or len(context) != len(names):
        raise ValueError(f"{path}: context must be (N, L, D) with one row per file_name, got {context.shape} for "
                         f"{len(names)} names")
    if "mask" in arrays:
        mask = np.asarray(arrays["mask"], bool)
    elif "length" in arrays:
        length = np.asarray(arrays["length"])
        if np.any(length < 1) or np.any(length > context.shape[1]):
            raise ValueError(f"{path}: length must be in 1..{context.shape[1]}, got {length.min()}..{length.max()}")
        mask = np.arange(context.shape[1])[None, :] < length[:, None]
    else:
        raise ValueError(f"{path}: no array 'length' or 'mask' (which context positions hold a token)")
    if mask.shape != context.shape[:2] or not np.all(mask.any(axis=1)):
        raise ValueError(f"{path}: mask must be (N, L) with a True in every row, got {mask.shape}")
    if not np.all(np.isfinite(context)):
        raise ValueError(f"{path}: context holds NaN or Inf")
    if width is not None and context.shape[2] != width:
        raise ValueError(f"{path}: the embeddings are {context.shape[2]} wide, but config.model.context_dim is {width}")
    at = {n: i for i, n in enumerate(names)}
    missing = [f for f in files if f not in at]
    if missing:
        raise ValueError(f"{path}: no embedding for {len(missing)} image(s), e.g. {missing[0]!r}")
    rows = np.asarray([at[f] for f in files])
    return context[rows], mask[rows]
