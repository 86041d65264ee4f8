"""The train step (schedule, EMA, scanned steps), data parallelism over devices and processes, logging."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sde_lib import figures, training
from sde_lib.runs import RunFolder
from sde_lib.runs import folder as run_folder
from sde_lib.runs.assemble import assemble
from sde_lib.data import make_iterator
from tests.helpers import toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    "data.centered": False, "model.hidden": 16, "model.n_layers": 2, "training.batch_size": 64,
    "training.n_iters": 20, "training.n_jitted_steps": 2, "training.log_freq": 10, "training.eval_freq": 100,
    "training.snapshot_freq": 100, "training.snapshot_freq_for_preemption": 100, "training.snapshot_sampling": False,
    "eval.batch_size": 256, "optim.warmup": 5,
}


def make_config(**extra):
    return toy_config(OVERRIDES, **extra)


def test_warmup_schedule():
    config = make_config()
    lr = training.learning_rate_schedule(config.optim)
    base, warmup = config.optim.lr, config.optim.warmup
    np.testing.assert_allclose([lr(0), lr(warmup - 1), lr(10 * warmup)], [base / warmup, base, base], rtol=1e-6)
    config.optim.warmup = 0
    assert training.learning_rate_schedule(config.optim)(0) == config.optim.lr


@pytest.mark.parametrize("kind, mid", [("cosine", 0.5), ("linear", 0.5)])
def test_decay_schedule(kind, mid):
    config = make_config(**{"optim.schedule": kind, "optim.warmup": 10})
    lr = training.learning_rate_schedule(config.optim, n_iters=1000)
    base = config.optim.lr
    # Warm-up first, then the decay: half the rate at mid-run, zero at and after the last update.
    np.testing.assert_allclose([lr(0), lr(500), lr(1000), lr(2000)], [base / 10, mid * base, 0.0, 0.0], rtol=1e-5, atol=1e-12)
    assert lr(250) > lr(750) > 0
    with pytest.raises(ValueError, match="n_iters"):
        training.learning_rate_schedule(config.optim)


@pytest.fixture(scope="module")
def single_device_step():
    config = make_config(**{"training.n_jitted_steps": 1})
    optimizer = training.make_optimizer(config.optim)
    run = assemble(config)
    graphdef, state = run.init_state(optimizer)
    mesh = training.make_mesh(jax.devices()[:1])
    return config, optimizer, run, state, training.make_train_step(config, optimizer, mesh, run.objective()), mesh


def test_step_updates_ema_and_counter(single_device_step):
    config, _, _, state, step_fn, _ = single_device_step
    before = jax.device_get(state)
    batch = next(make_iterator(config, "train", 0))
    after, metrics = step_fn(jax.tree.map(jnp.copy, state), batch)
    # The first update's EMA decay is the warm-up's (1 + 0) / (10 + 0), not ema_rate.
    rate = float(training.ema_decay(before.step, config.optim.ema_rate, config.optim.ema_warmup))
    assert rate == pytest.approx(0.1)
    assert int(after.step) == 1 and metrics["loss"].shape == (1,) and np.isfinite(metrics["loss"]).all()
    np.testing.assert_array_equal(after.rng, before.rng)
    for e0, p1, e1, p0 in zip(*(jax.tree.leaves(t) for t in (before.ema, after.params, after.ema, before.params))):
        assert not np.allclose(p1, p0)  # every parameter moved
        np.testing.assert_allclose(e1, rate * e0 + (1 - rate) * p1, rtol=1e-6, atol=1e-7)


def test_scanned_steps_match_single_steps(single_device_step):
    config, optimizer, run, state, step_fn, mesh = single_device_step
    scan_fn = training.make_train_step(make_config(), optimizer, mesh, run.objective())
    batches = make_iterator(config, "train", 0)
    block = np.stack([next(batches) for _ in range(2)])
    one = jax.tree.map(jnp.copy, state)
    losses = []
    for x in block:
        one, m = step_fn(one, x)
        losses.append(float(m["loss"][0]))
    two, m = scan_fn(jax.tree.map(jnp.copy, state), block)
    np.testing.assert_allclose(m["loss"], losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# Runs in subprocesses: train the config of this file and save the final parameters as .npz.
_WORKER = """
import os, sys
import jax, numpy as np
sys.path[:0] = [{root!r}, os.path.join({root!r}, "tests")]
from sde_lib.runs import trainer
from sde_lib.training import to_host
from test_training import make_config
mode, out = sys.argv[1], sys.argv[2]
if mode.startswith("process"):
    jax.distributed.initialize("localhost:" + sys.argv[3], 2, int(mode[-1]))
    runs = [("two_processes", None)]
