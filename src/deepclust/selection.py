"""Choosing k and the clustering algorithm without labels: each candidate clustering scored by
criteria that need no true classes, so a user can pick one, see how sure the choice is, and
see the runner-ups.

Criteria (larger is better for each):

``generalization``
    How well a linear classifier trained on the found clusters predicts them on images it
    did not see (5-fold cross-validated accuracy of a ridge classifier on the top principal
    components), the label-free criterion of TURTLE (Gadetsky et al., ICML 2024). Clusters
    whose borders run through empty space are easy to predict; borders that cut a dense
    group are not. Raw, it favours few clusters (k = 2 is easy to predict), so the score
    compares the classifier's held-out **error rate** with that on a null reference: the
    k-means clustering, with the same k, of as many points drawn from a Gaussian with the
    same principal variances (the spread of every direction kept, the clusters removed), as
    the gap statistic (Tibshirani et al., 2001) compares against a reference without
    clusters. The score is ``log((e_null + 1/n) / (e + 1/n))``: 0 when the clusters are no
    easier to predict than cuts of structureless data, ``log 2`` when they are twice as easy.
    (Every k-means cell is linear, so raw accuracies differ little; the ratio of errors
    weighs a halving of the mistakes the same at every k, where the difference of
    accuracies rewards large k, whose null errs most.)
``stability``
    The agreement (ARI) of the clusterings of two random halves of the images, the second
    half labelled both by its own clustering and by the nearest centre of the first half's
    (Lange et al., 2004); the mean over ``n_pairs`` splits.
``silhouette``
    The mean silhouette (Rousseeuw, 1987), on a sample of at most 5,000 images.
``eigengap``
    The gap between the k-th and (k+1)-th eigenvalue of the normalised k-NN affinity (von
    Luxburg, 2007); it depends on k only, not on the algorithm.
``c2m``
    A learned C2M metric's score of the clustering (``metric``).

>>> sel = select(X, ks=range(10, 201, 10), algorithms=["kmeans", "spectral"])   # doctest: +SKIP
>>> best = sel.best("generalization"); best.k, best.algorithm, sel.runner_ups()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from deepclust.cluster.k_curve import eigengap, far_apart, near_tie
from deepclust.cluster.kmeans import KMeans
from deepclust.cluster import takes_n_clusters
from deepclust.cluster.space import cluster_centres, make_clusterer, nearest_centres
from deepclust.cluster.spectral import knn_affinity, top_eigenvectors
from deepclust.errors import DeepclustError
from deepclust.io import save_figure, write_csv
from deepclust.validation import as_generator, check_choice, check_int

log = logging.getLogger("deepclust")

CRITERIA = ("generalization", "stability", "silhouette", "eigengap", "c2m")
#: Algorithms whose sweep over k shares the expensive step (the graph and eigenvectors of
#: spectral clustering, the tree of agglomerative clustering); any other one with a k is
#: clustered afresh for every k.
SHARED_SWEEPS = ("kmeans", "spectral", "agglomerative")


class LinearProbe:
    """A ridge classifier cross-validated on ``X``, solved once per fold for every labelling.

    ``X`` is reduced to its top ``n_components`` principal components (scaled to unit mean
    squared norm); for each of ``n_folds`` folds the ridge solution operator of the other
    folds is kept, so scoring a labelling costs two small matrix products per fold.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    n_folds : int
    n_components : int
    alpha : float
        Ridge penalty, on the unit-scaled components.
    random_state : int, numpy Generator or None
    """

    def __init__(self, X, n_folds: int = 5, n_components: int = 128, alpha: float = 1.0, random_state=None):
        check_int("n_folds", n_folds, 2)
        X = np.asarray(X, dtype=np.float64)
        n = X.shape[0]
        if n < 2 * n_folds:
            raise DeepclustError(f"the generalization score needs at least {2 * n_folds} images; got {n}")
        rng = as_generator(random_state)
        centred = X - X.mean(0)
        m = min(n_components, *centred.shape)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        Z = centred @ vt[:m].T
        self.components = Z / max(np.sqrt((Z ** 2).sum(1).mean()), 1e-12)
        self.folds = rng.permutation(n) % n_folds
        self.alpha = float(alpha)
        self._operators = []
        Zb = np.hstack([self.components, np.ones((n, 1))])
        for f in range(n_folds):
            train = self.folds != f
            A = Zb[train].T @ Zb[train] + self.alpha * np.eye(Zb.shape[1])
            self._operators.append((train, Zb[~train], np.linalg.solve(A, Zb[train].T)))

    def predict(self, labels) -> np.ndarray:
        """Each image's label as predicted by the classifier trained on the other folds."""
        labels = np.asarray(labels)
        if labels.shape != self.folds.shape:
            raise DeepclustError(f"labels must hold one cluster per image ({len(self.folds)}); got {labels.shape}")
        classes, index = np.unique(labels, return_inverse=True)
        onehot = np.eye(len(classes))
        predicted = np.empty(len(labels), dtype=np.int64)
        for train, test_rows, operator in self._operators:
            predicted[~train] = (test_rows @ (operator @ onehot[index[train]])).argmax(1)
        return classes[predicted]

    def accuracy(self, labels) -> float:
        """The held-out accuracy of the classifier at predicting ``labels``."""
        return float((self.predict(labels) == np.asarray(labels)).mean())


