"""A run folder is never damaged: every failing or read-only command leaves it byte for byte as it was.

One tiny toy run (2-D mixture, a 2-layer MLP, 40 updates, snapshots at 20 and 40) is trained once per
module; every probe copies it, runs a user's command line against the copy, and compares the folder's
files (contents) and folders before and after. Command lines that need no signal run together from one
process (``tests.helpers.scripts``); the module shares a persistent compilation cache.
"""

import hashlib
import json
import logging
import os
import signal
import shutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sde_lib
from sde_lib import sampling
from sde_lib.errors import CheckpointMismatch, NonFiniteLossError, RunConflict
from sde_lib.runs import RunFolder, trainer
from sde_lib.runs import folder as run_folder
from sde_lib.oracle import builtin_mixture
from tests.helpers import scripts, toy_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, "configs/toy/vp.py")
OVERRIDES = {
    "data.centered": False, "model.hidden": 16, "model.n_layers": 2, "training.batch_size": 64,
    "training.n_iters": 40, "training.log_freq": 10, "training.eval_freq": 20, "training.snapshot_freq": 20,
    "training.snapshot_freq_for_preemption": 20, "training.snapshot_sampling": False, "optim.warmup": 5,
    "sampling.steps": 10, "sampling.batch_size": 16, "eval.batch_size": 256,
}
FLAGS = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]


def snapshot(folder: str) -> dict:
    """Every file's hash and every folder, by path relative to ``folder`` (empty if it does not exist)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        out[rel + "/"] = "dir"
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def script(name, *args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})


def one_line_error(r, *words):
    """The command failed with a single ``error: ...`` line naming ``words``, and no traceback."""
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode != 0 and lines, r.stderr[-2000:]
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), lines[-1]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    return lines[-1]


# One persistent compilation cache for the module and the scripts it starts (conftest).
pytestmark = pytest.mark.usefixtures("module_compilation_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy") / "run")
    trainer.train(toy_config(OVERRIDES), workdir, progress=False)
    return workdir


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the trained run, and its snapshot."""
    workdir = str(tmp_path / "run")
    shutil.copytree(trained, workdir)
    return workdir, snapshot(workdir)


