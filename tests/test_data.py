"""Data pipeline: splits, scaling convention, reproducible/resumable batches, file parsers, bad data."""

import gzip

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from sde_lib import data
from sde_lib.data import counter_rng, readers


def _cfg(seed=0, batch_size=64, eval_batch_size=100, n_jitted_steps=1, **data_fields):
    return ConfigDict(
        dict(
            seed=seed,
            data=dict(data_fields),
            training=dict(batch_size=batch_size, n_jitted_steps=n_jitted_steps),
            eval=dict(batch_size=eval_batch_size, split="test"),
        )
    )


@pytest.fixture(scope="module")
def digits_raw():
    return {s: data.load_split(dict(dataset="digits"), s) for s in ("train", "test")}


# ----------------------------------------------------------------------------------- counter RNG
def test_counter_permutation_is_a_seeded_permutation():
    p = counter_rng.permutation(1000, counter_rng.make_key(1, 2))
    assert np.array_equal(np.sort(p), np.arange(1000))
    assert np.array_equal(p, counter_rng.permutation(1000, counter_rng.make_key(1, 2)))
    assert not np.array_equal(p, counter_rng.permutation(1000, counter_rng.make_key(1, 3)))
    u = counter_rng.uniform(counter_rng.make_key(5), np.arange(100_000))
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005


# ------------------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("levels", [2, 17, 256])
@pytest.mark.parametrize("centered", [False, True])
def test_scale_dequantize_unscale_share_the_bins(levels, centered):
    k = np.arange(levels)
    lo, hi = data.model_range(centered)
    width = (hi - lo) / levels
    x = data.scale(k, levels, centered)
    assert x.dtype == np.float32 and len(np.unique(x)) == levels
    np.testing.assert_allclose(x, lo + (k + 0.5) * width, rtol=0, atol=1e-6)
    assert np.array_equal(data.unscale(x, levels, centered), k)
    # Offsets at both ends of [0, 1) and in between: the value stays in its own bin, also after float32 rounding.
    u = np.array([0.0, 1e-9, 0.25, 0.5, 0.999, 1 - 2.0**-53])
    kk, uu = np.meshgrid(k, u, indexing="ij")
    xd = data.dequantize(kk, uu, levels, centered)
    assert xd.dtype == np.float32
    assert np.all(xd.astype(np.float64) >= lo + kk * width) and np.all(xd.astype(np.float64) < lo + (kk + 1) * width)
    assert np.array_equal(data.unscale(xd, levels, centered), kk)
    assert data.to_uint8(x, levels, centered)[0] == 0 and data.to_uint8(x, levels, centered)[-1] == 255
    # The interval versions on another range share the same bins.
    np.testing.assert_array_equal(data.quantize(data.dequantize_interval(kk, uu, levels, -3.0, 5.0), levels, -3.0, 5.0),
                                  kk)


def test_unscale_clips_model_samples():
    assert np.array_equal(data.unscale(np.array([-3.0, 0.0, 1.0, 7.0]), 17, False), [0, 0, 16, 16])
    assert np.array_equal(data.unscale(np.array([-1.5, 1.5]), 256, True), [0, 255])


# -------------------------------------------------------------------------------------- digits
def test_digits_split_sizes_disjoint_and_17_levels(digits_raw):
    tr, te = digits_raw["train"], digits_raw["test"]
    assert tr.shape == (1437, 8, 8, 1) and te.shape == (360, 8, 8, 1) and tr.dtype == np.uint8
    itr, ite = data.split_indices(1797, "train", 0), data.split_indices(1797, "test", 0)
    assert len(np.intersect1d(itr, ite)) == 0 and len(np.union1d(itr, ite)) == 1797
    from sklearn.datasets import load_digits

    images = load_digits().images
    assert np.array_equal(tr[..., 0], images[itr]) and np.array_equal(te[..., 0], images[ite])
    assert np.array_equal(np.unique(tr), np.arange(17))
    other = data.load_split(dict(dataset="digits", seed=1), "test")
    assert not np.array_equal(other, te)
    assert data.data_dims(dict(dataset="digits")) == (8, 8, 1)


