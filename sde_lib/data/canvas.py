"""A compositional data set that needs cross-attention: objects placed on a canvas, with captions and layouts.

Each canvas is a 2 x 2 grid of slots (top left, top right, bottom left, bottom right). An example is
either one object in one slot, captioned "a 3 at the top left", or two objects side by side or one
above the other, captioned "a 3 left of a 7" / "a 3 above a 7" (the first named object on the left /
on top; the row or column is random). The layout of an example is its boxes: (class, x0, y0, x1, y1)
in [0, 1] canvas coordinates. Every draw is a pure function of (seed, split, index).

Two sizes, from data we have offline:

* ``canvas_digits``: scikit-learn's 8x8 digits on a 16 x 16 canvas, 17 grey levels (CPU default, CI);
* ``canvas_fashion_mnist``: Fashion-MNIST items averaged down to 14 x 14 and padded to 16 x 16 slots of
  a 32 x 32 canvas, 256 levels ("a sandal above a bag").

Objects come from the matching split of their source (test canvases show digits no model was trained
on). About 10% of the (first class, second class, relation) combinations are **held out**: no training
canvas shows them, every test split has them, so a model's adherence there measures composition.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from sde_lib.data import bundled, counter_rng

SLOTS = ("top left", "top right", "bottom left", "bottom right")  # slot s: row s // 2, column s % 2
RELATIONS = ("left of", "above")
SIZES = {"train": 12_000, "test": 2_000}
HOLD_OUT = 0.1
MAX_OBJECTS = 2
_CANVAS = counter_rng.CANVAS  # the canvas streams
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


@dataclasses.dataclass(frozen=True)
class CanvasSpec:
    """Object source, slot and canvas sizes, grey levels and the word for each class."""

    name: str
    slot: int
    levels: int
    class_names: tuple[str, ...]

    @property
    def size(self) -> int:
        return 2 * self.slot


SPECS = {
    "canvas_digits": CanvasSpec("canvas_digits", 8, 17, tuple(str(i) for i in range(10))),
    "canvas_fashion_mnist": CanvasSpec("canvas_fashion_mnist", 16, 256, FASHION_NAMES),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou8" else "a"


def caption_of(spec: CanvasSpec, objects: list[tuple[int, int]]) -> str:
    """The caption of ``objects`` [(class, slot), ...] (one object, or two in a row or column)."""
    words = [f"{_article(spec.class_names[c])} {spec.class_names[c]}" for c, _ in objects]
    if len(objects) == 1:
        return f"{words[0]} at the {SLOTS[objects[0][1]]}"
    (_, s0), (_, s1) = objects
    relation = "left of" if s0 // 2 == s1 // 2 else "above"
    return f"{words[0]} {relation} {words[1]}"


def held_out(spec: CanvasSpec) -> set[tuple[int, int, str]]:
    """The (first class, second class, relation) combinations no training canvas shows (fixed, seed-free)."""
    combos = [(a, b, r) for a in range(len(spec.class_names)) for b in range(len(spec.class_names)) for r in RELATIONS]
    scores = counter_rng.hash_items(counter_rng.make_key(20240607, _CANVAS), np.arange(len(combos)))
    chosen = np.argsort(scores)[: int(round(HOLD_OUT * len(combos)))]
    return {combos[i] for i in chosen}


def _objects(spec: CanvasSpec, split: str, seed: int, n: int) -> list[list[tuple[int, int]]]:
    """Per example, its objects [(class, slot), ...]; training examples avoid the held-out combinations."""
    c = len(spec.class_names)
    key = counter_rng.make_key(seed, _CANVAS, 0 if split == "train" else 1)
    hidden = held_out(spec) if split == "train" else set()
    out, i = [], 0
    while len(out) < n:
        u = counter_rng.uniform(key, np.arange(5) + 5 * i)
        i += 1
        if u[0] < 1 / 3:
            out.append([(int(u[1] * c), int(u[2] * 4))])
            continue
        a, b, relation = int(u[1] * c), int(u[2] * c), RELATIONS[int(u[3] * 2)]
        if (a, b, relation) in hidden:
            continue
        line = int(u[4] * 2)  # which row (left of) or column (above)
        slots = (2 * line, 2 * line + 1) if relation == "left of" else (line, line + 2)
        out.append([(a, slots[0]), (b, slots[1])])
    return out


def objects_of(name: str, split: str):
    """The object images ``(N, slot, slot)`` (integer levels) a canvas data set's ``split`` is made of, and their
    classes: its source's split (digits; Fashion-MNIST averaged down to 14 x 14 and padded to 16 x 16)."""
    spec = SPECS[name]
    if spec.name == "canvas_digits":
        images, labels = bundled.digits(split, seed=0)
        return images[..., 0], labels
    folder = bundled.FASHION_MNIST_PATH
    x = bundled.fashion_mnist(folder, split)[0][..., 0].astype(np.float64)  # (N, 28, 28) in 0..255
    small = x.reshape(len(x), 14, 2, 14, 2).mean(axis=(2, 4))  # 2x2 averages: 14 x 14
    return np.round(np.pad(small, ((0, 0), (1, 1), (1, 1)))).astype(np.int64), bundled.fashion_mnist_labels(folder, split)