class GeneralizationScore:
    """The generalization criterion for one ``X``: a :class:`LinearProbe` of the data and
    one of its null reference, the reference's clustering made once per k.

    >>> score = GeneralizationScore(X, random_state=0)   # doctest: +SKIP
    >>> score(labels)                                      # doctest: +SKIP
    """

    def __init__(self, X, n_folds: int = 5, n_components: int = 128, random_state=None):
        rng = as_generator(random_state)
        self.probe = LinearProbe(X, n_folds, n_components, random_state=rng)
        spread = self.probe.components.std(0)  # principal components: uncorrelated, so this is the covariance
        null = rng.standard_normal(self.probe.components.shape) * spread
        self.null_probe = LinearProbe(null, n_folds, n_components, random_state=rng)
        self._seed = int(rng.integers(2**31 - 1))
        self._null_error: dict[int, float] = {}

    def null_error(self, k: int) -> float:
        """The held-out error rate of the probe on the null reference cut into k clusters."""
        if k not in self._null_error:
            null = self.null_probe.components
            labels = KMeans(n_clusters=k, n_init=3, random_state=self._seed).fit_predict(null)
            self._null_error[k] = 1.0 - self.null_probe.accuracy(labels)
        return self._null_error[k]

    def __call__(self, labels) -> float:
        labels = np.asarray(labels)
        k = len(np.unique(labels[labels >= 0])) if labels.dtype.kind in "iu" else len(np.unique(labels))
        if k < 2:
            return float("nan")
        floor = 1.0 / len(labels)  # one image's worth: a perfect probe scores a finite value
        error = 1.0 - self.probe.accuracy(labels)
        return float(np.log((self.null_error(k) + floor) / (error + floor)))


def generalization_score(X, labels, n_folds: int = 5, random_state=None) -> float:
    """The generalization criterion of one clustering ``labels`` of ``X`` (module docstring):
    the log of how many times fewer held-out mistakes a linear classifier of the clusters
    makes than one of the null reference cut into as many. Near 0: no better than clustering
    structureless data."""
    return GeneralizationScore(X, n_folds, random_state=random_state)(labels)


def transfer_agreement(X, first: np.ndarray, second: np.ndarray, rows_first: np.ndarray,
                       rows_second: np.ndarray) -> float:
    """ARI between the clustering ``second`` of rows ``rows_second`` of ``X`` and the labels
    those rows get from the nearest centre of the clustering ``first`` of ``rows_first``."""
    from sklearn.metrics import adjusted_rand_score

    _, centres = cluster_centres(X[rows_first], first)
    Y = np.ascontiguousarray(X[rows_second])
    return float(adjusted_rand_score(second, nearest_centres(Y, centres.astype(Y.dtype))))


# --- sweeps: every k of one algorithm, sharing what can be shared ---------------------------


