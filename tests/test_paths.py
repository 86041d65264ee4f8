"""Gaussian paths beside the SDEs: the linear path of rectified flow / flow matching, the cosine path and EDM's
sigma(t) = t, proven against closed forms and the mixture oracle: their SDE coefficients, flow matching's
velocity, loss and minimiser, every sampler (orders on the linear path), the likelihood, guidance,
inpainting, reflow's pairs and the straightness measure. Reference formulas are written out here
independently of sde_lib."""


import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import sde_lib
from sde_lib import guidance, likelihood, losses, reflow, sampling, training
from sde_lib import parameterization as pz
from sde_lib.data import Dataset
from sde_lib.data.pairs import read_pairs, write_pairs
from sde_lib.evaluation import ablation
from sde_lib.metrics.distances import random_directions
from sde_lib.oracle import GaussianMixture, builtin_mixture
from sde_lib.runs.assemble import assemble
from sde_lib.sdes import CosinePath, EDMPath, LinearPath
from tests.helpers import toy_config

KEY = jax.random.PRNGKey(0)
PATHS = {"linear": LinearPath(), "cosine": CosinePath(), "edm": EDMPath()}


def reference(name, t):
    """alpha, sigma, alpha', sigma', f, g^2, sigma(t) and lambda of each path in numpy float64."""
    t = np.asarray(t, np.float64)
    if name == "linear":
        a, s, da, ds = 1 - t, t, -np.ones_like(t), np.ones_like(t)
        f, g2 = -1 / (1 - t), 2 * t / (1 - t)
    elif name == "cosine":
        a, s = np.cos(np.pi * t / 2), np.sin(np.pi * t / 2)
        da, ds = -np.pi / 2 * s, np.pi / 2 * a
        f, g2 = -np.pi / 2 * np.tan(np.pi * t / 2), np.pi * np.tan(np.pi * t / 2)
    else:
        a, s, da, ds, f, g2 = np.ones_like(t), t, np.zeros_like(t), np.ones_like(t), np.zeros_like(t), 2 * t
    return dict(alpha=a, sigma=s, d_alpha=da, d_sigma=ds, f=f, g2=g2, edm_sigma=s / a, lam=np.log(a / s))


def held_out_mixture():
    """A 2-D mixture drawn from a seed no other test uses (the samplers were not tuned on it)."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(2024), 3)
    return GaussianMixture(jax.random.uniform(k1, (4, 2), minval=-1.5, maxval=1.5),
                           jax.random.uniform(k2, (4,), minval=0.3, maxval=0.5),
                           jax.random.uniform(k3, (4,), minval=0.5, maxval=1.0))


# ------------------------------------------------------------------------------------- the processes
@pytest.mark.parametrize("name", PATHS)
def test_path_coefficients_match_their_formulas(name):
    sde = PATHS[name]
    with jax.enable_x64(True):
        t = jnp.asarray(np.geomspace(1e-4, sde.T, 50))
        ref = reference(name, t)
        got = dict(zip(("alpha", "sigma"), sde.marginal_coeffs(t)))
        got.update(zip(("d_alpha", "d_sigma"), sde.marginal_rates(t)))
        got.update(f=sde.drift_coef(t), g2=sde.diffusion_coef(t) ** 2, edm_sigma=sde.sigma(t), lam=sde.half_log_snr(t))
        for k, v in ref.items():
            np.testing.assert_allclose(got[k], v, rtol=1e-10, atol=1e-12, err_msg=k)
        # The rates are the derivatives, and (f, g) generate the path: d sigma^2/dt = 2 f sigma^2 + g^2.
        for i, k in enumerate(("d_alpha", "d_sigma")):
            np.testing.assert_allclose(jax.vmap(jax.grad(lambda s: sde.marginal_coeffs(s)[i]))(t), ref[k], rtol=1e-10,
                                       atol=1e-12)
        dvar = jax.vmap(jax.grad(lambda s: sde.marginal_coeffs(s)[1] ** 2))(t)
        np.testing.assert_allclose(dvar, 2 * ref["f"] * ref["sigma"] ** 2 + ref["g2"], rtol=1e-9)
        np.testing.assert_allclose(sde.t_from_sigma(sde.sigma(t)), t, rtol=1e-10)
        np.testing.assert_allclose(sde.t_from_half_log_snr(sde.half_log_snr(t)), t, rtol=1e-10)
    assert sde.prior_std == pytest.approx(float(reference(name, sde.T)["sigma"]), rel=1e-12)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_the_singular_end(name):
    """At t = 1 (alpha = 0) the score is -x for every data distribution, while the velocity still tells
    mixtures apart: no score-driven solve can start there, so the path stops at T < 1, beyond VP's noise."""
    sde = PATHS[name]
    with pytest.raises(ValueError, match=r"^T must lie in \(0, 1\)"):
        type(sde)(T=1.0)
    a, b = builtin_mixture("ring2d"), builtin_mixture("grid2d")
    x = jax.random.normal(KEY, (16, 2))
    t = jnp.ones(16)
    np.testing.assert_allclose(a.score_fn(sde)(x, t), -x, rtol=1e-6)
    np.testing.assert_allclose(b.score_fn(sde)(x, t), -x, rtol=1e-6)
    va, vb = a.velocity_fn(sde)(x, t), b.velocity_fn(sde)(x, t)
    if name == "linear":  # v(x, 1) = x - E[x_0]
        np.testing.assert_allclose(vb, x - b.mean_and_cov()[0], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(va - vb))) > 0.1
    vp = sde_lib.VPSDE()
    assert float(sde.half_log_snr(sde.T)) < float(vp.half_log_snr(vp.T))  # less signal left at T than VP
    assert sampling.default_eps(sde) == 1e-3 and sampling.default_eps(PATHS["edm"]) == 0.002


