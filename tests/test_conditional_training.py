"""Training a class-conditional model with condition dropout learns both branches: on the labelled toy
mixture (8 modes, two classes by parity), its samples per class and its unconditional samples match the
exact class mixtures and the exact mixture; a noise-conditional classifier trained by the framework
learns the exact noisy classifier's decisions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from sde_lib import guidance
from sde_lib.evaluation import ablation
from sde_lib.runs import trainer
from sde_lib.data import toy
from sde_lib.metrics.distances import random_directions
from tests.helpers import toy_config

CFG = {"data.centered": False, "model.hidden": 128, "model.n_layers": 3, "training.batch_size": 256,
       "training.n_iters": 3000, "training.n_jitted_steps": 10, "training.log_freq": 500, "training.eval_freq": 3000,
       "training.snapshot_freq": 3000, "training.snapshot_freq_for_preemption": 3000,
       "training.snapshot_sampling": False, "optim.warmup": 100, "optim.lr": 2e-3, "optim.ema_rate": 0.99,
       "condition.kind": "label", "model.num_classes": 2, "training.cond_drop_prob": 0.2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("cond") / "run")
    trainer.train(toy_config(CFG), workdir, progress=False)
    return sde_lib.load_run(workdir)


KEY0 = jax.random.PRNGKey(0)


def mode_shares(x, gmm) -> np.ndarray:
    """The share of samples ``(n, 2)`` nearest to each of the mixture's modes (the ring's modes are 1.5
    apart with std 0.1, so the nearest mode is the one a sample came from)."""
    d = np.linalg.norm(np.asarray(x)[:, None, :] - np.asarray(gmm.means)[None], axis=-1)
    return np.bincount(np.argmin(d, axis=1), minlength=len(gmm.means)) / len(x)


def matches(x, mixture, gmm, sliced) -> bool:
    """``x`` has ``mixture``'s mode weights (each within 0.05: ~4 standard errors at n = 1000) and, within
    the modes, its shape (sliced W2 within 3 x the finite-sample floor + 0.05)."""
    weights = np.asarray(jnp.exp(mixture.log_weights))
    d, floor = sliced(x, mixture.sample)
    full = np.zeros(len(gmm.means))
    modes = [int(np.argmin(np.linalg.norm(np.asarray(gmm.means) - m, axis=1))) for m in np.asarray(mixture.means)]
    full[modes] = weights
    return bool(np.max(np.abs(mode_shares(x, gmm) - full)) < 0.05 and d < 3 * floor + 0.05)


@pytest.mark.slow
def test_both_branches_match_the_exact_mixtures(run):
    gmm = toy.toy_density("mixture")  # 8 modes on a ring; class = parity of the mode
    theta = random_directions(2, 64)
    n = 1000
    key = jax.random.PRNGKey(0)

    def sliced(x, exact_sampler):
        ref = exact_sampler(jax.random.PRNGKey(1), n)
        floor = ablation.sliced_w2(exact_sampler(jax.random.PRNGKey(2), n), ref, theta)
        return ablation.sliced_w2(np.asarray(x), ref, theta), floor

    classes = [gmm.conditional(label) for label in (0, 1)]
    # The check itself tells the right answer from the nearest wrong ones: the other class's exact
    # samples fail a class, and exact samples of one class fail the whole mixture.
    probe = jax.random.PRNGKey(9)
    assert matches(classes[0].sample(probe, n), classes[0], gmm, sliced)
    assert not matches(classes[1].sample(probe, n), classes[0], gmm, sliced)
    assert matches(gmm.sample(probe, n), gmm, gmm, sliced)
    assert not matches(classes[0].sample(probe, n), gmm, gmm, sliced)

    for label in (0, 1):
        x, _ = run.sample(key, n, "dpm_solver_pp_3m", 30, label=label)
        assert matches(x, classes[label], gmm, sliced), (label, mode_shares(x, gmm))
    x, _ = run.sample(key, n, "dpm_solver_pp_3m", 30)  # no condition: the unconditional branch
    assert matches(x, gmm, gmm, sliced), mode_shares(x, gmm)
    # Guidance at scale 1 is the conditional branch (same noise).
    a, _ = run.sample(key, 64, "ddim", 10, label=1)
    b, _ = run.sample(key, 64, "ddim", 10, label=1, guidance=1.0)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("call, name", [
    (lambda r, v: r.sample(KEY0, v, steps=2), "n"),
    (lambda r, v: r.sample(KEY0, 2, steps=v), "steps"),
    (lambda r, v: r.sample(KEY0, 2, steps=2, label=v), "label"),
    (lambda r, v: r.sample(KEY0, 2, steps=2, label=[0, v]), "label"),
    (lambda r, v: r.sample(KEY0, 2, steps=2, label=0, guidance=v), "guidance"),
    (lambda r, v: r.bpd(num=v), "num"),
    (lambda r, v: r.bpd(num=2, n_dequant=v), "n_dequant"),
    (lambda r, v: r.bpd(num=2, seed=v), "seed"),
    (lambda r, v: r.bpd(num=2, batch_size=v), "batch_size"),
])
def test_run_arguments_are_checked(run, call, name):
    """A run's integer arguments refuse 1.5, 1.0 and True, its guidance scale NaN and Inf, in one line
    naming the argument (before: n=1.5 and steps=True ran 1 sample / 1 step, label=1.0 drew class 1)."""
    bad = [float("nan"), float("inf"), True] if name == "guidance" else [1.5, 1.0, True]
    for v in bad:
        with pytest.raises((TypeError, ValueError)) as err:
            call(run, v)
        assert name in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_trained_noisy_classifier_guides_like_the_exact_one(tmp_path):
    cfg = dict(CFG, **{"training.objective": "classifier", "model.name": "classifier", "training.n_iters": 1000,
                       "training.eval_freq": 500, "training.cond_drop_prob": 0.0})
    del cfg["model.hidden"]
    workdir = str(tmp_path / "clf")
    trainer.train(toy_config(cfg, **{"model.hidden": 64}), workdir, progress=False)
    clf = sde_lib.load_run(workdir)
    sde = clf.sde
    gmm = toy.toy_density("mixture")
    x = gmm.sample_t(sde, jax.random.PRNGKey(3), 512, 0.1)  # at t = 0.1 the exact classifier is sure of 89%
    t = jnp.full((512,), 0.1)
    exact_logp = np.asarray(gmm.class_log_prob_t(sde, x, t))
    exact = np.argmax(exact_logp, axis=1)
    learned = np.stack([np.asarray(clf.log_prob_fn(x, t, {"label": jnp.full((512,), c)})) for c in (0, 1)], 1)
    # Where the exact classifier is sure (p > 0.9) the learned one must agree; near the class boundary
    # (interleaved modes blurred by the noise) the exact answer is itself close to a coin toss.
    sure = np.max(exact_logp, axis=1) > np.log(0.9)
    assert sure.mean() > 0.3 and np.mean(np.argmax(learned, 1)[sure] == exact[sure]) > 0.9
    # Classifier guidance with it turns the exact unconditional score towards the class.
    guided = guidance.classifier(gmm.score_fn(sde), clf.log_prob_fn, 2.0)
    samples, _ = sde_lib.sampling.sample(sde, guided, jax.random.PRNGKey(4), (256, 2), "dpm_solver_pp_2m", steps=20,
                                         cond={"label": jnp.zeros(256, jnp.int32)})
    cls = np.argmax(np.asarray(gmm.class_log_prob_t(sde, samples, jnp.full((256,), 1e-3))), axis=1)
    assert np.mean(cls == 0) > 0.8
