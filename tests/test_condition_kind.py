"""A condition kind of our own, defined in this file alone, trains and samples like the built-in ones.

The kind: the direction (an angle) of the 2-D ring mixture's component an example belongs to, read from
the data (the nearest of the eight component angles), fed to the network as two channels concatenated to
its input (cos, sin); its null value (0, 0) is no direction. Nothing in ``sde_lib``, ``scripts`` or
``configs`` knows it: the config names this file in ``condition.plugin``, the run records it, and
``load_run`` and ``scripts/sample.py`` import it from there. That is the registry's promise: a new kind
is its own file (here, a test file) and nothing more.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import sde_lib
from sde_lib import conditioning, data
from sde_lib.runs import trainer
from tests.helpers import toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANGLES = np.arange(8) * 45.0  # the ring mixture's components (configs/toy: sde_lib.oracle "ring2d", radius 2)


class Direction(conditioning.ConditionKind):
    """The direction of an example's ring component, in degrees (a multiple of 45)."""

    name, network_input, user_arg = "direction", "concat", "direction"
    help = "Direction in degrees of the ring component to sample."

    def validate(self, config):
        if config.data.dataset != "toy" or config.model.concat_channels != 2:
            raise ValueError("config.model.concat_channels must be 2 and config.data.dataset 'toy' for "
                             "condition.kind='direction'")

    def read(self, config, split):
        x = data.load_split(config.data, split)
        angle = np.degrees(np.arctan2(x[:, 1], x[:, 0])) % 360.0
        return ANGLES[np.round(angle / 45.0).astype(int) % 8]

    def encode(self, values, ctx, *, source):
        a = np.radians(np.asarray(values, np.float64))
        if a.ndim != 1:
            raise ValueError(f"{source}: one angle per example, got shape {a.shape}")
        return {"concat": np.stack([np.cos(a), np.sin(a)], axis=-1).astype(np.float32)}

    def null(self, ctx):
        return {"concat": np.zeros(2, np.float32)}

    def parse_cli(self, text, ctx):
        try:
            return [(f"{float(text):g} deg", float(text))]
        except ValueError:
            raise ValueError(f"--cond must be an angle in degrees, got {text!r}") from None


conditioning.register(Direction())

CFG = {"data.centered": False, "model.hidden": 128, "model.n_layers": 3, "training.batch_size": 256,
       "training.n_iters": 600, "training.n_jitted_steps": 10, "training.log_freq": 200,
       "training.eval_freq": 600, "training.snapshot_freq": 600, "training.snapshot_freq_for_preemption": 600,
       "training.snapshot_sampling": False, "optim.warmup": 100, "optim.lr": 2e-3, "optim.ema_rate": 0.99,
       "condition.kind": "direction", "condition.plugin": os.path.abspath(__file__), "model.concat_channels": 2,
       "training.cond_drop_prob": 0.2}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("direction") / "run")
    trainer.train(toy_config(CFG), path, progress=False)
    return path


def share_near(x, angle: float) -> float:
    """The share of 2-D samples within 0.5 of the component at ``angle`` degrees (std 0.1; neighbours 1.5 apart)."""
    mean = 2.0 * np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))])
    return float(np.mean(np.linalg.norm(np.asarray(x) - mean, axis=1) < 0.5))


@pytest.mark.slow
def test_a_kind_of_our_own_trains_and_samples_through_load_run(workdir):
    r = sde_lib.load_run(workdir, warn=False)
    assert r.kind.name == "direction" and r.config.condition.plugin == os.path.abspath(__file__)
    key = jax.random.PRNGKey(0)
    for angle in (90.0, 225.0):  # a chance hit is 1/8 of the samples
        x, info = r.sample(key, 256, "dpm_solver_pp_3m", 20, direction=angle)
        assert share_near(x, angle) > 0.8, (angle, share_near(x, angle))
    # Classifier-free guidance works on it like on any kind; the null condition gives the whole ring.
    x, _ = r.sample(key, 256, "dpm_solver_pp_3m", 20, condition=[90.0] * 256, guidance=2.0)
    assert share_near(x, 90.0) > 0.9
    x, _ = r.sample(key, 512, "dpm_solver_pp_3m", 20)
    assert all(0.03 < share_near(x, a) < 0.3 for a in ANGLES), [share_near(x, a) for a in ANGLES]


@pytest.mark.slow
def test_sample_script_finds_the_kind_through_the_run(workdir, tmp_path):
    out = str(tmp_path / "s")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/sample.py"), f"--workdir={workdir}",
                        "--cond=270", "--cond=0", "--num=64", "--steps=20", "--sampler=dpm_solver_pp_3m",
                        f"--out={out}"],
                       capture_output=True, text=True, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr[-2000:]
    saved = np.load(out + ".npz")
    assert list(saved["conditions"]) == ["270 deg", "0 deg"]
    assert share_near(saved["samples"][:64], 270.0) > 0.8 and share_near(saved["samples"][64:], 0.0) > 0.8
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "scripts/sample.py"), f"--workdir={workdir}",
                          "--label=3", f"--out={out}_bad"], capture_output=True, text=True, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1] == (
        f"error: --label does not apply to {workdir}: it takes --cond (condition.kind='direction')")
