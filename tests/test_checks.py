"""Integers are integers and floats are finite at every public entry point: a sweep over the integer and
float arguments of the public API with the values Python would otherwise truncate or accept silently
(2.7 -> 2 steps, True -> 1 step, NaN tolerances), each refused before anything is compiled, in one line
that names the argument. The run-level arguments (``Run.sample``, ``Run.bpd``, labels) are swept in
tests/test_conditional_training.py, which has a trained run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from sde_lib import checks, guidance, likelihood, sampling
from sde_lib.oracle import builtin_mixture

SDE = sde_lib.VPSDE()
GMM = builtin_mixture("ring2d")
SCORE = GMM.score_fn(SDE)
KEY = jax.random.PRNGKey(0)
X = jnp.zeros((2, 2))
NAN, INF = float("nan"), float("inf")

# (call taking the bad value, the argument's name as the message must give it, bad values)
INTEGERS = {
    "sample steps": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "euler_maruyama", steps=v), "steps"),
    "sample shape": (lambda v: sampling.sample(SDE, SCORE, KEY, (v, 2), "euler_maruyama", steps=2), "shape"),
    "sample max_steps": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "ode_adaptive", max_steps=v),
                         "max_steps"),
    "pc n_steps": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "pc", steps=2, n_steps=v), "n_steps"),
    "unipc order": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "unipc", steps=2, order=v),
                         "order"),
    "log_likelihood n_probes": (lambda v: likelihood.log_likelihood(SDE, SCORE, X, KEY, n_probes=v), "n_probes"),
    "log_likelihood max_steps": (lambda v: likelihood.log_likelihood(SDE, SCORE, X, KEY, max_steps=v),
                                 "max_steps"),
    "log_likelihood batch_size": (lambda v: likelihood.log_likelihood(SDE, SCORE, X, KEY, batch_size=v),
                                  "batch_size"),
    "bits_per_dim levels": (lambda v: likelihood.bits_per_dim(SDE, SCORE, np.zeros((2, 2), int), KEY, levels=v),
                            "levels"),
    "bits_per_dim n_dequant": (lambda v: likelihood.bits_per_dim(SDE, SCORE, np.zeros((2, 2), int), KEY, levels=4,
                                                                 n_dequant=v), "n_dequant"),
    "inpaint steps": (lambda v: guidance.inpaint(SDE, SCORE, KEY, X, jnp.ones((2, 2)), steps=v), "steps"),
    "repaint jump_length": (lambda v: guidance.inpaint(SDE, SCORE, KEY, X, jnp.ones((2, 2)), "repaint", steps=4,
                                                       jump_length=v), "jump_length"),
    "oracle sample n": (lambda v: GMM.sample(KEY, v), "n"),
    "oracle sample_t n": (lambda v: GMM.sample_t(SDE, KEY, v, 0.5), "n"),
    "oracle conditional label": (lambda v: GMM.conditional(v), "label"),
    "VPSDE N": (lambda v: sde_lib.VPSDE(N=v), "N"),
    "VESDE N": (lambda v: sde_lib.VESDE(N=v), "N"),
    "LinearPath N": (lambda v: sde_lib.LinearPath(N=v), "N"),
}
REALS = {
    "sample eps": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "euler_maruyama", steps=2, eps=v), "eps"),
    "sample rtol": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "ode_adaptive", rtol=v), "rtol"),
    "sample atol": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "ode_adaptive", atol=v), "atol"),
    "pc snr": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "pc", steps=2, snr=v), "snr"),
    "ddim eta": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "ddim", steps=2, eta=v), "eta"),
    "edm S_churn": (lambda v: sampling.sample(SDE, SCORE, KEY, (2, 2), "edm_heun", steps=2, S_churn=v), "S_churn"),
    "log_likelihood rtol": (lambda v: likelihood.log_likelihood(SDE, SCORE, X, KEY, rtol=v), "rtol"),
    "log_likelihood eps": (lambda v: likelihood.log_likelihood(SDE, SCORE, X, KEY, eps=v), "eps"),
    "classifier_free scale": (lambda v: guidance.classifier_free(SCORE, {"label": 2}, v), "scale"),
    "classifier scale": (lambda v: guidance.classifier(SCORE, lambda x, t, c: x[:, 0], v), "scale"),
    "dps zeta": (lambda v: guidance.inpaint(SDE, SCORE, KEY, X, jnp.ones((2, 2)), "dps", steps=2, zeta=v), "zeta"),
    "repaint eta": (lambda v: guidance.inpaint(SDE, SCORE, KEY, X, jnp.ones((2, 2)), "repaint", steps=2, eta=v),
                    "eta"),
    "VPSDE beta_max": (lambda v: sde_lib.VPSDE(beta_max=v), "beta_max"),
    "VESDE sigma_max": (lambda v: sde_lib.VESDE(sigma_max=v), "sigma_max"),
    "LinearPath T": (lambda v: sde_lib.LinearPath(T=v), "T"),
    "EDMPath sigma_max": (lambda v: sde_lib.EDMPath(sigma_max=v), "sigma_max"),
}


# None is the documented default of these (all rows in one solve; score_sde's end time).
NONE_VALID = {"log_likelihood batch_size", "sample eps"}


def sweep(cases, bad_values):
    return [(case, bad) for case in sorted(cases) for bad in bad_values if not (bad is None and case in NONE_VALID)]


@pytest.mark.parametrize("case, bad", sweep(INTEGERS, [2.7, 3.0, True, "3", None]))
def test_integer_arguments_refuse_non_integers(case, bad):
    call, name = INTEGERS[case]
    with pytest.raises((TypeError, ValueError)) as err:
        call(bad)
    message = str(err.value)
    assert name in message and "\n" not in message, message


@pytest.mark.parametrize("case, bad", sweep(REALS, [NAN, INF, True, "0.5", None]))
def test_float_arguments_refuse_nan_inf_and_non_numbers(case, bad):
    call, name = REALS[case]
    with pytest.raises((TypeError, ValueError)) as err:
        call(bad)
    message = str(err.value)
    assert name in message and "\n" not in message, message


def test_integer_and_real_accept_what_they_should():
    """The rule refuses types, not NumPy or JAX: their integer and float scalars pass, as Python ints."""
    assert checks.integer(np.int64(3), "n") == 3 and checks.integer(jnp.int32(3), "n") == 3
    assert type(checks.integer(np.int64(3), "n")) is int
    assert checks.real(np.float32(0.5), "s") == 0.5 and checks.real(jnp.asarray(2.0), "s") == 2.0
    assert checks.real(3, "s") == 3.0 and checks.real(INF, "s", finite=False) == INF
    for bad, kind in ((np.bool_(True), TypeError), (np.float64(2.0), TypeError), (jnp.asarray([1, 2]), TypeError)):
        with pytest.raises(kind):
            checks.integer(bad, "n")
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        checks.integer(0, "n", minimum=1)


def test_a_valid_call_still_runs_with_numpy_integers():
    """The checks convert what they accept: NumPy integer steps and shape run exactly like Python ints (the
    compiled sampler is keyed on them, so a np.int64 must not make a second program or a wrong grid)."""
    a, info_a = sampling.sample(SDE, SCORE, KEY, (2, 2), "euler_maruyama", steps=3)
    b, info_b = sampling.sample(SDE, SCORE, KEY, (np.int64(2), 2), "euler_maruyama", steps=np.int32(3))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert info_a["nfe"] == info_b["nfe"] == 3 and isinstance(info_b["nfe"], int)