# ------------------------------------------------------------------------------------------ velocity
@pytest.mark.parametrize("name", ["vp", "linear", "edm"])
def test_oracle_velocity_is_the_probability_flow_drift(name, sdes):
    sde = {**sdes, **PATHS}[name]
    gmm = builtin_mixture("gauss16d")
    with jax.enable_x64(True):
        x = jax.random.normal(KEY, (12, 16), jnp.float64) * 1.5
        t = jnp.linspace(0.02, 0.98, 12) * sde.T
        v = gmm.velocity_fn(sde)(x, t)
        drift = sde.reverse_drift(x, t, gmm.score_fn(sde)(x, t))
        np.testing.assert_allclose(v, drift, rtol=1e-7, atol=1e-9 * float(jnp.max(jnp.abs(v))))


def test_velocity_parameterization_round_trips():
    """The network that outputs the exact velocity gives back the exact score, eps and x0; it sees log(sigma(t)) / 4."""
    sde = PATHS["linear"]
    gmm = builtin_mixture("grid2d")
    with jax.enable_x64(True):
        t = jnp.asarray(np.geomspace(1e-3, sde.T * 0.999, 16))
        x = jax.random.normal(KEY, (16, 2), jnp.float64) * 1.3
        score, velocity = gmm.score_fn(sde)(x, t), gmm.velocity_fn(sde)(x, t)
        c = pz.coefficients(sde, t, "velocity")
        np.testing.assert_allclose(c.c_noise, 0.25 * np.log(sde.sigma(t)), rtol=1e-12)
        model = pz.model_fn_from_score(sde, gmm.score_fn(sde), "velocity")
        np.testing.assert_allclose(model(x, c.c_noise), velocity, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(pz.score_fn_from_model(sde, lambda x_in, c_noise: velocity, "velocity")(x, t),
                                   score, rtol=1e-7, atol=1e-7)
        eps, x0 = pz.eps_and_x0(sde, x, t, score)
        for (a, b), want in zip((c.eps, c.x0), (eps, x0)):
            np.testing.assert_allclose(a[:, None] * velocity + b[:, None] * x, want, rtol=1e-7, atol=1e-8)


# ---------------------------------------------------------------------------------- flow matching loss
def test_flow_matching_loss_is_the_velocity_regression():
    """Velocity weighting with the velocity parameterisation is || F - (z - x_0) ||^2 on the linear path;
    score_sde's sigma^2 weighting is another loss."""
    sde = PATHS["linear"]
    n = 64
    k0, kz, kt = jax.random.split(KEY, 3)
    x0, z = builtin_mixture("ring2d").sample(k0, n), jax.random.normal(kz, (n, 2))
    t = jax.random.uniform(kt, (n,), minval=1e-3, maxval=sde.T)
    net = lambda x, c: jnp.tanh(x) * (1 + c[:, None]) - 0.3 * x  # noqa: E731  (any network of velocity output)
    alpha, sigma = sde.marginal_coeffs(t)
    xt = (1 - t)[:, None] * x0 + t[:, None] * z
    by_hand = jnp.mean((net(xt, 0.25 * jnp.log(t / (1 - t))) - (z - x0)) ** 2, axis=-1)

    def loss(model, p, weighting):
        return losses.denoising_losses(model, x0, z, alpha, sigma, pz.noise_conditioning(sde, t, p),
                                       losses.weighting_fn(sde, t, weighting), p, rates=sde.marginal_rates(t))

    np.testing.assert_allclose(loss(net, "velocity", "velocity"), by_hand, rtol=1e-5)
    assert not np.allclose(loss(net, "velocity", "sigma2"), by_hand, rtol=0.1)


def test_flow_matching_minimiser_on_a_gaussian_is_the_exact_velocity():
    """For data N(mu, s^2 I) the velocity is affine, v* = A(t) x + B(t) with A = (alpha' alpha s^2 + sigma' sigma) /
    (alpha^2 s^2 + sigma^2) and B = (alpha' - A alpha) mu. The loss of ``get_loss_fn`` (velocity parameterisation
    and weighting, the config's time law) over the family F = th0 A x + th1 B + th2 x + th3 t x is quadratic in
    theta; its exact minimiser on 2^14 draws must be (1, 1, 0, 0) (the closed form), within Monte Carlo error.
    The linear path at SD3's logit-normal times."""
    sde, time_sampling = PATHS["linear"], "logit_normal"
    mu, s = jnp.array([0.7, -0.4]), 0.5
    gmm = GaussianMixture(mu[None], jnp.array([s]), jnp.array([1.0]))

    def closed_form(t):
        (a, sg), (da, ds) = sde.marginal_coeffs(t), sde.marginal_rates(t)
        big_a = (da * a * s**2 + ds * sg) / (a**2 * s**2 + sg**2)
        return big_a, (da - big_a * a)[:, None] * mu

    x = jax.random.normal(KEY, (8, 2))
    t = jnp.linspace(0.05, 0.95, 8) * sde.T
    big_a, big_b = closed_form(t)
    np.testing.assert_allclose(big_a[:, None] * x + big_b, gmm.velocity_fn(sde)(x, t), rtol=1e-5, atol=1e-6)

    loss_fn = losses.get_loss_fn(sde, weighting="velocity", parameterization="velocity", time_sampling=time_sampling,
                                 eps=1e-3)

    def model(theta):
        def f(x_in, c_noise):
            t = pz.t_from_noise_conditioning(sde, c_noise, "velocity")
            a, b = closed_form(t)
            return theta[0] * a[:, None] * x_in + theta[1] * b + theta[2] * x_in + theta[3] * t[:, None] * x_in
        return f

    x0 = gmm.sample(jax.random.PRNGKey(5), 1 << 14)
    def objective(th):
        return loss_fn(model(th), jax.random.PRNGKey(6), x0)

    # The loss is quadratic in theta: its value, gradient and Hessian at 0 give it everywhere (one compile).
    value, grad, hess = (np.asarray(a, np.float64) for a in jax.jit(
        lambda th: (objective(th), jax.grad(objective)(th), jax.hessian(objective)(th)))(jnp.zeros(4)))

    def quadratic(th):
        th = np.asarray(th, np.float64)
        return value + grad @ th + 0.5 * th @ hess @ th

    theta = np.linalg.solve(hess, -grad)
    # Measured over seeds: within 0.02 of the closed form at 2^17 draws (0.06 at 2^14); a wrong target (VP's
    # coefficients, Salimans' v, the score) moves theta by O(1).
    np.testing.assert_allclose(theta, [1.0, 1.0, 0.0, 0.0], atol=0.12)
    # Each term of the closed form matters: dropping A x or B raises the loss by more than 0.3 (of 0.8-1.2).
    assert min(quadratic([0.0, 1.0, 0.0, 0.0]), quadratic([1.0, 0.0, 0.0, 0.0])) > quadratic(theta) + 0.3


def test_logit_normal_times():
    """logit(t) ~ N(loc, scale^2) on the linear path (SD3); log t ~ N(-1.2, 1.2^2) truncated to [eps, T] on the
    EDM path (EDM's P_mean, P_std); the weighting that draws its own times refuses another law."""
    n = 20000
    t = np.asarray(losses.sample_times(PATHS["linear"], KEY, (n,), "velocity", 1e-5, "logit_normal", 0.5, 0.8),
                   np.float64)
    logit = np.log(t / (1 - t))
    assert stats.kstest(logit, stats.norm(0.5, 0.8).cdf).pvalue > 1e-3
    assert stats.kstest(logit, stats.norm(0.0, 1.0).cdf).pvalue < 1e-6
    edm = PATHS["edm"]
    t = np.asarray(losses.sample_times(edm, KEY, (n,), "sigma2", 0.002, "logit_normal", -1.2, 1.2), np.float64)
    lo, hi = (np.log(0.002) + 1.2) / 1.2, (np.log(edm.T) + 1.2) / 1.2
    assert t.min() >= 0.002 and t.max() <= edm.T
    assert stats.kstest(np.log(t), stats.truncnorm(lo, hi, loc=-1.2, scale=1.2).cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="likelihood_is"):
        losses.get_loss_fn(edm, weighting="likelihood_is", time_sampling="logit_normal")


# ------------------------------------------------------------------------------------------ samplers
def velocity_reference(sde, gmm, x_T, eps):
    """The exact flow's endpoints: dx/dt = the oracle velocity (not the score form the samplers use), solved
    from T to eps by diffrax's Dopri8 at rtol = atol = 1e-12 in float64."""
    v = gmm.velocity_fn(sde)
    term = diffrax.ODETerm(lambda t, y, args: v(y, jnp.full(y.shape[:1], t)))
    sol = diffrax.diffeqsolve(term, diffrax.Dopri8(), t0=sde.T, t1=eps, dt0=-1e-3, y0=x_T, max_steps=1 << 16,
                              stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-12))
    return sol.ys[-1]


