"""What a user knows about a run's images: ``feedback.json``, read, checked and resolved.

The file (written by ``deepclust review``, or by hand or by a script)::

    {"version": 1,
     "labels":      {"<path as in assignments.csv>": "<class name>", ...},
     "must_link":   [["<path>", "<path>", ...], ...],
     "cannot_link": [["<path>", "<path>"], ...],
     "unknown":     ["<path>", ...]}

``labels`` name an image's class; a ``must_link`` group holds images of one class (whose
name may be unknown); a ``cannot_link`` pair holds images of two different classes;
``unknown`` images were looked at and could not be placed (they constrain nothing).
:func:`resolve` turns the file into groups of images known to be of one class and the pairs
of groups known to differ, refusing contradictions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.io import atomic_write

#: The feedback's file in a run folder (``deepclust review`` writes it, ``refine`` reads it).
FILE = "feedback.json"
FORMAT_VERSION = 1
KEYS = ("version", "labels", "must_link", "cannot_link", "unknown")


@dataclass
class Feedback:
    """The content of a feedback file (see the module's docstring)."""

    labels: dict[str, str] = field(default_factory=dict)
    must_link: list[list[str]] = field(default_factory=list)
    cannot_link: list[list[str]] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "labels": dict(self.labels), "must_link": [list(g) for g in self.must_link],
                "cannot_link": [list(p) for p in self.cannot_link], "unknown": list(self.unknown)}

    def save(self, path: str | os.PathLike) -> None:
        with atomic_write(path) as fh:
            json.dump(self.to_dict(), fh, indent=1, ensure_ascii=False)
            fh.write("\n")

    def merged(self, other: "Feedback") -> "Feedback":
        """This feedback and ``other`` together (``other``'s label wins for an image named twice)."""
        return Feedback({**self.labels, **other.labels}, self.must_link + other.must_link,
                        self.cannot_link + other.cannot_link, list(dict.fromkeys(self.unknown + other.unknown)))

    @property
    def empty(self) -> bool:
        return not (self.labels or self.must_link or self.cannot_link)


def load_feedback(path: str | os.PathLike) -> Feedback:
    """Read and check the form of a feedback file; one line names what is wrong."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DeepclustError(f"no feedback file '{path}'; review the run first (deepclust review RUN_DIR) or "
                             "pass --feedback FILE") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeepclustError(f"cannot read feedback file '{path}' ({exc}); it must be JSON as described in "
                             "docs/usage.md#feedback") from None
    return parse_feedback(data, path)


def parse_feedback(data: Any, where: str = "feedback") -> Feedback:
    """A :class:`Feedback` from the decoded JSON, its form checked."""
    if not isinstance(data, dict):
        raise DeepclustError(f"{where}: the file must hold a JSON object with {', '.join(KEYS)}")
    unknown_keys = sorted(set(data) - set(KEYS))
    if unknown_keys:
        raise DeepclustError(f"{where}: unknown key(s) {', '.join(unknown_keys)}; the keys are {', '.join(KEYS)}")
    if data.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise DeepclustError(f"{where}: version {data.get('version')!r} is not known; this deepclust reads version "
                             f"{FORMAT_VERSION}")
    labels = data.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                               for k, v in labels.items()):
        raise DeepclustError(f"{where}: 'labels' must map image paths to non-empty class names")
    groups = []
    for key, size in (("must_link", None), ("cannot_link", 2)):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(g, list) and all(isinstance(p, str) for p in g)
                                                  for g in value):
            raise DeepclustError(f"{where}: '{key}' must be a list of lists of image paths")
        bad = [g for g in value if (len(g) != size if size else len(g) < 2)]
        if bad:
            need = "exactly 2 paths" if size else "at least 2 paths"
            raise DeepclustError(f"{where}: each '{key}' entry needs {need}; {bad[0]!r} does not")
        groups.append([list(g) for g in value])
    unknown = data.get("unknown", [])
    if not isinstance(unknown, list) or not all(isinstance(p, str) for p in unknown):
        raise DeepclustError(f"{where}: 'unknown' must be a list of image paths")
    return Feedback({k: v.strip() for k, v in labels.items()}, groups[0], groups[1], list(unknown))


@dataclass
class Resolved:
    """Feedback turned into constraints on a run's images (indices into its paths).

    Attributes
    ----------
    group : int ndarray of shape (n_images,)
        The known class group of each image, -1 where nothing is known. Images of one group
        are of one class; the groups come from the labels (one per class name) and the
        must-link groups, joined where they share an image.
    names : list of str or None
        Per group, its class name, or None for an unnamed must-link group.
    cannot : list of (int, int)
        Pairs of images of different classes; never two images of one group.
    unknown : int ndarray
        Images the user could not place.
    """

    group: np.ndarray
    names: list[str | None]
    cannot: list[tuple[int, int]]
    unknown: np.ndarray

    @property
    def touched(self) -> np.ndarray:
        """Whether each image appears anywhere in the feedback."""
        mask = self.group >= 0
        for i, j in self.cannot:
            mask[i] = mask[j] = True
        mask[self.unknown] = True
        return mask


def resolve(feedback: Feedback, paths: list[str]) -> Resolved:
    """The constraints ``feedback`` puts on the images ``paths`` (a run's assignments.csv order).

    Paths not in the run, a must-link group (or label) joining two class names, and a
    cannot-link pair inside one group are refused, each naming the entries.
    """
    index = {p: i for i, p in enumerate(paths)}
    missing = [p for p in [*feedback.labels, *(p for g in feedback.must_link + feedback.cannot_link for p in g),
                           *feedback.unknown] if p not in index]
    if missing:
        more = f" and {len(set(missing)) - 1} more" if len(set(missing)) > 1 else ""
        raise DeepclustError(f"the feedback names '{missing[0]}'{more}, which the run did not cluster; paths must be "
                             "written as in the run's assignments.csv")
    n = len(paths)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    first_of_name: dict[str, int] = {}
    for path, name in feedback.labels.items():
        i = index[path]
        if name in first_of_name:
            union(i, first_of_name[name])
        else:
            first_of_name[name] = i
    for g in feedback.must_link:
        for p in g[1:]:
            union(index[g[0]], index[p])
    members = {index[p] for p in feedback.labels} | {index[p] for g in feedback.must_link for p in g}
    roots: dict[int, int] = {}
    group = np.full(n, -1, dtype=np.int64)
    for i in sorted(members):
        group[i] = roots.setdefault(find(i), len(roots))
    names: list[str | None] = [None] * len(roots)
    for path, name in feedback.labels.items():
        g = group[index[path]]
        if names[g] not in (None, name):
            raise DeepclustError(f"the feedback puts '{names[g]}' and '{name}' in one class (through must_link "
                                 f"or labels, e.g. at '{path}'); correct one of them")
        names[g] = name
    cannot = []
    for a, b in feedback.cannot_link:
        i, j = index[a], index[b]
        if i == j or (group[i] >= 0 and group[i] == group[j]):
            raise DeepclustError(f"the feedback says '{a}' and '{b}' are of different classes (cannot_link) and of "
                                 "one class (labels or must_link); correct one of them")
        cannot.append((i, j))
    unknown = np.array(sorted({index[p] for p in feedback.unknown}), dtype=np.int64)
    return Resolved(group, names, cannot, unknown)