# ------------------------------------------------------------------------ batches: determinism
def test_batches_are_reproducible_and_resumable():
    cfg = _cfg(seed=3, batch_size=128, dataset="digits", uniform_dequantization=True, random_flip=True, centered=True)
    ds = data.Dataset(cfg.data, "train", 128, 3)
    assert ds.steps_per_epoch == 11
    run = data.make_iterator(cfg)
    uninterrupted = [next(run) for _ in range(25)]  # crosses two epoch boundaries
    assert uninterrupted[0].shape == (128, 8, 8, 1) and uninterrupted[0].dtype == np.float32
    assert -1.0 <= min(b.min() for b in uninterrupted) and max(b.max() for b in uninterrupted) < 1.0
    resumed = data.make_iterator(cfg, start_step=9)
    for i in range(9, 25):
        assert np.array_equal(next(resumed), uninterrupted[i])
    assert np.array_equal(data.Dataset(cfg.data, "train", 128, 3).batch_at(20), uninterrupted[20])
    assert not np.array_equal(data.Dataset(cfg.data, "train", 128, 4).batch_at(0), uninterrupted[0])
    stacked = next(data.make_iterator(_cfg(seed=3, batch_size=128, n_jitted_steps=4, **cfg.data), start_step=8))
    assert stacked.shape == (4, 128, 8, 8, 1)
    assert all(np.array_equal(stacked[i], uninterrupted[8 + i]) for i in range(4))


def test_an_epoch_visits_distinct_examples_and_epochs_reshuffle():
    ds = data.Dataset(dict(dataset="digits"), "train", 100, 0)
    epoch0 = np.concatenate([ds.indices_at(s)[1] for s in range(ds.steps_per_epoch)])
    epoch1 = np.concatenate([ds.indices_at(s)[1] for s in range(ds.steps_per_epoch, 2 * ds.steps_per_epoch)])
    assert len(np.unique(epoch0)) == len(epoch0) == 1400
    assert ds.indices_at(ds.steps_per_epoch)[0] == 1 and not np.array_equal(epoch0[:100], epoch1[:100])


def test_process_shards_tile_the_global_batch():
    cfg = dict(dataset="digits", uniform_dequantization=True, random_flip=True)
    whole = data.Dataset(cfg, "train", 64, 7, process_index=0, process_count=1)
    parts = [data.Dataset(cfg, "train", 64, 7, process_index=r, process_count=4) for r in range(4)]
    for step in (0, 30):
        assert np.array_equal(np.concatenate([p.batch_at(step) for p in parts]), whole.batch_at(step))
    with pytest.raises(ValueError, match="multiple of the process count"):
        data.Dataset(cfg, "train", 63, 7, process_index=0, process_count=4)


def test_flip_only_mirrors_and_dequantisation_stays_in_bins(digits_raw):
    raw = digits_raw["train"]
    for dequant in (False, True):
        ds = data.Dataset(dict(dataset="digits", random_flip=True, uniform_dequantization=dequant), "train", 256, 0)
        _, idx = ds.indices_at(2)
        levels = data.unscale(ds.batch_at(2), 17, False)
        same = np.all(levels == raw[idx], axis=(1, 2, 3))
        mirrored = np.all(levels == raw[idx][:, :, ::-1], axis=(1, 2, 3))
        assert np.all(same | mirrored)
        asym = ~np.all(raw[idx] == raw[idx][:, :, ::-1], axis=(1, 2, 3))  # there same and mirrored exclude
        assert 0.3 < np.mean(mirrored[asym]) < 0.7
    plain = data.Dataset(dict(dataset="digits"), "train", 256, 0)
    _, idx = plain.indices_at(2)
    np.testing.assert_array_equal(plain.batch_at(2), data.scale(raw[idx], 17, False))


