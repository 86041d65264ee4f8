"""Shared by the training tests: the 2-D toy VP config with dotted-name overrides."""

from configs.toy import vp as toy_vp


def toy_config(overrides: dict, **extra):
    """``configs/toy/vp.py`` with ``{"group.field": value}`` from ``overrides`` and then ``extra`` applied."""
    config = toy_vp.get_config()
    for name, value in {**overrides, **extra}.items():
        group, field = name.split(".")
        config[group][field] = value
    return config
