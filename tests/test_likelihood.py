"""PF-ODE likelihood against the Gaussian-mixture oracle (exact score, exact log p_t).

Compiled solves are the expensive part (seconds each on CPU), so the solves are module-scoped fixtures
shared between tests, and every score function counts its own evaluations on the host so that each
solve also checks ``info["nfe"]``.
"""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import sde_lib
from sde_lib.data.scaling import dequantize_interval, quantize
from sde_lib import likelihood as L
from sde_lib.oracle import GaussianMixture, builtin_mixture
from sde_lib.step_control import CountingPIDController, initial_step_size
from tests.helpers import TraceCount, TracedScore

EPS = 1e-5
KEY = jax.random.PRNGKey(0)


def broad2d():
    """A 2-D mixture smooth on the scale of 17-level bins in [-1, 1] (small Jensen gap for bits/dim)."""
    return GaussianMixture(jnp.array([[-0.4, 0.3], [0.5, -0.2]]), jnp.array([0.35, 0.45]), jnp.array([0.4, 0.6]))


SDES = {"vp": sde_lib.VPSDE, "subvp": sde_lib.SubVPSDE, "ve": sde_lib.VESDE}
CASES = {"2d": (broad2d, 64), "16d": (lambda: builtin_mixture("gauss16d"), 300)}


@pytest.fixture(scope="module")
def exact_solves(counting_score):
    """Exact-trace solves keyed (sde name, case): sde, gmm, counting score, x, logp, info, counted calls."""
    cache = {}

    def get(sde_name, case):
        if (sde_name, case) not in cache:
            sde = SDES[sde_name]()
            make, n = CASES[case]
            gmm = make()
            score = counting_score(gmm.score_fn(sde))
            x = gmm.sample_t(sde, jax.random.PRNGKey(1), n, EPS)
            logp, info = L.log_likelihood(sde, score, x, KEY, trace="exact", eps=EPS)
            cache[sde_name, case] = dict(sde=sde, gmm=gmm, score=score, x=x, logp=logp, info=info,
                                         calls=score.take())
        return cache[sde_name, case]

    return get


@pytest.mark.parametrize("case", ["2d", "16d"])
@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve"])
def test_exact_trace_matches_oracle(exact_solves, sde_name, case):
    r = exact_solves(sde_name, case)
    sde, gmm, info = r["sde"], r["gmm"], r["info"]
    exact = gmm.log_prob_t(sde, r["x"], EPS)
    # The ODE model uses the SDE's Gaussian prior at T, which differs from the mixture's true p_T by
    # up to ~5e-3 nats/dim (VE 16-D); with the true p_T at the solved latent the transport is exact.
    transported = info["delta_logp"] + gmm.log_prob_t(sde, info["z"], sde.T)
    err = jnp.abs(transported - exact) / gmm.dim
    assert float(err.max()) <= 1e-3, float(err.max())
    np.testing.assert_allclose(r["logp"], info["prior_logp"] + info["delta_logp"], rtol=1e-6)
    np.testing.assert_allclose(info["prior_logp"], sde.prior_logp(info["z"]), rtol=1e-6)
    # Dopri5 (default) is FSAL: every solve here checks the evaluation count against the host counter
    # (on a CPU the 300-row 16-D batch is evaluated in row blocks: one score call per block).
    blocks = L.trace_blocks(*r["x"].shape)
    assert r["calls"] > 0 and np.all(np.asarray(info["nfe"]) * blocks == r["calls"])
    assert info["z"].shape == r["x"].shape and r["logp"].shape == (r["x"].shape[0],)


@pytest.fixture(scope="module")
def hutchinson(exact_solves):
    r = exact_solves("vp", "16d")
    out = {}
    for probe, n in [("rademacher", 1), ("rademacher", 4), ("gaussian", 1)]:
        logp, _ = L.log_likelihood(r["sde"], r["score"].score_fn, r["x"], jax.random.PRNGKey(7),
                                   trace="hutchinson", probe=probe, n_probes=n, eps=EPS)
        out[probe, n] = np.asarray(logp - r["logp"], np.float64)
    return out


@pytest.mark.parametrize("probe, n", [("rademacher", 1), ("rademacher", 4), ("gaussian", 1)])
def test_hutchinson_unbiased(hutchinson, probe, n):
    err = hutchinson[probe, n]
    se = err.std(ddof=1) / math.sqrt(err.size)
    assert err.std() > 0.05  # a real estimator: errors are not just ODE noise
    assert abs(err.mean()) < 3 * se, (err.mean(), se)


def test_hutchinson_variance_falls_as_one_over_n_probes(hutchinson):
    ratio = hutchinson["rademacher", 1].var() / hutchinson["rademacher", 4].var()
    # 300 points: each variance estimate has ~8% relative error, so the ratio lies well inside [2.5, 6].
    assert 2.5 < ratio < 6.0, ratio
    # Gaussian probes add the diagonal's contribution 2 sum_i A_ii^2 that Rademacher probes cancel.
    assert hutchinson["gaussian", 1].var() > hutchinson["rademacher", 1].var()


