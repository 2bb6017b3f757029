"""Spectral clustering that scales: sparse k-NN graph, sparse eigensolver, then our k-means."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import scipy.sparse as sp
import torch

from deepclust.cluster._base import BaseClusterer
from deepclust.cluster._registry import register_clusterer
from deepclust.cluster.k_curve import KEstimate, eigengap
from deepclust.cluster.kmeans import KMeans
from deepclust.cluster.neighbors import affinity_matrix, knn_graph
from deepclust.errors import DeepclustError
from deepclust.validation import as_generator, check_choice, check_int

log = logging.getLogger("deepclust")

EIGEN_SOLVERS = ("auto", "chebyshev", "lobpcg", "arpack", "dense")
AFFINITIES = ("connectivity", "local_scaling")
NEIGHBOR_METHODS = ("auto", "exact", "approximate")


def normalized_affinity(W: sp.spmatrix) -> tuple[sp.csr_matrix, np.ndarray]:
    """``S = D^-1/2 W D^-1/2`` (n, n) and the degrees ``D`` (n,) of a symmetric affinity.

    The eigenvectors of ``S`` with the largest eigenvalues are those of the normalised
    graph Laplacian ``I - S`` with the smallest. Isolated points get degree 1.
    """
    W = sp.csr_matrix(W, dtype=np.float64)
    degree = np.asarray(W.sum(axis=1)).ravel()
    degree[degree <= 0] = 1.0
    inv_sqrt = 1.0 / np.sqrt(degree)
    S = sp.diags(inv_sqrt) @ W @ sp.diags(inv_sqrt)
    return S.tocsr(), degree


def weighted_normalized_affinity(W: sp.spmatrix, weight: np.ndarray) -> sp.csr_matrix:
    """``D^-1/2 w^1/2 W w^1/2 D^-1/2`` with ``D = diag(W w)``: the normalised affinity of a
    graph whose node ``i`` stands for ``weight[i]`` points (e.g. a group centre).

    It is what the normalised affinity of the graph with every node repeated ``w_i``
    times reduces to for vectors that are constant over the copies, so its leading
    eigenvectors (rows normalised) give the same spectral embedding of the nodes. It is
    similar to the random walk ``D^-1 W diag(w)``, so its spectrum lies in [-1, 1].
    """
    W = sp.csr_matrix(W, dtype=np.float64)
    w = np.asarray(weight, dtype=np.float64)
    w = w / w.mean()
    degree = np.asarray(W @ w).ravel()
    degree[degree <= 0] = 1.0
    scale = np.sqrt(w / degree)
    return (sp.diags(scale) @ W @ sp.diags(scale)).tocsr()


def _to_torch_csr(S: sp.csr_matrix, dtype=torch.float32) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(S.indptr.astype(np.int64)),
            torch.from_numpy(S.indices.astype(np.int64)),
            torch.from_numpy(S.data.astype(np.float32 if dtype == torch.float32 else np.float64)),
            size=S.shape,
        )


def top_eigenvectors(S: sp.csr_matrix, n_components: int, solver: str = "auto", degree: int = 8,
                     max_iter: int = 50, tol: float = 1e-4, initial=None,
                     random_state=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_components`` largest eigenpairs of a symmetric sparse matrix with spectrum in [-1, 1].

    Parameters
    ----------
    S : sparse matrix of shape (n, n)
        Typically :func:`normalized_affinity`.
    n_components : int
    solver : {"auto", "chebyshev", "lobpcg", "arpack", "dense"}
        ``chebyshev``: Chebyshev-filtered subspace iteration (Zhou & Saad, 2007): a
        block of ``n_components + oversampling`` vectors is multiplied by a degree-``degree``
        Chebyshev polynomial of ``S`` that damps the unwanted part of the spectrum, then
        orthonormalised and rotated by a Rayleigh-Ritz step, until the wanted Ritz values
        settle. Only sparse-times-block products and one QR per iteration: the cost
        grows linearly in ``n``, and a block method finds repeated eigenvalues (one
        per connected component of the graph), which ARPACK's Lanczos misses.
        ``arpack`` / ``lobpcg``: scipy's solvers. ``dense``: LAPACK on the full
        matrix. ``auto``: ``dense`` up to 1,500 points, ``chebyshev`` above.
    degree : int
        Chebyshev polynomial degree per iteration.
    max_iter : int
    tol : float
        Stop when no wanted Ritz value moves by more than ``tol`` between iterations.
    initial : ndarray of shape (n, m), optional
        Starting block (a good guess speeds convergence); random when None.
    random_state : int, numpy Generator or None

    Returns
    -------
    values : ndarray of shape (n_components,), descending
    vectors : ndarray of shape (n, n_components)
    """
    n = S.shape[0]
    rng = as_generator(random_state)
    if solver == "auto":
        solver = "dense" if n <= 1500 else "chebyshev"
    if solver == "dense" or n_components >= n - 1 or n <= 3:
        from scipy.linalg import eigh

        values, vectors = eigh(S.toarray(), subset_by_index=[n - n_components, n - 1])
        return values[::-1], vectors[:, ::-1]
    if solver == "arpack":
        from scipy.sparse.linalg import eigsh

        v0 = rng.uniform(-1, 1, n)
        values, vectors = eigsh(S, k=n_components, which="LA", v0=v0, tol=min(tol, 1e-6) if tol else 0)
    elif solver == "lobpcg":
        from scipy.sparse.linalg import lobpcg

        block = initial if initial is not None else rng.standard_normal((n, n_components))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values, vectors = lobpcg(S, block[:, :n_components].astype(np.float64), largest=True, tol=tol,
                                     maxiter=max_iter * degree)
    else:
        values, vectors = _chebyshev_subspace(S, n_components, degree, max_iter, tol, initial, rng)
    order = np.argsort(values)[::-1]
    return np.asarray(values)[order], np.asarray(vectors)[:, order]


