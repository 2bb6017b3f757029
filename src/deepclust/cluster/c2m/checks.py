"""The critic checks of the paper (Figure 2, Table 4): mislabelled shares and the rank of the truth."""

from __future__ import annotations

import numpy as np

from deepclust.cluster.c2m.metric import C2M
from deepclust.errors import DeepclustError


def mislabel(y, fraction: float, generator: np.random.Generator) -> np.ndarray:
    """A copy of the labels ``y`` with ``round(fraction * n)`` random points moved to another
    (random, different) existing cluster."""
    y = np.asarray(y).copy()
    classes = np.unique(y)
    if len(classes) < 2:
        raise DeepclustError("mislabelling needs at least two clusters")
    picked = generator.choice(len(y), int(round(fraction * len(y))), replace=False)
    for i in picked:
        y[i] = generator.choice(classes[classes != y[i]])
    return y


def mislabel_scores(metric: "C2M", X, y, fractions=tuple(np.linspace(0, 1, 11)), copies: int = 10,
                    random_state=None) -> np.ndarray:
    """The paper's critic check (its Figure 2): the metric's score of ``copies`` clusterings
    with each fraction of the points mislabelled. Returns (len(fractions), copies) scores; a
    good metric falls as the fraction grows."""
    generator = np.random.default_rng(random_state)
    labelings = [mislabel(y, f, generator) for f in fractions for _ in range(copies)]
    return np.array(metric.score_many(X, labelings)).reshape(len(fractions), copies)


def truth_rank(metric: "C2M", X, y, candidates) -> int:
    """The paper's Table 4 measure for one dataset: the rank of the true clustering among
    ``candidates`` by the metric (1 = best; candidates equal to the truth are left out)."""
    from sklearn.metrics import adjusted_rand_score

    wrong = [c for c in candidates if adjusted_rand_score(y, np.asarray(c)) < 1.0]
    truth, *others = metric.score_many(X, [y] + wrong)
    return 1 + sum(score > truth for score in others)