def test_probes_depend_only_on_key_and_row():
    # One shape, two offsets (one compilation): rows are indexed globally, as chunked solves need.
    full = L.draw_probes(KEY, (6, 3, 2), "rademacher", n_probes=2)
    shifted = L.draw_probes(KEY, (6, 3, 2), "rademacher", n_probes=2, offset=3)
    np.testing.assert_array_equal(full[:, 3:], shifted[:, :3])
    assert not np.array_equal(full[:, :3], shifted[:, :3])
    assert full.shape == (2, 6, 3, 2) and set(np.unique(full).tolist()) == {-1.0, 1.0}


def test_nfe_counts_every_evaluation_for_other_solvers(counting_score):
    sde = sde_lib.VPSDE()
    gmm = builtin_mixture("ring2d")
    score = counting_score(gmm.score_fn(sde))
    x = gmm.sample_t(sde, jax.random.PRNGKey(3), 16, EPS)
    # Heun: no FSAL, 2 evaluations per attempted step, after the 2 of the initial-step rule.
    _, info = L.log_likelihood(sde, score, x, KEY, trace="exact", solver="heun", rtol=1e-3, atol=1e-3)
    assert int(info["nfe"][0]) == score.take() == 2 + 2 * int(info["num_steps"][0])
    # Tsit5 (FSAL) at a tight tolerance, with rejected steps: 6 evaluations per attempt after the first.
    _, info = L.log_likelihood(sde, score, x, KEY, trace="exact", solver="tsit5", rtol=1e-8, atol=1e-8)
    calls = score.take()
    assert int(info["num_rejected_steps"][0]) > 0
    assert int(info["nfe"][0]) == calls == 2 + 7 + 6 * (int(info["num_steps"][0]) - 1)


def test_counting_controller_counts_rejected_first_attempts():
    """Until a step is accepted diffrax recomputes an FSAL tableau's first stage on every attempt."""
    calls = []
    field = lambda t, y, args: (jax.debug.callback(lambda: calls.append(1)), -50.0 * y)[1]
    solver = diffrax.Tsit5()
    controller = CountingPIDController(diffrax.PIDController(rtol=1e-6, atol=1e-6), 7, True)
    sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, t0=0.0, t1=1.0, dt0=0.9, y0=jnp.ones(3),
                              stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True, controller_state=True))
    jax.effects_barrier()
    assert int(sol.stats["num_rejected_steps"]) >= 2 and int(sol.controller_state[1]) == len(calls)
    np.testing.assert_allclose(sol.ys[-1], 0.0, atol=1e-5)  # exp(-50): within atol of 0


def test_initial_step_size_rule():
    """Hairer-Wanner on y' = c (constant): d2 = 0, so h = min(100 h0, (0.01 / d1)^(1/(q+1)), max_step)."""
    rms = lambda y: jnp.sqrt(jnp.mean(jnp.square(y)))
    y0, c, tol = jnp.full(4, 2.0), 3.0, 1e-3
    scale = tol + tol * 2.0
    h0 = 0.01 * (2.0 / scale) / (c / scale)
    expected = min(100 * h0, (0.01 / (c / scale)) ** (1 / 5))
    h = initial_step_size(lambda t, y: jnp.full_like(y, c), 0.0, y0, tol, tol, rms, 4, 10.0)
    np.testing.assert_allclose(h, expected, rtol=1e-6)
    assert float(initial_step_size(lambda t, y: jnp.full_like(y, c), 0.0, y0, tol, tol, rms, 4, 1e-4)) == np.float32(1e-4)


def test_row_blocks_change_nothing_but_the_working_set():
    """The field evaluated in row blocks (the last one padded) equals the whole batch's, with each row's
    condition routed to it; on a CPU the solve takes blocks of at most 512 products (rows x vectors)."""
    sde, ring = sde_lib.VPSDE(), builtin_mixture("ring2d")
    x = ring.sample(KEY, 37)
    state = (x, jnp.zeros(37))
    cond = {"label": jnp.arange(37) % ring.num_classes}

    def field(product, blocks, cond):
        return L.probability_flow_field(sde, ring.score_fn(sde), L._basis(x), True, product, blocks, cond)(0.3, state)

    for product in L.PRODUCTS:
        whole, blocked = field(product, 1, cond), field(product, 5, cond)
        for a, b in zip(whole, blocked):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert not np.allclose(blocked[0], field("jvp", 5, None)[0])  # the condition mattered
    expect = (8, 10, 1) if jax.default_backend() == "cpu" else (1, 1, 1)
    assert (L.trace_blocks(256, 16), L.trace_blocks(300, 16), L.trace_blocks(64, 1)) == expect


