"""The shared defaults (score_sde-like: CIFAR-10-sized DDPM++ on the VP SDE).

The schema and its values live in ``sde_lib.config.default_config`` so that the library can validate
any config against it; experiment files override values there and never add fields.
"""

from sde_lib.config import default_config


def get_config():
    return default_config()