def sweep(X, algorithm: str, ks: Sequence[int], seed: int = 0, params: dict | None = None
          ) -> Iterable[tuple[int, np.ndarray, float]]:
    """Yield ``(k, labels, seconds)`` for each k: the clustering ``deepclust cluster
    --algorithm ALGORITHM --n-clusters k --seed SEED`` makes, the shared work (spectral
    clustering's graph and eigenvectors, agglomerative clustering's tree) done once and its
    time spread over the ks."""
    ks = [int(k) for k in ks]
    params = dict(params or {})
    if algorithm == "spectral":
        yield from _spectral_sweep(X, ks, seed, params)
    elif algorithm == "agglomerative":
        yield from _agglomerative_sweep(X, ks, seed, params)
    else:
        for k in ks:
            t = time.perf_counter()
            labels = make_clusterer(algorithm, k, seed, params).fit_predict(X)
            yield k, np.asarray(labels, dtype=np.int64), time.perf_counter() - t


def _spectral_sweep(X, ks, seed, params):
    model = make_clusterer("spectral", max(ks), seed, params)  # its parameters checked as `cluster` checks them
    rng = as_generator(seed)
    t = time.perf_counter()
    S = knn_affinity(X, min(model.n_neighbors, len(X) - 1), model.affinity, model.neighbors, rng)
    _, vectors = top_eigenvectors(S, max(ks), solver=model.eigen_solver, random_state=rng)
    shared = (time.perf_counter() - t) / len(ks)
    for k in ks:
        t = time.perf_counter()
        embedding = vectors[:, :k] / np.maximum(np.linalg.norm(vectors[:, :k], axis=1, keepdims=True), 1e-12)
        labels = KMeans(n_clusters=k, n_init=model.n_init, random_state=rng).fit_predict(embedding)
        yield k, np.asarray(labels, dtype=np.int64), shared + time.perf_counter() - t


def _agglomerative_sweep(X, ks, seed, params):
    import tempfile

    from joblib import Memory

    with tempfile.TemporaryDirectory(prefix="deepclust-tree-") as cache:
        # scikit-learn builds the tree once and cuts it at every k
        model = make_clusterer("agglomerative", max(ks), seed, {**params, "memory": Memory(cache, verbose=0)})
        for k in ks:
            t = time.perf_counter()
            labels = model.set_params(n_clusters=k).fit(X).labels_
            yield k, np.asarray(labels, dtype=np.int64), time.perf_counter() - t


# --- the selection -------------------------------------------------------------------------


@dataclass
class Candidate:
    """One scored clustering: its algorithm, k, labels, time and criteria."""

    algorithm: str
    k: int
    labels: np.ndarray = field(repr=False)
    seconds: float
    scores: dict[str, float]
    backbone: str = ""


