"""``deepclust review RUN_DIR``: the user looks at the clusters and corrects them.

A small local server (127.0.0.1 only, a random port, a random token in the URL; nothing
fetched from outside) serves one page, the run's own images as thumbnails (by row number,
never by path), the review's state and its actions. Every action is appended at once to
``RUN_DIR/review-actions.jsonl`` and the feedback it amounts to is written to
``RUN_DIR/feedback.json`` (the format of :mod:`deepclust.feedback`), which ``deepclust
refine`` learns from. The run's own files are never changed. Reopening the review replays
the log, so the page comes back as it was left; undo takes the last action back.

What the actions say, in the feedback:

- a *named* cluster labels every image kept in it (not marked as not belonging or unknown);
- a *confirmed*, merged, split or moved-into cluster that has no name is a must-link group
  of the images kept in it;
- *split* also says the new cluster and the one it came from differ (a cannot-link pair of
  their most typical images);
- *not belonging* says the image and its cluster differ (a cannot-link pair with the
  cluster's most typical kept image);
- *unknown* lists the image as seen but not placed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import numpy as np

from deepclust import runs
from deepclust.cluster.space import (
    centre_margins,
    distances_to_centres,
    prepare_features,
)
from deepclust.errors import DeepclustError
from deepclust.feedback import FILE as FEEDBACK_FILE
from deepclust.feedback import Feedback

log = logging.getLogger("deepclust")

ACTIONS_LOG = "review-actions.jsonl"
ACTION_TYPES = ("name", "confirm", "merge", "split", "move", "reject", "unknown", "undo")


def confidence(run: runs.Run) -> tuple[np.ndarray, np.ndarray]:
    """(margin, distance) per image: its confidence in its cluster (``centre_margins``: the
    distance to the nearest other cluster's centre minus that to its own; from
    assignments.csv where the run wrote it) and its distance to its own centre. Noise: 0, inf."""
    X = prepare_features(run.embeddings, runs.RunSummary.from_dict(run.summary).normalized)
    margin = run.confidence if run.confidence is not None else centre_margins(X, run.clusters)
    distance = run.distances if run.distances is not None else distances_to_centres(X, run.clusters)
    return np.nan_to_num(margin, nan=0.0), np.nan_to_num(distance, nan=np.inf)


def review_queue(clusters: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Every image in the order a review should look at them: the clusters least sure of
    themselves first, one image of each in turn (its least certain one not yet taken), so a
    short review already covers many clusters: labels spread over clusters teach ``refine``
    more than labels piled on the hardest images (measured in docs/review.md)."""
    ids = np.unique(clusters)
    members = [np.flatnonzero(clusters == c) for c in ids]
    members = [m[np.argsort(margin[m], kind="stable")] for m in members]
    order = np.argsort([margin[m].mean() for m in members], kind="stable")
    rounds = max((len(m) for m in members), default=0)
    return np.array([members[c][r] for r in range(rounds) for c in order if r < len(members[c])], dtype=np.int64)


