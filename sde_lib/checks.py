"""One rule for the numbers a user passes to the public API: integers are integers, floats are finite.

Python turns ``range(2.7)`` into an error but ``int(2.7)`` into 2 and ``True`` into 1, so a step count of
2.7 or True used to run 2 or 1 steps without a word. Every integer argument (steps, counts, sizes,
labels, seeds) goes through :func:`integer`, every float argument that must be a number (scales,
tolerances, rates, times) through :func:`real`; each raises one line naming the argument:

    integer(2.7, "steps", minimum=1)   -> TypeError: steps must be an integer, got 2.7 (float)
    integer(True, "steps")             -> TypeError: steps must be an integer, got True (bool)
    real(float("nan"), "scale")        -> ValueError: scale must be a finite number, got nan

Accepted: Python ints and NumPy / JAX integer scalars (0-d arrays included) for :func:`integer`; those and
Python / NumPy / JAX floating scalars for :func:`real`. Integral floats (2.0) are refused as integers:
the rule is about the type, so that a computed count that happens to be whole today cannot turn into a
silently truncated one tomorrow. Abstract values inside ``jax.jit`` are not accepted: these are the
static arguments of a call.

:func:`integer_option` and :func:`real_option` make the same checks as predicates for a sampler's
``registry.Option``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np


def _scalar(value):
    """``value`` as a Python or NumPy scalar (0-d arrays unwrapped), or unchanged when it is not one."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and tuple(value.shape) == ():
        try:
            return np.asarray(value)[()]
        except Exception:  # a tracer: no concrete value, left to the type check below to refuse
            return value
    return value


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def integer(value, name: str, *, minimum: int | None = None, maximum: int | None = None,
            choices: Sequence[int] | None = None) -> int:
    """``value`` as a Python int; one TypeError (not an integer, or a bool) or ValueError (out of range)
    naming ``name``."""
    v = _scalar(value)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {_describe(value)}")
    v = int(v)
    if choices is not None and v not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {v}")
    return v


def real(value, name: str, *, minimum: float | None = None, maximum: float | None = None,
         positive: bool = False, finite: bool = True) -> float:
    """``value`` as a Python float; one TypeError (not a real number, or a bool) or ValueError (NaN,
    infinite where ``finite``, out of range) naming ``name``. ``positive``: strictly > 0."""
    v = _scalar(value)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {_describe(value)}")
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{name} must be a finite number, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def optional_real(value, name: str, **limits) -> float | None:
    """None, or :func:`real` of ``value``."""
    return None if value is None else real(value, name, **limits)


def integer_option(**limits) -> Callable[[object], bool]:
    """A ``registry.Option`` check: True for an integer within ``limits`` (as :func:`integer`), else raises."""
    return lambda v: integer(v, "the value", **limits) is not None


def real_option(**limits) -> Callable[[object], bool]:
    """A ``registry.Option`` check: True for a number within ``limits`` (as :func:`real`), else raises."""
    return lambda v: real(v, "the value", **limits) is not None
