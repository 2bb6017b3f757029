"""Class-split files: which classes are for training, validation and testing.

A split file is JSON::

    {"name": "eu-moths", "description": "...",
     "subsets": {"train": ["class_a", ...], "val": [...], "test": [...]}}

Class names are the names of the folders that hold each class's images. Splits
shipped with deepclust are referred to by name (``eu-moths``); any other split by
the path of its file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources

from deepclust.errors import DeepclustError

_PACKAGED = "deepclust.data.split_files"


@dataclass(frozen=True)
class ClassSplit:
    """Named, disjoint lists of class names.

    Attributes
    ----------
    name : str
    subsets : dict of str to tuple of str
        Subset name (``train``, ``val``, ``test``, ...) to its class names.
    description : str
    """

    name: str
    subsets: dict[str, tuple[str, ...]]
    description: str = ""
    source: str = field(default="", compare=False)

    def classes(self, subset: str) -> tuple[str, ...]:
        """The class names of one subset."""
        if subset not in self.subsets:
            raise DeepclustError(
                f"split '{self.name}' has no subset '{subset}'; "
                f"choose one of: {', '.join(self.subsets)}"
            )
        return self.subsets[subset]


def split_classes(split: str | os.PathLike | None, subset: str | None, example: str = "test") -> tuple[str, ...] | None:
    """The class names of ``subset`` of the split ``split`` (a shipped name or a file), or
    None when neither is given (every class); one without the other is an error."""
    if (split is None) != (subset is None):
        raise DeepclustError(f"--split and --subset go together, e.g. --split eu-moths --subset {example}")
    return load_split(split).classes(subset) if split is not None else None


def list_splits() -> list[str]:
    """Names of the splits shipped with deepclust."""
    files = resources.files(_PACKAGED).iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def load_split(name_or_path: str | os.PathLike) -> ClassSplit:
    """Load a shipped split by name, or a split file by path.

    Raises
    ------
    DeepclustError
        If neither a shipped split nor a readable split file, or if subsets overlap.
    """
    text_name = os.fspath(name_or_path)
    if os.path.isfile(text_name):
        source = text_name
        with open(text_name, encoding="utf-8") as fh:
            raw = fh.read()
    elif text_name in list_splits():
        source = f"deepclust:{text_name}"
        raw = resources.files(_PACKAGED).joinpath(f"{text_name}.json").read_text(encoding="utf-8")
    else:
        raise DeepclustError(
            f"split '{text_name}' is neither a split file nor a shipped split; "
            f"shipped splits: {', '.join(list_splits())}"
        )
    try:
        data = json.loads(raw)
        subsets = {str(k): tuple(str(c) for c in v) for k, v in data["subsets"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DeepclustError(
            f"split file '{source}' is not valid ({exc}); it must be JSON with "
            '{"subsets": {"train": [...], "val": [...], "test": [...]}}'
        ) from None
    names = list(subsets)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = set(subsets[a]) & set(subsets[b])
            if shared:
                raise DeepclustError(
                    f"split '{source}': subsets '{a}' and '{b}' share {len(shared)} classes "
                    f"(e.g. {sorted(shared)[0]}); a class belongs to one subset only"
                )
    return ClassSplit(
        name=str(data.get("name", os.path.splitext(os.path.basename(text_name))[0])),
        subsets=subsets,
        description=str(data.get("description", "")),
        source=source,
    )
