"""Reliability of training runs: resume after kill -9 and SIGTERM, damaged checkpoints, non-finite losses.

Every run trains the same tiny MLP on the 2-D toy mixture. Batches and update keys are pure functions of
the step, so a resumed run must end with exactly the bits of an uninterrupted one (CPU).
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from sde_lib.data import Dataset
from sde_lib.errors import NonFiniteLossError
from sde_lib.runs import RunFolder, checkpoints, trainer
from sde_lib.runs import folder as run_folder
from sde_lib.runs.assemble import assemble
from tests.helpers import toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_ITERS = 300
OVERRIDES = {
    "data.centered": False, "model.hidden": 16, "model.n_layers": 2, "training.batch_size": 64,
    "training.n_iters": N_ITERS, "training.log_freq": 10, "training.eval_freq": 100, "training.snapshot_freq": 100,
    "training.snapshot_freq_for_preemption": 50, "training.snapshot_sampling": False, "optim.warmup": 20,
}


def make_config(**extra):
    return toy_config(OVERRIDES, **extra)


def train_command(workdir):
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--config=" + os.path.join(ROOT, "configs/toy/vp.py"),
            f"--workdir={workdir}", *flags]


def committed_steps(workdir):
    """Committed checkpoint steps of both directories (orbax writes to a temporary name, then renames)."""
    steps = []
    for sub in (run_folder.SNAPSHOTS, run_folder.PREEMPTION):
        folder = os.path.join(workdir, sub)
        steps += [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    return sorted(steps)


def start_and_wait_for_checkpoint(workdir, after: int):
    """Start the training command and return it once a checkpoint newer than ``after`` is committed."""
    proc = subprocess.Popen(train_command(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT})
    deadline = time.time() + 300
    while not any(s > after for s in committed_steps(workdir)):
        assert proc.poll() is None, f"training exited early: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    return proc


def saved_state(workdir, step):
    run = RunFolder(workdir)
    return checkpoints.restore(run, assemble(run.read_config(), run).target, step)[0]


def assert_bit_identical(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run: (workdir, final state)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    state = trainer.train(make_config(), workdir, progress=False)
    return workdir, jax.device_get(state)


def test_uninterrupted_run_learns_and_logs(reference):
    workdir, state = reference
    assert int(state.step) == N_ITERS
    records = RunFolder(workdir).read_metrics()
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == N_ITERS // OVERRIDES["training.log_freq"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert os.listdir(os.path.join(workdir, run_folder.TENSORBOARD))
    assert RunFolder(workdir).read_config() == make_config()
    # Snapshots at multiples of 100; preemption copies at the other multiples of 50, the last two kept.
    assert committed_steps(workdir) == [100, 150, 200, 250, 300]


@pytest.mark.slow
def test_sigterm_then_kill9_resume_bit_identical(reference, tmp_path):
    workdir = str(tmp_path)
    proc = start_and_wait_for_checkpoint(workdir, after=10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    stopped = [line for line in err.splitlines() if "SIGTERM: stopped at step" in line]
    assert stopped, err[-2000:]
    stop_step = int(stopped[0].split("stopped at step ")[1].split()[0])
    assert 10 < stop_step < N_ITERS and max(committed_steps(workdir)) == stop_step

    proc = start_and_wait_for_checkpoint(workdir, after=stop_step)
    proc.kill()  # SIGKILL: no handler runs
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert f"resuming {workdir} from step {stop_step}" in err
    killed_at = max(committed_steps(workdir))
    assert killed_at < N_ITERS

    done = subprocess.run(train_command(workdir), cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    assert_bit_identical(saved_state(workdir, N_ITERS), reference[1])
    # The log reads as one run: every multiple of log_freq once, in order, with the uninterrupted run's
    # losses (a window cut by the stop is completed from the updates saved with the checkpoint).
    logged = [r for r in RunFolder(workdir).read_metrics() if "loss" in r]
    assert [r["step"] for r in logged] == list(range(10, N_ITERS + 1, 10))
    uninterrupted = [r for r in RunFolder(reference[0]).read_metrics() if "loss" in r]
    assert [r["loss"] for r in logged] == [r["loss"] for r in uninterrupted]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_latest_checkpoint_falls_back(reference, tmp_path, damage):
    workdir = str(tmp_path / "run")
    shutil.copytree(reference[0], workdir)
    latest = os.path.join(workdir, run_folder.SNAPSHOTS, str(N_ITERS))
    rng = np.random.default_rng(0)
    for parent, _, files in os.walk(latest):
        for name in files:
            path = os.path.join(parent, name)
            size = os.path.getsize(path)
            if damage == "truncate":
                os.truncate(path, size // 2)
            else:
                with open(path, "wb") as f:
                    f.write(rng.bytes(size))
    with pytest.warns(UserWarning, match="could not be restored"):
        state = trainer.train(make_config(), workdir, progress=False)
    assert os.path.isdir(latest + ".corrupt")
    # Resumed from step 250 and retrained the last 50 updates to the same bits.
    assert_bit_identical(jax.device_get(state), reference[1])
    assert_bit_identical(saved_state(workdir, N_ITERS), reference[1])


def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    # Float data with one huge row: the loss overflows to Inf in the first update whose batch holds it.
    x = np.random.default_rng(0).normal(size=(2560, 2)).astype(np.float32)
    path = tmp_path / "data.npz"
    np.savez(path, train=x, test=x[:128])
    config = make_config(**{"data.dataset": "npz", "data.path": str(path), "data.levels": None,
                            "training.n_iters": 40, "training.snapshot_freq_for_preemption": 4})
    ds = Dataset(config.data, "train", config.training.batch_size, config.seed, process_index=0, process_count=1)
    first_step = {}
    for s in range(40):
        for i in ds.indices_at(s)[1]:
            first_step.setdefault(int(i), s)
    row, bad = next((i, s) for i, s in sorted(first_step.items()) if 9 <= s < 40 and s % 4)
    x[row] = 1e20
    np.savez(path, train=x, test=x[:128])

    workdir = str(tmp_path / "run")
    last_good = 4 * (bad // 4)  # after `bad` updates; update bad + 1 (1-based) sees the huge row
    with pytest.raises(NonFiniteLossError, match=rf"at step {bad + 1}; .*Last good checkpoint: step {last_good}"):
        trainer.train(config, workdir, progress=False)
    assert max(committed_steps(workdir)) == last_good
    state = saved_state(workdir, last_good)
    assert int(state.step) == last_good
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state))
