"""Pictures for people: image grids (nearest-neighbour enlarged), labelled rows, scatter plots of 2-D
samples, and a run's samples as whichever of those fits its data (:func:`samples_to_png`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sde_lib.data import to_uint8


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 images ``(N, H, W, C)`` (C = 1 or 3) -> one ``(rows (H + pad) + pad, ..., 3)`` uint8 grid."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    n, h, w, _ = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = img  # a grey image broadcasts over RGB
    return grid


def labelled_rows(rows: list[np.ndarray], labels: list[str], title: str | None = None, cell: int = 64) -> np.ndarray:
    """Rows of uint8 images ``(n, H, W, C)``, each enlarged (nearest neighbour) to about ``cell`` pixels
    per image, with its label written to the left and an optional title on top; returns ``(., ., 3)``
    uint8. For grids people read: one row per class, prompt or sampler."""
    font = ImageFont.load_default(size=max(12, cell // 4))
    scale = max(1, cell // max(rows[0].shape[1:3]))
    strips = [Image.fromarray(image_grid(r, ncols=len(r))) for r in rows]
    strips = [s.resize((s.width * scale, s.height * scale), Image.NEAREST) for s in strips]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(int(measure.textlength(str(t), font=font)) for t in labels) + 12
    title_h = (font.size + 12) if title else 0
    title_w = int(measure.textlength(title, font=font)) + 12 if title else 0  # never cut the title off
    width = max(label_w + max(s.width for s in strips), title_w)
    canvas = Image.new("RGB", (width, title_h + sum(s.height for s in strips)), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 4), title, fill="black", font=font)
    y = title_h
    for strip, text in zip(strips, labels):
        canvas.paste(strip, (label_w, y))
        draw.text((6, y + strip.height // 2), str(text), fill="black", font=font, anchor="lm")
        y += strip.height
    return np.asarray(canvas)


def save_png(path: str, image: np.ndarray, scale: int = 1) -> None:
    """Write an ``(H, W, 3)`` uint8 image, enlarged ``scale`` times with nearest-neighbour pixels."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def scatter_png(path: str, points: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """2-D samples ``(N, 2)`` (and optional data ``reference``) as a scatter plot; returns the RGB array."""
    import matplotlib  # lazily: matplotlib's import costs a second, and most callers draw no scatter plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.7", label="data")
    ax.scatter(points[:, 0], points[:, 1], s=1, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=5)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    fig.savefig(path)
    plt.close(fig)
    return image


def samples_to_png(config, x: np.ndarray, path: str) -> np.ndarray | None:
    """Write ``path``: images ``(N, H, W, C)`` in ``config.data``'s model space as a grid enlarged to about
    512 pixels, or 2-D vectors as a scatter plot; return the RGB image (None for other data)."""
    x = np.asarray(x)
    d = config.data
    if x.ndim == 4:
        grid = image_grid(to_uint8(x, d.levels or 256, d.centered))
        save_png(path, grid, scale=max(1, 512 // max(grid.shape[:2])))
        return grid
    if x.ndim == 2 and x.shape[1] >= 2:
        return scatter_png(path, x[:, :2])
    return None
