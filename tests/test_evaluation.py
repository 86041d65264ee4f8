"""Checkpoint metrics (``sde_lib.evaluation``, ``scripts/evaluate.py --metrics``) and image-model ablations.

One small digits run (a 2-layer MLP, 300 updates, a snapshot every 100) and one digits classifier in a
temporary cache are shared by the module.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from sde_lib import runs
from sde_lib.evaluation import ablation
from sde_lib.evaluation import checkpoints as evaluation
from sde_lib.runs import trainer
from tests.test_configs import load

pytestmark = pytest.mark.slow  # one digits run trained for the module
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    config = load(os.path.join(ROOT, "configs/digits/vp.py"))
    t = config.training
    t.n_iters, t.batch_size, t.n_jitted_steps = 300, 64, 20
    t.log_freq = t.eval_freq = t.snapshot_freq = t.snapshot_freq_for_preemption = 100
    config.model.hidden, config.model.n_layers = 128, 2
    config.optim.warmup, config.optim.lr = 5, 3e-3
    config.sampling.steps = 8
    workdir = str(tmp_path_factory.mktemp("digits_run"))
    trainer.train(config, workdir, progress=False)
    return dict(workdir=workdir, cache=str(tmp_path_factory.mktemp("classifiers")))


@pytest.fixture(scope="module")
def rows(env):
    return evaluation.evaluate_checkpoints(env["workdir"], num=120, bpd_num=16, cache_dir=env["cache"], progress=False)


def test_every_checkpoint_gets_metrics_and_bits_per_dim(env, rows):
    assert [r["step"] for r in rows] == runs.checkpoint_steps(env["workdir"]) == [100, 200, 300]
    for r in rows:
        assert r["n"] == 120 and r["steps"] == 8 and r["nfe"] >= 8 and r["classifier_accuracy"] > 0.95
        assert np.isfinite([r["fd"], r["fd_err"], r["kid"], r["bpd"], r["bpd_err"]]).all() and r["bpd"] > 0
    # Same seed at every step: the same real draws, so the same floors; the model's numbers move.
    assert len({r["fd_floor"] for r in rows}) == 1 and len({r["fd"] for r in rows}) == 3
    # Training from noise to blobs in 300 updates: the last checkpoint is far better than the first.
    assert rows[-1]["fd"] < rows[0]["fd"] - 3 * rows[0]["fd_err"]
    assert rows[-1]["bpd"] < rows[0]["bpd"]


def test_report_files(env, rows, tmp_path):
    paths = evaluation.write_report(rows, env["workdir"], str(tmp_path))
    assert all(os.path.getsize(p) > 0 for p in paths.values())
    table = open(paths["md"]).read()
    assert "| 100 |" in table and "| 300 |" in table and "Real-vs-real floors" in table
    assert json.load(open(paths["json"]))["rows"][1]["step"] == 200


def _evaluate(*argv):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts/evaluate.py"), *argv], capture_output=True,
                          text=True, cwd=ROOT)


def test_cli_metrics_flag(env, tmp_path):
    out = tmp_path / "m"
    r = _evaluate("--metrics", "--workdir", env["workdir"], "--checkpoints", "latest", "--num", "40", "--no_bpd",
                  "--cache_dir", env["cache"], "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.load(open(out / "metrics.json"))["rows"]
    assert [row["step"] for row in rows] == [300] and "bpd" not in rows[0]


@pytest.mark.parametrize("flags, words", [
    (["--checkpoints", "150"], "no checkpoint of step(s) [150]"),
    (["--checkpoints", "ten"], "--checkpoints must be"),
    (["--num", "5000"], "num must be in 1..360"),
])
def test_cli_bad_input_one_line(env, flags, words):
    r = _evaluate("--metrics", "--workdir", env["workdir"], "--no_bpd", "--cache_dir", env["cache"], *flags)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and words in last and "Traceback" not in r.stderr


def test_ablation_of_an_image_model(env):
    source = ablation.workdir_source(env["workdir"])
    assert source.data_cfg is not None and source.dims == (8, 8, 1)
    result = ablation.run_ablation(source, ["ode_euler", "dpm_solver_pp_2m"], [4, 16], n=100, ref_tol=1e-5,
                                   ref_x64=False, progress=False, cache_dir=env["cache"])
    m = result["meta"]
    assert m["metric_n"] == 100 and m["dataset"] == "digits" and np.isfinite(m["fd_floor"])
    by = {(r["sampler"], r["budget"]): r for r in result["rows"]}
    for r in by.values():
        assert np.isfinite([r["fd"], r["kid"], r["precision"], r["recall"], r["err_rms"]]).all()
    # More steps of the same ODE land nearer the reference solve.
    assert by["ode_euler", 16]["err_rms"] < by["ode_euler", 4]["err_rms"]
    table = ablation.markdown(result)
    assert "| FD | KID |" in table and "real-vs-real floors" in table


class CompileCounter:
    """Counts XLA backend compilations while active (``jax.monitoring``'s compile-duration events)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


def test_a_second_checkpoint_compiles_nothing(env):
    """Loading, sampling and bits/dim of another checkpoint of the same run reuse every compilation: the
    parameters are traced arrays of a pytree score function, and the SDE rebuilt from the config
    compares equal to the first one."""

    def evaluate(step):
        r = runs.load_run(env["workdir"], step, warn=False)
        x, info = r.sample(jax.random.PRNGKey(0), 16, "dpm_solver_pp_3m", 5)
        bpd = r.bpd(num=8, n_dequant=1)["bpd"]
        return np.asarray(x), bpd

    with CompileCounter() as first:
        x1, bpd1 = evaluate(100)
    with CompileCounter() as second:
        x2, bpd2 = evaluate(200)
    assert first.count > 0  # the counter sees compilations
    assert second.count == 0
    assert not np.allclose(x1, x2) and bpd1 != bpd2  # ... and the second checkpoint's own numbers
