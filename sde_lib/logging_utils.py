"""Run logging: metrics as JSONL and TensorBoard events, and PNG sample grids (no TensorFlow).

``workdir/metrics.jsonl`` holds one JSON object per line, ``{"step": s, "loss": ..., ...}``; TensorBoard
events go to ``workdir/tensorboard`` through tensorboardX. On resume at step k, lines after k (those
of a run killed after its last checkpoint, and a line cut short by the kill) are dropped and
TensorBoard is told to purge events after k, so both logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np
from PIL import Image

METRICS_FILE, TENSORBOARD_DIR = "metrics.jsonl", "tensorboard"


def _truncate_jsonl(path: str, last_step: int) -> None:
    """Keep the complete lines of ``path`` whose step is <= ``last_step``."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", math.inf) <= last_step:
                kept.append(json.dumps(record) + "\n")
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)


class MetricsLogger:
    """Append metrics of process 0 to ``metrics.jsonl`` and TensorBoard; other processes log nothing.

    Args:
      workdir: the run directory.
      start_step: the step training resumes from (0 for a fresh run).
      tensorboard: also write TensorBoard event files.
    """

    def __init__(self, workdir: str, start_step: int = 0, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = self._writer = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        _truncate_jsonl(self.path, start_step)
        self._file = open(self.path, "a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # imported lazily: only the logging process needs it

            purge = start_step + 1 if start_step > 0 else None
            self._writer = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=purge)

    def write(self, step: int, metrics: dict) -> None:
        """Log scalar ``metrics`` (Python or 0-d array values) at ``step``; flushed at once."""
        if not self.active:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **values}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, int(step))
            self._writer.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Add an ``(H, W, 3)`` uint8 image to TensorBoard."""
        if self._writer is not None:
            self._writer.add_image(tag, image, int(step), dataformats="HWC")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()


def read_metrics(workdir: str) -> list[dict]:
    """The records of ``workdir/metrics.jsonl`` in order."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


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
    from PIL import Image, ImageDraw, ImageFont

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
    import matplotlib

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
