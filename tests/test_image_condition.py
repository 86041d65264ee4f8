"""Image conditions (``sde_lib.conditioning.images``): super-resolution (``image``) and learned inpainting
(``masked_image``) — their channels, null values, training masks, bad input, and (slow) a tiny run of each
trained a few steps and sampled through ``load_run(...).sample`` and ``scripts/sample.py``."""

import os

import jax
import numpy as np
import pytest
from PIL import Image as PILImage

import sde_lib
from sde_lib import conditioning, data
from sde_lib.conditioning.images import RandomMasks, named_mask, random_masks
from sde_lib.config import validate_config
from sde_lib.data import counter_rng
from sde_lib.data.pipeline import first_choice
from sde_lib.evaluation.conditional import MASKS, make_mask
from sde_lib.runs import trainer
from tests.helpers import ROOT, override, scripts
from tests.test_configs import load

DIMS = (8, 8, 1)
TINY = {"model.hidden": 32, "model.n_layers": 2, "training.n_iters": 20, "training.batch_size": 64,
        "training.n_jitted_steps": 10, "training.log_freq": 10, "training.eval_freq": 20,
        "training.snapshot_freq": 20, "training.snapshot_freq_for_preemption": 20, "optim.warmup": 5}


def config_of(name: str, overrides: dict | None = None):
    return override(load(os.path.join(ROOT, f"configs/digits/{name}.py")), overrides or {})


@pytest.fixture(scope="module")
def contexts():
    """A Context per kind (the digits configs), and one of a latent run whose network sees 4 x 4 x 3 latents."""
    sr, inpaint = config_of("sr"), config_of("inpaint")
    ctx = {name: conditioning.Context(validate_config(c), None, DIMS, DIMS) for name, c in
           (("image", sr), ("masked_image", inpaint))}
    ctx["latent"] = {name: conditioning.Context(c.config, None, DIMS, (4, 4, 3)) for name, c in ctx.items()}
    return ctx


def test_the_inpainting_tables_masks_are_the_named_masks():
    # docs/conditional.md's table (make_mask) and an inpainting run's --mask names give the same masks.
    for name in MASKS:
        assert np.array_equal(make_mask(name, DIMS), named_mask(name, DIMS))
    m = named_mask("left_half", DIMS)[..., 0]
    assert m[:, :4].all() and not m[:, 4:].any()  # the name says what is observed
    m = named_mask("centre_box", DIMS)[..., 0]
    assert not m[2:6, 2:6].any() and m.sum() == 64 - 16
    m = named_mask("random_half", DIMS)
    assert np.array_equal(m[..., 0], np.random.default_rng(0).random((8, 8)) < 0.5)
    assert not np.array_equal(named_mask("random_half:1", DIMS), m)
    with pytest.raises(ValueError, match="mask must be one of left_half"):
        named_mask("diagonal", DIMS)


def test_training_masks_follow_the_documented_distribution():
    hashes = counter_rng.hash_items(counter_rng.make_key(5), np.arange(6000))
    m = random_masks(hashes, 8, 8)
    observed = m.reshape(len(m), -1).sum(axis=1)
    halves = np.array([any(np.array_equal(x, named_mask(n, (8, 8, 1))[..., 0]) for n in
                           ("left_half", "right_half", "top_half", "bottom_half")) for x in m])
    missing = (m == 0)
    rows, cols = missing.any(axis=2), missing.any(axis=1)
    # a box: the missing pixels are exactly the rectangle they span, 2..6 rows and columns (H/4..3H/4)
    box = np.array([not h and mr.sum() * mc.sum() == mi.sum() and 2 <= mr.sum() <= 6 and 2 <= mc.sum() <= 6
                    for h, mr, mc, mi in zip(halves, rows, cols, missing)])
    pixels = ~halves & ~box
    for share in (halves.mean(), box.mean(), pixels.mean()):
        assert abs(share - 1 / 3) < 0.03, (halves.mean(), box.mean(), pixels.mean())
    assert np.all(observed[halves] == 32)
    assert 0.2 < 1 - observed[pixels].min() / 64 and 1 - observed[pixels].max() / 64 < 0.8
    assert abs(np.mean(1 - observed[pixels] / 64) - 0.5) < 0.02  # p ~ U(0.25, 0.75)
    # the test table's masks are in the support: centre_box as a box, left_half as a half
    centre = named_mask("centre_box", (8, 8, 1))[..., 0]
    assert any(np.array_equal(x, centre) for x in m[box])
    only_box = random_masks(hashes[:500], 8, 8, ("box",))
    assert all(mi.sum() == mr.sum() * mc.sum() for mi, mr, mc in
               zip(only_box == 0, (only_box == 0).any(axis=2), (only_box == 0).any(axis=1)))


