"""The sampler ablation on the ring2d oracle: outputs, actual NFE, error ordering, distance floor, bad input.

One tiny grid (ode_tsit5 and euler_maruyama at NFE 20 and 100, n = 200) runs once per module.
"""

import csv
import importlib.util
import json
import math
import os

import jax
import numpy as np
import pytest

from PIL import Image

from sde_lib import sampling
from sde_lib.evaluation import ablation
from sde_lib.metrics.distances import random_directions
from sde_lib.oracle import builtin_mixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLERS, BUDGETS, N = ("ode_tsit5", "euler_maruyama"), (20, 100), 200


@pytest.fixture(scope="module")
def source():
    return ablation.oracle_source("ring2d", "vp")


@pytest.fixture(scope="module")
def result(source):
    return ablation.run_ablation(source, SAMPLERS, BUDGETS, n=N, seed=3, floor_draws=8, ref_tol=1e-6,
                                 progress=False)


def _row(result, sampler, budget):
    (row,) = [r for r in result["rows"] if r["sampler"] == sampler and r["budget"] == budget]
    return row


def test_outputs_written_with_actual_nfe(result, tmp_path):
    paths = ablation.write_outputs(result, str(tmp_path / "abl"))
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["sampler"], int(r["budget"])) for r in rows] == [(s, b) for s in SAMPLERS for b in BUDGETS]
    for r in rows:
        steps, nfe, budget = int(r["steps"]), float(r["nfe"]), int(r["budget"])
        assert steps == sampling.steps_for_nfe(r["sampler"], budget)
        # Tsit5 is first-same-as-last: 6 new evaluations per step plus one at the start.
        assert nfe == (1 + 6 * steps if r["sampler"] == "ode_tsit5" else steps)
        assert nfe <= budget
        assert float(r["sec_per_sample"]) > 0
    md = open(paths["md"]).read()
    assert md.count("\n| ode_tsit5 |") == 2 and md.count("\n| euler_maruyama |") == 2
    # Three panels of curves: a wide image, and far from blank (many distinct colours drawn).
    image = np.asarray(Image.open(paths["png"]).convert("RGB"))
    assert image.shape[1] > 2 * image.shape[0] and len(np.unique(image.reshape(-1, 3), axis=0)) > 50
    saved = json.load(open(paths["json"]))
    assert saved["meta"]["n"] == N and [r["nfe"] for r in saved["rows"]] == [float(r["nfe"]) for r in rows]
    with pytest.raises(ValueError, match="exists; choose another output"):
        ablation.write_outputs(result, str(tmp_path / "abl"))  # an earlier result is never overwritten


def test_endpoint_error_falls_with_nfe_and_is_blank_for_sde(result):
    lo, hi = _row(result, "ode_tsit5", 20), _row(result, "ode_tsit5", 100)
    assert hi["err_rms"] < 0.1 * lo["err_rms"] and hi["err_median"] < lo["err_median"]
    assert all(math.isnan(_row(result, "euler_maruyama", b)["err_rms"]) for b in BUDGETS)


def test_distance_floor(result, source):
    m = result["meta"]
    floor, std = m["sw2_floor"], m["sw2_floor_std"]
    assert floor > 0 and std > 0
    # An independent exact set and the near-exact reference ODE samples sit at the floor; a 1.3x
    # dilated exact set does not.
    theta = random_directions(2, 128)
    k_ref, k_new = jax.random.split(jax.random.PRNGKey(11))
    ref = source.exact_samples(k_ref, N)
    f2, s2 = ablation.distance_floor(source.exact_samples, ref, theta, jax.random.PRNGKey(12), draws=8)
    new = source.exact_samples(k_new, N)
    assert abs(float(ablation.sliced_w2(new, ref, theta)) - f2) < 4 * s2
    assert float(ablation.sliced_w2(1.3 * new, ref, theta)) > f2 + 4 * s2
    assert abs(m["sw2_reference"] - floor) < 4 * std
    assert abs(m["logp_reference"] - m["logp_exact"]) < 0.4


def _script():
    spec = importlib.util.spec_from_file_location("ablate_script", os.path.join(ROOT, "scripts", "ablate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--samplers", "ode_tsit5,rk99"], "rk99"),
        (["--mixture", "ring3d"], "ring3d"),
        (["--samplers", "ode_tsit5", "--nfe", "5,20"], "budget 5"),
        (["--nfe", "ten"], "--nfe"),
        (["--sde", "vp", "--mixture", "missing.json"], "missing.json"),
    ],
)
def test_bad_input_gives_one_line_error(argv, words, tmp_path):
    with pytest.raises(SystemExit) as e:
        _script().main(argv + ["--out", str(tmp_path)])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and words in msg and "\n" not in msg


def test_mixture_json(tmp_path):
    gmm = builtin_mixture("grid2d")
    good = tmp_path / "m.json"
    good.write_text(json.dumps({"means": np.asarray(gmm.means).tolist(), "stds": np.asarray(gmm.stds).tolist(),
                                "weights": np.asarray(gmm.weights).tolist()}))
    src = ablation.oracle_source(str(good), "ve")
    x = gmm.sample(jax.random.PRNGKey(0), 5)
    diff = jax.jit(lambda x: src.log_prob(x) - gmm.log_prob(x))(x)
    assert src.dims == (2,) and float(np.max(np.abs(diff))) < 1e-5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"means": [[0.0, 0.0]], "stds": [1.0]}))
    with pytest.raises(ValueError, match="weights"):
        ablation.oracle_source(str(bad), "vp")


def test_best_sampler_has_the_lowest_geometric_mean_error_over_every_budget():
    """b wins on the geometric mean (a's smaller error at one budget does not decide); c, missing a budget, and
    d, non-finite at one, do not compete; adaptive rows (budget None) are ignored."""
    rows = [{"sampler": s, "budget": b, "err_rms": e} for s, b, e in (
        ("a", 5, 0.1), ("a", 10, 0.1), ("b", 5, 0.2), ("b", 10, 0.01), ("c", 5, 1e-6),
        ("d", 5, float("nan")), ("d", 10, 1e-9), ("e", None, 1e-9))]
    assert ablation.best_sampler(rows) == "b"
    with pytest.raises(ValueError, match="no fixed-step sampler"):
        ablation.best_sampler(rows[5:7])