@pytest.fixture(scope="module")
def linear_case(counting_score):
    """The linear path, a counting exact score of the held-out mixture, 1000 prior draws (the first 64 in
    float64 with the exact flow's endpoints), exact draws and their sliced-W2 floor."""
    sde, gmm, theta = PATHS["linear"], held_out_mixture(), random_directions(2, 64, seed=99)
    x_T = sde.prior_sampling(KEY, (1000, 2))
    with jax.enable_x64(True):
        x64 = x_T[:64].astype(jnp.float64)
        ref = velocity_reference(sde, gmm, x64, sde.default_eps)
    exact = gmm.sample(jax.random.PRNGKey(1), 1000)
    floor = ablation.sliced_w2(gmm.sample(jax.random.PRNGKey(2), 1000), exact, theta)
    return dict(sde=sde, gmm=gmm, score=counting_score(gmm.score_fn(sde)), x_T=x_T, x64=x64, ref=ref, exact=exact,
                floor=floor, theta=theta)


# Global order between 20 and 40 steps on the held-out mixture (float64), at least: measured 0.98 (Euler),
# 1.97 (Heun), 2.1-2.6 (DPM-Solver++(2M), whose first step is first order), 3.07 (UniPC). One second-order
# solver per kind (Euler's 0.98 fails their bound): Runge-Kutta in t, and the exponential integrators that
# step in lambda = log((1 - t) / t) on this path.
ORDERS = {"ode_heun": 1.8, "dpm_solver_pp_2m": 1.8}


