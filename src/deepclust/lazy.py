"""Names of a package that load their module on first use (PEP 562), so that importing the
package (``import deepclust``, a Dask worker importing ``deepclust.cluster.at_scale``) does not
pay for torch, timm or scikit-learn."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(package: str, where: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable, Callable]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: a name of ``where`` (name ->
    module under ``package``) is imported when first read, then kept in ``namespace``."""

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module '{package}' has no attribute {name!r}")

    def __dir__():
        return sorted(list(namespace) + list(where))

    return __getattr__, __dir__
