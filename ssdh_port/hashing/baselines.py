"""Unsupervised and supervised hashing baselines on any feature matrix (NumPy):

* LSH: signs of random Gaussian projections of the centred features;
* ITQ (Gong and Lazebnik): PCA to K dimensions, then the rotation that best
  aligns the projected data with the binary hypercube (50 alternations);
* CCA-ITQ: the same rotation on a CCA projection against the labels, each
  direction scaled by its canonical correlation.

Each is fit on training features and encodes any features to 0/1 codes
(bit = projection > 0). Exhaustive l2 search on the features themselves is
metrics.evaluate(..., mode="euclidean").
"""
import numpy as np
import scipy.linalg

from ssdh_port.errors import SSDHError


class _Hash:
    def __init__(self, bits, seed=0):
        if bits < 1:
            raise SSDHError(f"bits must be >= 1, got {bits}")
        self.bits = bits
        self.rng = np.random.default_rng(seed)
        self.mean = None
        self.projection = None

    def encode(self, features):
        if self.projection is None:
            raise RuntimeError(f"{type(self).__name__}: call fit first")
        x = np.asarray(features, dtype=np.float64) - self.mean
        return (x @ self.projection > 0).astype(np.uint8)

    def _centre(self, features):
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise SSDHError(f"features must be N x D, got shape {x.shape}")
        self.mean = x.mean(axis=0)
        return x - self.mean


class LSH(_Hash):
    def fit(self, features, labels=None):
        x = self._centre(features)
        self.projection = self.rng.standard_normal((x.shape[1], self.bits))
        return self


def itq_rotation(v, iterations=50, rng=None):
    """The orthogonal R minimising ||sign(V R) - V R||_F (ITQ's alternation)."""
    rng = rng or np.random.default_rng(0)
    k = v.shape[1]
    r, _ = np.linalg.qr(rng.standard_normal((k, k)))
    for _ in range(iterations):
        b = np.where(v @ r > 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(v.T @ b)
        r = u @ wt
    return r


class ITQ(_Hash):
    def __init__(self, bits, seed=0, iterations=50):
        super().__init__(bits, seed)
        self.iterations = iterations

    def fit(self, features, labels=None):
        x = self._centre(features)
        if self.bits > x.shape[1]:
            raise SSDHError(f"ITQ: {self.bits} bits need at least as many feature dimensions, "
                             f"got {x.shape[1]}")
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        pca = vt[: self.bits].T
        self.projection = pca @ itq_rotation(x @ pca, self.iterations, self.rng)
        return self


class CCAITQ(_Hash):
    def __init__(self, bits, seed=0, iterations=50, regularization=1e-4):
        super().__init__(bits, seed)
        self.iterations = iterations
        self.regularization = regularization

    def fit(self, features, labels):
        x = self._centre(features)
        y = _label_matrix(labels)
        y = y - y.mean(axis=0)
        d = x.shape[1]
        if self.bits > d:
            raise SSDHError(f"CCA-ITQ: {self.bits} bits need at least as many feature dimensions")
        cxx = x.T @ x + self.regularization * np.trace(x.T @ x) / d * np.eye(d)
        cyy = y.T @ y + self.regularization * np.eye(y.shape[1])
        cxy = x.T @ y
        # Generalised eigenproblem Cxy Cyy^-1 Cyx w = r^2 Cxx w.
        between = cxy @ np.linalg.solve(cyy, cxy.T)
        values, vectors = scipy.linalg.eigh((between + between.T) / 2, cxx)
        order = np.argsort(values)[::-1][: self.bits]
        correlations = np.sqrt(np.clip(values[order], 0, None))
        w = vectors[:, order] * correlations
        self.projection = w @ itq_rotation(x @ w, self.iterations, self.rng)
        return self


def _label_matrix(labels):
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float64)
    classes = np.unique(labels)
    return (labels[:, None] == classes[None, :]).astype(np.float64)


BASELINES = {"lsh": LSH, "itq": ITQ, "cca-itq": CCAITQ}