def _chebyshev_subspace(S, n_components, degree, max_iter, tol, initial, rng):
    n = S.shape[0]
    block = min(n - 1, n_components + max(8, n_components // 5))
    St = _to_torch_csr(S)
    V = torch.from_numpy(rng.standard_normal((n, block)).astype(np.float32))
    if initial is not None:
        guess = torch.as_tensor(np.asarray(initial, dtype=np.float32))[:, :block]
        V[:, : guess.shape[1]] = guess
    SV = St @ V
    previous = None
    cut = 0.0  # damp [-1, cut]; then the lowest Ritz value of the block
    theta = None
    for it in range(max_iter):
        if it > 0:
            # T_degree on [-1, cut] mapped to [-1, 1]: bounded there, growing fast above it
            half, centre = (cut + 1.0) / 2.0, (cut - 1.0) / 2.0
            Y_prev, Y = V, SV.sub_(V, alpha=centre).div_(half)
            for _ in range(2, degree + 1):
                # Y_next = 2 (S Y - centre Y) / half - Y_prev, with as few n x b temporaries as possible
                Y_next = torch.sparse.addmm(Y, St, Y, beta=-centre).mul_(2.0 / half).sub_(Y_prev)
                Y_prev, Y = Y, Y_next
            del Y_prev
            V = Y.div_(Y.norm(dim=0).clamp(min=1e-30))
            SV = St @ V
        # Rayleigh-Ritz in span(V), orthonormalised through the Gram matrix (SVQB,
        # Stathopoulos & Wu 2002): one small eigenproblem instead of an n x b QR
        G = (V.T @ V).double()
        sigma, U = torch.linalg.eigh((G + G.T) / 2)
        keep = sigma > sigma[-1] * 1e-9
        B = U[:, keep] / sigma[keep].sqrt()
        H = B.T @ (V.T @ SV).double() @ B
        theta, R = torch.linalg.eigh((H + H.T) / 2)
        theta, R = theta.flip(0), R.flip(1)
        rotate = (B @ R).float()
        V, SV = V @ rotate, SV @ rotate
        if V.shape[1] < block:  # directions lost to rounding: refill with random ones
            extra = torch.from_numpy(rng.standard_normal((n, block - V.shape[1])).astype(np.float32))
            V, SV = torch.cat([V, extra], 1), torch.cat([SV, St @ extra], 1)
        # the wanted subspace has settled when the sum of its Ritz values (the trace of S
        # on it) stops growing; single Ritz values of a tight cluster converge much later
        # but clustering needs only the subspace
        trace = float(theta[:n_components].sum())
        cut = float(theta[-1])
        if previous is not None and trace - previous <= tol * n_components:
            break
        previous = trace
    return theta[:n_components].numpy(), V[:, :n_components].contiguous().numpy()


def knn_affinity(X, n_neighbors: int = 10, affinity: str = "connectivity", neighbors: str = "auto",
                 random_state=None) -> sp.csr_matrix:
    """The normalised affinity ``D^-1/2 W D^-1/2`` (n, n) of the symmetric k-NN graph of ``X`` (n, d)."""
    indices, distances = knn_graph(X, n_neighbors, method=neighbors, random_state=random_state)
    return normalized_affinity(affinity_matrix(indices, distances, affinity))[0]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def spectral_embedding(X, n_components: int, n_neighbors: int = 10, affinity: str = "connectivity",
                       neighbors: str = "auto", eigen_solver: str = "auto", random_state=None,
                       return_values: bool = False):
    """Row-normalised spectral embedding (Ng, Jordan & Weiss, 2002) of a k-NN graph of ``X``.

    Parameters
    ----------
    X : ndarray of shape (n, d)
    n_components : int
    n_neighbors, affinity, neighbors, eigen_solver : see :class:`SpectralClustering`
    random_state : int, numpy Generator or None
    return_values : bool
        Also return the eigenvalues of the normalised affinity (descending).

    Returns
    -------
    embedding : ndarray of shape (n, n_components), rows of unit length
    values : ndarray of shape (n_components,), only with ``return_values``
    """
    rng = as_generator(random_state)
    S = knn_affinity(X, n_neighbors, affinity, neighbors, rng)
    values, vectors = top_eigenvectors(S, n_components, solver=eigen_solver, random_state=rng)
    return (_unit_rows(vectors), values) if return_values else _unit_rows(vectors)


@register_clusterer("spectral")
class SpectralClustering(BaseClusterer):
    """Spectral clustering (Ng, Jordan & Weiss, 2002; von Luxburg, 2007) that scales to 10^5-10^6 points.

    The core paper (Bjerge et al., 2025) uses scikit-learn's ``SpectralClustering`` with
    ``affinity="nearest_neighbors"``, which solves an ``n x n`` shift-invert eigenproblem
    and took the authors hours on tiered-ImageNet. Here every step is linear in ``n``:

    1. a symmetric k-NN graph (:func:`~deepclust.cluster.neighbors.knn_graph`; exact up to
       12,000 points, PCA + cell-probed search above), weighted as scikit-learn's
       (``connectivity``) or by local scaling;
    2. the top ``n_clusters`` eigenvectors of ``D^-1/2 W D^-1/2`` by Chebyshev-filtered
       subspace iteration (:func:`top_eigenvectors`);
    3. rows normalised to unit length (NJW; scikit-learn divides by the degree instead);
    4. :class:`~deepclust.cluster.KMeans` on the embedding.

    Parameters
    ----------
    n_clusters : int or "auto", default 8
        ``"auto"``: the largest eigengap among 2..50 clusters (see ``k_estimate_``).
    n_neighbors : int, default 10
    affinity : {"connectivity", "local_scaling"}, default "connectivity"
    neighbors : {"auto", "exact", "approximate"}, default "auto"
    eigen_solver : {"auto", "chebyshev", "lobpcg", "arpack", "dense"}, default "auto"
    n_init : int, default 10
        k-means restarts on the embedding.
    device : str, default "cpu"
        Where the final k-means runs (``cuda`` for a GPU).
    random_state : int, numpy Generator or None

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,)
    n_clusters_ : int
    embedding_ : ndarray of shape (n_samples, n_clusters)
    eigenvalues_ : ndarray of shape (n_clusters,)
    k_estimate_ : KEstimate or None
    """

    k_method = "eigengap"

    def __init__(self, n_clusters=8, n_neighbors=10, affinity="connectivity", neighbors="auto",
                 eigen_solver="auto", n_init=10, device="cpu", random_state=None):
        self.n_clusters = n_clusters
        self.n_neighbors = n_neighbors
        self.affinity = affinity
        self.neighbors = neighbors
        self.eigen_solver = eigen_solver
        self.n_init = n_init
        self.device = device
        self.random_state = random_state

    def check_params(self):
        check_int("n_neighbors", self.n_neighbors, 1)
        check_int("n_init", self.n_init, 1)
        check_choice("affinity", self.affinity, AFFINITIES)
        check_choice("neighbors", self.neighbors, NEIGHBOR_METHODS)
        check_choice("eigen_solver", self.eigen_solver, EIGEN_SOLVERS)

    def fit(self, X, y=None, sample_weight=None):
        """Cluster ``X`` (n, d). ``sample_weight`` (n,), optional: how many points each row
        stands for (e.g. the sizes of groups whose centres ``X`` holds); it weights the
        graph's nodes (:func:`weighted_normalized_affinity`) and the final k-means."""
        X = self._validate_data(X)
        n = X.shape[0]
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight, dtype=np.float64)
            if sample_weight.shape != (n,) or not np.all(np.isfinite(sample_weight)) or (sample_weight <= 0).any():
                raise DeepclustError(f"sample_weight must hold {n} positive numbers, one per row of X")
        rng = as_generator(self.random_state)
        if n == 1:
            self.labels_ = np.zeros(1, dtype=np.int64)
            self.n_clusters_ = 1
            self.k_estimate_ = None
            self.embedding_ = np.ones((1, 1), dtype=np.float32)
            self.eigenvalues_ = np.ones(1)
            return self
        n_neighbors = min(int(self.n_neighbors), n - 1)
        say = log.info if n >= 50_000 else log.debug  # long steps show progress in the CLI
        say("spectral: %d-NN graph of %d points", n_neighbors, n)
        if sample_weight is None:
            S = knn_affinity(X, n_neighbors, self.affinity, self.neighbors, rng)
        else:
            indices, distances = knn_graph(X, n_neighbors, method=self.neighbors, random_state=rng)
            S = weighted_normalized_affinity(affinity_matrix(indices, distances, self.affinity), sample_weight)
        say("spectral: eigenvectors of the normalised affinity")
        if isinstance(self.n_clusters, str):  # "auto": validated by _validate_data
            k_max = min(50, n - 1)
            values, vectors = top_eigenvectors(S, k_max + 1, solver=self.eigen_solver, random_state=rng)
            ks, gaps = eigengap(values, k_min=2, k_max=k_max)
            k = int(ks[np.argmax(gaps)])
            self.k_estimate_ = KEstimate(n_clusters=k, method="eigengap", ks=ks, scores=gaps)
            values, vectors = values[:k], vectors[:, :k]
        else:
            k = int(self.n_clusters)
            self.k_estimate_ = None
            values, vectors = top_eigenvectors(S, k, solver=self.eigen_solver, random_state=rng)
        self.embedding_ = _unit_rows(vectors)
        self.eigenvalues_ = values
        say("spectral: k-means on the %d-d embedding", k)
        if sample_weight is None:
            km = KMeans(n_clusters=k, n_init=self.n_init, device=self.device, random_state=rng).fit(self.embedding_)
        else:  # scikit-learn's k-means takes weights
            from sklearn.cluster import KMeans as WeightedKMeans

            km = WeightedKMeans(n_clusters=k, n_init=self.n_init, random_state=int(rng.integers(2**31 - 1)))
            km.fit(self.embedding_, sample_weight=sample_weight)
        self.labels_ = np.asarray(km.labels_, dtype=np.int64)
        self.n_clusters_ = k
        return self
