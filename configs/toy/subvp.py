"""2-D toy mixture, sub-VP SDE (beta 0.1 -> 20), eps-prediction MLP with positional embedding of 999 t."""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
toy_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["toy_config"]


def get_config():
    return toy_config("subvpsde")
