"""Experiment configs: each file's ``get_config()`` starts from ``sde_lib.config.default_config()``."""