@pytest.mark.parametrize("name", ORDERS)
def test_ode_samplers_converge_at_their_order_on_the_linear_path(name, linear_case):
    """Error against the exact flow's endpoints halves 2^order times from 20 to 40 steps. A sampler that
    used VP's coefficients or the wrong sign of the drift does not converge to these endpoints at all,
    and Euler (0.98) fails the bound."""
    c = linear_case
    with jax.enable_x64(True):
        errs = []
        for steps in (20, 40):
            x, info = sampling.sample(c["sde"], c["score"], KEY, c["x64"].shape, name, steps=steps, x_init=c["x64"])
            assert c["score"].take() == int(info["nfe"])
            errs.append(float(jnp.sqrt(jnp.mean((x - c["ref"]) ** 2))))
    assert np.log2(errs[0] / errs[1]) >= ORDERS[name] and errs[1] < 0.05, errs


FIRST_ORDER = {"ode_euler": 100, "ddim": 100}  # steps that bring the first-order samplers to the same bound
# Samplers the fast tests of this module run on the linear path; the others are the slow tier's (one
# compile each, ~2 s on a CPU core).
FAST = {"dpm_solver_pp_2m", "ode_heun", "dpm_solver_pp_3m", "ancestral", "ode_adaptive"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                  for n in sampling.available_samplers()])
def test_every_sampler_works_on_the_linear_path(name, linear_case):
    """Each registered sampler on the linear path, exact NFE: a deterministic one lands within 0.08 RMS of
    the exact flow's endpoints in 30 steps (first-order ones in 100; a wrong drift lands O(1) away), a
    stochastic one samples the mixture (sliced W2 within 2.5 x the floor between exact sets) in 100 steps."""
    c = linear_case
    spec = sampling.registry.get(name)
    opts = {}
    if spec.is_adaptive:
        opts = {"rtol": 1e-4, "atol": 1e-4} if spec.family != "sde" else {"rtol": 1e-2, "atol": 1e-2}
    if spec.family == "sde":
        x, info = sampling.sample(c["sde"], c["score"], jax.random.PRNGKey(3), c["x_T"].shape, name, steps=100,
                                  **opts)
        calls = c["score"].take()
        assert calls == (np.max(info["nfe"]) if spec.is_adaptive else int(info["nfe"])) and bool(jnp.all(info["ok"]))
        assert ablation.sliced_w2(x, c["exact"], c["theta"]) < 2.5 * c["floor"]
        return
    x, info = sampling.sample(c["sde"], c["score"], KEY, (64, 2), name, steps=FIRST_ORDER.get(name, 30),
                              x_init=c["x_T"][:64], **opts)
    calls = c["score"].take()
    assert calls == (np.max(info["nfe"]) if spec.is_adaptive else int(info["nfe"]))
    assert float(np.sqrt(np.mean(np.sum((np.asarray(x) - np.asarray(c["ref"])) ** 2, axis=-1)))) < 0.08


