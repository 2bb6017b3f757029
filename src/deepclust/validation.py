"""The one way deepclust checks a parameter, and turns a random_state into a generator.

Every message has the form ``<name>=<value> <what is wrong>`` (see
:func:`deepclust.errors.check_param`), whichever layer checks: a clusterer's ``fit``, a
method's configuration, or a job before hours of embedding.
"""

from __future__ import annotations

import numbers

import numpy as np

from deepclust.errors import DeepclustError


def check_int(name: str, value, minimum: int, optional: bool = False) -> None:
    """Raise ``<name>=<value> must be an integer >= <minimum>`` unless it is one."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DeepclustError(f"{name}={value!r} must be an integer >= {minimum}" + (" or None" if optional else ""))


def check_float(name: str, value, low: float, high: float | None = None, optional: bool = False) -> None:
    """Raise ``<name>=<value> must be a number in [low, high]`` unless it is one."""
    if value is None and optional:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise DeepclustError(f"{name}={value!r} must be a number {span}")


def check_choice(name: str, value, choices) -> str:
    """Raise ``<name>=<value> is not one of ...`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise DeepclustError(f"{name}={value!r} is not known; choose one of: {', '.join(map(str, choices))}")
    return value


def as_generator(random_state) -> np.random.Generator:
    """A numpy Generator from an int, a Generator, a RandomState or None."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31 - 1))
    return np.random.default_rng(random_state)


def as_seed(random_state):
    """scikit-learn takes an int or a RandomState; turn a numpy Generator into an int."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31 - 1))
    return random_state