def test_eval_batches_cover_the_split_in_order(digits_raw):
    cfg = _cfg(eval_batch_size=100, dataset="digits", random_flip=True)
    te = digits_raw["test"]
    batches = list(data.eval_batches(cfg))
    assert len(batches) == 4 and all(x.shape == (100, 8, 8, 1) for x, _ in batches)
    x = np.concatenate([b[0] for b in batches])
    mask = np.concatenate([b[1] for b in batches])
    assert mask.sum() == 360 and mask[:360].all()
    assert np.array_equal(data.unscale(x[mask], 17, False), te)  # dequantised by default, never flipped
    assert not np.array_equal(x[mask], data.scale(te, 17, False))
    again = np.concatenate([b[0] for b in data.eval_batches(cfg, repeat=1)])
    assert not np.array_equal(again, x) and np.array_equal(data.unscale(again, 17, False), data.unscale(x, 17, False))
    centres = np.concatenate([b[0] for b in data.eval_batches(cfg, dequantize=False)])
    np.testing.assert_array_equal(centres[mask], data.scale(te, 17, False))


def test_sharding_places_batches_on_devices():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    cfg = _cfg(batch_size=8 * len(jax.devices()), dataset="toy", toy_name="moons")
    host = next(data.make_iterator(cfg, start_step=5))
    placed = next(data.make_iterator(cfg, start_step=5, sharding=sharding))
    assert isinstance(placed, jax.Array) and placed.sharding == sharding
    np.testing.assert_array_equal(np.asarray(placed), host)


# ------------------------------------------------------------------------------------------ toy
def test_toy_sets_are_seeded_and_shaped():
    for name in ("mixture", "checkerboard", "moons", "swiss_roll"):
        spec = dict(dataset="toy", toy_name=name, seed=2)
        tr, te = data.load_split(spec, "train"), data.load_split(spec, "test")
        assert tr.shape == (50_000, 2) and te.shape == (10_000, 2) and tr.dtype == np.float32
        assert np.array_equal(tr, data.load_split(spec, "train"))
        assert not np.array_equal(tr[:100], data.load_split(dict(spec, seed=3), "train")[:100])
        assert not np.array_equal(tr[:100], te[:100]) and np.all(np.isfinite(tr))
    board = data.load_split(dict(dataset="toy", toy_name="checkerboard"), "train")
    cells = np.floor(board).astype(int) + 2
    assert np.all((cells >= 0) & (cells < 4)) and np.all((cells.sum(axis=1) % 2) == 0)
    assert data.data_dims(dict(dataset="toy", toy_name="gauss16d")) == (16,)


