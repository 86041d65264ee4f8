"""Latent diffusion with cross-attention: attention masks, identity at initialisation, tokenizers, the
canvas data, the stored latent scale, end-to-end training and sampling, and one-line errors."""

import json
import os
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sde_lib
from models.attention import SpatialTransformer, TokenEncoder
from models.layers import GroupNorm
from sde_lib.conditioning import tokenizers as text
from sde_lib.runs import folder as run_folder
from sde_lib.runs import trainer
from sde_lib.data import canvas, scale
from tests.helpers import override, scripts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_masked_padding_token_changes_nothing_and_the_block_starts_as_identity():
    enc = TokenEncoder(12, 6, 16, depth=2, heads=4, rngs=nnx.Rngs(0))
    ids = jnp.array([[1, 5, 6, 0, 0, 0]])
    st = SpatialTransformer(8, 16, heads=2, head_dim=4, depth=1, norm=GroupNorm(8), rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 8))
    call = nnx.jit(lambda module, *args: module(*args))  # one program per shape, not one per eager operation
    context, mask = call(enc, ids)
    np.testing.assert_array_equal(call(st, x, (context, mask)), x)  # zero-initialised projection out
    # Train the projection away from zero, then compare: a padded position's value never matters.
    st.proj_out.kernel[...] = jax.random.normal(jax.random.PRNGKey(2), st.proj_out.kernel.shape)
    other = context.at[0, 4].set(100.0)  # garbage at a masked (padding) position
    np.testing.assert_allclose(call(st, x, (context, mask)), call(st, x, (other, mask)), rtol=1e-6, atol=1e-6)
    assert not np.allclose(call(st, x, (context, mask)), call(st, x, (other, jnp.ones_like(mask))))
    # The encoder ignores padding too: the caption's context does not depend on how much padding follows.
    for shorter in ([[1, 5, 6, 0]], [[1, 5, 6]]):
        c2, _ = call(enc, jnp.array(shorter))
        np.testing.assert_allclose(c2[:, :3], context[:, :3], rtol=1e-5, atol=1e-6)


def test_tokenizers():
    captions = ["a 3 left of a 7", "a 2 above an 8", "an 8 at the top right"] * 20
    tok = text.CaptionTokenizer.build(captions, max_len=8)
    ids = tok.encode("a 3 left of a 7")
    assert ids[0] == text.BOS and tok.decode(ids) == "a 3 left of a 7" and text.UNK not in ids.tolist()
    assert tok.tokens("a 3 left of a 7") == ["a", "Ġ3", "Ġleft", "Ġof", "Ġa", "Ġ7"]  # seen words stay whole
    # Case, punctuation and words never seen: normalised, then split into known pieces; nothing is unknown.
    assert tok.tokens("A 3, LEFT of a 7!") == ["a", "Ġ3", ",", "Ġleft", "Ġof", "Ġa", "Ġ7", "!"]
    pieces = tok.tokens("a cat")  # "cat" never appeared: its letters do
    assert len(pieces) > 2 and tok.decode(tok.encode("a cat")) == "a cat"
    with pytest.raises(ValueError, match="has 8 tokens; at most 7 fit"):
        tok.encode("a 3 left of a 7 and")
    assert tok.decode(tok.null()) == "" and tok.null()[0] == text.BOS and tok.null()[1] == text.PAD
    again = text.from_state(tok.state())  # saved with the run, read back the same
    assert again.encode("a 2 above an 8").tolist() == tok.encode("a 2 above an 8").tolist()
    # Runs trained with the retired word tokenizer still load: unknown words read as UNK.
    old = text.from_state({"kind": "words", "words": ["3", "7", "a", "left", "of"], "max_len": 8})
    assert old.encode("a 9 left of a 7").tolist()[:7] == [text.BOS, 5, text.UNK, 6, 7, 5, 4]
    lay = text.LayoutTokenizer(10, 2, class_names=[str(i) for i in range(10)])
    boxes = np.array([[3, 0, 0, 0.5, 0.5], [7, 0.5, 0, 1, 0.5]])
    assert lay.encode(boxes).tolist()[:6] == [text.BOS, 3 + 3, 3 + 10 + 0, 3 + 10 + 0, 3 + 10 + 4, 3 + 10 + 4]
    with pytest.raises(ValueError, match="at most 2 boxes"):
        lay.encode(np.zeros((3, 5)))
    with pytest.raises(ValueError, match="class,x0,y0,x1,y1"):
        lay.parse("3,0,0")
    with pytest.raises(ValueError, match="'giraffe' is neither a class of this run"):
        lay.parse("giraffe,0,0,1,1")
    np.testing.assert_array_equal(lay.parse("3,0,0,0.5,0.5;7,0.5,0,1,0.5"), boxes)


