"""Sample a trained run: a PNG grid (a scatter plot for 2-D data) and an .npz of the samples.

    python scripts/sample.py --workdir=runs/digits_vp [--sampler=dpm_solver_pp_3m] [--steps=20] [--num=64]

Sampler, steps, options and count default to the run's config.sampling; --option NAME=VALUE (repeatable)
sets a sampler option, e.g. --option eta=0.5. Reads the run folder only. Writes OUT.png and OUT.npz (arrays
``samples``, ``nfe``, ``step``) with OUT = --out, default out/samples/<run>/<sampler>_<steps>_seed<seed>;
existing files are kept unless --overwrite.
"""

import ast
import json
import os

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: config.sampling.sampler).")
_STEPS = flags.DEFINE_integer("steps", None, "Solver steps (default: config.sampling.steps).")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (default: config.sampling.batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draws and sampler noise.")
_DENOISE = flags.DEFINE_bool("denoise", None, "Final Tweedie denoising step (default: config.sampling.denoise).")
_OPTION = flags.DEFINE_multi_string("option", [], "Sampler option NAME=VALUE (Python literal), repeatable.")
_PARAMS = flags.DEFINE_enum("params", "ema", ["ema", "raw"], "EMA or raw (last) parameters.")
_STEP = flags.DEFINE_integer("checkpoint", None, "Checkpoint step (default: the newest).")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing output files.")


def parse_options(items: list[str]) -> dict:
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--option must be NAME=VALUE, got {item!r}")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value  # a bare word, e.g. time_grid=quadratic
    return options


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    import time

    import jax
    import numpy as np

    from sde_lib import cli, report
    from sde_lib.runs import load_run
    from sde_lib.trainer import samples_to_png

    with cli.exit_on_user_error():
        for name, value in (("--steps", _STEPS.value), ("--num", _NUM.value)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        options = parse_options(_OPTION.value)
        run = load_run(_WORKDIR.value, _STEP.value, _PARAMS.value)
        s = run.config.sampling
        sampler, steps, num = _SAMPLER.value or s.sampler, _STEPS.value or s.steps, _NUM.value or s.batch_size
        run_name = os.path.basename(os.path.normpath(_WORKDIR.value))
        out = _OUT.value or os.path.join("out", "samples", run_name, f"{sampler}_{steps}_seed{_SEED.value}")
        report.check_outputs([out + ".png", out + ".npz"], _OVERWRITE.value)
        start = time.perf_counter()
        x, info = run.sample(jax.random.PRNGKey(_SEED.value), num, sampler, steps, denoise=_DENOISE.value, **options)
        x = np.asarray(x)
        seconds = time.perf_counter() - start
        nfe = float(np.mean(np.asarray(info["nfe"])))
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        np.savez(out + ".npz", samples=x, nfe=nfe, step=run.step)
        samples_to_png(run.config, x, out + ".png")
    print(json.dumps({"step": run.step, "params": run.params, "sampler": sampler, "steps": int(steps), "nfe": nfe,
                      "num": len(x), "seconds": seconds, "png": out + ".png", "npz": out + ".npz"}))


if __name__ == "__main__":
    from sde_lib.cli import absl_flags_parser

    app.run(main, flags_parser=absl_flags_parser)