def test_masks_ride_with_their_examples_and_steps(contexts):
    """Training masks are a function of (seed, step, example): the same under another batch split or a restart,
    fresh at the next step, and the channels are the example's bin-centre image times its mask, and the mask."""
    config = contexts["masked_image"].config
    kind = conditioning.get("masked_image")
    cond = kind.encode(kind.read(config, "train"), contexts["masked_image"], source="train")
    assert isinstance(cond["concat"], RandomMasks)

    def batch(step, process_index=0, process_count=1):
        ds = data.Dataset(config.data, "train", 64, 3, process_index=process_index, process_count=process_count,
                          cond=cond)
        return ds.indices_at(step)[1], ds.cond_at(step)["concat"]

    idx, c = batch(7)
    assert c.shape == (64, 8, 8, 2)
    assert np.array_equal(c, batch(7)[1])  # a restarted pipeline draws the same masks
    assert np.array_equal(np.concatenate([batch(7, 0, 2)[1], batch(7, 1, 2)[1]]), c)  # any process split
    assert not np.array_equal(c, batch(8)[1])
    images = data.scale(data.load_split(config.data, "train")[idx], 17, True)
    mask = c[..., 1:]
    assert set(np.unique(mask)) == {0.0, 1.0}
    np.testing.assert_array_equal(c[..., :1], images * mask)
    # the same example at another step gets another mask (masks are per step, not per example)
    other = cond["concat"].masks(idx[:1], counter_rng.make_key(3, counter_rng.CHOICE, 8))
    assert other.shape == (1, 8, 8, 1)
    first = np.stack([cond["concat"].masks(idx[:1], counter_rng.make_key(3, counter_rng.CHOICE, s)) for s in range(8)])
    assert len({f.tobytes() for f in first}) > 4
    # evaluation rows (conditional bits/dim, snapshots): a fixed draw
    evaluation = first_choice(cond)["concat"]
    assert evaluation.shape == (1437, 8, 8, 2) and np.array_equal(evaluation[idx], cond["concat"].pick(idx, None))