def test_canvas_captions_match_their_pixels_and_hold_out_combinations():
    spec = canvas.SPECS["canvas_digits"]
    x, captions, layouts = canvas.canvases("canvas_digits", "train")
    slots = canvas.slot_labels(layouts)
    assert all(canvas.satisfies(c, s, spec) for c, s in zip(captions[:500], slots[:500]))
    for i in range(50):  # empty slots are black, filled ones hold a digit
        for s in range(4):
            r, c = divmod(s, 2)
            patch = x[i, 8 * r:8 * r + 8, 8 * c:8 * c + 8]
            assert (patch.max() > 0) == (slots[i, s] >= 0)
    hidden = canvas.held_out(spec)
    assert len(hidden) == 20
    assert not any(canvas.relation_of(c, spec) in hidden for c in captions)
    assert any(canvas.relation_of(c, spec) in hidden for c in canvas.canvases("canvas_digits", "test")[1])
    assert canvas.swapped("a 3 left of an 8", spec) == "an 8 left of a 3"


def snapshot(folder: str) -> dict:
    """Every file's bytes under ``folder``, by relative path."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


def _short(path, **kw):
    c = runpy.run_path(os.path.join(ROOT, path))["get_config"]()
    short = {"training.n_iters": 20, "training.n_jitted_steps": 1, "training.snapshot_freq": 20,
             "training.snapshot_freq_for_preemption": 20, "training.log_freq": 10,
             "training.eval_freq": 1000,  # no evaluation step to compile in a 20-step run
             "training.batch_size": 32, "eval.batch_size": 100}
    return override(c, {**short, **kw})


# One persistent compilation cache for the module and the scripts it starts (conftest).
pytestmark = pytest.mark.usefixtures("module_compilation_cache")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    ae = str(root / "ae")
    trainer.train(_short("configs/canvas/autoencoder.py", **{"model.nf": 8}), ae, progress=False)
    ae_files = snapshot(ae)
    tiny = {"first_stage.workdir": ae, "model.nf": 16, "model.ch_mult": (1,), "model.attn_resolutions": (4,)}
    caption = str(root / "caption")  # one U-Net level: the smallest cross-attention model, for compile time
    trainer.train(_short("configs/canvas/latent_caption.py", **tiny), caption, progress=False)
    layout = str(root / "layout")
    trainer.train(_short("configs/canvas/latent_layout.py", **tiny), layout, progress=False)
    assert snapshot(ae) == ae_files  # the first stage is read, never written
    return ae, caption, layout


@pytest.mark.slow
def test_latent_training_and_sampling_end_to_end(runs):
    ae, caption, _ = runs
    r = sde_lib.load_run(caption, warn=False)
    stored = json.load(open(os.path.join(caption, run_folder.FIRST_STAGE)))
    assert stored["first_stage"] == os.path.abspath(ae) and stored["step"] == 20 and stored["scale"] > 0
    assert r.first_stage.scale == stored["scale"] and r.model_dims == (4, 4, 4) and r.dims == (16, 16, 1)
    # The scale is applied inside encode / decode: scaled latents of training canvases have unit spread.
    imgs = jnp.asarray(scale(canvas.canvases("canvas_digits", "test")[0][:256], 17, True))
    z = r.first_stage.encode(imgs, jax.random.PRNGKey(0))
    assert 0.7 < float(jnp.std(z)) < 1.4
    # The first stage is frozen: its parameters are the autoencoder run's EMA ones (not in the latent run's
    # state, which holds the U-Net and its token encoder only), and its run folder was never written.
    ae_run = sde_lib.load_run(ae, warn=False)
    mean = nnx.merge(ae_run.graphdef, ae_run.state.ema).encode(imgs)[0]
    # (compiled vs op-by-op: float rounding differs at ~1e-6; the raw parameters differ by far more)
    np.testing.assert_allclose(r.first_stage.encode(imgs), r.first_stage.scale * mean, rtol=1e-4, atol=1e-4)
    raw = nnx.merge(ae_run.graphdef, ae_run.state.params).encode(imgs)[0]
    assert float(jnp.max(jnp.abs(r.first_stage.encode(imgs) - r.first_stage.scale * raw))) > 1e-2
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(r.state.params)[0]}
    assert not any("enc_in" in p or "quant_conv" in p for p in paths) and any("context_encoder" in p for p in paths)
    # Sampling returns decoded images; guidance at scale 1 is the conditional branch.
    key = jax.random.PRNGKey(1)
    x, info = r.sample(key, 4, "ddim", 5, prompt="a 3 left of a 7")
    assert x.shape == (4, 16, 16, 1) and info["nfe"] == 5 and np.isfinite(np.asarray(x)).all()
    g, _ = r.sample(key, 4, "ddim", 5, prompt="a 3 left of a 7", guidance=1.0)
    np.testing.assert_allclose(x, g, rtol=1e-4, atol=1e-4)
    assert not np.allclose(x, r.sample(key, 4, "ddim", 5, prompt="a 7 left of a 3")[0])  # the prompt is used
    # A word the captions never held is split into known pieces, not refused (same shapes: no new compile).
    assert np.isfinite(np.asarray(r.sample(key, 4, "ddim", 5, prompt="a cat left of a 7")[0])).all()
    with pytest.raises(ValueError, match="at most 11 fit"):
        r.sample(key, 4, "ddim", 5, prompt=" ".join(["a"] * 12))


@pytest.mark.slow
def test_layout_runs_train_and_sample_by_boxes(runs, tmp_path):
    _, _, layout = runs
    r = sde_lib.load_run(layout, warn=False)
    assert r.kind.name == "layout" and r.encoder.max_objects == 2  # the canvas layouts' own box count
    key = jax.random.PRNGKey(1)
    one = np.array([[3, 0.0, 0.0, 0.5, 0.5]])  # fewer boxes than the data's layouts: padded, not refused
    two = np.array([[3, 0.0, 0.0, 0.5, 0.5], [7, 0.5, 0.0, 1.0, 0.5]])
    x, info = r.sample(key, 4, "ddim", 5, layout=one)
    assert x.shape == (4, 16, 16, 1) and info["nfe"] == 5
    assert not np.allclose(x, r.sample(key, 4, "ddim", 5, layout=two)[0])  # the boxes are used
    np.testing.assert_allclose(x, r.sample(key, 4, "ddim", 5, layout=one, guidance=1.0)[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at most 2 boxes"):
        r.sample(key, 4, "ddim", 5, layout=np.concatenate([two, one]))
    cmd = [sys.executable, os.path.join(ROOT, "scripts/sample.py"), f"--workdir={layout}", "--num=2", "--steps=5",
           "--sampler=ddim", "--layout=3,0,0,0.5,0.5", "--layout=3,0,0,0.5,0.5;7,0.5,0,1,0.5", "--guidance=2",
           f"--out={tmp_path}/grid"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-2000:]
    saved = np.load(f"{tmp_path}/grid.npz")
    assert saved["samples"].shape == (4, 16, 16, 1) and len(saved["conditions"]) == 2


@pytest.mark.slow
def test_bad_first_stages_fail_in_one_line(runs, tmp_path):
    ae, _, _ = runs
    cli = ["train.py", "--config=configs/canvas/latent_caption.py"]
    missing, other = scripts(  # one process starts both command lines
        cli + [f"--workdir={tmp_path}/x", f"--config.first_stage.workdir={tmp_path}/missing"],
        # An autoencoder of other images: 16 x 16 canvases, not 8 x 8 digits.
        cli + [f"--workdir={tmp_path}/y", f"--config.first_stage.workdir={ae}", "--config.condition.kind=none",
               "--config.data.dataset=digits", "--config.data.image_size=8"])
    r = missing
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: config.first_stage.workdir=")
    assert "no such autoencoder run folder" in r.stderr and not os.path.exists(f"{tmp_path}/x")
    last = other.stderr.strip().splitlines()[-1]
    assert other.returncode != 0 and "is an autoencoder of (16, 16, 1) images" in last
    assert "Traceback" not in other.stderr
