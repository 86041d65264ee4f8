"""score_sde's ``subvp/cifar10_ddpmpp_continuous``: DDPM++ cont. (sub-VP)."""

import os
import runpy

# Loaded by path, so the file works from any working directory (config_flags imports it by path).
ddpmpp_config = runpy.run_path(os.path.join(os.path.dirname(__file__), "_base.py"))["ddpmpp_config"]


def get_config():
    return ddpmpp_config("subvpsde")