# ------------------------------------------------------------------------------ validate, then write
FAILING_TRAINS = [
    (["--config.data.num_channels=3"], ["config.data.num_channels must be 2"]),
    (["--config.model.hidden=64"], ["model.hidden (16 -> 64)", "--fork_from", "--force"]),
    (["--config.training.sde=vesde"], ["training.sde ('vpsde' -> 'vesde')"]),
    (["--config.training.foo=1"], ["config.training.foo is not a known field"]),
    (["--config.training.n_iter=80"], ["did you mean training.n_iters"]),
    (["--config.data.dataset=npz", "--config.data.path=/nonexistent/x.npz"], ["/nonexistent/x.npz"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def failed_trains(trained, tmp_path_factory):
    """Each FAILING_TRAINS command line run against its own copy of the trained run: {flags: (result,
    workdir, snapshot before)}; one process starts them all."""
    root, copies = tmp_path_factory.mktemp("failing"), []
    for i, _ in enumerate(FAILING_TRAINS):
        workdir = str(root / f"run{i}")
        shutil.copytree(trained, workdir)
        copies.append((workdir, snapshot(workdir)))
    results = scripts(*[("train.py", f"--config={TOY}", f"--workdir={w}", *FLAGS, *flags)
                        for (w, _), (flags, _) in zip(copies, FAILING_TRAINS)])
    return {tuple(flags): (r, *c) for (flags, _), r, c in zip(FAILING_TRAINS, results, copies)}


@pytest.mark.parametrize("flags, words", FAILING_TRAINS)
def test_a_failing_train_command_leaves_the_run_as_it_was(failed_trains, flags, words):
    r, workdir, before = failed_trains[tuple(flags)]
    one_line_error(r, *words)
    assert snapshot(workdir) == before


def test_a_failing_first_command_creates_no_folder(tmp_path):
    cases = ((["--config.data.dataset=fashion_mnist", "--config.data.path=/nonexistent",
               "--config.data.image_size=28", "--config.data.num_channels=1"],
              ["Fashion-MNIST file not found", "apt-get install dataset-fashion-mnist"]),
             (["--config.data.dataset=folder", f"--config.data.path={tmp_path}",
               "--config.data.num_channels=1", "--config.data.image_size=8"], ["no image files"]))
    workdirs = [str(tmp_path / f"new_run{i}") for i in range(3)]  # one each: which command wrote is clear
    results = scripts(*[("train.py", f"--config={TOY}", f"--workdir={w}", *FLAGS, *flags)
                        for w, (flags, _) in zip(workdirs, cases)],
                      ("train.py", "--config=configs/toy/missing.py", f"--workdir={workdirs[2]}"))
    for r, (_, words) in zip(results, cases):
        one_line_error(r, *words)
    one_line_error(results[2], "config file 'configs/toy/missing.py' not found")
    assert not any(os.path.exists(w) for w in workdirs)


def test_cpu_devices_train_data_parallel_to_the_same_losses(trained, tmp_path):
    """``train.py --cpu_devices=2`` runs the module's toy run on two host devices: the history records the
    mesh, and the logged losses equal the one-device run's up to the batch mean's summation order."""
    workdir = str(tmp_path / "two_devices")
    bad = [("--cpu_devices=0", ["--cpu_devices=0: must be at least 1"]),
           ("--cpu_devices=3", ["batch_size=64 must be a multiple of the 3 devices"])]
    r, *failed = scripts(*[("train.py", f"--config={TOY}", f"--workdir={w}", *FLAGS, flag)
                           for w, flag in ((workdir, "--cpu_devices=2"), *((f"{tmp_path}/bad", f) for f, _ in bad))])
    assert r.returncode == 0, r.stderr[-2000:]
    event = json.loads(open(os.path.join(workdir, run_folder.HISTORY)).readline())
    assert (event["backend"], event["devices"]) == ("cpu", 2)
    ours, ref = (RunFolder(w).read_metrics() for w in (workdir, trained))
    assert [m.keys() for m in ours] == [m.keys() for m in ref] and len(ours) >= 4
    for a, b in zip(ours, ref):  # another key or batch would give other losses, far beyond 1e-4
        for key in a.keys() & {"loss", "eval_loss"}:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4)
    for r, (_, words) in zip(failed, bad):
        one_line_error(r, *words)
    assert not os.path.exists(f"{tmp_path}/bad")


def test_resumable_changes_are_recorded_and_forced_ones_need_force(run):
    workdir, _ = run
    state = trainer.train(toy_config(OVERRIDES, **{"training.n_iters": 60}), workdir, progress=False)
    assert int(state.step) == 60
    events = [json.loads(line) for line in open(os.path.join(workdir, run_folder.HISTORY))]
    assert [e["event"] for e in events] == ["start", "resume"]
    assert events[1]["step"] == 40 and events[1]["changes"] == {"training.n_iters": [40, 60]}
    assert RunFolder(workdir).read_config().training.n_iters == 60

    changed = toy_config(OVERRIDES, **{"training.n_iters": 60, "optim.lr": 5e-4})
    before = snapshot(workdir)
    with pytest.raises(RunConflict, match=r"optim.lr \(0.001 -> 0.0005\)"):
        trainer.train(changed, workdir, progress=False)
    assert snapshot(workdir) == before
    trainer.train(toy_config(OVERRIDES, **{"training.n_iters": 80, "optim.lr": 5e-4}), workdir, progress=False,
                  force=True)
    last = json.loads(open(os.path.join(workdir, run_folder.HISTORY)).read().splitlines()[-1])
    assert last["event"] == "forced resume" and last["changes"]["optim.lr"] == [1e-3, 5e-4]


def test_force_cannot_resume_another_architecture_and_fork_starts_a_new_run(run, tmp_path):
    workdir, before = run
    other = toy_config(OVERRIDES, **{"model.hidden": 32})
    with pytest.raises(CheckpointMismatch, match=r"ema/cond/0/kernel has shape \(16, 16\) in the checkpoint, \(32, 32\) in the model"):
        trainer.train(other, workdir, progress=False, force=True)
    assert snapshot(workdir) == before  # a checkpoint of another shape is never called corrupt
    fork = str(tmp_path / "fork")
    state = trainer.train(toy_config(OVERRIDES, **{"training.n_iters": 60, "optim.lr": 5e-4}), fork,
                          progress=False, fork_from=workdir)
    assert int(state.step) == 60 and snapshot(workdir) == before
    event = json.loads(open(os.path.join(fork, run_folder.HISTORY)).readline())
    assert event["event"] == "fork" and event["step"] == 40 and event["changes"]["optim.lr"] == [1e-3, 5e-4]


def test_a_finished_run_says_so_and_changes_nothing(run, caplog):
    workdir, before = run  # trained to step 40
    for n_iters, words in ((20, "is past n_iters=20"), (40, "has reached n_iters=40")):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            state = trainer.train(toy_config(OVERRIDES, **{"training.n_iters": n_iters}), workdir, progress=False)
        assert int(state.step) == 40 and snapshot(workdir) == before  # config.json keeps n_iters=40
        assert [r.getMessage() for r in caplog.records] == [f"run at step 40 {words}; nothing to do"]


def test_a_start_that_fails_before_its_first_checkpoint_leaves_nothing(tmp_path):
    """A learning rate of 1e3 overflows the gradients at once: the error says which quantity was not
    finite and what to try; the new run's folder is gone (an existing folder keeps what it held)."""
    for workdir, kept in ((str(tmp_path / "new"), None), (str(tmp_path / "mine"), "notes.txt")):
        if kept:
            os.makedirs(workdir)
            open(os.path.join(workdir, kept), "w").write("a user's file")
        with pytest.raises(NonFiniteLossError, match=r"^non-finite gradients \(global norm inf\) at a loss of .* "
                                                     r"at step \d+; .*a lower config.optim.lr"):
            trainer.train(toy_config(OVERRIDES, **{"optim.lr": 1e3}), workdir, progress=False)
        assert (os.listdir(workdir) == [kept]) if kept else not os.path.exists(workdir)


@pytest.mark.slow
def test_ctrl_c_keeps_the_work_and_a_second_one_aborts(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    long = [os.path.join(ROOT, "scripts/train.py"), f"--config={TOY}", f"--workdir={workdir}", *FLAGS,
            "--config.training.n_iters=40000", "--config.training.snapshot_freq=40000",
            "--config.training.snapshot_freq_for_preemption=40000"]

    def start_and_wait():
        """Start the long run and return once it has logged a line of its own (it is in its training loop)."""
        log = os.path.join(workdir, run_folder.METRICS)
        logged = os.path.getsize(log) if os.path.exists(log) else 0
        proc = subprocess.Popen([sys.executable, *long], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": ROOT})
        deadline = time.time() + 120
        while not (os.path.exists(log) and os.path.getsize(log) > logged):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.05)
        return proc

    proc = start_and_wait()
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert last.startswith("interrupted (Ctrl-C): stopped at step "), last
    step = int(last.split("stopped at step ")[1].split()[0])
    assert 0 < step < 40000 and sde_lib.runs.checkpoint_steps(workdir) == [step]
    with caplog.at_level(logging.WARNING):  # the next command resumes from that step
        state = trainer.train(toy_config(OVERRIDES, **{"training.n_iters": step + 20,
                                                       "training.snapshot_freq": 40000}), workdir, progress=False)
    assert f"resuming {workdir} from step {step}" in caplog.text and int(state.step) == step + 20

    proc = start_and_wait()  # a second Ctrl-C stops at once, in one line
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "interrupted (Ctrl-C)"), err[-2000:]


# ---------------------------------------------------------------------------------- read-only commands
@pytest.mark.slow
def test_read_only_commands_never_touch_the_run(run, trained, tmp_path):
    workdir, before = run
    # The recorded config changed under a second copy (another architecture): loading fails in one line
    # and sets nothing aside.
    other = str(tmp_path / "other")
    shutil.copytree(trained, other)
    config = json.load(open(os.path.join(other, run_folder.CONFIG)))
    config["model"]["hidden"] = 32
    with open(os.path.join(other, run_folder.CONFIG), "w") as f:
        json.dump(config, f)
    changed = snapshot(other)
    sampled, exists, steps0, num0, ll, misfit = scripts(  # in this order: the second finds the first's files
        ("sample.py", f"--workdir={workdir}", "--num=8", "--steps=5", f"--out={tmp_path}/s"),
        ("sample.py", f"--workdir={workdir}", "--num=8", f"--out={tmp_path}/s"),
        *(("sample.py", f"--workdir={workdir}", bad, f"--out={tmp_path}/z") for bad in ("--steps=0", "--num=0")),
        ("evaluate.py", "--likelihood", f"--workdir={workdir}", "--n=64", f"--out={tmp_path}/ll"),
        ("sample.py", f"--workdir={other}", f"--out={tmp_path}/t"))
    assert sampled.returncode == 0, sampled.stderr[-2000:]
    assert os.path.getsize(f"{tmp_path}/s.png") > 0 and np.load(f"{tmp_path}/s.npz")["samples"].shape == (8, 2)
    one_line_error(exists, "s.png exists", "--overwrite")
    for r in (steps0, num0):
        one_line_error(r, "must be >= 1")
    assert ll.returncode == 0, ll.stderr[-2000:]
    report = json.load(open(f"{tmp_path}/ll/report.json"))["rows"][0]
    # Continuous data: nats/dim of the (40-update) model beside the data's exact density (the 8-mode ring),
    # which no model beats by more than sampling noise.
    assert np.isfinite(report["nats_per_dim"]) and report["nats_per_dim"] > report["exact_nats_per_dim"] - 0.1
    # The variational bound of the same model: above the data's entropy too, with its Monte-Carlo error.
    r = script("evaluate.py", "--likelihood", f"--workdir={workdir}", "--n=64", "--method=elbo", "--n_dequant=4",
               f"--out={tmp_path}/elbo")
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.load(open(f"{tmp_path}/elbo/report.json"))["rows"][0]
    assert report["method"] == "elbo" and report["mc_stderr"] > 0
    assert report["nats_per_dim"] > report["exact_nats_per_dim"] - 0.1
    assert snapshot(workdir) == before
    one_line_error(misfit, "does not fit the model")
    assert snapshot(other) == changed and not os.path.exists(f"{tmp_path}/t.png")


def test_loading_a_run_without_checkpoints_creates_nothing(tmp_path):
    workdir = str(tmp_path / "empty")
    os.makedirs(workdir)
    RunFolder(workdir, read_only=False).write_config(toy_config(OVERRIDES))
    before = snapshot(workdir)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        sde_lib.load_run(workdir)
    assert snapshot(workdir) == before


def test_a_damaged_checkpoint_is_skipped_in_one_warning_line_and_left_in_place(run, capfd):
    workdir, _ = run
    latest = os.path.join(workdir, run_folder.SNAPSHOTS, "40")
    for folder, _, files in os.walk(latest):
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"garbage")
    before = snapshot(workdir)
    with pytest.warns(UserWarning) as caught:
        r = sde_lib.load_run(workdir)
    assert r.step == 20 and snapshot(workdir) == before
    messages = [str(w.message) for w in caught]
    assert any(f"checkpoint {latest} could not be restored: its metadata files are damaged" in m
               and "using step 20" in m and "\n" not in m for m in messages), messages
    assert "Traceback" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------ one writer
@pytest.mark.slow
def test_a_second_training_exits_at_once_and_a_stale_lock_is_taken_over(tmp_path):
    workdir = str(tmp_path / "run")
    long = [f"--config={TOY}", f"--workdir={workdir}", *FLAGS, "--config.training.n_iters=40000",
            "--config.training.snapshot_freq=40000", "--config.training.snapshot_freq_for_preemption=40000"]
    first = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts/train.py"), *long], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT})
    try:
        deadline = time.time() + 120
        while not os.path.exists(os.path.join(workdir, run_folder.METRICS)):
            assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.1)
        one_line_error(script("train.py", *long), f"is being trained by process {first.pid}")
    finally:
        first.terminate()
        err = first.communicate(timeout=120)[1]
    assert first.returncode == 0, err[-2000:]
    # The first run's log holds its own steps only, and its lock is gone.
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, run_folder.METRICS))]
    assert steps == sorted(steps) and not os.path.exists(os.path.join(workdir, run_folder.LOCK))

    # A lock left behind by a process that no longer runs is taken over, with a warning (and 10 updates).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with open(os.path.join(workdir, run_folder.LOCK), "w") as f:
        json.dump({"pid": int(dead.stdout), "host": os.uname().nodename, "since": "earlier"}, f)
    step = sde_lib.runs.checkpoint_steps(workdir)[-1]  # the SIGTERM checkpoint
    with pytest.warns(UserWarning, match="taking over the stale lock"):
        state = trainer.train(toy_config(OVERRIDES, **{"training.n_iters": step + 10}), workdir, progress=False)
    assert int(state.step) == step + 10


