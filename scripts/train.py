"""Train a score model from a config file; resumes from the newest checkpoint in --workdir.

    python scripts/train.py --config=configs/digits/vp.py --workdir=runs/digits_vp \
        [--config.training.n_iters=2000] [--keep=5]

Resuming compares the config with the run's config.json: only lengths, frequencies, sampling and
evaluation settings may change (sde_lib.runs.trainer.RESUMABLE); --force resumes with other changes
anyway, --fork_from=OTHER_RUN starts a new run in --workdir from OTHER_RUN's newest checkpoint.

Every config field, its value and what it does: --show_config (prints and exits; with --config.x=y
overrides, shows the config they make).

CPU-only machine: --cpu_devices=N (e.g. the number of cores) trains data-parallel over N host devices,
which keeps every core busy (docs/throughput.md); the batch size must be a multiple of N.

Multi-host: start one process per host with --coordinator_address=HOST:PORT --num_processes=P
--process_id=I, or --distributed to let JAX detect the cluster (SLURM, TPU pods, ...).
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.", required=True)
_KEEP = flags.DEFINE_integer("keep", 5, "Numbered snapshots to keep.")
_FORCE = flags.DEFINE_bool("force", False, "Resume although the config changed beyond the resumable fields.")
_FORK = flags.DEFINE_string("fork_from", None, "Start a new run in --workdir from this run's newest checkpoint.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with cluster auto-detection.")
_CPU_DEVICES = flags.DEFINE_integer("cpu_devices", None, "Split the host CPU into this many devices and train "
                                    "data-parallel over them (CPU-only machines; e.g. one per core).")
_SHOW = flags.DEFINE_bool("show_config", False, "Print every config field (this config's value, the default where "
                          "it differs, and what the field does) and exit without training.")
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
    from sde_lib import cli  # after flag parsing: jax.distributed must initialise before other JAX use
    from sde_lib.config import describe, validate_config
    from sde_lib.runs import trainer

    cli.plain_log_lines()
    with cli.exit_on_user_error():
        if _SHOW.value:
            print(describe(validate_config(_CONFIG.value)))
            return
        trainer.use_cpu_devices(_CPU_DEVICES.value)
        trainer.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                       _DISTRIBUTED.value)
        trainer.train(_CONFIG.value, _WORKDIR.value, keep=_KEEP.value, force=_FORCE.value, fork_from=_FORK.value)


if __name__ == "__main__":
    from sde_lib.cli import absl_flags_parser

    app.run(main, flags_parser=absl_flags_parser)
