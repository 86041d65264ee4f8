"""The built-in condition kinds: class labels, captions, layouts and precomputed embeddings (see ``registry``;
the image kinds are in ``images``). Where each reads its values: ``sde_lib.data`` (class subfolders,
``metadata.jsonl``, COCO instances, ``embeddings.npz`` of image folders; the built-in data sets' own).

* ``label``: the class of each example, fed to the network's class embedding; null condition the extra
  class ``model.num_classes``. The class names (a folder's subfolders, the bundled sets' names) are saved
  with the run. ``Run.sample(label=3)`` or ``label="sandal"``; ``sample.py --label=3``, a comma list, a
  name, or ``all`` (one row per class).
* ``caption``: a caption per example, or several (one drawn per training step), tokenised by a byte-level
  BPE fitted to the training captions (``condition.options.vocab_size``, default 1000) and saved with the
  run; token ids feed the network's token encoder and cross-attention; null condition the empty caption.
  ``prompt="a 3 left of a 7"``, ``--prompt``.
* ``layout``: boxes (class, x0, y0, x1, y1) in [0, 1] per example, at most ``model.max_boxes``, as LDM's
  layout tokens; the class names are saved with the run; null condition the empty layout.
  ``layout=[[3, 0, 0, .5, .5], ...]``, ``--layout="3,0,0,0.5,0.5;sandal,0.5,0,1,0.5"`` (names or ids).
* ``embedding``: precomputed context vectors ``(L, D)`` with their mask (CLIP / T5 features made elsewhere),
  padded to ``model.context_len`` positions and fed straight to cross-attention (``model.context_dim`` = D);
  the null condition is one zero vector (a fixed, documented choice: not learned). ``embedding=(L, D)`` array or ``(context, mask)``; the CLI reads
  ``--embedding=FILE.npy`` (an (L, D) array, every row a token) or ``test:N``.
* ``image`` and ``masked_image`` (super-resolution, learned inpainting): ``sde_lib.conditioning.images``.
"""

from __future__ import annotations

import warnings

import numpy as np

from sde_lib import data
from sde_lib.checks import integer
from sde_lib.conditioning.registry import ConditionKind, Context, register
from sde_lib.conditioning.tokenizers import (
    UNK,
    CaptionTokenizer,
    LayoutTokenizer,
    WordTokenizer,
    from_state,
)
from sde_lib.data.pipeline import Choices

UNET_NAMES = ("ncsnpp", "ddpmpp")


def _fail(field: str, message: str):
    raise ValueError(f"config.{field} {message}")


def _cross_attention_checks(config, kind: str) -> None:
    m = config.model
    if m.name not in UNET_NAMES:
        _fail("model.name", f"must be a U-Net ({' or '.join(UNET_NAMES)}) for condition.kind={kind!r}, got {m.name!r}")
    if m.context_dim % m.num_heads:
        _fail("model.context_dim", f"must be divisible by model.num_heads={m.num_heads}, got {m.context_dim}")


def _test_row(text: str, flag: str, n: int) -> int:
    """The N of ``test:N`` (an example of the test split), checked against the split's ``n`` examples."""
    try:
        i = int(text[5:])
    except ValueError:
        raise ValueError(f"--{flag}=test:N needs an integer N, got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--{flag}={text}: the test split has {n} examples")
    return i