@pytest.mark.parametrize("path, name", [("cosine", "euler_maruyama"), ("edm", "edm_heun")])
def test_samplers_sample_the_mixture_on_the_cosine_and_edm_paths(path, name):
    """The reverse SDE with the path's g (Euler-Maruyama) and EDM's Heun on its rho = 7 grid draw the held-out
    mixture: sliced W2 within 2.5 x the floor between exact sets."""
    sde, gmm, theta = PATHS[path], held_out_mixture(), random_directions(2, 64, seed=99)
    opts = {"time_grid": "edm"} if path == "edm" else {}
    x, info = sampling.sample(sde, gmm.score_fn(sde), jax.random.PRNGKey(3), (1000, 2), name, steps=100, **opts)
    exact = gmm.sample(jax.random.PRNGKey(1), 1000)
    floor = ablation.sliced_w2(gmm.sample(jax.random.PRNGKey(2), 1000), exact, theta)
    assert bool(jnp.all(jnp.isfinite(x))) and ablation.sliced_w2(x, exact, theta) < 2.5 * floor


# ---------------------------------------------------------------------------------------- likelihood
@pytest.mark.parametrize("name, case", [("linear", "2d"), pytest.param("edm", "2d", marks=pytest.mark.slow)])
def test_likelihood_is_the_exact_density_on_paths(name, case, counting_score):
    """The PF-ODE transports the exact log p_eps to log p_T (1e-3 nats/dim, as for the SDEs); on the linear path
    the model's own log p, with its prior N(0, T^2 I) at T = 1 - 1e-3, is within 2e-4 nats/dim of the truth."""
    sde, eps = PATHS[name], 1e-5
    gmm = builtin_mixture("gauss16d") if case == "16d" else GaussianMixture(
        jnp.array([[-0.4, 0.3], [0.5, -0.2]]), jnp.array([0.35, 0.45]), jnp.array([0.4, 0.6]))
    score = counting_score(gmm.score_fn(sde))
    x = gmm.sample_t(sde, jax.random.PRNGKey(1), 128, eps)
    logp, info = likelihood.log_likelihood(sde, score, x, KEY, trace="exact", eps=eps)
    assert np.all(np.asarray(info["nfe"]) * likelihood.trace_blocks(*x.shape) == score.take())  # a call per block
    exact = gmm.log_prob_t(sde, x, eps)
    transported = info["delta_logp"] + gmm.log_prob_t(sde, info["z"], sde.T)
    assert float(jnp.max(jnp.abs(transported - exact))) / gmm.dim < 1e-3
    if name == "linear":
        assert float(jnp.mean(jnp.abs(logp - exact))) / gmm.dim < 2e-4


