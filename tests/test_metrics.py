"""Sample metrics on the digits data: classifier, distances at zero, under corruption, and ranking samplers.

The digits classifier is trained once per session into a temporary cache (module-scoped fixture).
"Good sampler" = the held-out real images (disjoint from the test reference); "bad samplers" = real
images with heavy noise, or mode-dropped (only digits 0-4).
"""

import os

import numpy as np
import pytest
import scipy.linalg

from sde_lib import metrics
from sde_lib.data import scale
from sde_lib.metrics import distances, reference, report

DATA = {"dataset": "digits", "levels": 17, "centered": True, "image_size": 8, "num_channels": 1}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("classifiers"))
    spec = reference.image_spec(DATA)
    return dict(cache=cache, spec=spec, sets=reference.real_sets(spec),
                clf=metrics.get_classifier(DATA, cache_dir=cache))  # fmt: skip


def _model_space(levels):
    return scale(levels, 17, centered=True)


def _blur(x, sigma):
    """Separable Gaussian blur of ``(N, H, W, 1)`` images (edge-padded), radius 3."""
    t = np.arange(-3, 4)
    w = np.exp(-0.5 * (t / sigma) ** 2)
    w /= w.sum()
    pad = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)), mode="edge")
    rows = sum(w[i] * pad[:, i : i + 8, :, :] for i in range(7))
    return sum(w[i] * rows[:, :, i : i + 8, :] for i in range(7))


def _corrupt(x, kind, level, rng):
    if kind == "noise":
        return x + level * rng.standard_normal(x.shape)
    if kind == "blur":
        return _blur(x, level)
    return np.where(rng.random(x.shape) < level, -1.0, x)  # masking: pixels set to background


def _scores(env, samples):
    """FD, KID (full-set unbiased MMD^2), SWD, precision, recall of model-space ``samples`` vs test."""
    clf, spec, sets = env["clf"], env["spec"], env["sets"]
    f_t, f_x = clf.features(sets.test, "test"), clf.features(samples)
    prec, rec = (float(m.mean()) for m in distances.precision_recall_masks(f_t, f_x))
    u_t, u_x = (reference.to_unit(v, spec).reshape(len(v), -1) for v in (sets.test, samples))
    theta = distances.random_directions(u_t.shape[1], 128)
    return dict(fd=_fd(f_t, f_x), kid=distances.mmd2_unbiased(f_t, f_x),
                swd=distances.sliced_wasserstein_projected(u_t @ theta, u_x @ theta), precision=prec, recall=rec)


def _fd(a, b):
    return distances.frechet_from_stats(*distances.gaussian_stats(a), *distances.gaussian_stats(b))


def test_classifier_accurate_and_cached(env):
    clf, sets = env["clf"], env["sets"]
    assert clf.accuracy >= 0.95
    assert len(sets.held) == len(sets.test) == 360 and len(sets.rest) == 1437 - 360
    path = metrics.cache_path(DATA, cache_dir=env["cache"])
    assert os.path.basename(path).startswith("digits-") and os.path.isfile(path)
    other = metrics.ClassifierConfig(channels=(8, 16), feature_dim=32, epochs=1)
    assert metrics.cache_path(DATA, other, cache_dir=env["cache"]) != path
    reloaded = metrics.get_classifier(DATA, cache_dir=env["cache"])
    assert reloaded.accuracy == clf.accuracy
    np.testing.assert_allclose(reloaded.features(sets.test[:50]), clf.features(sets.test[:50]), rtol=1e-5, atol=1e-6)
    # Levels and model-space floats of the same images give the same features.
    np.testing.assert_array_equal(clf.features(sets.test[:50]), clf.features(_model_space(sets.test[:50])))


def test_frechet_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.3
    mu1, c1, mu2, c2 = a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert _fd(a, b) == pytest.approx(expected, rel=1e-8)


def test_mmd_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    xx = np.mean([k(x[i], x[j]) for i in range(7) for j in range(7) if i != j])
    yy = np.mean([k(y[i], y[j]) for i in range(5) for j in range(5) if i != j])
    xy = np.mean([k(a, b) for a in x for b in y])
    assert distances.mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)


def test_identical_sets_score_zero(env):
    test = env["sets"].test
    s = _scores(env, _model_space(test))
    assert s["fd"] < 1e-6 and s["swd"] < 1e-6
    assert s["precision"] == s["recall"] == 1.0
    # The unbiased MMD^2 of a set with itself is not 0 but -(2/n)(mean k(x_i, x_i) - mean_{i!=j} k(x_i, x_j)):
    # the within-set terms skip the diagonal the cross term keeps.
    f = env["clf"].features(test, "test").astype(np.float64)
    k, n = (f @ f.T / f.shape[1] + 1.0) ** 3, len(f)
    off = (k.sum() - np.trace(k)) / (n * (n - 1))
    assert s["kid"] == pytest.approx(-(2.0 / n) * (np.trace(k) / n - off), rel=1e-6) and s["kid"] < 0


