"""Tokenizers of the caption and layout kinds (token ids for ``models.attention.TokenEncoder``).

Each maps a condition to a fixed-length ``(max_len,)`` int32 sequence that starts with ``BOS`` and is
padded with ``PAD`` (0): the beginning token makes every sequence non-empty, so the empty caption
(``BOS`` alone) is a valid null condition for classifier-free guidance and cross-attention always has
a key to attend to. A condition longer than ``max_len - 1`` tokens is an error, never silently cut.

* :class:`CaptionTokenizer`: a byte-level BPE (Hugging Face ``tokenizers``, GPT-2's scheme) fitted to
  the run's training captions: NFKC-normalised and lower-cased, split at white space and punctuation,
  common words whole and everything else in pieces down to single bytes, so no text is ever unknown;
  saved with the run (the run folder's ``vocab.json``).
* :class:`LayoutTokenizer`: LDM's layout2img tokens: per box (class, x0, y0, x1, y1) with the coordinates
  quantised to ``bins`` levels; a fixed vocabulary of specials, classes and coordinate bins; the class
  names of the data (``"3"``, ``"sandal"``, a COCO category) for layouts given by name.
* :class:`WordTokenizer`: the retired whitespace-word tokenizer, kept so that runs trained with it load
  and sample (words outside its vocabulary read as unknown); new runs use :class:`CaptionTokenizer`.

All give ``state()``, a JSON-able dict with a ``"kind"`` field, and ``from_state(state)`` (:func:`from_state`
picks the class).
"""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, BOS, UNK = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<unk>")


def _check_len(caption: str, n: int, max_len: int, unit: str) -> None:
    if n > max_len - 1:
        raise ValueError(f"caption {caption!r} has {n} {unit}; at most {max_len - 1} fit (model max_len {max_len}, "
                         f"one position is the beginning token)")


class CaptionTokenizer:
    """Byte-level BPE over the training captions (module docstring); ids 0-2 are PAD, BOS and UNK."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        if int(max_len) < 2:
            raise ValueError(f"max_len must be >= 2 (BOS and a token), got {max_len}")
        self.tokenizer, self.max_len = tokenizer, int(max_len)

    @classmethod
    def build(cls, captions, max_len: int, vocab_size: int = 1000) -> "CaptionTokenizer":
        """BPE merges learned from ``captions`` (each a str or a list of str) up to ``vocab_size`` tokens."""
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=list(SPECIALS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        flat = [t for c in captions for t in ([c] if isinstance(c, str) else c)]
        tok.train_from_iterator(flat, trainer)
        return cls(tok, max_len)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, caption: str) -> np.ndarray:
        """``(max_len,)`` int32: BOS, the caption's tokens, padding; ValueError when it does not fit."""
        pieces = self.tokenizer.encode(caption).ids
        _check_len(caption, len(pieces), self.max_len, "tokens")
        ids = np.full(self.max_len, PAD, np.int32)
        ids[0] = BOS
        ids[1:len(pieces) + 1] = pieces
        return ids

    def encode_batch(self, captions) -> np.ndarray:
        """``(N, max_len)`` int32."""
        return np.stack([self.encode(c) for c in captions]) if len(captions) else np.zeros((0, self.max_len), np.int32)

    def tokens(self, caption: str) -> list[str]:
        """The pieces ``caption`` becomes (for people: which words the vocabulary holds whole)."""
        return self.tokenizer.encode(caption).tokens

    def decode(self, ids) -> str:
        return self.tokenizer.decode([i for i in np.asarray(ids).tolist() if i not in (PAD, BOS)])

    def null(self) -> np.ndarray:
        """The empty caption: ``BOS`` then padding."""
        return self.encode("")

    def state(self) -> dict:
        return {"kind": "bpe", "tokenizer": self.tokenizer.to_str(), "max_len": self.max_len}

    @classmethod
    def from_state(cls, state: dict) -> "CaptionTokenizer":
        return cls(Tokenizer.from_str(state["tokenizer"]), state["max_len"])


