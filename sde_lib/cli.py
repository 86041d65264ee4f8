"""What the command-line scripts share: one-line errors instead of stack traces.

* :class:`ArgumentParser`: argparse for the scripts that use it, with the same one-line ``error: ...``
  (argparse prints its usage line before the error);
* :func:`absl_flags_parser`: parses absl flags (with ``ml_collections`` config files and ``--config.x.y``
  overrides); a missing or broken config file or an unknown field ends in one line, with the closest
  known field names as suggestions.
* :func:`exit_on_user_error`: runs a script's body and turns the errors a user can cause (bad values,
  missing files, a run folder in use or of another config, a non-finite loss) into ``error: ...`` and
  exit status 1, and Ctrl-C into one line and status 130; warnings print as ``warning: ...`` on one line.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import logging
import os
import runpy
import signal
import sys
import warnings

from absl import flags
from absl import logging as absl_logging

from sde_lib.errors import USER_ERRORS, Interrupted


def _config_paths(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if hasattr(v, "items"):
            out += _config_paths(v, f"{prefix}{k}.")
    return out


def _diagnose(argv: list[str], flag: str = "config") -> str | None:
    """A one-line explanation of why ``argv``'s config file or ``--config.*`` overrides fail, if we can tell."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
    if path is None:
        return None
    file = path.split(":", 1)[0]
    if not os.path.isfile(file):
        return f"config file {file!r} not found (--{flag})"
    try:
        config = runpy.run_path(file)["get_config"]()
    except Exception as err:  # noqa: BLE001  (any error inside the user's config file)
        return f"config file {file!r} cannot be loaded: {type(err).__name__}: {err}"
    known = _config_paths(config)
    for arg in argv:
        if arg.startswith(f"--{flag}."):
            field = arg[len(flag) + 3:].split("=", 1)[0]
            if field not in known and not any(field.startswith(g + ".") for g in ("sampling.options",
                                                                                 "condition.options")):
                close = difflib.get_close_matches(field, known, n=3, cutoff=0.6)
                hint = f"; did you mean {' or '.join(close)}?" if close else ""
                return f"--{flag}.{field}: config.{field} is not a known field{hint}"
    return None


class _PlainFormatter(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def plain_log_lines() -> None:
    """Log lines as ``warning: message`` instead of absl's ``W1207 04:01:53.563 file.py:266] message``: the
    trainer's few lines (resuming, nothing to do, SIGTERM) are for the person at the terminal."""
    absl_logging.get_absl_handler().setFormatter(_PlainFormatter())


def absl_flags_parser(argv: list[str]):
    """absl's flag parsing, with one-line errors (``app.run(main, flags_parser=absl_flags_parser)``)."""
    try:
        rest = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].present:
            # config_flags defers a loading error to the first use of the config: use it now.
            flags.FLAGS["config"].value.keys()
        return rest
    except flags.Error as err:
        message = _diagnose(argv) or str(err).splitlines()[0]
    except Exception as err:  # noqa: BLE001  (config_flags raises AttributeError, KeyError, IOError, ...)
        message = _diagnose(argv) or f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    sys.exit(f"error: {message}")


@contextlib.contextmanager
def exit_on_user_error():
    """Turn the errors a user's input can cause into ``error: <one line>`` and exit status 1."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        yield
    except USER_ERRORS as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt as err:  # Ctrl-C: one line and the shell's status for SIGINT, never a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C while we exit must not raise again
        detail = f": {err}" if str(err) else ""
        print(str(err) if isinstance(err, Interrupted) else f"interrupted (Ctrl-C){detail}", file=sys.stderr)
        sys.exit(130)


def comma_list(text: str, kind, flag: str) -> list:
    """``"a,b,c"`` -> ``[kind(a), kind(b), kind(c)]`` (empty items dropped); one ValueError naming ``flag``."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list of {kind.__name__}, got {text!r}") from None


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line, ``error: ...``, exit status 2 (argparse's)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")