# ------------------------------------------------------------------------------------------- EMA
@pytest.mark.slow
def test_short_runs_sample_sensibly_with_the_ema_warm_up(tmp_path):
    """300 updates at ema_rate 0.999: without warm-up the EMA is still 74% the initial network (its
    samples are far off the data); with the warm-up (default) they are within a factor of the spread."""
    cfg = dict(OVERRIDES, **{"training.n_iters": 300, "training.snapshot_freq": 300,
                             "training.snapshot_freq_for_preemption": 300,
                             "optim.ema_rate": 0.999})
    data_std = float(np.std(np.asarray(builtin_mixture("ring2d").sample(jax.random.PRNGKey(0), 4000))))
    spread = {}
    for warm in (True, False):
        workdir = str(tmp_path / f"warm{warm}")
        trainer.train(toy_config(cfg, **{"optim.ema_warmup": warm}), workdir, progress=False)
        if warm:
            r = sde_lib.load_run(workdir)
        else:
            with pytest.warns(UserWarning, match="young for its EMA"):
                r = sde_lib.load_run(workdir)
        x, _ = r.sample(jax.random.PRNGKey(1), 512, "dpm_solver_pp_2m", 20)
        spread[warm] = float(np.std(np.asarray(x)))
    assert 0.5 * data_std < spread[True] < 2.0 * data_std, (spread, data_std)
    assert not 0.5 * data_std < spread[False] < 2.0 * data_std, (spread, data_std)


