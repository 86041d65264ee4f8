"""The built-in condition kinds: class labels, captions, layouts and images (see ``registry``).

* ``label``: the class of each example (``data.load_labels``), fed to the network's class embedding;
  null condition the extra class ``model.num_classes``. ``Run.sample(label=3)``, ``sample.py --label=3``
  (a comma list, or ``all``: one row per class).
* ``caption``: a caption per example (``data.load_captions``), tokenised by the run's word tokenizer
  (its vocabulary fitted to the training captions and saved with the run), fed as token ids to the
  network's token encoder and cross-attention; null condition the empty caption. ``prompt="a 3 left of
  a 7"``, ``--prompt``; words outside the vocabulary are read as unknown, with a warning.
* ``layout``: boxes (class, x0, y0, x1, y1) in [0, 1] per example (``data.load_layouts``), LDM's layout
  tokens; as many boxes as the data set's layouts hold (``max_objects``, saved with the run); null
  condition the empty layout. ``layout=[[3, 0, 0, .5, .5], ...]``, ``--layout="3,0,0,0.5,0.5;7,..."``.
* ``image``: a low-resolution copy of each example (``condition.options.factor``: mean-pooled by that
  factor), upsampled to the network's resolution (nearest neighbour: the latents' for a latent run) and
  concatenated to its input channels: super-resolution. Null condition an image of zeros.
  ``cond_image=`` an array ``(h, w, C)`` at the low resolution in model space, ``--cond_image=FILE.png``
  or ``--cond_image=test:N`` (test example N's low-resolution copy).
"""

from __future__ import annotations

import warnings

import numpy as np

from sde_lib import data
from sde_lib.conditioning.registry import ConditionKind, Context, register
from sde_lib.conditioning.tokenizers import LayoutTokenizer, WordTokenizer, parse_layout

UNET_NAMES = ("ncsnpp", "ddpmpp")


def _fail(field: str, message: str):
    raise ValueError(f"config.{field} {message}")


def _cross_attention_checks(config, kind: str) -> None:
    m = config.model
    if m.name not in UNET_NAMES:
        _fail("model.name", f"must be a U-Net ({' or '.join(UNET_NAMES)}) for condition.kind={kind!r}, got {m.name!r}")
    if m.context_dim % m.num_heads:
        _fail("model.context_dim", f"must be divisible by model.num_heads={m.num_heads}, got {m.context_dim}")


class Label(ConditionKind):
    name, network_input, user_arg = "label", "label", "label"
    help = "Class(es) of a class-conditional run: N, N,M,..., or 'all' (one row per class)."

    def validate(self, config) -> None:
        if config.model.num_classes < 2:
            _fail("model.num_classes", f"must be >= 2 for condition.kind='label', got {config.model.num_classes}")
        if config.model.name in UNET_NAMES and not config.model.conditional:
            _fail("model.conditional", "must be True for condition.kind='label' (the label joins the noise embedding)")

    def read(self, config, split):
        return data.load_labels(config.data, split)

    def encode(self, values, ctx: Context, *, source: str):
        y = np.asarray(values)
        n = int(ctx.config.model.num_classes)
        if y.size and not (np.issubdtype(y.dtype, np.integer) or np.all(np.mod(y, 1) == 0)):
            raise ValueError(f"{source}: labels must be integers, got {y.ravel()[:5].tolist()}")
        if y.size and (y.min() < 0 or y.max() >= n):
            raise ValueError(f"{source}: labels must be in 0..{n - 1}, got {sorted(set(y.ravel().tolist()))[:10]}")
        return {"label": y.astype(np.int32)}

    def null(self, ctx: Context):
        return {"label": np.int32(ctx.config.model.num_classes)}

    def parse_cli(self, text: str, ctx: Context):
        n = int(ctx.config.model.num_classes)
        if text == "all":
            return [(self.describe(c), c) for c in range(n)]
        try:
            classes = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--label must be a class, a comma-separated list of classes or 'all', "
                             f"got {text!r}") from None
        return [(self.describe(c), c) for c in classes]

    def describe(self, value) -> str:
        return f"class {value}"


class Caption(ConditionKind):
    name, network_input, user_arg = "caption", "tokens", "prompt"
    help = "Caption of a caption run, repeatable (one row each)."

    def validate(self, config) -> None:
        _cross_attention_checks(config, self.name)

    def read(self, config, split):
        return data.load_captions(config.data, split)

    def fit_encoder(self, config, values):
        return WordTokenizer.build(values, config.model.context_len)

    def encoder_state(self, encoder):
        return encoder.state()

    def load_encoder(self, config, state):
        return WordTokenizer.from_state(state)

    def vocab_size(self, encoder) -> int:
        return encoder.vocab_size

    def encode(self, values, ctx: Context, *, source: str):
        ids, unknown = ctx.encoder.encode_batch(list(values))
        if unknown:  # the data's captions must be the run's vocabulary: a new word is a data change
            raise ValueError(f"{source}: captions hold words outside the run's vocabulary: {unknown[:5]}")
        return {"tokens": ids}

    def from_user(self, value, n: int, ctx: Context):
        ids, unknown = ctx.encoder.encode_batch(self.user_values(value, n))
        if unknown:
            warnings.warn(f"words outside the vocabulary of the run (read as unknown): {unknown}", stacklevel=3)
        return {"tokens": ids}

    def null(self, ctx: Context):
        return {"tokens": ctx.encoder.null()}


