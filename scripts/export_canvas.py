"""Write a canvas data set as the files a user would bring: PNG folders with captions, layouts and classes.

    python scripts/export_canvas.py --canvas=canvas_digits --out=out/canvas_digits_files

writes, for the train and test splits of the built-in canvas data set (``sde_lib.data.canvas``):

    OUT/train/00000.png ...          the canvases, 8-bit grey (levels 0..L-1 spread over 0..255)
    OUT/train/metadata.jsonl         {"file_name", "text"}: each canvas's caption (Hugging Face imagefolder)
    OUT/train/instances.json         COCO instances: a box per object, its class as category
    OUT/objects/train/<class>/*.png  the object images the canvases are made of, in class folders (ImageFolder)

and the same under ``test/``. Train from them with ``data.dataset='folder'``, ``data.path=OUT`` (images,
captions and layouts) or ``data.path=OUT/objects`` (labels). Existing files are kept unless --overwrite.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from sde_lib import cli
from sde_lib.data import canvas

SIZES = {"canvas_digits": 16, "canvas_fashion_mnist": 32}


def to_8bit(levels: np.ndarray, n_levels: int) -> np.ndarray:
    """Integer levels 0..L-1 as 8-bit grey (0..255): exact for 256 levels, evenly spread for fewer."""
    return np.round(levels.astype(np.float64) * 255.0 / (n_levels - 1)).astype(np.uint8)


def export_split(name: str, split: str, out: str) -> int:
    spec = canvas.SPECS[name]
    x, captions, layouts = canvas.canvases(name, split)
    folder = os.path.join(out, split)
    os.makedirs(folder, exist_ok=True)
    names = [f"{i:05d}.png" for i in range(len(x))]
    for n, image in zip(names, x):
        Image.fromarray(to_8bit(image[..., 0], spec.levels)).save(os.path.join(folder, n))
    with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
        for n, caption in zip(names, captions):
            f.write(json.dumps({"file_name": n, "text": caption}) + "\n")
    size = spec.size
    annotations = []
    for i, boxes in enumerate(layouts):
        for c, x0, y0, x1, y1 in boxes[boxes[:, 0] >= 0].astype(float):  # the layout's order: first object first
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(c),
                                "bbox": [x0 * size, y0 * size, (x1 - x0) * size, (y1 - y0) * size],
                                "area": (x1 - x0) * (y1 - y0) * size * size, "iscrowd": 0})
    coco = {"images": [{"id": i, "file_name": n, "width": size, "height": size} for i, n in enumerate(names)],
            "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in enumerate(spec.class_names)]}
    with open(os.path.join(folder, "instances.json"), "w") as f:
        json.dump(coco, f)
    objects, labels = canvas.objects_of(name, split)
    for c, class_name in enumerate(spec.class_names):
        sub = os.path.join(out, "objects", split, class_name)
        os.makedirs(sub, exist_ok=True)
        for j in np.flatnonzero(labels == c):
            Image.fromarray(to_8bit(objects[j], spec.levels)).save(os.path.join(sub, f"{j:05d}.png"))
    return len(x)


def main(argv=None) -> None:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--canvas", default="canvas_digits", choices=sorted(canvas.SPECS))
    p.add_argument("--out", required=True, help="the folder to write (train/, test/, objects/)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    a = p.parse_args(argv)
    with cli.exit_on_user_error():
        if os.path.isdir(a.out) and os.listdir(a.out) and not a.overwrite:
            raise ValueError(f"{a.out} already holds files; choose another --out, or --overwrite")
        counts = {split: export_split(a.canvas, split, a.out) for split in ("train", "test")}
    print(f"wrote {counts['train']} train and {counts['test']} test canvases of {a.canvas} to {a.out}")


if __name__ == "__main__":
    main()
