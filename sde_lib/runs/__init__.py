"""Training runs: a run folder's one owner (``folder``), its orbax checkpoints (``checkpoints``), the
assembly of a config and a folder into the run's parts (``assemble``), the training loop (``trainer``) and
``load_run`` (``run``) for inference.

    r = sde_lib.load_run("runs/quickstart")
    trainer.train(config, "runs/new")        # from sde_lib.runs import trainer
"""

from sde_lib.runs.checkpoints import steps as checkpoint_steps
from sde_lib.runs.folder import RunFolder
from sde_lib.runs.run import Run, load_run

__all__ = ["Run", "RunFolder", "checkpoint_steps", "load_run"]
