"""Digits 8x8, sub-VP SDE (beta 0.1 -> 20); the shared residual-MLP likelihood recipe of ``_base.py``."""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
digits_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["digits_config"]


def get_config():
    return digits_config("subvpsde")