def test_batch_chunks_reuse_one_solve_and_agree(exact_solves):
    r = exact_solves("vp", "2d")
    logp, info = L.log_likelihood(r["sde"], r["score"], r["x"], KEY, trace="exact", eps=EPS, batch_size=40)
    calls = r["score"].take()
    np.testing.assert_allclose(logp, r["logp"], atol=2e-3 * r["gmm"].dim)
    nfe = np.asarray(info["nfe"])
    # Two chunk solves of one compiled shape; each row reports its own chunk's count.
    assert np.all(nfe[:40] == nfe[0]) and np.all(nfe[40:] == nfe[-1]) and nfe[0] + nfe[-1] == calls


def test_batch_error_norm_is_cheaper_and_looser_per_example(exact_solves):
    r = exact_solves("vp", "16d")
    sde, gmm, x = r["sde"], r["gmm"], r["x"]
    _, info = L.log_likelihood(sde, r["score"], x, KEY, trace="exact", eps=EPS, error_norm="batch")
    assert int(info["nfe"][0]) * L.trace_blocks(*x.shape) == r["score"].take()  # one call per row block

    def errors(i):  # transport error per dim against the mixture's own p_T (prior mismatch removed)
        return np.abs(np.asarray(i["delta_logp"] + gmm.log_prob_t(sde, i["z"], sde.T) - gmm.log_prob_t(sde, x, EPS))) / gmm.dim

    batch, per_example = errors(info), errors(r["info"])
    # The batch-wide RMS accepts larger steps: fewer evaluations, and the worst example pays for it.
    assert int(info["nfe"][0]) < int(r["info"]["nfe"][0])
    assert per_example.max() < batch.max() and batch.mean() < 1e-3


# ------------------------------------------------------------------------------------ bits per dim
def _gaussian_bin_bits(k, mu, s, levels, lo, hi):
    """Exact discrete NLL and the exact dequantisation bound, bits/dim, for p = N(mu, s^2 I) and bins k."""
    w = (hi - lo) / levels
    a, b = lo + k * w, lo + (k + 1) * w
    exact = -np.log(norm.cdf((b - mu) / s) - norm.cdf((a - mu) / s))
    second_moment = ((b - mu) ** 3 - (a - mu) ** 3) / (3 * w)  # E_u[(x - mu)^2], x uniform on the bin
    bound = 0.5 * np.log(2 * np.pi * s**2) + second_moment / (2 * s**2) - np.log(w)
    return exact.mean(axis=-1) / np.log(2), bound.mean(axis=-1) / np.log(2)


@pytest.mark.parametrize("levels, scale, mu, s", [(256, (0.0, 1.0), 0.45, 0.2), (17, (-1.0, 1.0), 0.1, 0.5)])
def test_bits_per_dim_offset_on_analytic_density(levels, scale, mu, s):
    lo, hi = scale
    rng = np.random.default_rng(0)
    k = rng.integers(0, levels, size=(32, 6))
    exact, bound = _gaussian_bin_bits(k, mu, s, levels, lo, hi)
    assert np.all(bound >= exact - 1e-9)  # Jensen
    # Monte-Carlo over dequantisation draws with the analytic log-density equals the analytic bound.
    reps = 400
    tiled = np.tile(k, (reps, 1))
    x = dequantize_interval(tiled, rng.random(tiled.shape), levels, lo, hi)  # every row its own uniform draw
    assert float(x.min()) >= lo and float(x.max()) <= hi
    logp = np.sum(norm.logpdf(np.asarray(x, np.float64), mu, s), axis=-1)
    mc = np.asarray(L.bpd_from_logp(logp, 6, levels, scale)).reshape(reps, -1).mean(axis=0)
    np.testing.assert_allclose(mc, bound, atol=0.03)
    # The offset is log2(L / (hi - lo)): 8 bits for 8-bit data in [0, 1].
    assert L.bpd_offset(levels, scale) == pytest.approx(math.log2(levels / (hi - lo)))
    assert abs(float(np.mean(mc - exact))) < 0.02


