"""Methods: train a backbone (episodic, classic fine-tuning), a clustering network (mmdc, imc_swav),
or a clustering metric (c2m).

``create_method(name, config)`` builds one by name; ``fit()`` trains it. Fine-tuning
methods take a :class:`~deepclust.config.TrainConfig`, end-to-end clustering methods
their own config (:class:`~deepclust.config.MMDCConfig`, :class:`~deepclust.config.IMCSwAVConfig`); :func:`config_class` says which.
"""

from __future__ import annotations

from deepclust.cluster.c2m import C2M
from deepclust.config import C2MConfig, IMCSwAVConfig, MMDCConfig, TrainConfig
from deepclust.errors import DeepclustError
from deepclust.methods.c2m_training import C2MTraining
from deepclust.methods.finetune.base import FineTuning
from deepclust.methods.finetune.classic import ClassicFineTuning
from deepclust.methods.finetune.episodic import EpisodicFineTuning
from deepclust.methods.imc_swav import IMCSwAV, IMCSwAVTraining
from deepclust.methods.linear import LinearHeadTraining
from deepclust.methods.mmdc import MMDC, MMDCTraining
from deepclust.methods.scatter_head import ScatterHead

_METHODS = {cls.name: cls for cls in (EpisodicFineTuning, ClassicFineTuning, LinearHeadTraining, MMDCTraining,
                                       IMCSwAVTraining, C2MTraining)}
_CONFIGS = {"mmdc": MMDCConfig, "imc_swav": IMCSwAVConfig, "c2m": C2MConfig}


def list_methods() -> list[str]:
    """Names of the training methods."""
    return sorted(_METHODS)


def _check_name(name: str) -> None:
    if name not in _METHODS:
        raise DeepclustError(f"unknown method '{name}'; choose one of: {', '.join(list_methods())}")


def config_class(name: str) -> type:
    """The configuration dataclass of method ``name``."""
    _check_name(name)
    return _CONFIGS.get(name, TrainConfig)


def create_method(name: str, config):
    """The method ``name`` with its configuration; an unknown name lists the known ones."""
    _check_name(name)
    return _METHODS[name](config)


__all__ = ["C2M", "C2MTraining", "ClassicFineTuning", "EpisodicFineTuning", "FineTuning", "IMCSwAV", "IMCSwAVTraining", "LinearHeadTraining", "MMDC", "MMDCTraining", "ScatterHead", "config_class",
           "create_method", "list_methods"]
