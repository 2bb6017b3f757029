"""A linear scatter head: the projection of frozen features that minimises the core paper's
multivariate scatter criterion (Bjerge et al., VISAPP 2025, eq. 1) over labelled classes.

Eq. 1 is a Fisher-type ratio: the within-class scatter of the embeddings over the sum, over
pairs of classes, of the squared distances between class means. For a linear map ``W`` on
fixed features it reads ``tr(W^T S_w W) / tr(W^T S_b W)`` with ``S_w`` the within-class
scatter matrix and ``S_b = sum_{i<j} (m_i - m_j)(m_i - m_j)^T`` (the pairwise form of eq. 1's
denominator, unweighted by class sizes, as in the paper). Each column of the closed-form
solution minimises the ratio along its direction: the leading generalised eigenvectors of
``S_b w = lambda S_w w`` (Fisher's linear discriminant). Two things make it work on deep
features with few labelled images: PCA first, to the rank the labelled images can support
(at most ``n - k`` dimensions), and shrinkage of ``S_w`` towards a multiple of the identity
(Ledoit and Wolf, 2004, by default), so that directions the labels barely sample are not
trusted. The head is fitted in seconds and applies to any embeddings: ``transform`` is one
affine map, ``(X - mean_) @ components_``.

``solver="episodes"`` minimises the same eq. 1 by gradient instead, the way the paper trains
it: on few-shot episodes (a draw of ``n_way`` classes, ``n_per_class`` images each), in the
same PCA space and with the same number of outputs, so the two can be compared
(``benchmarks/scatter_head_moths.py``).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from deepclust.errors import DeepclustError
from deepclust.validation import check_choice, check_float, check_int


class ScatterHead:
    """Linear projection learned from labelled embeddings by minimising eq. 1 in closed form.

    Parameters
    ----------
    n_components : int or None
        Output dimensions, at most ``n_classes - 1`` (the rank of the between-class scatter:
        further directions would be noise) and the PCA dimension; None: that most.
    output : "discriminant" or "whitened"
        ``"discriminant"``: the leading ``n_classes - 1`` directions (Fisher's). ``"whitened"``:
        every PCA direction, scaled so that the (shrunk) within-class scatter becomes the
        identity and ordered by eq. 1's ratio: directions the labelled classes do not span are
        kept, which matters when the projection must also separate classes nobody labelled
        (``deepclust refine``).
    shrinkage : "auto", float in [0, 1]
        Weight of the identity (scaled to the mean variance) in the within-class scatter:
        ``"auto"`` is the Ledoit-Wolf estimate; 0 is the plain Fisher solution.
    pca_components : "auto", int or None
        Dimensions kept by the PCA before the discriminant: ``"auto"`` keeps
        ``min(d, n_labelled - n_classes)``; None skips the PCA.
    solver : "closed" or "episodes"
        The generalised eigenvectors (default), or Adam on eq. 1 over episodes (``shrinkage``
        then plays no part).
    episodes, n_way, n_per_class : int
        With ``solver="episodes"``: the number of episodes, classes per episode and images
        per class in each.
    random_state : int, Generator or None
        With ``solver="episodes"``: the starting projection and the episodes drawn.

    Attributes (after ``fit``)
    ---------------------------
    mean_ : ndarray of shape (d,)
    components_ : ndarray of shape (d, n_components_)
        The projection: ``transform(X) = (X - mean_) @ components_``.
    eigenvalues_ : ndarray of shape (n_components_,)
        The between / within ratio along each component, largest first.
    shrinkage_ : float
    classes_ : ndarray
    """

    def __init__(self, n_components: int | None = None, shrinkage: float | str = "auto",
                 pca_components: int | str | None = "auto", solver: str = "closed", output: str = "discriminant",
                 episodes: int = 1000,
                 n_way: int = 20, n_per_class: int = 11, random_state=None):
        self.n_components = n_components
        self.shrinkage = shrinkage
        self.pca_components = pca_components
        self.solver = solver
        self.output = output
        self.episodes = episodes
        self.n_way = n_way
        self.n_per_class = n_per_class
        self.random_state = random_state

    def check_params(self) -> None:
        check_int("n_components", self.n_components, 1, optional=True)
        check_choice("solver", self.solver, ("closed", "episodes"))
        check_choice("output", self.output, ("discriminant", "whitened"))
        if self.output == "whitened" and self.solver != "closed":
            raise DeepclustError("output='whitened' is the closed form's; use solver='closed'")
        check_int("episodes", self.episodes, 1)
        check_int("n_way", self.n_way, 2)
        check_int("n_per_class", self.n_per_class, 2)
        if self.shrinkage != "auto":
            check_float("shrinkage", self.shrinkage, 0.0, 1.0)
        if self.pca_components not in ("auto", None):
            check_int("pca_components", self.pca_components, 1)

    def fit(self, X, y) -> "ScatterHead":
        """Learn the projection from embeddings ``X`` (n, d) and their classes ``y`` (n,):
        at least 2 classes, each of at least 2 images. An integer ``y`` of -1 marks an
        unlabelled image: it takes part in the mean and the PCA only (semi-supervised)."""
        from sklearn.covariance import ledoit_wolf  # deferred: scikit-learn only when a head is fitted

        self.check_params()
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise DeepclustError(f"X must be (n_images, n_features) with one class per row; got {X.shape} and "
                                 f"{len(y)} classes")
        if not np.isfinite(X).all():
            raise DeepclustError("X holds NaN or infinite values; remove those rows first")
        labelled = ~((y == -1) if y.dtype.kind in "iu" else np.zeros(len(y), bool))
        self.mean_ = X.mean(axis=0)
        Xc = X - self.mean_
        basis = self._pca(Xc, len(np.unique(y[labelled])), int(labelled.sum()))
        X, y = Xc[labelled], y[labelled]
        self.classes_, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        k = len(self.classes_)
        if k < 2:
            raise DeepclustError(f"the scatter head needs labelled images of at least 2 classes; got {k}: "
                                 "label images of another class too")
        if (counts < 2).any():
            single = self.classes_[counts < 2]
            raise DeepclustError(f"{len(single)} class(es) have a single labelled image (e.g. '{single[0]}'); each "
                                 "class needs at least 2 to measure its scatter: label more, or leave them out")
        Z = X @ basis
        means = np.stack([Z[inverse == c].mean(axis=0) for c in range(k)])
        residuals = Z - means[inverse]
        p = Z.shape[1]
        within = residuals.T @ residuals
        if self.shrinkage == "auto":
            _, self.shrinkage_ = ledoit_wolf(residuals, assume_centered=True)
        else:
            self.shrinkage_ = float(self.shrinkage)
        scale = np.trace(within) / p
        within = (1 - self.shrinkage_) * within + self.shrinkage_ * scale * np.eye(p)
        centred = means - means.mean(axis=0)
        between = k * centred.T @ centred - np.outer(centred.sum(axis=0), centred.sum(axis=0))
        # the identity of scatter_loss: sum_{i<j} (m_i - m_j)(m_i - m_j)^T
        rank = p if self.output == "whitened" else k - 1  # beyond k - 1 the between scatter has no rank
        n_out = min(self.n_components or rank, rank, p)
        values, vectors = scipy.linalg.eigh(between, within + 1e-12 * scale * np.eye(p))
        top = np.argsort(values)[::-1][:n_out]
        self.eigenvalues_ = values[top]
        if self.solver == "episodes":
            self.components_ = basis @ self._episodes(Z, inverse, k, n_out)
        else:
            self.components_ = basis @ vectors[:, top]
        self.n_components_ = n_out
        return self

    def _episodes(self, Z: np.ndarray, inverse: np.ndarray, k: int, n_out: int) -> np.ndarray:
        """A projection (p, n_out) trained by Adam on eq. 1 over few-shot episodes of ``Z``."""
        import torch  # deferred: only the gradient solver needs it

        from deepclust.losses import scatter_loss  # imports torch: only the gradient solver needs it

        rng = np.random.default_rng(self.random_state)
        members = [np.flatnonzero(inverse == c) for c in range(k)]
        Zt = torch.from_numpy(Z.astype(np.float32))
        start = np.linalg.qr(rng.standard_normal((Z.shape[1], n_out)))[0]
        W = torch.nn.Parameter(torch.from_numpy(start.astype(np.float32)))
        optimizer = torch.optim.Adam([W], lr=1e-2)
        n_way = min(self.n_way, k)
        for _ in range(self.episodes):
            classes = rng.choice(k, size=n_way, replace=False)
            idx = np.concatenate([rng.choice(members[c], size=min(self.n_per_class, len(members[c])), replace=False)
                                  for c in classes])
            labels = torch.from_numpy(inverse[idx])
            loss = scatter_loss(Zt[torch.from_numpy(idx)] @ W, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return W.detach().double().numpy()

    def _pca(self, Xc: np.ndarray, k: int, n: int) -> np.ndarray:
        """An orthonormal basis (d, p) of the leading principal directions of every row of
        ``Xc`` (labelled or not), or the identity; ``auto`` keeps what ``n`` labelled images
        of ``k`` classes can support."""
        d = Xc.shape[1]
        if self.pca_components is None:
            return np.eye(d)
        p = min(d, n - k) if self.pca_components == "auto" else min(int(self.pca_components), d, len(Xc))
        if p < 1:
            raise DeepclustError(f"{n} labelled images of {k} classes leave no dimension for the scatter head; "
                                 "label more images")
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
        return vt[:p].T

    def transform(self, X) -> np.ndarray:
        """The projections (n, n_components_) of embeddings ``X`` (n, d)."""
        if not hasattr(self, "components_"):
            raise DeepclustError("this ScatterHead is not fitted yet; call fit with labelled embeddings first")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.mean_):
            raise DeepclustError(f"X must have {len(self.mean_)} features like the embeddings the head was fitted on; "
                                 f"got shape {X.shape}")
        return ((X - self.mean_) @ self.components_).astype(np.float32)

    def fit_transform(self, X, y) -> np.ndarray:
        return self.fit(X, y).transform(X)