@dataclass
class Selection:
    """Every candidate :func:`select` scored, and the choices the criteria make."""

    candidates: list[Candidate]
    criteria: tuple[str, ...]
    #: criterion -> score(k, labels), as :func:`select` built them for its ``X``
    scorers: dict[str, Callable[[int, np.ndarray], float]] = field(default_factory=dict, repr=False)

    def score(self, labels) -> dict[str, float]:
        """Any other labelling of the same images (a user's own sorting, or the true classes
        in a benchmark) scored by the same criteria as the candidates, so the numbers compare:
        every criterion but ``stability``, which scores a clustering procedure, not a labelling."""
        if not self.scorers:
            raise DeepclustError("this selection kept no scorers: make it with select()")
        classes, labels = np.unique(np.asarray(labels), return_inverse=True)  # any label type, as 0..k-1
        k = len(classes)
        return {name: float(score(k, labels)) for name, score in self.scorers.items()}

    def best(self, criterion: str = "generalization") -> Candidate:
        """The candidate ``criterion`` scores highest."""
        check_choice("criterion", criterion, self.criteria)
        scored = [c for c in self.candidates if np.isfinite(c.scores.get(criterion, np.nan))]
        if not scored:
            raise DeepclustError(f"no candidate has a {criterion} score")
        return max(scored, key=lambda c: c.scores[criterion])

    def runner_ups(self, criterion: str = "generalization") -> list[Candidate]:
        """Candidates other than the best within ``NEAR_TIE`` of its score (as a fraction of
        the spread of all scores), best first: the choices the criterion barely tells apart."""
        best = self.best(criterion)
        near = near_tie([c.scores.get(criterion, np.nan) for c in self.candidates], best.scores[criterion])
        return sorted((c for c, tie in zip(self.candidates, near) if tie and c is not best),
                      key=lambda c: -c.scores[criterion])

    def weak(self, criterion: str = "generalization") -> bool:
        """Whether the choice is weak: a near tie at a k at least ``WEAK_DISTANCE`` (25%)
        away from the chosen one, or with another algorithm or backbone."""
        best = self.best(criterion)
        return any(far_apart(c.k, best.k) or c.algorithm != best.algorithm or c.backbone != best.backbone
                   for c in self.runner_ups(criterion))

    def rows(self) -> list[dict]:
        return [{"backbone": c.backbone, "algorithm": c.algorithm, "k": c.k, "seconds": round(c.seconds, 3),
                 **{name: c.scores.get(name, float("nan")) for name in self.criteria}} for c in self.candidates]

    def write_csv(self, path: str | os.PathLike) -> None:
        """``selection.csv``: one row per candidate, every criterion a column."""
        rows = self.rows()
        header = ["backbone", "algorithm", "k", "seconds", *self.criteria]
        write_csv(path, header, [[r[h] if not isinstance(r[h], float) else f"{r[h]:.6f}" for h in header] for r in rows])

    def plot(self, path: str | os.PathLike) -> None:
        """Each criterion against k, a line per algorithm (and backbone), the choice marked."""
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(self.criteria), figsize=(4 * len(self.criteria), 3.2), squeeze=False)
        series = sorted({(c.backbone, c.algorithm) for c in self.candidates})
        for ax, criterion in zip(axes[0], self.criteria):
            for backbone, algorithm in series:
                points = sorted((c.k, c.scores.get(criterion, np.nan)) for c in self.candidates
                                if (c.backbone, c.algorithm) == (backbone, algorithm))
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".",
                        label=f"{backbone} {algorithm}".strip())
            try:
                best = self.best(criterion)
                ax.axvline(best.k, color="grey", linestyle=":", linewidth=1)
                ax.set_title(f"{criterion}: k = {best.k} ({best.algorithm})", fontsize=9)
            except DeepclustError:
                ax.set_title(f"{criterion}: no score", fontsize=9)
            ax.set_xlabel("number of clusters k")
        axes[0][0].legend(fontsize=7)
        save_figure(fig, path, dpi=100)


def select(X, ks: Sequence[int], algorithms: Sequence[str] = ("kmeans",), criteria: Sequence[str] | None = None,
           seed: int = 0, params: dict | None = None, metric=None, n_pairs: int = 2, sample_size: int = 5000,
           backbone: str = "", progress: Callable[[str, int, int], None] | None = None) -> Selection:
    """Cluster ``X`` with every algorithm at every k and score each clustering.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        The prepared features (:func:`deepclust.cluster.space.prepare_features`).
    ks : sequence of int
        Candidate numbers of clusters, each in 2..n-1.
    algorithms : sequence of str
        Clusterers that take a number of clusters.
    criteria : sequence of str or None
        Of :data:`CRITERIA`; default all but ``c2m`` (and ``c2m`` too when ``metric`` is given).
    metric : C2M, path or None
        The learned metric of the ``c2m`` criterion.
    n_pairs : int
        Stability: random half-splits per candidate (each costs two clusterings of a half).
    sample_size : int
        Silhouette: images sampled above this many.
    progress : callable or None
        Called as ``progress(what, done, total)`` after each candidate.
    """
    X = np.asarray(X, dtype=np.float32)
    n = len(X)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 2 or ks[-1] > n - 1:
        raise DeepclustError(f"every k must lie in 2..{n - 1} (one less than the {n} images); got {ks[0]}..{ks[-1]}"
                             if ks else "no k to try: give at least one number of clusters")
    if criteria is None:
        criteria = tuple(c for c in CRITERIA if c != "c2m" or metric is not None)
    criteria = tuple(criteria)
    for c in criteria:
        check_choice("criterion", c, CRITERIA)
    if "c2m" in criteria and metric is None:
        raise DeepclustError("the c2m criterion needs a learned metric: pass metric (metric.pt of "
                             "`deepclust train --method c2m`)")
    for algorithm in algorithms:
        if not takes_n_clusters(algorithm):
            raise DeepclustError(f"{algorithm} finds its own number of clusters; select among algorithms that take "
                                 f"one ({', '.join(SHARED_SWEEPS)}, gmm, ...)")
    rng = as_generator(seed)
    scorers = _scorers(X, ks, criteria, rng, metric, sample_size)
    halves = [np.array_split(rng.permutation(n), 2) for _ in range(n_pairs)] if "stability" in criteria else []
    candidates: list[Candidate] = []
    total, done = len(ks) * len(algorithms), 0
    for algorithm in algorithms:
        half_labels = [[dict((k, lab) for k, lab, _ in sweep(X[h], algorithm, ks, seed, params)) for h in pair]
                       for pair in halves] if _halves_fit(ks, halves) else []
        for k, labels, seconds in sweep(X, algorithm, ks, seed, params):
            scores = {name: float(score(k, labels)) for name, score in scorers.items()}
            if "stability" in criteria:
                scores["stability"] = float(np.mean([
                    transfer_agreement(X, la[k], lb[k], a, b) for (a, b), (la, lb) in zip(halves, half_labels)
                ])) if half_labels else float("nan")
            candidates.append(Candidate(algorithm, k, labels, seconds, scores, backbone))
            done += 1
            if progress is not None:
                progress(f"{algorithm} k={k}", done, total)
    return Selection(candidates, criteria, scorers)


