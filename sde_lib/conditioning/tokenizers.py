"""Tokenizers of the caption and layout kinds (token ids for ``models.attention.TokenEncoder``).

Both map a condition to a fixed-length ``(max_len,)`` int32 sequence that starts with ``BOS`` and is
padded with ``PAD`` (0): the beginning token makes every sequence non-empty, so the empty caption
(``BOS`` alone) is a valid null condition for classifier-free guidance and cross-attention always has
a key to attend to.

* :class:`WordTokenizer`: lower-case words split on white space; the vocabulary is built from the
  training captions (sorted, so it is a function of the data) and saved with the run (``state()``, the
  run folder's ``vocab.json``); unknown words map to ``UNK`` and are reported; a caption longer than ``max_len - 1``
  words is an error (never silently truncated).
* :class:`LayoutTokenizer`: LDM's layout2img tokens: per box (class, x0, y0, x1, y1) with the
  coordinates quantised to ``bins`` levels; a fixed vocabulary of specials, classes and coordinate bins.

Both give ``state()``, a JSON-able dict with a ``"kind"`` field, and ``from_state(state)``.
"""

from __future__ import annotations

import numpy as np

PAD, BOS, UNK = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<unk>")


class WordTokenizer:
    """Word-level tokenizer with a fixed vocabulary (``words``, without the specials) and length."""

    def __init__(self, words, max_len: int):
        self.words = tuple(words)
        if int(max_len) < 2:
            raise ValueError(f"max_len must be >= 2 (BOS and a word), got {max_len}")
        self.max_len = int(max_len)
        self.index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, captions, max_len: int) -> "WordTokenizer":
        """The vocabulary of ``captions`` (every word, sorted)."""
        return cls(sorted({w for c in captions for w in c.lower().split()}), max_len)

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    def encode(self, caption: str) -> tuple[np.ndarray, list[str]]:
        """``(ids (max_len,) int32, unknown words)``; ValueError when the caption is too long."""
        words = caption.lower().split()
        if len(words) > self.max_len - 1:
            raise ValueError(f"caption {caption!r} has {len(words)} words; at most {self.max_len - 1} fit "
                             f"(model max_len {self.max_len}, one position is the beginning token)")
        ids = np.full(self.max_len, PAD, np.int32)
        ids[0] = BOS
        ids[1:len(words) + 1] = [self.index.get(w, UNK) for w in words]
        return ids, [w for w in words if w not in self.index]

    def encode_batch(self, captions) -> tuple[np.ndarray, list[str]]:
        """``(ids (N, max_len), sorted unknown words)``."""
        out = [self.encode(c) for c in captions]
        return np.stack([ids for ids, _ in out]) if out else np.zeros((0, self.max_len), np.int32), \
            sorted({w for _, unknown in out for w in unknown})

    def decode(self, ids) -> str:
        names = SPECIALS + self.words
        return " ".join(names[i] for i in np.asarray(ids).tolist() if i not in (PAD, BOS))

    def null(self) -> np.ndarray:
        """The empty caption: ``BOS`` then padding."""
        return self.encode("")[0]

    def state(self) -> dict:
        return {"kind": "words", "words": list(self.words), "max_len": self.max_len}

    @classmethod
    def from_state(cls, state: dict) -> "WordTokenizer":
        if state.get("kind") != "words":
            raise ValueError(f"not a word tokenizer's state (kind {state.get('kind')!r})")
        return cls(state["words"], state["max_len"])


class LayoutTokenizer:
    """Boxes (class, x0, y0, x1, y1), coordinates in [0, 1], -> ``BOS`` then 5 tokens per box."""

    def __init__(self, num_classes: int, max_objects: int, bins: int = 8):
        self.num_classes, self.max_objects, self.bins = int(num_classes), int(max_objects), int(bins)
        self.max_len = 1 + 5 * self.max_objects

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + self.num_classes + self.bins + 1

    def encode(self, boxes) -> np.ndarray:
        """``boxes`` ``(n, 5)`` (rows with class < 0 are absent) -> ``(max_len,)`` int32."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
        boxes = boxes[boxes[:, 0] >= 0]
        if len(boxes) > self.max_objects:
            raise ValueError(f"a layout holds at most {self.max_objects} boxes, got {len(boxes)}")
        if np.any(boxes[:, 0] >= self.num_classes) or np.any((boxes[:, 1:] < 0) | (boxes[:, 1:] > 1)):
            raise ValueError(f"boxes need classes 0..{self.num_classes - 1} and coordinates in [0, 1], got {boxes}")
        ids = np.full(self.max_len, PAD, np.int32)
        ids[0] = BOS
        for j, (c, *xy) in enumerate(boxes):
            q = np.round(np.asarray(xy) * self.bins).astype(np.int32)  # bins + 1 levels: 0 .. bins
            ids[1 + 5 * j] = len(SPECIALS) + int(c)
            ids[2 + 5 * j:6 + 5 * j] = len(SPECIALS) + self.num_classes + q
        return ids

    def encode_batch(self, layouts) -> np.ndarray:
        return np.stack([self.encode(b) for b in layouts]) if len(layouts) else np.zeros((0, self.max_len), np.int32)

    def pad(self, boxes) -> np.ndarray:
        """``boxes`` ``(k, 5)`` with ``k <= max_objects`` as ``(max_objects, 5)``: absent boxes have class -1."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
        boxes = boxes[boxes[:, 0] >= 0]
        if len(boxes) > self.max_objects:
            raise ValueError(f"a layout holds at most {self.max_objects} boxes, got {len(boxes)}")
        return np.concatenate([boxes, np.full((self.max_objects - len(boxes), 5), -1.0)])

    def null(self) -> np.ndarray:
        return self.encode(np.zeros((0, 5)))

    def state(self) -> dict:
        return {"kind": "layout", "num_classes": self.num_classes, "max_objects": self.max_objects, "bins": self.bins}

    @classmethod
    def from_state(cls, state: dict) -> "LayoutTokenizer":
        if state.get("kind") != "layout":
            raise ValueError(f"not a layout tokenizer's state (kind {state.get('kind')!r})")
        return cls(state["num_classes"], state["max_objects"], state["bins"])


def parse_layout(text: str) -> np.ndarray:
    """``"c,x0,y0,x1,y1;c,..."`` (a command-line layout) -> ``(n, 5)`` float boxes; one ValueError."""
    try:
        boxes = [[float(v) for v in part.split(",")] for part in text.split(";") if part.strip()]
    except ValueError:
        raise ValueError(f"--layout must be 'class,x0,y0,x1,y1;...', got {text!r}") from None
    if not boxes or any(len(b) != 5 for b in boxes):
        raise ValueError(f"--layout must be 'class,x0,y0,x1,y1;...' (5 numbers a box), got {text!r}")
    return np.asarray(boxes)
