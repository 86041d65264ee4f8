"""Shared by the tests: the 2-D toy VP config with dotted-name overrides; several script command lines run
from one process; a module-scoped persistent compilation cache; a score that counts its traces."""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import equinox as eqx

from configs.toy import vp as toy_vp


def override(config, overrides: dict):
    """``config`` with ``{"group.field": value}`` set; returns it."""
    for name, value in overrides.items():
        group, field = name.split(".")
        config[group][field] = value
    return config


def toy_config(overrides: dict, **extra):
    """``configs/toy/vp.py`` with ``{"group.field": value}`` from ``overrides`` and then ``extra`` applied."""
    return override(toy_vp.get_config(), {**overrides, **extra})


class TraceCount:
    n = 0


class TracedScore(eqx.Module):
    """A pytree score that counts its traces: its Python body runs only while a caller traces it."""

    score_fn: Any
    count: TraceCount = eqx.field(static=True)

    def __call__(self, x, t, *cond):
        self.count.n += 1
        return self.score_fn(x, t, *cond)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Persistent-cache settings as environment variables (JAX reads them at import: for subprocesses).
_CACHE_OPTIONS = {"jax_compilation_cache_dir": None, "jax_persistent_cache_min_compile_time_secs": 0.0,
                  "jax_persistent_cache_min_entry_size_bytes": -1}


@contextlib.contextmanager
def compilation_cache(path: str):
    """JAX's persistent compilation cache in ``path``, for this process and the commands it starts, while
    active: the same program (a retrained toy run, a resumed one, a script sampling a run the test just
    trained) compiles once per module. Executables are unchanged; compile-counting tests elsewhere (which
    a cache hit would fool) never see it, since the previous settings are restored on exit."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    values = dict(_CACHE_OPTIONS, jax_compilation_cache_dir=str(path))
    old = {k: getattr(jax.config, k) for k in values}
    old_env = {k.upper(): os.environ.get(k.upper()) for k in values}
    for k, v in values.items():
        jax.config.update(k, v)
        os.environ[k.upper()] = str(v)
    cc.reset_cache()
    try:
        yield
    finally:
        for k, v in old.items():
            jax.config.update(k, v)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cc.reset_cache()


# Runs several command lines of the scripts from one Python process that has imported what they all
# import (JAX, the library): each command runs in a forked child as ``python scripts/NAME args`` would
# (fresh flags, its own argv, stdout, stderr and exit status, JAX initialised by the command itself), so
# a test pays the interpreter and import start-up once instead of once per command.
_DRIVER = r"""
import json, os, runpy, sys
import absl.app, jax, ml_collections, numpy  # noqa: F401  (imported once, before the forks)
import sde_lib.cli, sde_lib.runs  # noqa: F401
for path, args, out, err in json.loads(sys.stdin.read()):
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, out), (2, err)):
            f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.argv, sys.path[0] = [path, *args], os.path.dirname(path)
        runpy.run_path(path, run_name="__main__")
        sys.exit(0)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def scripts(*commands, timeout=600) -> list[subprocess.CompletedProcess]:
    """Run ``(script name, *args)`` command lines in order, each as its own process (see ``_DRIVER``);
    their CompletedProcess (returncode, stdout, stderr) in the same order."""
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(os.path.join(ROOT, "scripts", name), list(args), f"{tmp}/{i}.out", f"{tmp}/{i}.err")
                for i, (name, *args) in enumerate(commands)]
        r = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(jobs), capture_output=True, text=True,
                           cwd=ROOT, timeout=timeout, env={**os.environ, "PYTHONPATH": ROOT})
        codes = [int(line) for line in r.stdout.split()]
        assert r.returncode == 0 and len(codes) == len(jobs), r.stderr[-2000:]
        return [subprocess.CompletedProcess([job[0], *job[1]], code, open(job[2]).read(), open(job[3]).read())
                for job, code in zip(jobs, codes)]