@functools.lru_cache(maxsize=4)
def canvases(name: str, split: str, seed: int = 0):
    """``(images (N, S, S, 1) integer levels, captions [str], layouts (N, 2, 5) float32)`` of ``split``.

    A layout row is (class, x0, y0, x1, y1) in canvas coordinates [0, 1]; unused rows have class -1.
    """
    spec = SPECS[name]
    objects = _objects(spec, split, seed, SIZES[split])
    images, labels = objects_of(name, split)
    by_class = [np.flatnonzero(labels == c) for c in range(len(spec.class_names))]
    key = counter_rng.make_key(seed, _CANVAS, 2, 0 if split == "train" else 1)
    x = np.zeros((len(objects), spec.size, spec.size, 1), np.int64)
    layouts = np.zeros((len(objects), MAX_OBJECTS, 5), np.float32)
    layouts[..., 0] = -1
    for i, objs in enumerate(objects):
        for j, (c, s) in enumerate(objs):
            pool = by_class[c]
            pick = pool[int(counter_rng.uniform(key, np.array([2 * i + j]))[0] * len(pool))]
            r, col = s // 2, s % 2
            x[i, r * spec.slot:(r + 1) * spec.slot, col * spec.slot:(col + 1) * spec.slot, 0] = images[pick]
            layouts[i, j] = (c, col / 2, r / 2, (col + 1) / 2, (r + 1) / 2)
    captions = [caption_of(spec, objs) for objs in objects]
    return x, captions, layouts


def slot_labels(layouts: np.ndarray) -> np.ndarray:
    """``(N, 4)`` int: each slot's class, or -1 when empty, from layouts ``(N, 2, 5)``."""
    out = np.full((len(layouts), len(SLOTS)), -1, np.int64)
    for j in range(layouts.shape[1]):
        present = layouts[:, j, 0] >= 0
        slot = (np.round(layouts[:, j, 2] * 2) * 2 + np.round(layouts[:, j, 1] * 2)).astype(np.int64)
        rows = np.flatnonzero(present)
        out[rows, slot[rows]] = layouts[rows, j, 0].astype(np.int64)
    return out


def satisfies(caption: str, slots: np.ndarray, spec: CanvasSpec) -> bool:
    """Whether a canvas whose slots hold ``slots`` (4 classes, -1 empty) shows exactly ``caption``: the named
    objects in the stated place or relation, and nothing else."""
    words = caption.split()
    names = {n: i for i, n in enumerate(spec.class_names)}
    present = [(int(c), s) for s, c in enumerate(slots) if c >= 0]
    if " at the " in caption:
        c, slot = names[words[1]], SLOTS.index(caption.split(" at the ")[1])
        return present == [(c, slot)]
    relation = "left of" if " left of " in caption else "above"
    a, b = names[words[1]], names[words[-1]]
    if len(present) != 2:
        return False
    (ca, sa), (cb, sb) = present  # slot order: left before right, top before bottom
    if relation == "left of":
        return sa // 2 == sb // 2 and (ca, cb) == (a, b)
    return sa % 2 == sb % 2 and (ca, cb) == (a, b)


def relation_of(caption: str, spec: CanvasSpec) -> tuple[int, int, str] | None:
    """(first class, second class, relation) of a two-object caption; None for one object."""
    if " at the " in caption:
        return None
    words = caption.split()
    names = {n: i for i, n in enumerate(spec.class_names)}
    return names[words[1]], names[words[-1]], "left of" if " left of " in caption else "above"


def swapped(caption: str, spec: CanvasSpec) -> str | None:
    """The order-swapped caption ("a 7 left of a 3" for "a 3 left of a 7"); None for one object."""
    rel = relation_of(caption, spec)
    if rel is None:
        return None
    a, b, relation = rel
    na, nb = spec.class_names[b], spec.class_names[a]
    return f"{_article(na)} {na} {relation} {_article(nb)} {nb}"
