"""The errors a user's input or a run's state can cause, in one place, so that command-line entry points
catch them without importing the modules that raise them (``sde_lib.cli.exit_on_user_error``).

Everything else a user can get wrong raises ``ValueError`` or ``FileNotFoundError`` with one line naming the
field, argument or file.
"""


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm of a training update was NaN or Inf."""


class RunConflict(ValueError):
    """The command would damage a run folder (another writer holds it, or the config changed)."""


class CheckpointMismatch(ValueError):
    """A readable checkpoint whose arrays do not fit the model the config builds."""


class Interrupted(KeyboardInterrupt):
    """Training stopped at a user's Ctrl-C, after writing a checkpoint at the step it reached."""


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, NonFiniteLossError)