@pytest.mark.parametrize(
    "kind, levels",
    [("noise", (0.15, 0.3, 0.6)), ("blur", (0.6, 1.0, 2.0)), ("mask", (0.1, 0.3, 0.6))],
)
def test_metrics_grow_with_corruption(env, kind, levels):
    clean = _model_space(env["sets"].held)
    rng = np.random.default_rng(2)
    runs = [_scores(env, clean)] + [_scores(env, _corrupt(clean, kind, lv, rng)) for lv in levels]
    for name in ("fd", "kid", "swd"):
        values = [r[name] for r in runs]
        assert np.all(np.diff(values) > 0), (name, values)
    precision = [r["precision"] for r in runs]
    assert precision[-1] < precision[0] - 0.2, precision


def test_bad_samplers_rank_below_good(env):
    sets = env["sets"]
    good = _model_space(sets.held)
    noisy = good + 0.5 * np.random.default_rng(3).standard_normal(good.shape)
    dropped = _model_space(sets.rest[sets.rest_labels < 5][: len(good)])
    assert len(dropped) == len(good)
    g, n, d = _scores(env, good), _scores(env, noisy), _scores(env, dropped)
    for bad in (n, d):
        for name in ("fd", "kid", "swd"):
            assert bad[name] > 2 * g[name], (name, g[name], bad[name])
    assert n["precision"] < g["precision"] - 0.2  # noise leaves the data manifold
    assert d["recall"] < g["recall"] - 0.3  # mode dropping misses half of it
    assert d["precision"] > g["precision"] - 0.1  # ... while what it draws is still realistic


def test_memorisation_flags_copies_not_fresh_images(env):
    spec, sets = env["spec"], env["sets"]
    flat = lambda v: reference.to_unit(v, spec).reshape(len(v), -1)  # noqa: E731
    train, test = flat(sets.train), flat(sets.test)
    copies = distances.memorisation_flags(train[::4], train, test[:180])[0].mean()
    fresh, threshold = distances.memorisation_flags(test[180:], train, test[:180], percentile=5.0)
    fresh = fresh.mean()
    assert threshold > 0 and copies == 1.0
    assert fresh < 0.12


def test_evaluate_samples_reports_floors(env):
    sets = env["sets"]
    dropped = _model_space(sets.rest[sets.rest_labels < 5][:300])
    r = metrics.evaluate_samples(dropped, DATA, classifier=env["clf"], num_bootstrap=10, kid_subsets=5, seed=0)
    assert r["n"] == 300 and r["classifier_accuracy"] == env["clf"].accuracy
    for name in metrics.METRICS:
        assert np.isfinite([r[name], r[f"{name}_err"], r[f"{name}_floor"], r[f"{name}_floor_err"]]).all()
    assert r["fd"] > r["fd_floor"] + 3 * (r["fd_err"] + r["fd_floor_err"])
    assert r["recall"] < r["recall_floor"] - 3 * (r["recall_err"] + r["recall_floor_err"])
    assert r["memorisation"] == 1.0  # these samples are training images
    assert r["memorisation_floor"] < 0.15  # held-out images: near the nominal 5 %
    # The same seed gives the same numbers.
    again = metrics.evaluate_samples(dropped, DATA, classifier=env["clf"], num_bootstrap=10, kid_subsets=5, seed=0)
    assert again == r
    # Floors are kept per classifier (report._FLOORS): a kept floor equals a recomputed one, whatever the
    # samples, and a different n or seed gets its own.
    calls = [(_model_space(sets.held[:300]), {}), (dropped, {"n": 200}), (dropped, {"seed": 1})]
    kept = [metrics.evaluate_samples(x, DATA, classifier=env["clf"], num_bootstrap=10, kid_subsets=5, **kw)
            for x, kw in calls]
    report._FLOORS.clear()
    fresh = [metrics.evaluate_samples(x, DATA, classifier=env["clf"], num_bootstrap=10, kid_subsets=5, **kw)
             for x, kw in calls]
    assert kept == fresh
    floors = [tuple(v[f"{name}_floor"] for name in metrics.METRICS) for v in [r, *kept]]
    assert floors[1] == floors[0] and floors[2] != floors[0] and floors[3] != floors[0]


def test_bad_inputs_raise(env):
    spec = env["spec"]
    with pytest.raises(ValueError, match="shape"):
        reference.to_unit(np.zeros((3, 8, 8)), spec)
    with pytest.raises(ValueError, match="levels"):
        reference.to_unit(np.full((3, 8, 8, 1), 17), spec)
    with pytest.raises(ValueError, match="NaN"):
        reference.to_unit(np.full((3, 8, 8, 1), np.nan), spec)
    with pytest.raises(ValueError, match="dataset"):
        metrics.evaluate_samples(np.zeros((3, 2)), {"dataset": "toy"})
    with pytest.raises(ValueError, match="n="):
        metrics.evaluate_samples(_model_space(env["sets"].held), DATA, classifier=env["clf"], n=400)
    with pytest.raises(ValueError, match="dimensions 2 and 3"):
        distances.precision_recall_masks(np.zeros((4, 2)), np.zeros((5, 3)))