def test_toy_mixture_draws_follow_the_oracle_density():
    x = data.load_split(dict(dataset="toy", toy_name="grid2d"), "train").astype(np.float64)
    gmm = data.toy_density("grid2d")
    means, stds, weights = (np.asarray(a, np.float64) for a in (gmm.means, gmm.stds, gmm.weights))
    # grid2d's modes are 10 stds apart, so the nearest mean identifies the component of (almost) every draw.
    comp = np.argmin(((x[:, None, :] - means) ** 2).sum(-1), axis=1)
    freq = np.bincount(comp, minlength=len(weights)) / len(x)
    np.testing.assert_allclose(freq, weights, atol=4 * np.sqrt(weights.max() / len(x)))
    z = (x - means[comp]) / stds[comp, None]
    np.testing.assert_allclose(z.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(np.cov(z.T), np.eye(2), atol=0.03)
    with pytest.raises(ValueError, match="toy_name"):
        data.toy_density("moons")


# ------------------------------------------------------------------------------- file parsers
def _write_idx(path, array, type_byte=0x08, compress=False):
    header = bytes([0, 0, type_byte, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def test_idx_reader_raw_and_gzip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte", imgs)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[:3], compress=True)
    assert np.array_equal(readers.read_idx(str(tmp_path / "train-images-idx3-ubyte")), imgs)
    ints = rng.integers(-1000, 1000, (4, 3)).astype(np.int16)
    _write_idx(tmp_path / "i16.gz", ints, type_byte=0x0B, compress=True)
    got = readers.read_idx(str(tmp_path / "i16.gz"))
    assert got.dtype == np.int16 and np.array_equal(got, ints)
    spec = dict(dataset="fashion_mnist", path=str(tmp_path))
    assert np.array_equal(data.load_split(spec, "train")[..., 0], imgs)
    assert data.load_split(spec, "test").shape == (3, 28, 28, 1)


def test_cifar_binary_reader(tmp_path):
    rng = np.random.default_rng(1)
    images = {}
    for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 3)]:
        chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        (tmp_path / name).write_bytes(np.concatenate([labels, chw.reshape(n, -1)], axis=1).tobytes())
        images[name] = chw
    spec = dict(dataset="cifar10", path=str(tmp_path))
    train, test = data.load_split(spec, "train"), data.load_split(spec, "test")
    assert train.shape == (10, 32, 32, 3) and test.shape == (3, 32, 32, 3)
    chw = images["test_batch.bin"]
    assert test[1, 4, 7, 2] == chw[1, 2, 4, 7] and np.array_equal(test, chw.transpose(0, 2, 3, 1))
    assert np.array_equal(train[:2], images["data_batch_1.bin"].transpose(0, 2, 3, 1))


def test_npz_reader_layouts(tmp_path):
    rng = np.random.default_rng(2)
    both = tmp_path / "both.npz"
    np.savez(both, train=rng.integers(0, 4, (6, 4, 4, 3)), test=rng.integers(0, 4, (2, 4, 4, 3)))
    spec = dict(dataset="npz", path=str(both), levels=4, image_size=4, num_channels=3, random_flip=True)
    assert data.load_split(spec, "train").shape == (6, 4, 4, 3) and data.load_split(spec, "test").shape == (2, 4, 4, 3)
    one = tmp_path / "one.npz"
    vectors = rng.normal(size=(50, 3)).astype(np.float32)
    np.savez(one, x=vectors, labels=np.arange(50))
    tr, te = (data.load_split(dict(dataset="npz", path=str(one)), s) for s in ("train", "test"))
    assert tr.shape == (40, 3) and te.shape == (10, 3)
    assert np.array_equal(np.sort(np.concatenate([tr, te]), axis=0), np.sort(vectors, axis=0))
    assert data.data_dims(dict(dataset="npz", path=str(one))) == (3,)
    batch = data.Dataset(dict(dataset="npz", path=str(one)), "train", 8, 0).batch_at(0)
    assert all(any(np.array_equal(row, v) for v in tr) for row in batch)  # continuous data pass unscaled


def test_image_folder_reader(tmp_path):
    rng = np.random.default_rng(3)
    flat = tmp_path / "flat"
    flat.mkdir()
    pixels = [rng.integers(0, 256, (6, 6, 3), dtype=np.uint8) for _ in range(10)]
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(flat / f"im{i:02d}.png")
    Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).save(flat / "zz_big.png")
    rgb = dict(dataset="folder", path=str(flat), image_size=6, num_channels=3)
    train, test = data.load_split(rgb, "train"), data.load_split(rgb, "test")
    assert train.shape == (8, 6, 6, 3) and test.shape == (3, 6, 6, 3) and train.dtype == np.uint8
    every = {p.tobytes() for p in pixels}
    assert sum(x.tobytes() in every for x in np.concatenate([train, test])) == 10  # PNG is lossless; 1 resized
    grey = data.load_split(dict(rgb, num_channels=1), "train")
    assert grey.shape == (8, 6, 6, 1)
    split = tmp_path / "split"
    for sub, n in (("train", 3), ("test", 2)):
        (split / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), mode="L").save(split / sub / f"{i}.png")
    assert data.load_split(dict(rgb, path=str(split), num_channels=1), "test").shape == (2, 6, 6, 1)