class WordTokenizer:
    """The retired word-level tokenizer (a fixed vocabulary of whitespace words), for runs trained with it."""

    def __init__(self, words, max_len: int):
        self.words = tuple(words)
        self.max_len = int(max_len)
        self.index = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(SPECIALS) + len(self.words)

    def encode(self, caption: str) -> np.ndarray:
        """``(max_len,)`` int32; words outside the vocabulary read as ``UNK``."""
        words = caption.lower().split()
        _check_len(caption, len(words), self.max_len, "words")
        ids = np.full(self.max_len, PAD, np.int32)
        ids[0] = BOS
        ids[1:len(words) + 1] = [self.index.get(w, UNK) for w in words]
        return ids

    def encode_batch(self, captions) -> np.ndarray:
        return np.stack([self.encode(c) for c in captions]) if len(captions) else np.zeros((0, self.max_len), np.int32)

    def tokens(self, caption: str) -> list[str]:
        return [w if w in self.index else SPECIALS[UNK] for w in caption.lower().split()]

    def decode(self, ids) -> str:
        names = SPECIALS + self.words
        return " ".join(names[i] for i in np.asarray(ids).tolist() if i not in (PAD, BOS))

    def null(self) -> np.ndarray:
        return self.encode("")

    def state(self) -> dict:
        return {"kind": "words", "words": list(self.words), "max_len": self.max_len}

    @classmethod
    def from_state(cls, state: dict) -> "WordTokenizer":
        return cls(state["words"], state["max_len"])


class LayoutTokenizer:
    """Boxes (class, x0, y0, x1, y1), coordinates in [0, 1], -> ``BOS`` then 5 tokens per box."""

    def __init__(self, num_classes: int, max_objects: int, bins: int = 8, class_names=None):
        self.num_classes, self.max_objects, self.bins = int(num_classes), int(max_objects), int(bins)
        self.class_names = tuple(str(c) for c in (class_names or range(self.num_classes)))
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
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
        if np.any(boxes[:, 0] >= self.num_classes) or np.any(boxes[:, 0] % 1) or np.any(
                (boxes[:, 1:] < 0) | (boxes[:, 1:] > 1)):
            raise ValueError(f"boxes need classes 0..{self.num_classes - 1} and coordinates in [0, 1], got "
                             f"{boxes.tolist()}")
        ids = np.full(self.max_len, PAD, np.int32)
        ids[0] = BOS
        for j, (c, *xy) in enumerate(boxes):
            q = np.round(np.asarray(xy) * self.bins).astype(np.int32)  # bins + 1 levels: 0 .. bins
            ids[1 + 5 * j] = len(SPECIALS) + int(c)
            ids[2 + 5 * j:6 + 5 * j] = len(SPECIALS) + self.num_classes + q
        return ids

    def encode_batch(self, layouts) -> np.ndarray:
        return np.stack([self.encode(b) for b in layouts]) if len(layouts) else np.zeros((0, self.max_len), np.int32)

    def parse(self, text: str) -> np.ndarray:
        """``"cat,x0,y0,x1,y1;..."`` (a command-line layout; ``cat`` a class name or id) -> ``(n, 5)`` boxes."""
        names = {n: i for i, n in enumerate(self.class_names)}
        boxes = []
        for part in (p.strip() for p in text.split(";")):
            if not part:
                continue
            cat, *xy = [v.strip() for v in part.split(",")]
            try:
                c = names[cat] if cat in names else int(cat)
                boxes.append([c, *(float(v) for v in xy)])
            except ValueError:
                raise ValueError(f"--layout: {cat!r} is neither a class of this run ({', '.join(self.class_names)}) "
                                 f"nor a class id, or {xy} are not numbers; a box is 'class,x0,y0,x1,y1'") from None
        if not boxes or any(len(b) != 5 for b in boxes):
            raise ValueError(f"--layout must be 'class,x0,y0,x1,y1;...' (5 values a box), got {text!r}")
        return np.asarray(boxes, np.float64)

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
        return {"kind": "layout", "num_classes": self.num_classes, "max_objects": self.max_objects, "bins": self.bins,
                "class_names": list(self.class_names)}

    @classmethod
    def from_state(cls, state: dict) -> "LayoutTokenizer":
        return cls(state["num_classes"], state["max_objects"], state["bins"], state.get("class_names"))


def from_state(state: dict):
    """The tokenizer a saved ``state`` describes (``"kind"``: bpe, words, layout)."""
    kinds = {"bpe": CaptionTokenizer, "words": WordTokenizer, "layout": LayoutTokenizer}
    if not isinstance(state, dict) or state.get("kind") not in kinds:
        raise ValueError(f"not a saved tokenizer (kind {state.get('kind') if isinstance(state, dict) else state!r}; "
                         f"known: {', '.join(kinds)})")
    return kinds[state["kind"]].from_state(state)
