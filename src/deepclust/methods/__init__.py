"""Methods: train a backbone (episodic, classic fine-tuning) or a clustering network.

``create_method(name, config)`` builds one by name; ``fit()`` trains it.
"""

from __future__ import annotations

from deepclust.config import TrainConfig
from deepclust.errors import DeepclustError
from deepclust.methods.base import FineTuning
from deepclust.methods.classic import ClassicFineTuning
from deepclust.methods.episodic import EpisodicFineTuning

_METHODS = {cls.name: cls for cls in (EpisodicFineTuning, ClassicFineTuning)}


def list_methods() -> list[str]:
    """Names of the training methods."""
    return sorted(_METHODS)


def create_method(name: str, config: TrainConfig) -> FineTuning:
    """The method ``name`` with its configuration; an unknown name lists the known ones."""
    if name not in _METHODS:
        raise DeepclustError(f"unknown method '{name}'; choose one of: {', '.join(list_methods())}")
    return _METHODS[name](config)


__all__ = ["ClassicFineTuning", "EpisodicFineTuning", "FineTuning", "create_method", "list_methods"]