# ------------------------------------------------------------------------------- guidance, inpainting
def test_classifier_free_guidance_on_the_linear_path():
    name = "dpm_solver_pp_3m"
    sde, ring, n = PATHS["linear"], builtin_mixture("ring2d"), 64
    score = ring.score_fn(sde)
    cond = {"label": jnp.arange(n) % 2}
    x_T = sde.prior_sampling(KEY, (n, 2))

    def run(fn, c):
        return sampling.sample(sde, fn, KEY, (n, 2), name, steps=16, x_init=x_T, cond=c)[0]

    conditional = run(guidance.classifier_free(score, {"label": 2}, 1.0), cond)  # guidance 1: the conditional
    angles = np.mod(np.round(np.arctan2(conditional[:, 1], conditional[:, 0]) / (np.pi / 4)), 8).astype(int)
    assert np.mean(angles % 2 == np.asarray(cond["label"])) > 0.9


def test_inpainting_replacement_is_exact_for_independent_blocks_on_the_linear_path():
    sde = PATHS["linear"]
    mu = jnp.array([0.5, -1.0, 1.5, 0.0])
    gmm = GaussianMixture(mu[None], jnp.array([0.3]), jnp.array([1.0]))
    n = 2000
    x_obs = jnp.tile(jnp.array([[2.0, 2.0, 0.0, 0.0]]), (n, 1))
    mask = jnp.array([1.0, 1.0, 0.0, 0.0])
    for method, name, steps in (("replace", "ancestral", 100),):
        x, info = guidance.inpaint(sde, gmm.score_fn(sde), KEY, x_obs, mask, method=method, sampler=name, steps=steps,
                                   jump_n_sample=2)
        np.testing.assert_array_equal(x[:, :2], x_obs[:, :2])
        free = np.asarray(x[:, 2:], np.float64)
        assert np.all(np.abs(free.mean(0) - np.asarray(mu[2:])) < 4 * 0.3 / np.sqrt(n) + 0.01), (method, free.mean(0))
        np.testing.assert_allclose(free.std(0), 0.3, rtol=0.08)


# -------------------------------------------------------------------------------------------- reflow
def test_straightness_of_straight_and_curved_paths():
    """A point mass: on the linear path every probability-flow path is the straight segment from z to mu
    (straightness 0, length ratio 1); under VP it is alpha_t mu + sigma_t z, whose length ratio the polyline
    reproduces against the quadrature of int || alpha' mu + sigma' z || dt."""
    mu = jnp.array([1.5, -0.5])
    point = GaussianMixture(mu[None], jnp.array([1e-3]), jnp.array([1.0]))
    lin = reflow.straightness(PATHS["linear"], point.score_fn(PATHS["linear"]), KEY, 64, (2,))
    assert lin["straightness"] < 1e-4 and abs(lin["length_ratio"] - 1.0) < 1e-4
    vp = sde_lib.VPSDE()
    curved = reflow.straightness(vp, point.score_fn(vp), KEY, 64, (2,), eps=1e-3)
    # From x_T = z the flow keeps eps_hat = (x - alpha mu) / sigma fixed: x_t = alpha_t mu + sigma_t w, whose
    # speed || alpha' mu + sigma' w || is integrated on a fine grid (VP's coefficients written out).
    t = np.geomspace(1e-3, 1.0, 20_001)
    big_b, beta = 0.1 * t + 9.95 * t**2, 0.1 + 19.9 * t
    alpha, sigma = np.exp(-big_b / 2), np.sqrt(-np.expm1(-big_b))
    d_alpha, d_sigma = -beta / 2 * alpha, beta * np.exp(-big_b) / (2 * sigma)
    m = np.asarray(mu, np.float64)
    w = (np.asarray(vp.prior_sampling(KEY, (64, 2)), np.float64) - alpha[-1] * m) / sigma[-1]  # (64, 2)
    speed = np.linalg.norm(d_alpha[:, None, None] * m + d_sigma[:, None, None] * w, axis=-1)  # (T, 64)
    chord = np.linalg.norm((alpha[-1] - alpha[0]) * m + (sigma[-1] - sigma[0]) * w, axis=-1)
    expected = float(np.mean(np.trapezoid(speed, t, axis=0) / chord))
    assert expected > 1.05 and abs(curved["length_ratio"] - expected) < 2e-3 * expected
    assert curved["straightness"] > 0.1