def test_channels_null_values_and_latent_resolution(contexts):
    sr, inpaint = conditioning.get("image"), conditioning.get("masked_image")
    low = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
    c = sr.encode(low, contexts["image"], source="x")["concat"]
    assert c.shape == (3, 8, 8, 2)
    np.testing.assert_array_equal(c[:, ::2, ::2, 0], low[..., 0])  # nearest-neighbour repetition
    np.testing.assert_array_equal(c[:, 1::2, 1::2, 0], low[..., 0])
    assert np.all(c[..., 1] == 1)  # an image is given: the null (zeros) is not a mid-grey image
    for name, ctx in (("image", contexts["image"]), ("masked_image", contexts["masked_image"])):
        null = conditioning.get(name).null(ctx)["concat"]
        assert null.shape == (8, 8, 2) and not null.any()
    # a latent run: the condition at the latents' 4 x 4 (low resolution as it is; full resolution pooled)
    assert np.array_equal(sr.encode(low, contexts["latent"]["image"], source="x")["concat"][..., 0], low[..., 0])
    x = np.random.default_rng(1).uniform(-1, 1, (2, *DIMS)).astype(np.float32)
    mask = named_mask("left_half", DIMS)
    c = inpaint.encode([(x[0], mask), (x[1], "top_half")], contexts["masked_image"], source="x")["concat"]
    np.testing.assert_array_equal(c[0], np.concatenate([x[0] * mask, mask], -1))
    assert c[1, :4, :, 1].all() and not c[1, 4:, :, 1].any()
    lat = inpaint.encode([(x[0], mask)], contexts["latent"]["masked_image"], source="x")["concat"]
    assert lat.shape == (1, 4, 4, 2) and np.allclose(lat[0, :, :2, 1], 1) and np.allclose(lat[0, :, 2:, 1], 0)
    assert inpaint.null(contexts["latent"]["masked_image"])["concat"].shape == (4, 4, 2)


