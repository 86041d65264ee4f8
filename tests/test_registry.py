"""The sampler registry: a new sampler is one solver class and one registration, in this file alone, and
then runs through ``sample()`` (with exact NFE and validated options) and the ablation; the README's
sampler table is the registry's."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from sde_lib import sampling
from sde_lib.evaluation import ablation
from sde_lib.oracle import builtin_mixture
from sde_lib.sampling.base import ScoreSolver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ExponentialEulerTwice(ScoreSolver):
    """A toy sampler: DDIM's step taken in ``substeps`` halves of the log-SNR interval, one score
    evaluation each (so ``substeps`` evaluations per step)."""

    substeps: int = 2

    def step_real(self, terms, s0, t0, t1, y0, args, state):
        lam0, lam1 = self.sde.half_log_snr(t0), self.sde.half_log_snr(t1)
        y, t = y0, t0
        for j in range(1, self.substeps + 1):
            t_next = self.sde.t_from_half_log_snr(lam0 + (lam1 - lam0) * j / self.substeps)
            eps, x0 = self.predictions(terms, t, y, args)
            alpha, sigma = self.sde.marginal_coeffs(t_next)
            y, t = alpha * x0 + sigma * eps, t_next
        return y, state


@pytest.fixture
def toy_sampler():
    spec = sampling.Sampler(
        "toy_ddim_halves", family="exponential", grid="logsnr", doc="DDIM in sub-steps (a test's sampler)",
        nfe_per_step=lambda o: int(o["substeps"]), nfe_doc="substeps x steps",
        options=(sampling.Option("substeps", 2, "sub-steps per step, >= 1", lambda v: int(v) == v and v >= 1),),
        solver=lambda sde, steps, o: ExponentialEulerTwice(sde, substeps=int(o["substeps"])))
    sampling.register(spec)
    try:
        yield spec.name
    finally:
        sampling.unregister(spec.name)


def test_a_registered_sampler_runs_everywhere(toy_sampler, counting_score):
    sde = sde_lib.VPSDE()
    gmm = builtin_mixture("ring2d")
    assert toy_sampler in sampling.available_samplers() and sampling.sampler_family(toy_sampler) == "exponential"
    assert sampling.nfe_per_step(toy_sampler, substeps=3) == 3 and sampling.steps_for_nfe(toy_sampler, 20) == 10
    with pytest.raises(ValueError, match="invalid value 0 for option 'substeps'"):
        sampling.sample(sde, gmm.score_fn(sde), jax.random.PRNGKey(0), (4, 2), toy_sampler, substeps=0)

    # Exact NFE from real calls, and it is DDIM: 5 steps of 2 halves equal DDIM's 10 steps on the same grid.
    score = counting_score(gmm.score_fn(sde))
    x_T = sde.prior_sampling(jax.random.PRNGKey(1), (64, 2))
    x, info = sampling.sample(sde, score, jax.random.PRNGKey(2), x_T.shape, toy_sampler, steps=5, x_init=x_T)
    assert info["nfe"] == 10 == score.take() and bool(jnp.all(info["ok"]))
    ddim, _ = sampling.sample(sde, gmm.score_fn(sde), jax.random.PRNGKey(2), x_T.shape, "ddim", steps=10, x_init=x_T)
    np.testing.assert_allclose(x, ddim, rtol=1e-4, atol=1e-4)

    # The ablation picks it up by name; its endpoint error falls with the budget.
    result = ablation.run_ablation(ablation.oracle_source("ring2d"), [toy_sampler], [10, 40], n=64, ref_tol=1e-6,
                                   floor_draws=2, progress=False)
    rows = {r["budget"]: r for r in result["rows"]}
    assert rows[10]["nfe"] == 10 and rows[40]["nfe"] == 40 and rows[40]["err_rms"] < rows[10]["err_rms"]
    assert f"| `{toy_sampler}` | exponential | substeps x steps | logsnr | `substeps` |" in \
        sampling.registry.markdown_table()


def test_registration_is_checked():
    with pytest.raises(ValueError, match="already registered"):
        sampling.register(sampling.Sampler("ddim", family="exponential", solver=lambda *a: None))
    with pytest.raises(ValueError, match="family"):
        sampling.Sampler("x", family="magic", solver=lambda *a: None)
    with pytest.raises(ValueError, match="exactly one of solver"):
        sampling.Sampler("x", family="ode")


def test_readme_sampler_table_is_the_registry():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert sampling.registry.markdown_table() in readme, "regenerate README's table: registry.markdown_table()"
