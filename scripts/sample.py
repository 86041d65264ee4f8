"""Sample a trained run's EMA model: a PNG grid (a scatter plot for 2-D data) and an .npz of the samples.

    python scripts/sample.py --workdir=runs/digits_vp [--sampler=dpm_solver_pp_3m] [--steps=20] [--num=64]

Sampler, steps and count default to the run's ``config.sampling``. Writes ``OUT.png`` and ``OUT.npz``
(arrays ``samples``, ``nfe``, ``step``) with OUT = ``--out`` or ``WORKDIR/samples/<sampler>_<steps>``.
"""

import json
import os
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: config.sampling.sampler).")
_STEPS = flags.DEFINE_integer("steps", None, "Solver steps (default: config.sampling.steps).")
_NUM = flags.DEFINE_integer("num", None, "Number of samples (default: config.sampling.batch_size).")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the prior draws and sampler noise.")
_DENOISE = flags.DEFINE_bool("denoise", None, "Final Tweedie denoising step (default: config.sampling.denoise).")
_OUT = flags.DEFINE_string("out", None, "Output path without extension.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from sde_lib import checkpoint, run

    try:
        sampling = checkpoint.read_config(_WORKDIR.value).sampling
        sampler, steps = _SAMPLER.value or sampling.sampler, _STEPS.value or sampling.steps
        out = _OUT.value or os.path.join(_WORKDIR.value, "samples", f"{sampler}_{steps}")
        result = run.sample_workdir(_WORKDIR.value, out, sampler=sampler, steps=steps, num=_NUM.value,
                                    seed=_SEED.value, denoise=_DENOISE.value)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
