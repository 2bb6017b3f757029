"""What every protocol's loader does the same way: read the file, expand its paths, refuse
unknown settings by section, before any work."""

from __future__ import annotations

import os
from typing import Any, Iterable

from deepclust.config import build_config
from deepclust.errors import DeepclustError


def read_config(cls, path: str | os.PathLike | None, overrides: dict[str, Any], paths: Iterable[str] = ("images", "out")):
    """``cls`` filled from ``path`` and ``overrides``, its ``paths`` with ``~`` and
    ``$VARS`` expanded (relative ones stay relative to the current folder); ``out`` is required."""
    config = build_config(cls, path, **overrides)
    for name in paths:
        setattr(config, name, os.path.expanduser(os.path.expandvars(getattr(config, name))))
    if not config.out:
        raise DeepclustError(f"config '{path}' sets no out: FOLDER for the experiment's results")
    return config


def check_sections(sections: Iterable[tuple[str, dict]], known: set[str], what: str = "option(s)") -> None:
    """Refuse a key of any section that is not in ``known``, naming the section and the known keys."""
    for section, values in sections:
        bad = sorted(set(values) - known)
        if bad:
            raise DeepclustError(f"unknown {what} {', '.join(bad)} in {section}; known: {', '.join(sorted(known))}")