def _halves_fit(ks, halves) -> bool:
    return bool(halves) and max(ks) < min(len(h) for pair in halves for h in pair)


def _scorers(X, ks, criteria, rng, metric, sample_size) -> dict[str, Callable[[int, np.ndarray], float]]:
    """criterion -> score(k, labels), each built once for ``X``."""
    scorers: dict[str, Callable[[int, np.ndarray], float]] = {}
    if "generalization" in criteria:
        general = GeneralizationScore(X, random_state=rng)
        scorers["generalization"] = lambda k, labels: general(labels)
    if "silhouette" in criteria:
        from sklearn.metrics import silhouette_score

        seed = int(rng.integers(2**31 - 1))
        scorers["silhouette"] = lambda k, labels: silhouette_score(
            X, labels, sample_size=min(sample_size, len(X)), random_state=seed)
    if "eigengap" in criteria:
        S = knn_affinity(X, min(10, len(X) - 1), random_state=rng)
        values, _ = top_eigenvectors(S, min(max(ks) + 1, len(X)), random_state=rng)
        gk, gaps = eigengap(values, min(ks), max(ks))
        by_k = dict(zip(gk.tolist(), gaps.tolist()))
        scorers["eigengap"] = lambda k, labels: by_k.get(k, float("nan"))
    if "c2m" in criteria:
        from deepclust.cluster.learned import load_metric  # deferred: the learned metric needs torch

        model = load_metric(metric, random_state=int(rng.integers(2**31 - 1)))
        scorers["c2m"] = lambda k, labels: model.score_many(X, [labels])[0]
    return scorers


@contextmanager
def progress_callback(enabled: bool, desc: str):
    """A ``progress(what, done, total)`` for :func:`select` drawing a progress bar with the
    time left (tqdm's); None when not ``enabled``. Successive selections add to one bar."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="clustering", total=0)
    offset = [0]

    def update(what: str, done: int, total: int) -> None:
        if done == 1:  # a new selection: its candidates join the bar
            offset[0] = bar.n
            bar.total = offset[0] + total
        bar.set_postfix_str(what, refresh=False)
        bar.update(offset[0] + done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def parse_ks(text: str) -> list[int]:
    """``"10:200"`` (step 10 when the range spans over 50, else 1), ``"10:200:5"``, or
    ``"5,10,20"``: the candidate ks of ``--k``."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi = parts[0], parts[1]
            step = parts[2] if len(parts) == 3 else (10 if hi - lo > 50 else 1)
            if step < 1 or hi < lo:
                raise ValueError
            ks = list(range(lo, hi + 1, step))
        else:
            ks = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise DeepclustError(f"--k {text!r} is not MIN:MAX, MIN:MAX:STEP or K,K,...; e.g. --k 10:200") from None
    if not ks or min(ks) < 2:
        raise DeepclustError(f"--k {text!r}: every k must be at least 2")
    return ks
