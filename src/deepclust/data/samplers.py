"""Few-shot episodes: which images form the support and query sets of each task."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from deepclust.errors import DeepclustError
from deepclust.validation import check_int


def episode_labels(n_way: int, n_shot: int, n_query: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode labels ``0 .. n_way-1`` of the support and query positions of a task, in the
    class-by-class order in which :class:`EpisodeSampler` lays them out."""
    return np.repeat(np.arange(n_way), n_shot), np.repeat(np.arange(n_way), n_query)


class EpisodeSampler:
    """Seeded sampler of N-way K-shot tasks with Q queries per class.

    Each task draws ``n_way`` distinct classes, then ``n_shot + n_query`` distinct
    images of each. Iterating yields one list of dataset indices per task: first the
    support set, class by class (``n_way * n_shot`` indices), then the queries, class
    by class (``n_way * n_query``). :meth:`task_labels` gives the matching episode labels
    ``0 .. n_way-1``. Usable as a ``batch_sampler`` of a DataLoader.

    Parameters
    ----------
    labels : sequence of hashable
        Class of every item of the dataset.
    n_way, n_shot, n_query : int
    n_tasks : int
        Tasks per pass (an epoch).
    random_state : int or numpy Generator
        Seed. Passes draw new tasks: the ``e``-th iteration of a sampler built with
        seed ``s`` is the same for every sampler built with ``s``.

    Raises
    ------
    DeepclustError
        If fewer than ``n_way`` classes have ``n_shot + n_query`` images.
    """

    def __init__(self, labels: Sequence, n_way: int, n_shot: int, n_query: int, n_tasks: int, random_state=0):
        for name, value, minimum in (("n_way", n_way, 2), ("n_shot", n_shot, 1), ("n_query", n_query, 0),
                                     ("n_tasks", n_tasks, 1)):
            check_int(name, value, minimum)
        by_class: dict = defaultdict(list)
        for i, label in enumerate(labels):
            by_class[label].append(i)
        need = n_shot + n_query
        self.classes = sorted(c for c, idx in by_class.items() if len(idx) >= need)
        if len(self.classes) < n_way:
            small = len(by_class) - len(self.classes)
            raise DeepclustError(
                f"{n_way}-way tasks with {n_shot} shots and {n_query} queries need {n_way} classes with at least "
                f"{need} images each; the data has {len(self.classes)} such classes ({len(by_class)} classes, "
                f"{small} with fewer images); lower n_way, n_shot or n_query"
            )
        self.indices = {c: np.asarray(by_class[c], dtype=np.int64) for c in self.classes}
        self.n_way, self.n_shot, self.n_query, self.n_tasks = int(n_way), int(n_shot), int(n_query), int(n_tasks)
        self.random_state = random_state
        self._rng = np.random.default_rng(random_state)

    def __len__(self) -> int:
        return self.n_tasks

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng
        for _ in range(self.n_tasks):
            chosen = rng.choice(len(self.classes), size=self.n_way, replace=False)
            picks = [rng.choice(self.indices[self.classes[c]], size=self.n_shot + self.n_query, replace=False)
                     for c in chosen]
            support = [int(i) for p in picks for i in p[: self.n_shot]]
            query = [int(i) for p in picks for i in p[self.n_shot:]]
            yield support + query

    def task_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Episode labels of the support and query positions of every task."""
        return episode_labels(self.n_way, self.n_shot, self.n_query)

    def get_state(self) -> dict:
        """The generator state, so that a resumed run draws the same tasks."""
        return self._rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state