class Label(ConditionKind):
    name, network_input, user_arg = "label", "label", "label"
    help = "Class(es) of a class-conditional run: N or a class name, N,M,..., or 'all' (one row per class)."

    def validate(self, config) -> None:
        if config.model.num_classes < 2:
            _fail("model.num_classes", f"must be >= 2 for condition.kind='label', got {config.model.num_classes}")
        if config.model.name in UNET_NAMES and not config.model.conditional:
            _fail("model.conditional", "must be True for condition.kind='label' (the label joins the noise embedding)")

    def read(self, config, split):
        return data.load_labels(config.data, split)

    def fit_encoder(self, config, values):
        names = data.load_class_names(config.data)
        if len(names) != config.model.num_classes:
            _fail("model.num_classes", f"is {config.model.num_classes}, but the data have {len(names)} classes "
                                       f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        return tuple(names)

    def encoder_state(self, encoder):
        return {"kind": "classes", "names": list(encoder)}

    def load_encoder(self, config, state):
        if state.get("kind") != "classes":
            raise ValueError(f"not a list of class names (kind {state.get('kind')!r})")
        return tuple(state["names"])

    def encode(self, values, ctx: Context, *, source: str):
        names = {n: i for i, n in enumerate(ctx.encoder or ())}
        raw = np.asarray([names.get(v, v) if isinstance(v, str) else v for v in np.asarray(values, object).ravel()],
                         object).reshape(np.shape(values))
        bad = [v for v in raw.ravel() if isinstance(v, str)]
        if bad:
            raise ValueError(f"{source}: {bad[0]!r} is not a class of this run ({', '.join(ctx.encoder or ())})")
        n = int(ctx.config.model.num_classes)
        if source == self.user_arg:  # a user's value: an integer type (checks.integer), not 3.0 or True
            for v in raw.ravel():
                integer(v, source, minimum=0, maximum=n - 1)
        y = raw.astype(np.float64)
        if y.size and not np.all(np.mod(y, 1) == 0):
            raise ValueError(f"{source}: labels must be integers, got {y.ravel()[:5].tolist()}")
        if y.size and (y.min() < 0 or y.max() >= n):
            raise ValueError(f"{source}: labels must be in 0..{n - 1}, got {sorted(set(y.ravel().tolist()))[:10]}")
        return {"label": y.astype(np.int32)}

    def null(self, ctx: Context):
        return {"label": np.int32(ctx.config.model.num_classes)}

    def parse_cli(self, text: str, ctx: Context):
        names = tuple(ctx.encoder or ())
        if text == "all":
            return [(self.describe(c, names), c) for c in range(int(ctx.config.model.num_classes))]
        rows = []
        for item in (v.strip() for v in text.split(",") if v.strip()):
            if item in names:
                rows.append((self.describe(names.index(item), names), names.index(item)))
                continue
            try:
                rows.append((self.describe(int(item), names), int(item)))
            except ValueError:
                raise ValueError(f"--label must be classes (numbers or names of this run: {', '.join(names)}) or "
                                 f"'all', got {text!r}") from None
        return rows

    def describe(self, value, names=()) -> str:
        return f"class {value}" + (f" ({names[value]})" if 0 <= value < len(names) and names[value] != str(value)
                                   else "")


class Caption(ConditionKind):
    name, network_input, user_arg = "caption", "tokens", "prompt"
    help = "Caption of a caption run, repeatable (one row each)."
    options = {"vocab_size": 1000}

    def validate(self, config) -> None:
        _cross_attention_checks(config, self.name)
        size = self.option(config, "vocab_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 300:
            _fail("condition.options.vocab_size", f"must be an int >= 300 (the 256 bytes, specials and merges), "
                                                  f"got {size!r}")

    def read(self, config, split):
        return data.load_captions(config.data, split)

    def fit_encoder(self, config, values):
        return CaptionTokenizer.build(values, config.model.context_len, int(self.option(config, "vocab_size")))

    def encoder_state(self, encoder):
        return encoder.state()

    def load_encoder(self, config, state):
        return from_state(state)

    def vocab_size(self, encoder) -> int:
        return encoder.vocab_size

    def encode(self, values, ctx: Context, *, source: str):
        texts = [[v] if isinstance(v, str) else list(v) for v in values]
        try:
            tokens = [ctx.encoder.encode_batch(t) for t in texts]
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        counts = np.asarray([len(t) for t in texts])
        if texts and counts.max() == 1:
            return {"tokens": np.stack([t[0] for t in tokens])}
        padded = np.zeros((len(texts), max(counts, default=1), ctx.encoder.max_len), np.int32)
        for i, t in enumerate(tokens):
            padded[i, :len(t)] = t
        return {"tokens": Choices(padded, counts)}

    def from_user(self, value, n: int, ctx: Context):
        values = self.user_values(value, n)
        ids = self.encode(values, ctx, source=self.user_arg)["tokens"]
        if isinstance(ctx.encoder, WordTokenizer) and np.any(ids == UNK):  # a run of the retired word tokenizer
            unknown = sorted({w for v in values for w in v.lower().split() if w not in ctx.encoder.index})
            warnings.warn(f"words outside the vocabulary of the run (read as unknown): {unknown}", stacklevel=3)
        return {"tokens": ids}

    def null(self, ctx: Context):
        return {"tokens": ctx.encoder.null()}


class Layout(ConditionKind):
    name, network_input, user_arg = "layout", "tokens", "layout"
    help = "Boxes 'class,x0,y0,x1,y1;...' of a layout run (class: a name or an id), repeatable (one row each)."
    value_ndim = 2  # one value: boxes (k, 5)

    def validate(self, config) -> None:
        _cross_attention_checks(config, self.name)
        m = config.model
        if m.context_len != 1 + 5 * m.max_boxes:
            _fail("model.context_len", f"must be {1 + 5 * m.max_boxes} for layouts of model.max_boxes={m.max_boxes} "
                                       f"(1 + 5 tokens a box), got {m.context_len}")

    def read(self, config, split):
        return data.load_layouts(config.data, split, config.model.max_boxes)[0]

    def fit_encoder(self, config, values):
        names = data.load_layouts(config.data, "train", config.model.max_boxes)[1]
        return LayoutTokenizer(len(names), config.model.max_boxes, class_names=names)

    def encoder_state(self, encoder):
        return encoder.state()

    def load_encoder(self, config, state):
        return from_state(state)

    def vocab_size(self, encoder) -> int:
        return encoder.vocab_size

    def encode(self, values, ctx: Context, *, source: str):
        try:
            return {"tokens": ctx.encoder.encode_batch([ctx.encoder.pad(v) for v in values])}
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None

    def null(self, ctx: Context):
        return {"tokens": ctx.encoder.null()}

    def parse_cli(self, text: str, ctx: Context):
        return [(text, ctx.encoder.parse(text))]

    def describe(self, value) -> str:
        return ";".join(",".join(f"{v:g}" for v in box) for box in np.asarray(value) if box[0] >= 0)


class Embedding(ConditionKind):
    name, network_input, user_arg = "embedding", "context", "embedding"
    help = "Precomputed context of an embedding run: FILE.npy ((L, D), every row a token) or test:N, repeatable."
    value_ndim = 2  # one value: context (L, D)

    def validate(self, config) -> None:
        _cross_attention_checks(config, self.name)
        if config.model.context_pooled:
            _fail("model.context_pooled", "pools token ids; condition.kind='embedding' feeds vectors")

    def read(self, config, split):
        context, mask = data.load_embeddings(config.data, split, config.model.context_dim)
        return list(zip(context, mask))

    def encode(self, values, ctx: Context, *, source: str):
        pairs = [v if isinstance(v, tuple) else (np.asarray(v, np.float32), None) for v in values]
        width, length = ctx.config.model.context_dim, ctx.config.model.context_len
        context = np.zeros((len(pairs), length, width), np.float32)
        mask = np.zeros((len(pairs), length), bool)
        for i, (c, m) in enumerate(pairs):
            c = np.asarray(c, np.float32)
            m = np.ones(len(c), bool) if m is None else np.asarray(m, bool)
            if c.ndim != 2 or c.shape[1] != width or not np.all(np.isfinite(c)):
                raise ValueError(f"{source}: an embedding must be finite (L, {width}) (config.model.context_dim), "
                                 f"got shape {c.shape}")
            if m.shape != c.shape[:1] or not m.any() or np.flatnonzero(m).max() >= length:
                raise ValueError(f"{source}: an embedding's tokens must fit config.model.context_len={length} "
                                 f"positions and its mask hold one, got {c.shape[0]} positions")
            context[i, :min(len(c), length)] = c[:length]
            mask[i, :min(len(c), length)] = m[:length]
        return {"context": context, "context_mask": mask}

    def null(self, ctx: Context):
        # One zero vector to attend to: an all-masked row would leave cross-attention nothing (NaN weights).
        arrays = self.encode([np.zeros((1, ctx.config.model.context_dim), np.float32)], ctx, source="null")
        return {k: v[0] for k, v in arrays.items()}

    def from_user(self, value, n: int, ctx: Context):
        single = isinstance(value, tuple) or (not isinstance(value, list) and np.ndim(value) == 2)
        arrays = self.encode([value] * int(n) if single else list(value), ctx, source=self.user_arg)
        if len(arrays["context"]) != int(n):
            raise ValueError(f"{self.user_arg}: {len(arrays['context'])} embeddings for {n} samples")
        return arrays

    def parse_cli(self, text: str, ctx: Context):
        if text.startswith("test:"):
            context, mask = data.load_embeddings(ctx.config.data, "test")
            i = _test_row(text, "embedding", len(context))
            return [(text, (context[i], mask[i]))]
        try:
            return [(text, np.load(text, allow_pickle=False))]
        except (OSError, ValueError) as err:
            raise ValueError(f"--embedding={text}: cannot read an (L, D) .npy array ({err})") from None


for _kind in (Label(), Caption(), Layout(), Embedding()):
    register(_kind)