def test_bits_per_dim_through_the_ode_bounds_the_discrete_likelihood(exact_solves):
    r = exact_solves("vp", "2d")
    sde, gmm, levels, scale = r["sde"], r["gmm"], 17, (-1.0, 1.0)
    k = quantize(np.asarray(r["x"]), levels, *scale)  # 64 points: reuses the compiled 2-D solve
    bpd, info = L.bits_per_dim(sde, r["score"], k, KEY, levels=levels, scale=scale, n_dequant=4,
                               trace="exact", eps=EPS)
    r["score"].take()
    assert bpd.shape == (64,) and info["bpd_draws"].shape == (4, 64)
    # Exact discrete likelihood of the oracle p_eps: each component integrates over a box in closed form.
    alpha, sigma = sde.marginal_coeffs(jnp.asarray(EPS))
    std = np.sqrt(float(alpha) ** 2 * np.asarray(gmm.stds) ** 2 + float(sigma) ** 2)
    means = float(alpha) * np.asarray(gmm.means)
    w = (scale[1] - scale[0]) / levels
    a = scale[0] + np.asarray(k)[:, None, :] * w
    mass = norm.cdf((a + w - means) / std[:, None]) - norm.cdf((a - means) / std[:, None])
    exact_bits = -np.log(np.sum(np.asarray(gmm.weights) * np.prod(mass, axis=-1), axis=-1)) / (2 * np.log(2))
    gap = np.asarray(bpd) - exact_bits
    assert gap.mean() > -0.01 and gap.mean() < 0.03, gap.mean()


def test_a_repeated_likelihood_traces_nothing():
    """The score is traced (and its shape checked) while the solve compiles; repeated log_likelihood and
    bits_per_dim calls, and another parameter set of the same shapes, trace the score zero times."""
    sde, gmm, count = sde_lib.VPSDE(), broad2d(), TraceCount()
    other = eqx.tree_at(lambda g: g.means, gmm, 2.0 * gmm.means)
    x = gmm.sample(KEY, 6)
    k = quantize(np.asarray(gmm.sample(jax.random.PRNGKey(1), 6)), 17, -1.0, 1.0)
    logps = []
    for mixture in (gmm, gmm, gmm, other):
        score = TracedScore(mixture.score_fn(sde), count)
        logps.append(L.log_likelihood(sde, score, x, KEY, trace="exact", rtol=1e-3, atol=1e-3)[0])
        L.bits_per_dim(sde, score, k, KEY, levels=17, scale=(-1.0, 1.0), batch_size=4, rtol=1e-3, atol=1e-3)
        if len(logps) == 1:
            first = count.n
    assert first >= 1 and count.n == first, (first, count.n)
    np.testing.assert_array_equal(logps[1], logps[0])
    assert not np.allclose(logps[3], logps[0])  # the new parameters were used, not baked in


def test_non_finite_rows_are_named_and_inside_jit_marked():
    """A NaN row raises naming it; inside jax.jit (no raising) it is NaN and not ok, and the other rows
    are solved as without it (it is solved from zero, so it cannot stall the shared step control)."""
    sde, gmm = sde_lib.VPSDE(), broad2d()
    score, x = gmm.score_fn(sde), gmm.sample(KEY, 4)
    bad = x.at[2, 1].set(jnp.inf)
    with pytest.raises(ValueError, match=r"non-finite values in 1 row\(s\), e.g. rows \[2\]"):
        L.log_likelihood(sde, score, bad, KEY, trace="exact")
    run = jax.jit(lambda y: L.log_likelihood(sde, score, y, KEY, trace="exact"))
    (logp, info), (clean, _) = run(bad), run(x.at[2].set(0.0))
    np.testing.assert_array_equal(np.asarray(info["ok"]), [True, True, False, True])
    assert np.isnan(logp[2]) and np.array_equal(np.delete(logp, 2), np.delete(clean, 2))


# -------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(trace="approx"), "trace"), (dict(probe="uniform"), "probe"), (dict(n_probes=0), "n_probes"),
    (dict(rtol=0.0), "rtol"), (dict(eps=1.0), "eps"), (dict(eps=-1e-3), "eps"), (dict(product="fd"), "product"),
    (dict(solver="euler"), "solver"), (dict(solver="kvaerno5"), "solver"), (dict(batch_size=0), "batch_size"),
    (dict(error_norm="max"), "error_norm"),
])
def test_bad_arguments_raise(kwargs, match):
    sde = sde_lib.VPSDE()
    with pytest.raises(ValueError, match=match):
        L.log_likelihood(sde, builtin_mixture("ring2d").score_fn(sde), jnp.zeros((4, 2)), KEY, **kwargs)


def test_bad_discrete_data_raise():
    sde = sde_lib.VPSDE()
    score = builtin_mixture("ring2d").score_fn(sde)
    with pytest.raises(ValueError, match="levels"):
        L.bits_per_dim(sde, score, np.full((4, 2), 17), KEY, levels=17)
    with pytest.raises(ValueError, match="integer"):
        L.bits_per_dim(sde, score, np.full((4, 2), 0.5), KEY, levels=17)
    with pytest.raises(ValueError, match="levels"):
        L.bits_per_dim(sde, score, np.zeros((4, 2), int), KEY, levels=1)
    with pytest.raises(ValueError, match="scale"):
        L.bpd_offset(256, (1.0, -1.0))
    with pytest.raises(ValueError, match="x must"):
        L.log_likelihood(sde, score, jnp.zeros((4, 2), jnp.int32), KEY)