else:
    runs = [("one_device", jax.devices()[:1]), ("four_devices", jax.devices())]
for name, devices in runs:
    state = trainer.train(make_config(), os.path.join(out, name), devices=devices, progress=False)
    if jax.process_index() == 0:
        np.savez(os.path.join(out, name + ".npz"), *[to_host(x) for x in jax.tree.leaves(state.params)],
                 devices=len(devices or jax.devices()))
"""


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory):
    """Final parameters of one run on 1 device, on 4 host devices, and on 2 processes (1 device each)."""
    out = str(tmp_path_factory.mktemp("parallel"))
    code = _WORKER.format(root=ROOT)
    base = {**os.environ, "PYTHONPATH": ROOT}
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", code, "devices", out], cwd=ROOT, text=True,
                              stderr=subprocess.PIPE, env={**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})]
    procs += [subprocess.Popen([sys.executable, "-c", code, f"process{i}", out, port], cwd=ROOT, text=True,
                               stderr=subprocess.PIPE, env=base) for i in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    for p, err in zip(procs, errors):
        assert p.returncode == 0, err[-3000:]
    return {name: dict(np.load(os.path.join(out, name + ".npz")))
            for name in ("one_device", "four_devices", "two_processes")}


@pytest.mark.parametrize("name, devices", [("four_devices", 4), ("two_processes", 2)])
@pytest.mark.slow
def test_data_parallel_matches_single_device(parallel_runs, name, devices):
    ref, got = parallel_runs["one_device"], parallel_runs[name]
    assert int(got.pop("devices")) == devices and int(ref["devices"]) == 1
    assert set(got) == set(ref) - {"devices"}
    # Only the summation order of the batch mean differs: parameters of size <= 1 agree to float32
    # rounding (measured: 3e-8) after 20 Adam updates; a different batch or key would move them by ~1e-3.
    for key in got:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6)


def test_metrics_logger_truncates_on_resume(tmp_path):
    folder = RunFolder(str(tmp_path), read_only=False)
    logger = folder.metrics_logger(tensorboard=False)
    for step in (10, 20, 30):
        logger.write(step, {"loss": step / 10})
    logger.close()
    with open(tmp_path / run_folder.METRICS, "a") as f:
        f.write('{"step": 40, "lo')  # a line cut short by kill -9
    logger = folder.metrics_logger(start_step=20, tensorboard=False)
    logger.write(30, {"loss": jnp.float32(0.5)})
    logger.close()
    assert folder.read_metrics() == [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 2.0},
                                                        {"step": 30, "loss": 0.5}]
    assert json.loads((tmp_path / run_folder.METRICS).read_text().splitlines()[0])["step"] == 10


def test_image_grid_layout():
    images = np.arange(5 * 2 * 3, dtype=np.uint8).reshape(5, 2, 3, 1)
    grid = figures.image_grid(images, ncols=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3)
    np.testing.assert_array_equal(grid[4:6, 5:8, 1], images[4, :, :, 0])  # row 1, column 1
    assert (grid[0] == 255).all() and (grid[4:6, 9:12] == 255).all()  # padding and the empty sixth cell
    with pytest.raises(ValueError, match="uint8"):
        figures.image_grid(images.astype(np.float32))
