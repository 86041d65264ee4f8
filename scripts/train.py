"""Train a score model from a config file; resumes from the newest checkpoint in --workdir.

    python scripts/train.py --config=configs/digits/vp.py --workdir=runs/digits_vp \
        [--config.training.n_iters=2000] [--keep=5]

Multi-host: start one process per host with --coordinator_address=HOST:PORT --num_processes=P
--process_id=I, or --distributed to let JAX detect the cluster (SLURM, TPU pods, ...).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# Config files import their shared bases as ``configs.<group>._base``: the repository root must be importable.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.", required=True)
_KEEP = flags.DEFINE_integer("keep", 5, "Numbered snapshots to keep.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection.")
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    from sde_lib import run  # after flag parsing: jax.distributed must initialise before other JAX use

    run.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _DISTRIBUTED.value)
    try:
        run.train(_CONFIG.value, _WORKDIR.value, keep=_KEEP.value)
    except (ValueError, run.NonFiniteLossError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    app.run(main)