# ------------------------------------------------------------------------------------------ library
def test_the_library_says_what_went_wrong():
    sde, gmm = sde_lib.VPSDE(), builtin_mixture("ring2d")
    key, shape = jax.random.PRNGKey(0), (4, 2)
    wrong = lambda x, t: jnp.zeros((x.shape[0], 1))  # noqa: E731  (broadcastable: silent before)
    with pytest.raises(ValueError, match=r"score_fn returned \(4, 1\) for x of shape \(4, 2\)"):
        sampling.sample(sde, wrong, key, shape, "ode_euler", steps=4)
    with pytest.raises(ValueError, match=r"score_fn returned \(4, 1\) for x of shape \(4, 2\)"):
        sde_lib.likelihood.log_likelihood(sde, wrong, jnp.zeros(shape), key)
    with pytest.raises(ValueError, match=r"non-finite values in 1 row\(s\), e.g. rows \[2\]"):
        sde_lib.likelihood.log_likelihood(sde, gmm.score_fn(sde), jnp.zeros(shape).at[2, 0].set(jnp.nan), key)

    nan_score = lambda x, t: jnp.full_like(x, jnp.nan)  # noqa: E731
    for name, kw in (("dpm_solver_pp_3m", {}), ("ode_adaptive", {"max_steps": 64})):
        with pytest.warns(UserWarning, match="4 of 4 samples .* are not finite or their solve failed"):
            _, info = sampling.sample(sde, nan_score, key, shape, name, steps=4, **kw)
        assert not np.asarray(info["ok"]).any()
    with pytest.warns(UserWarning, match="solve failed for 4 of 4 examples"):
        logp, info = sde_lib.likelihood.log_likelihood(sde, nan_score, jnp.zeros(shape), key, max_steps=64)
    assert np.isnan(np.asarray(logp)).all() and not np.asarray(info["ok"]).any()
