"""Image conditions: a degraded copy of the image fed as extra input channels (LDM's ``concat`` conditioning;
SR3 for super-resolution, Palette for inpainting). Both kinds feed ``cond["concat"]`` ``(B, H', W', C + 1)``:
C channels of image and one of mask (``model.concat_channels = C + 1``, C the data's channels) at the
network's resolution H' x W': the data's, or for a latent run the latents', reached by repetition (nearest
neighbour) or mean pooling; the condition is not encoded by the first stage (LDM's inpainting encodes the
masked image; here the pixels are resized, a simplification).

* ``image`` (super-resolution): each example mean-pooled by ``condition.options.factor`` (default 2),
  upsampled by repetition, and a mask channel of ones (an image is given). Null value: zeros in every channel,
  the mask channel included, so the null condition is no image rather than a mid-grey one.
  ``Run.sample(cond_image=x)``: ``x`` ``(H/factor, W/factor, C)`` in model space (or a list of n of them);
  ``sample.py --cond_image FILE.png`` (grey or RGB as the data: a PNG of the data's size is mean-pooled like
  the training inputs, one of the low size is used as it is, any other size is resized to the low size) or
  ``--cond_image test:N`` (test example N's low-resolution copy).
* ``masked_image`` (learned inpainting): the image times a 0/1 mask (1 where observed) and the mask. In
  training every example gets a fresh mask at every step, drawn from (seed, step, example) by the data
  pipeline (:class:`RandomMasks`: batches stay a pure function of (seed, step)), from the families of
  ``condition.options.masks`` (default ``"half,box,pixels"``), each with equal probability:

  - ``half``: one of the four halves (left, right, top, bottom) observed, the other half to fill;
  - ``box``: a box to fill, its height and width uniform in [H/4, 3H/4] (rounded down, at least 1 pixel),
    its position uniform;
  - ``pixels``: each pixel missing independently with probability p ~ U(0.25, 0.75), p drawn per mask.

  Evaluation batches draw with a fixed key. Null value: zeros, i.e. nothing observed, which condition
  dropout trains as the unconditional model. ``Run.sample(masked_image=(x, mask))``: ``x`` ``(H, W, C)`` in
  model space, ``mask`` ``(H, W)`` or ``(H, W, 1)`` of 0 / 1 (1 observed) or a mask name; or a list of n
  pairs. ``sample.py --masked_image SOURCE --mask MASK``: SOURCE a PNG of the data's channels (resized to
  the data's size) or ``test:N``; MASK a name below, ``box:R0,C0,R1,C1`` (rows R0..R1-1 and columns C0..C1-1
  to fill, in pixels) or a PNG (white observed, resized, threshold at half); both flags repeatable, one
  labelled row per (source, mask) pair.

Named masks (:func:`named_mask`; the name says what is observed): ``left_half`` (the right half to fill),
``centre_box`` (the central half-size box to fill), ``random_half`` (a seeded half of the pixels, seed 0;
``random_half:S`` seed S) — the masks of docs/conditional.md's inpainting table —, and ``right_half``,
``top_half``, ``bottom_half``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from sde_lib import data
from sde_lib.conditioning.kinds import _fail, _test_row
from sde_lib.conditioning.registry import ConditionKind, Context, register
from sde_lib.data import counter_rng, files
from sde_lib.data.pipeline import PerStep

MASK_NAMES = ("left_half", "centre_box", "random_half", "right_half", "top_half", "bottom_half")
MASK_FAMILIES = ("half", "box", "pixels")
_EVAL_KEY = counter_rng.make_key(counter_rng.CHOICE, -1)  # the fixed draw of evaluation batches


# ------------------------------------------------------------------------------------------------ masks
def named_mask(name: str, dims: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """The 0/1 mask ``(H, W, C)`` (1 observed) of a mask name (module docstring); ``random_half`` draws with
    ``seed`` (NumPy's PCG64), ``random_half:S`` with S."""
    h, w, c = dims
    m = np.ones((h, w, c), np.float32)
    if name.startswith("random_half:"):
        try:
            name, seed = "random_half", int(name.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"mask {name!r}: random_half:S needs an integer seed S") from None
    if name == "left_half":
        m[:, w // 2:] = 0.0
    elif name == "right_half":
        m[:, : w - w // 2] = 0.0
    elif name == "top_half":
        m[h // 2:] = 0.0
    elif name == "bottom_half":
        m[: h - h // 2] = 0.0
    elif name == "centre_box":
        m[h // 4: h - h // 4, w // 4: w - w // 4] = 0.0
    elif name == "random_half":
        m = (np.random.default_rng(seed).random((h, w, 1)) < 0.5).astype(np.float32).repeat(c, -1)
    else:
        raise ValueError(f"mask must be one of {', '.join(MASK_NAMES)}, random_half:S, box:R0,C0,R1,C1 or a PNG "
                         f"file; got {name!r}")
    return m


def random_masks(hashes: np.ndarray, h: int, w: int, families=MASK_FAMILIES) -> np.ndarray:
    """Training masks ``(B, h, w)`` float32 (1 observed), one per ``uint64`` hash (module docstring)."""
    u = counter_rng.uniform(hashes[:, None], np.arange(6 + h * w)[None, :])
    family = np.asarray(families)[np.minimum((u[:, 0] * len(families)).astype(int), len(families) - 1)]
    r, c = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    col = lambda a: a[:, None, None]  # noqa: E731  (one value per mask, broadcast over pixels)
    which = col(np.minimum((u[:, 1] * 4).astype(int), 3))
    half = np.where(which == 0, c < w // 2, np.where(which == 1, c >= w - w // 2,
                                                     np.where(which == 2, r < h // 2, r >= h - h // 2)))
    sizes = []
    for n, a, b in ((h, u[:, 2], u[:, 4]), (w, u[:, 3], u[:, 5])):
        lo = max(1, n // 4)
        hi = max(lo, 3 * n // 4)
        size = lo + np.minimum((a * (hi - lo + 1)).astype(int), hi - lo)
        start = np.minimum((b * (n - size + 1)).astype(int), n - size)
        sizes.append((col(start), col(start + size)))
    (r0, r1), (c0, c1) = sizes
    box = ~((r >= r0) & (r < r1) & (c >= c0) & (c < c1))
    pixels = u[:, 6:].reshape(-1, h, w) >= col(0.25 + 0.5 * u[:, 1])
    f = col(family)
    return np.where(f == "half", half, np.where(f == "box", box, pixels)).astype(np.float32)


def _fit(x: np.ndarray, hw: tuple[int, int], source: str) -> np.ndarray:
    """``(N, h, w, K)`` -> ``(N, H, W, K)``: repeated (nearest neighbour) or mean-pooled by an integer factor."""
    (h, w), (H, W) = x.shape[1:3], hw
    if (h, w) == (H, W):
        return x
    if H % h == 0 and W % w == 0 and H // h == W // w:
        return x.repeat(H // h, axis=1).repeat(W // w, axis=2)
    if h % H == 0 and w % W == 0 and h // H == w // W:
        return pool(x, h // H)
    raise ValueError(f"{source}: a condition of {h} x {w} neither tiles nor pools to the network's {H} x {W}")


def pool(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each ``factor`` x ``factor`` block: ``(N, H, W, C) -> (N, H / factor, W / factor, C)``."""
    n, h, w, c = x.shape
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4)).astype(np.float32)


def _channels(x: np.ndarray, mask: np.ndarray, hw: tuple[int, int], source: str) -> np.ndarray:
    """``concat`` ``(N, H', W', C + 1)``: the image times the mask, and the mask, at the network's resolution."""
    return _fit(np.concatenate([x * mask, mask], axis=-1).astype(np.float32), hw, source)


@dataclasses.dataclass(frozen=True)
class RandomMasks(PerStep):
    """The ``masked_image`` condition of a data set: ``images`` ``(N, H, W, C)`` in model space, each row masked
    by a training mask drawn from (step key, example) (:func:`random_masks`)."""

    images: np.ndarray
    families: tuple[str, ...]
    model_hw: tuple[int, int]

    def __len__(self) -> int:
        return len(self.images)

    def masks(self, rows: np.ndarray, key: np.ndarray | None) -> np.ndarray:
        """``(len(rows), H, W, 1)``: the masks of examples ``rows`` under ``key`` (None: the evaluation draw)."""
        hashes = counter_rng.hash_items(_EVAL_KEY if key is None else key, np.asarray(rows))
        return random_masks(hashes, *self.images.shape[1:3], self.families)[..., None]

    def pick(self, rows, key):
        rows = np.asarray(rows)
        return _channels(self.images[rows], self.masks(rows, key), self.model_hw, "masked_image")


# ------------------------------------------------------------------------------------------------ files
def read_png(path: str, num_channels: int, size: int | None = None) -> np.ndarray:
    """A PNG (or any image file) as ``(h, w, num_channels)`` uint8, resized to ``size`` x ``size`` (crop policy)
    unless None or already so. A colour image for a grey run (or grey for colour) is one error naming the file;
    an RGB file whose channels are equal is grey."""
    try:
        with PILImage.open(path) as im:
            im.load()
            rgb = np.asarray(im.convert("RGB"))
            single_band = im.mode in ("1", "L", "LA", "La", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path}: cannot read as an image ({err})") from None
    if num_channels == 1 and not (single_band or np.all(rgb == rgb[..., :1])):
        raise ValueError(f"{path}: a colour image, but the run's images have 1 channel (config.data.num_channels)")
    if num_channels == 3 and single_band:
        raise ValueError(f"{path}: a grey image, but the run's images have 3 channels (config.data.num_channels)")
    if size is None or rgb.shape[:2] == (size, size):
        return rgb[..., :num_channels] if num_channels == 1 else rgb
    return files.read_image(path, num_channels, size)


def _model_space(config, split: str, rows=None) -> np.ndarray:
    """Images of ``split`` (or its ``rows``) in model space, float32 ``(N, H, W, C)``."""
    spec = data.parse(config.data)
    x = data.load_split(spec, split)
    x = x[:] if rows is None else x[rows]
    return data.scale(x, spec.levels, spec.centered) if np.issubdtype(x.dtype, np.integer) else np.asarray(x)


def _from_png(image: np.ndarray, config) -> np.ndarray:
    return data.scale(image, 256, bool(config.data.centered)).astype(np.float32)


def _check_image_data(config, kind: str) -> None:
    d = config.data
    if len(data.data_dims(d)) != 3:
        _fail("data.dataset", f"must hold images for condition.kind={kind!r}, got {d.dataset!r} (vectors)")
    if d.random_flip:  # the pipeline flips the training image, not its condition: they would disagree
        _fail("data.random_flip", f"must be False for condition.kind={kind!r} (the condition is read unflipped)")
    if config.model.concat_channels != d.num_channels + 1:
        _fail("model.concat_channels", f"must be {d.num_channels + 1} (the data's {d.num_channels} channels and a "
                                       f"mask) for condition.kind={kind!r}, got {config.model.concat_channels}")


# ------------------------------------------------------------------------------------------------ kinds
class Image(ConditionKind):
    name, network_input, user_arg = "image", "concat", "cond_image"
    help = ("Condition image of a super-resolution (condition.kind='image') run: a PNG (of the data's size: "
            "pooled like the training inputs; of the low size: as it is) or test:N (test example N), repeatable.")
    options = {"factor": 2}
    value_ndim = 3  # one value: an image (h, w, C)

    def validate(self, config) -> None:
        factor, d = self.option(config, "factor"), config.data
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1 or d.image_size % factor:
            _fail("condition.options.factor", f"must be a positive int dividing data.image_size={d.image_size}, "
                                              f"got {factor!r}")
        _check_image_data(config, self.name)

    def factor(self, config) -> int:
        return int(self.option(config, "factor"))

    def read(self, config, split):
        return pool(_model_space(config, split), self.factor(config))

    def encode(self, values, ctx: Context, *, source: str):
        x = np.asarray(values, np.float32)
        h, w, c = ctx.dims
        f = self.factor(ctx.config)
        if x.ndim != 4 or x.shape[1:] != (h // f, w // f, c):
            raise ValueError(f"{source}: condition images must be (N, {h // f}, {w // f}, {c}) (the data's {h} x {w} "
                             f"pooled by condition.options.factor={f}), got {x.shape}")
        return {"concat": _channels(x, np.ones((*x.shape[:3], 1), np.float32), ctx.model_dims[:2], source)}

    def null(self, ctx: Context):
        return {"concat": np.zeros((*ctx.model_dims[:2], ctx.dims[-1] + 1), np.float32)}

    def parse_cli(self, text: str, ctx: Context):
        cfg, f = ctx.config, self.factor(ctx.config)
        if text.startswith("test:"):
            i = _test_row(text, self.user_arg, len(data.load_split(cfg.data, "test")))
            return [(text, pool(_model_space(cfg, "test", [i]), f)[0])]
        size, low = cfg.data.image_size, cfg.data.image_size // f
        image = read_png(text, cfg.data.num_channels)
        if image.shape[:2] == (size, size):
            return [(text, pool(_from_png(image, cfg)[None], f)[0])]
        return [(text, _from_png(read_png(text, cfg.data.num_channels, low), cfg))]

    def preview(self, value, ctx: Context):
        f = self.factor(ctx.config)
        return np.asarray(value, np.float32).repeat(f, axis=0).repeat(f, axis=1)


class MaskedImage(ConditionKind):
    name, network_input, user_arg = "masked_image", "concat", "masked_image"
    help = ("Image to inpaint with a masked_image run: a PNG or test:N (test example N), repeatable; each with "
            "every --mask.")
    cli_flags = {"mask": "Mask of --masked_image: " + ", ".join(MASK_NAMES) + ", random_half:S, box:R0,C0,R1,C1 "
                 "(the rows and columns to fill) or a PNG (white observed); repeatable (a row per image and mask)."}
    options = {"masks": ",".join(MASK_FAMILIES)}

    def validate(self, config) -> None:
        self.families(config)
        _check_image_data(config, self.name)

    def families(self, config) -> tuple[str, ...]:
        text = self.option(config, "masks")
        names = tuple(v.strip() for v in str(text).split(",") if v.strip()) if isinstance(text, str) else ()
        if not names or set(names) - set(MASK_FAMILIES):
            _fail("condition.options.masks", f"must be a comma list of {', '.join(MASK_FAMILIES)}, got {text!r}")
        return names

    def read(self, config, split):
        return _model_space(config, split)

    def encode(self, values, ctx: Context, *, source: str):
        """Images without masks (a data set's ``read``): training masks drawn per step (:class:`RandomMasks`);
        ``(image, mask)`` pairs: those masks."""
        if isinstance(values, np.ndarray) and values.ndim == 4:
            return {"concat": RandomMasks(self._images(values, ctx, source), self.families(ctx.config),
                                          tuple(ctx.model_dims[:2]))}
        pairs = list(values)
        images = self._images([p[0] for p in pairs], ctx, source)
        masks = np.stack([self._mask(p[1], ctx, source) for p in pairs]) if pairs else images[..., :1]
        return {"concat": _channels(images, masks, ctx.model_dims[:2], source)}

    def _images(self, x, ctx: Context, source: str) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[1:] != tuple(ctx.dims):
            raise ValueError(f"{source}: images to inpaint must be (N, {', '.join(map(str, ctx.dims))}) (the data's "
                             f"shape), got {x.shape}")
        return x

    def _mask(self, mask, ctx: Context, source: str) -> np.ndarray:
        """``(H, W, 1)`` 0/1 of a mask name or array ``(H, W)``, ``(H, W, 1)`` or ``(H, W, C)`` equal over C."""
        if isinstance(mask, str):
            mask = named_mask(mask, ctx.dims)
        m = np.asarray(mask, np.float32)
        m = m[..., None] if m.ndim == 2 else m
        if m.ndim != 3 or m.shape[:2] != tuple(ctx.dims[:2]) or np.any(m != m[..., :1]):
            raise ValueError(f"{source}: a mask must be (H, W) or (H, W, 1) with H, W = {ctx.dims[:2]} (one value a "
                             f"pixel), got shape {np.shape(mask)}")
        if np.any((m != 0) & (m != 1)):
            raise ValueError(f"{source}: mask values must be 0 (to fill) or 1 (observed)")
        return m[..., :1]

    def null(self, ctx: Context):
        return {"concat": np.zeros((*ctx.model_dims[:2], ctx.dims[-1] + 1), np.float32)}

    def from_user(self, value, n: int, ctx: Context):
        single = isinstance(value, tuple) and len(value) == 2 and np.ndim(value[0]) == 3
        values = [value] * int(n) if single else list(value)
        if len(values) != int(n) or not all(isinstance(v, tuple) and len(v) == 2 for v in values):
            raise ValueError(f"{self.user_arg}: one (image, mask) pair or {n} of them, got {len(values)} values")
        return self.encode(values, ctx, source=self.user_arg)

    def parse_cli(self, text: str, ctx: Context, mask=()):
        cfg = ctx.config
        if not mask:
            raise ValueError(f"--masked_image={text} needs --mask ({', '.join(MASK_NAMES)}, box:R0,C0,R1,C1 or a PNG)")
        if text.startswith("test:"):
            i = _test_row(text, self.user_arg, len(data.load_split(cfg.data, "test")))
            image = _model_space(cfg, "test", [i])[0]
        else:
            image = _from_png(read_png(text, cfg.data.num_channels, cfg.data.image_size), cfg)
        return [(f"{text} {m}", (image, self.parse_mask(m, ctx))) for m in mask]

    def parse_mask(self, text: str, ctx: Context) -> np.ndarray:
        """``--mask`` text -> ``(H, W, 1)`` 0/1 (module docstring)."""
        h, w, c = ctx.dims
        if text.startswith("box:"):
            try:
                r0, c0, r1, c1 = (int(v) for v in text[4:].split(","))
            except ValueError:
                raise ValueError(f"--mask={text}: box:R0,C0,R1,C1 needs four integers") from None
            if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
                raise ValueError(f"--mask={text}: the box must lie in the {h} x {w} image with R0 < R1, C0 < C1")
            m = np.ones((h, w, 1), np.float32)
            m[r0:r1, c0:c1] = 0.0
            return m
        if text.split(":")[0] in MASK_NAMES:
            return named_mask(text, (h, w, 1))
        if not text.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")):
            named_mask(text, (h, w, 1))  # raises: the names and forms a mask may take
        return (read_png(text, 1, h)[..., :1] >= 128).astype(np.float32)

    def preview(self, value, ctx: Context):
        image, mask = value
        lo, hi = data.model_range(bool(ctx.config.data.centered))
        m = self._mask(mask, ctx, self.user_arg)
        return np.where(m > 0, np.asarray(image, np.float32), (lo + hi) / 2)  # missing pixels mid-grey


for _kind in (Image(), MaskedImage()):
    register(_kind)
