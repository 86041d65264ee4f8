"""A user's own files as data: class folders, metadata.jsonl / .csv captions, COCO layouts and precomputed
embeddings, each trained a few steps and sampled by name; images of other sizes; the lazy pipeline equals
the in-memory one; every malformed record is one line naming the file and the record, and nothing is
written into the run folder."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import sde_lib
from sde_lib import data
from sde_lib.data import Dataset, files
from sde_lib.runs import trainer
from tests.helpers import override, scripts, toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("bar", "cross")


def pattern(kind: str, size=(12, 10), shift: int = 0) -> np.ndarray:
    """A grey image (H, W) of ``size``: a horizontal bar, or a cross, moved by ``shift`` pixels."""
    h, w = size
    x = np.zeros((h, w), np.uint8)
    x[h // 2 - 1 + shift % 3:h // 2 + 1 + shift % 3, :] = 200
    if kind == "cross":
        x[:, w // 2 - 1:w // 2 + 1] = 200
    return x


def write_folder(root, n_per_class: int = 8, classes: bool = True) -> dict:
    """train/ and test/ with 12 x 10 PNGs (class subfolders, or loose files), metadata.jsonl (two captions for
    every even image), metadata.csv, instances.json (COCO, one box per image) and embeddings.npz."""
    out = {}
    for split in ("train", "test"):
        folder = os.path.join(root, split)
        names = []
        for c, kind in enumerate(CLASSES):
            sub = os.path.join(folder, kind) if classes else folder
            os.makedirs(sub, exist_ok=True)
            for i in range(n_per_class):
                name = f"{kind}/{i:02d}.png" if classes else f"{kind}_{i:02d}.png"
                Image.fromarray(pattern(kind, shift=i)).save(os.path.join(folder, name))
                names.append(name)
        with open(os.path.join(folder, "metadata.jsonl"), "w") as f:
            for i, name in enumerate(names):
                kind = name.split("/")[0].split("_")[0]
                f.write(json.dumps({"file_name": name, "text": f"a {kind}."}) + "\n")
                if i % 2 == 0:
                    f.write(json.dumps({"file_name": name, "text": f"One {kind}, in grey"}) + "\n")
        with open(os.path.join(folder, "metadata.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file_name", "text"])
            for i, name in enumerate(names):
                w.writerow([name, f"a {name.split('/')[0].split('_')[0]}."])
        coco = {"images": [{"id": i, "file_name": n, "width": 10, "height": 12} for i, n in enumerate(names)],
                "categories": [{"id": 7, "name": "bar"}, {"id": 9, "name": "cross"}],
                "annotations": [{"id": 100 + i, "image_id": i, "category_id": 7 if "bar" in n else 9,
                                 "bbox": [1, 2, 8, 6]} for i, n in enumerate(names)]}
        with open(os.path.join(folder, "instances.json"), "w") as f:
            json.dump(coco, f)
        rng = np.random.default_rng(0)
        context = np.stack([np.tile(np.eye(8, dtype=np.float32)[CLASSES.index(n.split("/")[0].split("_")[0])],
                                    (3, 1)) for n in names]) + 0.01 * rng.normal(size=(len(names), 3, 8))
        np.savez(os.path.join(folder, "embeddings.npz"), file_name=np.asarray(names), context=context.astype(np.float32),
                 length=np.full(len(names), 3))
        out[split] = names
    return out


def folder_config(path, kind: str = "none", **overrides):
    """A tiny U-Net (or MLP for labels) on an 8 x 8 grey folder data set, 10 updates."""
    c = toy_config({})
    c.data.dataset, c.data.path, c.data.image_size, c.data.num_channels = "folder", str(path), 8, 1
    c.data.levels, c.data.centered, c.data.toy_name = 256, True, "mixture"
    c.condition.kind = kind
    t = c.training
    t.n_iters, t.batch_size, t.log_freq, t.eval_freq, t.snapshot_freq = 10, 8, 5, 1000, 10
    t.snapshot_freq_for_preemption, t.snapshot_sampling, t.n_jitted_steps = 10, False, 1
    c.eval.batch_size, c.sampling.batch_size = 8, 8
    m = c.model
    if kind in ("none", "label"):
        m.name, m.hidden, m.n_layers = "mlp", 32, 2
        m.num_classes = 2 if kind == "label" else 0
    else:
        m.name, m.nf, m.ch_mult, m.num_res_blocks, m.attn_resolutions = "ddpmpp", 16, (1,), 1, (8,)
        m.dropout, m.context_dim, m.num_heads, m.context_depth = 0.0, 8, 2, 1
    return override(c, overrides)


# One persistent compilation cache for the module and the scripts it starts (conftest).
pytestmark = pytest.mark.usefixtures("module_compilation_cache")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("files") / "data"
    write_folder(str(root))
    return str(root)


SAMPLE_FLAGS = ("--num=2", "--steps=3", "--sampler=ddim")


def sample_script(workdir, out, *flags):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts/sample.py"), f"--workdir={workdir}",
                           *SAMPLE_FLAGS, f"--out={out}", *flags],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


# ----------------------------------------------------------------------------------- reading files
def test_images_of_other_sizes_and_the_resize_policies(tmp_path):
    path = tmp_path / "one.png"
    Image.fromarray(np.tile(np.linspace(0, 250, 20), (12, 1)).astype(np.uint8)).save(path)  # 20 wide, 12 high
    crop, squash, pad = (files.read_image(str(path), 1, 6, p)[..., 0].astype(int) for p in files.RESIZE)
    assert crop.shape == squash.shape == pad.shape == (6, 6)
    # squash keeps the whole ramp (0 .. 250); crop its middle 12 columns; pad adds black rows above and below.
    assert squash[:, 0].max() < 30 and crop[:, 0].min() > 40 and crop[:, -1].max() < 220 < squash[:, -1].min()
    assert pad[0].max() < 30 and pad[-1].max() < 30 and abs(pad[3, -1] - squash[3, -1]) < 20
    # A box maps with its image: the left and right 4 columns of a 20 x 12 image are cut off by the crop.
    assert files.box_map(20, 12, "crop") == (4.0, 0.0, 12.0, 12.0)
    assert files.box_map(20, 12, "pad") == (0.0, -4.0, 20.0, 20.0)
    rgb = files.read_image(str(path), 3, 6)
    assert rgb.shape == (6, 6, 3) and np.array_equal(rgb[..., 0], crop)


def test_formats_read_row_for_row(folder):
    spec = data.parse({"dataset": "folder", "path": folder, "image_size": 8, "num_channels": 1})
    x = data.load_split(spec, "train")
    assert isinstance(x, files.ImageFiles) and x.shape == (16, 8, 8, 1) and x[3].shape == (8, 8, 1)
    assert data.load_class_names(spec) == CLASSES
    labels = data.load_labels(spec, "train")
    names = files.index(folder, "train", 0)[1]
    assert labels.tolist() == [CLASSES.index(n.split("/")[0]) for n in names]
    captions = data.load_captions(spec, "train")
    assert captions[0] == ["a bar.", "One bar, in grey"] and captions[1] == ["a bar."]
    via_csv = data.load_captions(data.parse({**spec.__dict__, "captions": "metadata.csv"}), "train")
    assert via_csv == [c[:1] for c in captions]
    layouts, classes = data.load_layouts(spec, "train", 2)
    assert classes == CLASSES and layouts.shape == (16, 2, 5) and (layouts[:, 1, 0] == -1).all()
    # bbox [1, 2, 8, 6] of a 10 x 12 image, centre-cropped to its 10 x 10 middle (rows 1..11): y - 1.
    np.testing.assert_allclose(layouts[0, 0], [0, 0.1, 0.1, 0.9, 0.7], atol=1e-6)
    context, mask = data.load_embeddings(spec, "train")
    assert context.shape == (16, 3, 8) and mask.all()


def test_the_lazy_pipeline_gives_the_in_memory_batches(folder, tmp_path):
    """Folder images read through grain (threads, or a worker process) equal the same pixels held in memory."""
    spec = {"dataset": "folder", "path": folder, "image_size": 8, "num_channels": 1, "random_flip": True,
            "uniform_dequantization": True}
    pixels = {s: data.load_split(spec, s)[:] for s in ("train", "test")}
    np.savez(tmp_path / "same.npz", train=pixels["train"], test=pixels["test"])
    memory = Dataset({**spec, "dataset": "npz", "path": str(tmp_path / "same.npz"), "levels": 256}, "train", 4, 3)
    want = [memory.batch_at(s) for s in range(10)]
    for workers in (0, 1):
        lazy = Dataset(spec, "train", 4, 3, workers=workers)
        items = lazy.iterate(0)
        got = [next(items) for _ in range(10)]
        assert lazy.lazy and all(np.array_equal(a, b) for a, b in zip(got, want)), workers


# ---------------------------------------------------------------------------------- training on them
@pytest.mark.slow
def test_class_folders_train_and_sample_by_name(folder, tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train(folder_config(folder, "label"), workdir, progress=False)
    r = sde_lib.load_run(workdir, warn=False)
    assert r.encoder == CLASSES
    x, _ = r.sample(jax.random.PRNGKey(0), 4, "ddim", 3, label="cross")  # the script's shapes: one compile
    assert x.shape == (4, 8, 8, 1)
    out, bad = scripts(*[("sample.py", *SAMPLE_FLAGS, f"--workdir={workdir}", f"--out={tmp_path / o}", label)
                         for o, label in (("s", "--label=bar,cross"), ("t", "--label=circle"))])
    assert out.returncode == 0, out.stderr[-2000:]
    assert list(np.load(str(tmp_path / "s.npz"))["conditions"]) == ["class 0 (bar)", "class 1 (cross)"]
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: --label must be classes")


@pytest.mark.slow
@pytest.mark.parametrize("kind, flag, rows", [
    ("caption", "--prompts=FILE", ["a bar.", "a cross."]),
    ("layout", "--layout=cross,0.1,0.1,0.9,0.7", ["cross,0.1,0.1,0.9,0.7"]),
    ("embedding", "--embedding=test:3", ["test:3"]),
])  # fmt: skip
def test_captions_layouts_and_embeddings_from_files_train_and_sample(folder, tmp_path, kind, flag, rows):
    overrides = {"layout": {"model.context_len": 11}, "embedding": {"model.context_len": 3}}.get(kind, {})
    workdir = str(tmp_path / "run")
    trainer.train(folder_config(folder, kind, **overrides), workdir, progress=False)
    r = sde_lib.load_run(workdir, warn=False)
    assert r.kind.name == kind
    if kind == "caption":  # the tokenizer was fitted to the run's captions and saved with it
        assert r.encoder.tokens("a cross.") == ["a", "Ġcross", "."]
        (tmp_path / "prompts.txt").write_text("a bar.\n\na cross.\n")  # a prompt file: one row a line
        flag = flag.replace("FILE", str(tmp_path / "prompts.txt"))
    out = sample_script(workdir, str(tmp_path / "s"), "--guidance=2", flag)
    assert out.returncode == 0, out.stderr[-2000:]
    saved = np.load(str(tmp_path / "s.npz"))
    assert saved["samples"].shape == (2 * len(rows), 8, 8, 1) and list(saved["conditions"]) == rows


# ---------------------------------------------------------------------------------------- bad input
def _break(root, split, name, edit):
    """Rewrite ``root/split/name`` by ``edit(text) -> text``."""
    path = os.path.join(root, split, name)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(edit(text))
    return path


def _coco(edit):
    def change(text):
        coco = json.loads(text)
        edit(coco)
        return json.dumps(coco)
    return change


BAD = [
    ("caption", "metadata.jsonl", lambda t: t.replace('"file_name": "bar/01.png", ', "", 1),
     r"metadata.jsonl line \d+: no file_name"),
    ("caption", "metadata.jsonl", lambda t: t.replace('"text": "a cross."', '"text": "  "', 1),
     r"metadata.jsonl line \d+: empty or missing 'text' for 'cross/00.png'"),
    ("layout", "instances.json", _coco(lambda c: c["annotations"][3].update(bbox=[4, 2, 8, 6])),
     r"instances.json annotation 103 \(bar/03.png\): box \[4, 2, 8, 6\] is outside the 10 x 12 image"),
    ("layout", "instances.json", _coco(lambda c: c["annotations"][3].update(bbox=[1, 2, 0, 6])),
     r"instances.json annotation 103 \(bar/03.png\): box .* or of zero area"),
    ("layout", "instances.json", _coco(lambda c: c["annotations"][5].update(category_id=4)),
     r"instances.json annotation 105: unknown category_id 4"),
    ("layout", "instances.json", _coco(lambda c: c["annotations"].extend(
        [dict(c["annotations"][0], id=900 + j) for j in range(2)])),
     r"instances.json annotation 901 \(bar/00.png\): more than model.max_boxes=2 boxes in one image"),
]  # fmt: skip


@pytest.mark.parametrize("kind, name, edit, message", BAD, ids=[m.split(": ")[-1][:30] for *_, m in BAD])
def test_a_malformed_record_is_one_line_and_writes_nothing(tmp_path, kind, name, edit, message):
    root = str(tmp_path / "data")
    write_folder(root, n_per_class=4)
    _break(root, "train", name, edit)
    workdir = tmp_path / "run"
    overrides = {"model.context_len": 11} if kind == "layout" else {}
    with pytest.raises(ValueError, match=message) as err:
        trainer.train(folder_config(root, kind, **overrides), str(workdir), progress=False)
    assert "\n" not in str(err.value) and os.path.join(root, "train", name) in str(err.value)
    assert not workdir.exists()


def test_unreadable_images_and_embeddings_of_the_wrong_width(tmp_path):
    root = str(tmp_path / "data")
    write_folder(root, n_per_class=5)
    with open(os.path.join(root, "train", "cross", "02.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(ValueError, match=r"train/cross/02.png: cannot read as an image") as err:
        trainer.train(folder_config(root), str(tmp_path / "run"), progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    os.remove(os.path.join(root, "train", "cross", "02.png"))
    for name in ("metadata.jsonl", "metadata.csv"):
        os.remove(os.path.join(root, "train", name))
    with pytest.raises(FileNotFoundError, match=r"train: no captions \(metadata.jsonl or metadata.csv"):
        trainer.train(folder_config(root, "caption"), str(tmp_path / "run"), progress=False)
    with pytest.raises(ValueError, match=r"train/embeddings.npz: the embeddings are 8 wide, but "
                                         r"config.model.context_dim is 16"):
        trainer.train(folder_config(root, "embedding", **{"model.context_dim": 16, "model.context_len": 3}),
                      str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