# ------------------------------------------------------------------------------------ bad data
def test_bad_files_raise_errors_naming_the_file(tmp_path):
    def raises(exc, name, split="train", **spec):
        with pytest.raises(exc, match=name):
            data.load_split(spec, split)

    good = np.zeros((2, 28, 28), np.uint8)
    bad_magic = tmp_path / "magic-idx"
    bad_magic.write_bytes(b"\x00\x01\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="magic-idx"):
        readers.read_idx(str(bad_magic))
    truncated = tmp_path / "train-images-idx3-ubyte"
    _write_idx(truncated, good)
    truncated.write_bytes(truncated.read_bytes()[:-5])
    raises(ValueError, "train-images-idx3-ubyte: idx header declares", dataset="fashion_mnist", path=str(tmp_path))
    corrupt_gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    corrupt_gz.write_bytes(gzip.compress(b"0" * 100)[:20])
    raises(ValueError, "t10k-images-idx3-ubyte.gz: corrupt gzip", "test", dataset="fashion_mnist", path=str(tmp_path))
    raises(FileNotFoundError, "nope", dataset="fashion_mnist", path=str(tmp_path / "nope"))

    record = tmp_path / "test_batch.bin"
    record.write_bytes(bytes(3073 * 2 + 7))
    raises(ValueError, "test_batch.bin: size 6153 bytes", "test", dataset="cifar10", path=str(tmp_path))
    record.write_bytes(bytes([12]) + bytes(3072))
    raises(ValueError, "test_batch.bin: label byte 12", "test", dataset="cifar10", path=str(tmp_path))
    raises(FileNotFoundError, "data_batch_1.bin", dataset="cifar10", path=str(tmp_path))

    cases = {
        "nan.npz": (dict(x=np.array([[0.0, np.nan]] * 10, np.float32)), "NaN"),
        "range.npz": (dict(x=np.full((10, 4, 4, 1), 4, np.int64)), "outside the levels"),
        "negative.npz": (dict(x=np.full((10, 4, 4, 1), -1, np.int64)), "outside the levels"),
        "shape.npz": (dict(x=np.zeros((10, 4, 4), np.uint8)), "expected a non-empty"),
        "size.npz": (dict(x=np.zeros((10, 5, 5, 1), np.uint8)), "images of shape"),
        "keys.npz": (dict(a=np.zeros((10, 2)), b=np.zeros((10, 2))), "expected arrays"),
    }
    for name, (arrays, reason) in cases.items():
        np.savez(tmp_path / name, **arrays)
        spec = dict(dataset="npz", path=str(tmp_path / name), levels=4, image_size=4, num_channels=1)
        raises(ValueError, f"{name}: .*{reason}", **spec)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    raises(ValueError, "objects.npy: cannot read as .npz without pickle",
           dataset="npz", path=str(tmp_path / "objects.npy"))
    raises(FileNotFoundError, "gone.npz", dataset="npz", path=str(tmp_path / "gone.npz"))

    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")
    broken = dict(dataset="folder", path=str(images), image_size=4, num_channels=1)
    raises(ValueError, "broken.png: cannot read as an image", "test", **broken)
    raises(ValueError, "images: the train split", **broken)  # 1 image: all of it goes to the test split
    (tmp_path / "empty").mkdir()
    raises(FileNotFoundError, "empty", dataset="folder", path=str(tmp_path / "empty"), image_size=4, num_channels=1)


def test_config_errors_name_the_field():
    for bad, field in [
        (dict(dataset="mnist"), "dataset"),
        (dict(dataset="digits", image_size=32), "image_size"),
        (dict(dataset="digits", levels=256), "levels"),
        (dict(dataset="toy", toy_name="spiral"), "toy_name"),
        (dict(dataset="toy", random_flip=True), "random_flip"),
        (dict(dataset="toy", uniform_dequantization=True), "uniform_dequantization"),
        (dict(dataset="cifar10"), "path"),
        (dict(dataset="folder", path="/tmp"), "num_channels"),
    ]:
        with pytest.raises(ValueError, match=field):
            data.load_split(bad, "train")
    with pytest.raises(ValueError, match="split"):
        data.load_split(dict(dataset="digits"), "validation")
    with pytest.raises(ValueError, match="batch size"):
        data.Dataset(dict(dataset="digits"), "test", 500, 0).batch_at(0)