@pytest.mark.parametrize("kind, value, message", [
    ("image", np.zeros((3, 4, 4, 3)), "cond_image: condition images must be (N, 4, 4, 1)"),
    ("image", np.zeros((3, 8, 8, 1)), "cond_image: condition images must be (N, 4, 4, 1)"),
    ("masked_image", [(np.zeros((8, 8, 2)), "left_half")], "masked_image: images to inpaint must be (N, 8, 8, 1)"),
    ("masked_image", [(np.zeros(DIMS), np.full((8, 8), 0.5))], "masked_image: mask values must be 0"),
    ("masked_image", [(np.zeros(DIMS), np.ones((4, 4)))], "masked_image: a mask must be (H, W) or (H, W, 1)"),
    ("masked_image", [(np.zeros(DIMS), "diagonal")], "mask must be one of left_half"),
])
def test_bad_values_are_one_line(contexts, kind, value, message):
    with pytest.raises(ValueError) as err:
        conditioning.get(kind).encode(value, contexts[kind], source=conditioning.get(kind).user_arg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    paths = {"low": d / "low.png", "full": d / "full.png", "odd": d / "odd.png", "colour": d / "colour.png",
             "grey_rgb": d / "grey_rgb.png", "broken": d / "broken.png", "mask": d / "mask.png"}
    PILImage.fromarray(rng.integers(0, 256, (4, 4), np.uint8)).save(paths["low"])
    PILImage.fromarray(rng.integers(0, 256, (8, 8), np.uint8)).save(paths["full"])
    PILImage.fromarray(rng.integers(0, 256, (12, 12), np.uint8)).save(paths["odd"])
    PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(paths["colour"])
    PILImage.fromarray(np.repeat(rng.integers(0, 256, (8, 8, 1), np.uint8), 3, -1)).save(paths["grey_rgb"])
    paths["broken"].write_text("not an image")
    PILImage.fromarray(np.where(np.arange(8)[None, :] < 3, 255, 0).repeat(8, 0).astype(np.uint8)).save(paths["mask"])
    return {k: str(v) for k, v in paths.items()}


def test_condition_files(contexts, pngs):
    sr, inpaint = conditioning.get("image"), conditioning.get("masked_image")
    ctx = contexts["image"]
    # a PNG of the data's size is pooled like the training inputs; one of the low size is used as it is
    full = np.asarray(PILImage.open(pngs["full"]), np.float32)
    (_, v), = sr.parse_cli(pngs["full"], ctx)
    np.testing.assert_allclose(v[..., 0], ((full + 0.5) / 128 - 1).reshape(4, 2, 4, 2).mean(axis=(1, 3)), atol=1e-6)
    for name in ("low", "odd", "grey_rgb"):
        assert sr.parse_cli(pngs[name], ctx)[0][1].shape == (4, 4, 1)
    (label, v), = sr.parse_cli("test:5", ctx)
    test = data.scale(data.load_split(ctx.config.data, "test")[5], 17, True)
    assert label == "test:5" and np.allclose(v[..., 0], test[..., 0].reshape(4, 2, 4, 2).mean(axis=(1, 3)))
    rows = inpaint.parse_cli("test:5", contexts["masked_image"], mask=["left_half", "box:0,0,2,3", pngs["mask"]])
    assert [r[0] for r in rows] == ["test:5 left_half", "test:5 box:0,0,2,3", f"test:5 {pngs['mask']}"]
    assert np.array_equal(rows[0][1][0], test)
    assert rows[1][1][1][:2, :3].sum() == 0 and rows[1][1][1].sum() == 64 - 6
    assert rows[2][1][1][:, :3].all() and not rows[2][1][1][:, 3:].any()  # white observed


@pytest.mark.parametrize("kind, text, flags, message", [
    ("image", "{colour}", {}, "{colour}: a colour image, but the run's images have 1 channel"),
    ("image", "{broken}", {}, "{broken}: cannot read as an image"),
    ("image", "{missing}", {}, "{missing}: cannot read as an image"),
    ("image", "test:360", {}, "--cond_image=test:360: the test split has 360 examples"),
    ("masked_image", "{colour}", {"mask": ["left_half"]}, "{colour}: a colour image"),
    ("masked_image", "{broken}", {"mask": ["left_half"]}, "{broken}: cannot read as an image"),
    ("masked_image", "test:0", {}, "--masked_image=test:0 needs --mask"),
    ("masked_image", "test:0", {"mask": ["{broken}"]}, "{broken}: cannot read as an image"),
    ("masked_image", "test:0", {"mask": ["box:0,0,9,2"]}, "--mask=box:0,0,9,2: the box must lie in the 8 x 8 image"),
    ("masked_image", "test:0", {"mask": ["lefthalf"]}, "mask must be one of left_half"),
])
def test_bad_condition_input_is_one_line_naming_it(contexts, pngs, kind, text, flags, message):
    names = {**pngs, "missing": os.path.join(os.path.dirname(pngs["low"]), "missing.png")}
    flags = {k: [v.format(**names) for v in vs] for k, vs in flags.items()}
    with pytest.raises(ValueError) as err:
        conditioning.get(kind).parse_cli(text.format(**names), contexts[kind], **flags)
    assert str(err.value).startswith(message.format(**names)) and "\n" not in str(err.value)


@pytest.mark.parametrize("name, field, value, message", [
    ("sr", "model.concat_channels", 1, "config.model.concat_channels must be 2 (the data's 1 channels and a mask)"),
    ("inpaint", "model.concat_channels", 1, "config.model.concat_channels must be 2"),
    ("sr", "condition.options", {"factor": 3}, "config.condition.options.factor must be a positive int dividing"),
    ("inpaint", "condition.options", {"masks": "half,stripes"}, "config.condition.options.masks must be a comma list"),
    ("sr", "data.random_flip", True, "config.data.random_flip must be False for condition.kind='image'"),
])
def test_configs_are_validated(name, field, value, message):
    with pytest.raises(ValueError) as err:
        validate_config(override(config_of(name), {field: value}))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_training_free_super_resolution_measures_what_the_image_kind_conditions_on(contexts):
    """The training-free rows' measurement AvgPool(2) of a model-space test image is the ``image`` kind's
    condition (its reader, and the table's ``pool``); with an exact N(0, I) score each method keeps its NFE
    budget (DPS: 2 per step; RePaint: its walk's reverse steps), replacement and RePaint explain the input
    exactly and DPS better than the prior; a run of another model space is refused. (ΠGDM's wiring is
    replacement's, with a sampler of one call per step; left out to keep the test to three compilations.)"""
    from types import SimpleNamespace

    from sde_lib.evaluation import image_cond
    from sde_lib.evaluation.conditional import repaint_steps
    from sde_lib.operators import AvgPool

    cfg = contexts["image"].config
    x = data.scale(data.load_split(cfg.data, "test")[:8], cfg.data.levels, cfg.data.centered)
    y = np.asarray(AvgPool(2).A(x))
    np.testing.assert_array_equal(y, conditioning.get("image").read(cfg, "test")[:8])
    np.testing.assert_array_equal(y, image_cond.pool(x, 2))
    gauss = SimpleNamespace(sde=sde_lib.VPSDE(), score_fn=lambda z, t: -z, config=cfg, workdir="gauss")
    key = jax.random.PRNGKey(0)
    prior = np.sqrt(np.mean((np.asarray(AvgPool(2).A(jax.random.normal(key, x.shape))) - y) ** 2))
    budget = {"dps": 10, "replace": 10, "repaint": int(np.sum(np.diff(
        sde_lib.guidance.repaint_schedule(repaint_steps(10, 5, 2), 5, 2)) > 0))}
    for method, bound in (("replace", 1e-5), ("repaint", 1e-5), ("dps", 0.8 * prior)):  # DPS: 5 steps
        m = image_cond.training_free(gauss, method, 10, 2, zeta=1.0)
        out, nfe = m.fn(y, key)
        residual = np.sqrt(np.mean((np.asarray(AvgPool(2).A(out)) - y) ** 2))
        assert out.shape == x.shape and nfe == budget[method] <= 10 and m.stochastic, (method, nfe)
        assert residual < bound, (method, residual, prior)
    with pytest.raises(ValueError, match=r"^--uncond_workdir gauss: data.levels=17, but the super-resolution run's "
                                         r"is 256$"):
        image_cond.check_model_space(gauss, override(config_of("sr"), {"data.levels": 256}).data, "--uncond_workdir")


# ------------------------------------------------------------------------------------------ trained (slow)
@pytest.fixture(scope="module")
def runs(tmp_path_factory, module_compilation_cache):
    out = {}
    for name in ("sr", "inpaint"):
        out[name] = str(tmp_path_factory.mktemp(name) / "run")
        trainer.train(config_of(name, TINY), out[name], progress=False)
    return out


@pytest.mark.slow
def test_tiny_runs_sample_through_load_run_with_guidance(runs):
    # The calls compile the programs of sample.py's below (4 rows, 3 steps; guidance is traced).
    key = jax.random.PRNGKey(0)
    r = sde_lib.load_run(runs["sr"], warn=False)
    low = r.kind.read(r.config, "test")[:4]
    x, info = r.sample(key, 4, "dpm_solver_pp_3m", 3, cond_image=list(low))
    assert x.shape == (4, *DIMS) and np.all(np.isfinite(x))
    # classifier-free guidance: scale 1 is the conditional model, scale 0 the null branch (no image)
    one, _ = r.sample(key, 4, "dpm_solver_pp_3m", 3, cond_image=list(low), guidance=1.0)
    zero, _ = r.sample(key, 4, "dpm_solver_pp_3m", 3, cond_image=list(low), guidance=0.0)
    null, _ = r.sample(key, 4, "dpm_solver_pp_3m", 3)
    np.testing.assert_allclose(one, x, atol=1e-4)
    np.testing.assert_allclose(zero, null, atol=1e-4)
    assert not np.allclose(x, null, atol=1e-3)  # the condition reaches the network
    r = sde_lib.load_run(runs["inpaint"], warn=False)
    test = r.kind.read(r.config, "test")[:4]
    x, info = r.sample(key, 4, "dpm_solver_pp_3m", 3, masked_image=(test[0], "left_half"), guidance=2.0)
    assert x.shape == (4, *DIMS) and np.all(np.isfinite(x))
    y, _ = r.sample(key, 4, "dpm_solver_pp_3m", 3, masked_image=[(t, named_mask("centre_box", DIMS)) for t in test],
                    guidance=2.0)
    assert y.shape == (4, *DIMS) and not np.allclose(x, y, atol=1e-3)


@pytest.mark.slow
def test_sample_script_takes_condition_images_and_masks(runs, pngs, tmp_path):
    out = str(tmp_path / "s")
    ok_sr, ok_inpaint, colour, broken, mask_for_sr = scripts(
        ("sample.py", f"--workdir={runs['sr']}", "--cond_image=test:3", f"--cond_image={pngs['full']}", "--num=2",
         "--steps=3", f"--out={out}_sr"),
        ("sample.py", f"--workdir={runs['inpaint']}", "--masked_image=test:3", "--mask=left_half",
         f"--mask={pngs['mask']}", "--num=2", "--steps=3", "--guidance=2", f"--out={out}_in"),
        ("sample.py", f"--workdir={runs['sr']}", f"--cond_image={pngs['colour']}", f"--out={out}_c"),
        ("sample.py", f"--workdir={runs['inpaint']}", f"--masked_image={pngs['broken']}", "--mask=left_half",
         f"--out={out}_b"),
        ("sample.py", f"--workdir={runs['sr']}", "--cond_image=test:3", "--mask=left_half", f"--out={out}_m"))
    assert ok_sr.returncode == 0 and ok_inpaint.returncode == 0, (ok_sr.stderr[-2000:], ok_inpaint.stderr[-2000:])
    saved = np.load(out + "_sr.npz")
    assert saved["samples"].shape == (4, *DIMS) and list(saved["conditions"]) == ["test:3", pngs["full"]]
    saved = np.load(out + "_in.npz")
    assert saved["samples"].shape == (4, *DIMS)
    assert list(saved["conditions"]) == ["test:3 left_half", f"test:3 {pngs['mask']}"]
    grid = np.asarray(PILImage.open(out + "_in.png"))
    assert grid.ndim == 3 and grid.shape[0] > 100  # two labelled rows: the condition, then the samples
    for bad, line in ((colour, f"error: {pngs['colour']}: a colour image, but the run's images have 1 channel "
                               f"(config.data.num_channels)"),
                      (broken, f"error: {pngs['broken']}: cannot read as an image"),
                      (mask_for_sr, f"error: --mask does not apply to {runs['sr']} (condition.kind='image')")):
        assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith(line), bad.stderr[-1000:]


@pytest.mark.slow
def test_super_resolution_metrics_on_known_outputs(contexts):
    """The truth scores the PSNR cap, zero consistency error and the truth's accuracy; the input repeated
    (nearest) explains the input up to quantisation; only a method whose draws differ has diversity."""
    from sde_lib.evaluation import image_cond

    d = contexts["image"].config.data
    truth = data.scale(data.load_split(d, "test")[:40], 17, True)
    exact = image_cond.SRMethod("exact", lambda y, key: (truth, 0))  # deterministic: called once, on the 40
    noisy = image_cond.SRMethod("noisy", lambda y, key: (np.repeat(y, 2, 1).repeat(2, 2) + 0.3 * np.asarray(
        jax.random.normal(key, (len(y), *DIMS))), 0), stochastic=True)
    t = image_cond.super_resolution_table(d, 2, [exact, image_cond.interpolation("nearest", 2), noisy], n=40,
                                          diversity_inputs=4, diversity_samples=3)
    rows = {r["method"]: r for r in t["rows"]}
    assert rows["exact"]["psnr"] == 100.0 and rows["exact"]["consistency"] == 0.0
    assert rows["exact"]["accuracy"] == rows["truth"]["accuracy"] > 0.9 and rows["exact"]["diversity"] == 0.0
    assert 0 < rows["nearest"]["consistency"] < 0.02 and rows["nearest"]["psnr"] < 20
    assert rows["noisy"]["diversity"] > 0.05 and rows["noisy"]["mean_psnr"] > rows["noisy"]["psnr"]