class Layout(ConditionKind):
    name, network_input, user_arg = "layout", "tokens", "layout"
    help = "Boxes 'class,x0,y0,x1,y1;...' of a layout run, repeatable (one row each)."
    value_ndim = 2  # one value: boxes (k, 5)

    def validate(self, config) -> None:
        _cross_attention_checks(config, self.name)

    def read(self, config, split):
        return data.load_layouts(config.data, split)

    def fit_encoder(self, config, values):
        tok = LayoutTokenizer(len(data.load_layout_classes(config.data)), np.shape(values)[1])
        if config.model.context_len != tok.max_len:
            _fail("model.context_len", f"must be {tok.max_len} for layouts of {tok.max_objects} boxes (1 + 5 tokens "
                                       f"a box), got {config.model.context_len}")
        return tok

    def encoder_state(self, encoder):
        return encoder.state()

    def load_encoder(self, config, state):
        return LayoutTokenizer.from_state(state)

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
        return [(text, parse_layout(text))]

    def describe(self, value) -> str:
        return ";".join(",".join(f"{v:g}" for v in box) for box in np.asarray(value) if box[0] >= 0)


class Image(ConditionKind):
    name, network_input, user_arg = "image", "concat", "cond_image"
    help = "Condition image of an image-conditioned run: a PNG file, or test:N (test example N), repeatable."
    options = {"factor": 2}
    value_ndim = 3  # one value: an image (h, w, C)

    def validate(self, config) -> None:
        factor, d = self.option(config, "factor"), config.data
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1 or d.image_size % factor:
            _fail("condition.options.factor", f"must be a positive int dividing data.image_size={d.image_size}, "
                                              f"got {factor!r}")
        if config.model.concat_channels != d.num_channels:
            _fail("model.concat_channels", f"must be {d.num_channels} (the data's channels) for "
                                           f"condition.kind='image', got {config.model.concat_channels}")

    def low_res(self, x: np.ndarray, factor: int) -> np.ndarray:
        """Mean of each ``factor`` x ``factor`` block: ``(N, H, W, C) -> (N, H / factor, W / factor, C)``."""
        n, h, w, c = x.shape
        return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4)).astype(np.float32)

    def read(self, config, split):
        spec = data.parse(config.data)
        x = data.load_split(spec, split)
        if x.ndim != 4:
            raise ValueError(f"condition.kind='image' needs images, {spec.dataset} holds vectors {x.shape}")
        x = data.scale(x, spec.levels, spec.centered) if np.issubdtype(x.dtype, np.integer) else x
        return self.low_res(x, int(self.option(config, "factor")))

    def encode(self, values, ctx: Context, *, source: str):
        x = np.asarray(values, np.float32)
        h, w, c = ctx.model_dims
        if x.ndim != 4 or x.shape[-1] != c or h % x.shape[1] or w % x.shape[2]:
            raise ValueError(f"{source}: condition images must be (N, h, w, {c}) with h, w dividing the network's "
                             f"{h} x {w}, got {x.shape}")
        return {"concat": x.repeat(h // x.shape[1], axis=1).repeat(w // x.shape[2], axis=2)}

    def null(self, ctx: Context):
        return {"concat": np.zeros(ctx.model_dims, np.float32)}

    def parse_cli(self, text: str, ctx: Context):
        factor = int(self.option(ctx.config, "factor"))
        if text.startswith("test:"):
            try:
                i = int(text[5:])
            except ValueError:
                raise ValueError(f"--cond_image=test:N needs an integer N, got {text!r}") from None
            x = data.load_split(ctx.config.data, "test")
            if not 0 <= i < len(x):
                raise ValueError(f"--cond_image={text}: the test split has {len(x)} examples")
            spec = data.parse(ctx.config.data)
            x = data.scale(x[i:i + 1], spec.levels, spec.centered) if spec.levels else x[i:i + 1]
            return [(text, self.low_res(np.asarray(x, np.float32), factor)[0])]
        d = ctx.config.data
        image = data.readers.read_image(text, d.num_channels, d.image_size // factor)
        return [(text, data.scale(image[None], 256, bool(d.centered))[0].astype(np.float32))]


for _kind in (Label(), Caption(), Layout(), Image()):
    register(_kind)