def test_make_pairs_couples_noise_with_the_ode_output(tmp_path):
    sde, gmm = PATHS["linear"], builtin_mixture("ring2d")
    x, noise, info = reflow.make_pairs(sde, gmm.score_fn(sde), KEY, 10, (2,), sampler="dpm_solver_pp_3m", steps=10,
                                       batch_size=4)
    assert x.shape == noise.shape == (10, 2) and info["nfe"] == 10
    # Row i: the ODE solve from prior_std z_i, and z_i a function of (key, i) alone.
    direct, _ = sampling.sample(sde, gmm.score_fn(sde), KEY, (4, 2), "dpm_solver_pp_3m", 10,
                                x_init=sde.prior_std * jnp.asarray(noise[-4:]))  # the padded last chunk's rows
    np.testing.assert_allclose(x[-4:], direct, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(noise[:3], sde_lib.sdes.standard_normal(KEY, (3, 2)))  # row i from (key, i)
    with pytest.raises(ValueError, match="stochastic"):
        reflow.make_pairs(sde, gmm.score_fn(sde), KEY, 3, (2,), sampler="ancestral")
    path = str(tmp_path / "pairs.npz")
    write_pairs(path, x, noise, step=3)
    back = read_pairs(path, (2,))
    np.testing.assert_array_equal(back[0], x)
    np.testing.assert_array_equal(back[1], noise)
    with pytest.raises(ValueError, match="exists"):
        write_pairs(path, x, noise)
    with pytest.raises(ValueError, match=r"must both be \(N, \*\(3,\)\)"):
        read_pairs(path, (3,))


def test_a_run_on_pairs_trains_on_their_coupling(tmp_path):
    """``data.pairs``: the training batches are the pairs' x with their own noise, and the score objective's
    loss uses that noise (it equals the loss with the noise passed explicitly, not a fresh draw's)."""
    x = np.random.default_rng(0).normal(size=(512, 2)).astype(np.float32)
    noise = np.random.default_rng(1).normal(size=(512, 2)).astype(np.float32)
    path = str(tmp_path / "pairs.npz")
    write_pairs(path, x, noise)
    config = toy_config({"data.pairs": path, "training.sde": "linear", "model.parameterization": "velocity",
                         "training.weighting": "velocity", "training.batch_size": 64, "model.hidden": 16})
    ds = Dataset(config.data, "train", 64, config.seed)
    batch = next(ds.iterate(0))
    rows = [int(np.flatnonzero(np.all(x == b, axis=1))[0]) for b in batch["x"]]
    np.testing.assert_array_equal(batch["noise"], noise[rows])
    assert Dataset(config.data, "test", 64, config.seed).cond == {}  # evaluation keeps the data set

    run = assemble(config)
    _, state = run.init_state(training.make_optimizer(config.optim))
    objective = run.objective()
    key = jax.random.PRNGKey(4)
    got, _ = objective.loss(state.params, batch, key, 0)
    net = training.Network(run.graphdef, state.params)  # no dropout in the toy config: train mode is the same
    k_loss, _ = jax.random.split(key)
    x0, z = jnp.asarray(batch["x"]), jnp.asarray(batch["noise"])
    coupled = jnp.mean(objective.per_example(lambda a, c: net(a, c), k_loss, x0, z))
    fresh = jnp.mean(objective.per_example(lambda a, c: net(a, c), k_loss, x0))
    np.testing.assert_allclose(got, coupled, rtol=1e-6)
    assert abs(float(got) - float(fresh)) > 1e-3