class ReviewSession:
    """The review of one run: its state, rebuilt from the action log, and the feedback.

    Parameters
    ----------
    run_dir : str
        A finished run folder (``deepclust cluster``, ``refine`` or an end-to-end ``train``).
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.folder = os.fspath(run_dir)
        self.run = runs.load_run(self.folder)
        self.n = len(self.run.paths)
        self.margin, self.distance = confidence(self.run)
        # the names `cluster --names` suggests for the run's own clusters: (name, score, share), best first
        self.suggested = {int(c): runs.cluster_names(row) for c, row in runs.read_clusters(self.folder).items()}
        self._lock = threading.RLock()  # the server's threads share the session
        self.actions: list[dict] = self._read_log()
        self._replay()

    # -- the log ---------------------------------------------------------------------------
    def _read_log(self) -> list[dict]:
        path = runs.run_path(self.folder, ACTIONS_LOG)
        if not os.path.isfile(path):
            return []
        actions = []
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    actions.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s: line %d is damaged (an interrupted write?); the review goes on without it",
                                path, number)
        return actions

    def _replay(self) -> None:
        self.assign = self.run.clusters.copy()
        self.names: dict[int, str] = {}
        self.reviewed: set[int] = set()
        self.confirmed: set[int] = set()
        self.rejected: dict[int, int] = {}  # image -> the cluster it does not belong to
        self.unknown: set[int] = set()
        self.splits: list[tuple[int, int]] = []  # (new cluster, the cluster it was split from)
        self.next_id = int(self.assign.max()) + 1 if self.n else 0
        done: list[dict] = []
        for action in self.actions:
            if action.get("type") == "undo":
                if done:
                    done.pop()
            else:
                done.append(action)
        self.effective = done
        for action in done:
            self._apply(action)

    # -- actions ---------------------------------------------------------------------------
    def act(self, action: dict) -> dict:
        """Check ``action``, apply it, log it, write the feedback; return the new state."""
        with self._lock:
            self._check(action)
            self.actions.append(action)
            self._replay()  # the same code path as reopening: what is shown is what is logged
            self._append(action)
            self.feedback().save(runs.run_path(self.folder, FEEDBACK_FILE))
            return self.state()

    def _append(self, action: dict) -> None:
        with open(runs.run_path(self.folder, ACTIONS_LOG), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(action, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _check(self, action: dict) -> None:
        if not isinstance(action, dict) or action.get("type") not in ACTION_TYPES:
            raise DeepclustError(f"unknown action; the actions are {', '.join(ACTION_TYPES)}")
        kind = action["type"]
        clusters = set(self.assign.tolist())
        for key in ("cluster", "to"):
            if key in action and action[key] not in clusters:
                raise DeepclustError(f"there is no cluster {action[key]!r}")
        if kind in ("name", "confirm") and "cluster" not in action:
            raise DeepclustError(f"'{kind}' needs a cluster")
        if kind == "name" and not isinstance(action.get("name"), str):
            raise DeepclustError("'name' needs a name (a string; empty to clear it)")
        if kind == "merge":
            merged = action.get("clusters")
            if not isinstance(merged, list) or len(merged) < 2 or not set(merged) <= clusters:
                raise DeepclustError("'merge' needs a list of at least 2 existing clusters")
        if kind in ("split", "move", "reject", "unknown"):
            images = action.get("images")
            if not isinstance(images, list) or not images or not all(isinstance(i, int) and 0 <= i < self.n
                                                                    for i in images):
                raise DeepclustError(f"'{kind}' needs a list of image numbers from 0 to {self.n - 1}")
        if kind == "move" and "to" not in action:
            raise DeepclustError("'move' needs the cluster to move to ('to')")

    def _apply(self, action: dict) -> None:
        kind = action["type"]
        if kind == "name":
            c = action["cluster"]
            if action["name"].strip():
                self.names[c] = action["name"].strip()
                self.reviewed.add(c)
            else:
                self.names.pop(c, None)
        elif kind == "confirm":
            self.confirmed.add(action["cluster"])
            self.reviewed.add(action["cluster"])
        elif kind == "merge":
            target, others = action["clusters"][0], action["clusters"][1:]
            for c in others:
                self.assign[self.assign == c] = target
                if c in self.names and target not in self.names:
                    self.names[target] = self.names[c]
                self.names.pop(c, None)
            self.reviewed.add(target)
        elif kind == "split":
            images = np.array(action["images"])
            sources = set(self.assign[images].tolist())
            new = self.next_id
            self.next_id += 1
            self.assign[images] = new
            self._clear(images)
            self.reviewed.add(new)
            for source in sources:
                self.reviewed.add(source)
                self.splits.append((new, source))
        elif kind == "move":
            images = np.array(action["images"])
            self.assign[images] = action["to"]
            self._clear(images)
            self.reviewed.add(action["to"])
        elif kind == "reject":
            for i in action["images"]:
                self.rejected[i] = int(self.assign[i])
                self.unknown.discard(i)
        elif kind == "unknown":
            for i in action["images"]:
                self.unknown.add(i)
                self.rejected.pop(i, None)

    def _clear(self, images) -> None:
        for i in np.atleast_1d(images).tolist():
            self.rejected.pop(i, None)
            self.unknown.discard(i)

    # -- what the state says -------------------------------------------------------------
    def kept(self, c: int) -> np.ndarray:
        """The images of cluster c the user did not mark, most typical first."""
        members = np.flatnonzero(self.assign == c)
        members = np.array([i for i in members if i not in self.rejected and i not in self.unknown], dtype=np.int64)
        return members[np.argsort(self.distance[members], kind="stable")]

    def feedback(self) -> Feedback:
        paths = self.run.paths
        labels, must, cannot = {}, [], []
        for c in sorted(self.reviewed):
            kept = self.kept(c)
            if c in self.names:
                labels.update({paths[i]: self.names[c] for i in kept})
            elif len(kept) >= 2:
                must.append([paths[i] for i in kept])
        for i, c in sorted(self.rejected.items()):
            kept = self.kept(c)
            if len(kept):
                cannot.append([paths[i], paths[kept[0]]])
        for new, source in self.splits:
            a, b = self.kept(new), self.kept(source)
            if len(a) and len(b):
                cannot.append([paths[a[0]], paths[b[0]]])
        return Feedback(labels, must, cannot, [paths[i] for i in sorted(self.unknown)])

    def state(self) -> dict[str, Any]:
        """Everything the page shows: clusters (least confident first), their images (most
        typical first), the marks, and the review queue."""
        with self._lock:
            return self._state()

    def _state(self) -> dict[str, Any]:
        clusters = []
        for c in sorted(set(self.assign.tolist())):
            members = np.flatnonzero(self.assign == c)
            members = members[np.argsort(self.distance[members], kind="stable")]
            clusters.append({"id": int(c), "name": self.names.get(c, ""), "size": int(len(members)),
                             "confirmed": c in self.confirmed, "reviewed": c in self.reviewed,
                             "confidence": round(float(np.mean(self.margin[members])), 4) if len(members) else 0.0,
                             "suggested": [[n, round(s, 3), round(f, 3)] for n, s, f in self.suggested.get(int(c), [])],
                             "images": members.tolist()})
        clusters.sort(key=lambda k: (k["reviewed"], k["confidence"]))
        open_images = [i for i in review_queue(self.run.clusters, self.margin).tolist()
                       if int(self.assign[i]) not in self.reviewed and i not in self.rejected and i not in self.unknown]
        return {
            "run": os.path.abspath(self.folder), "n_images": self.n,
            "paths": self.run.paths, "margin": [round(float(m), 4) for m in self.margin],
            "clusters": clusters, "rejected": sorted(self.rejected), "unknown": sorted(self.unknown),
            "queue": open_images[:200], "actions": len(self.effective), "can_undo": bool(self.effective),
        }
