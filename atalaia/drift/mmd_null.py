"""Null distribution of MMD² against a *fixed* reference, and a threshold that accounts for the
reference's own sampling noise.

Why
---
A streaming drift test compares every new window ``W`` (size ``m``) with one stored reference
``R`` (size ``n``). The unconditional null distribution of the unbiased MMD² (both samples random)
averages over references, but a detector keeps *its* reference for every test: conditional on
``R`` the statistic is shifted by how far ``R``'s empirical mean embedding happens to lie from the
population's. An "unlucky" reference raises the false-alarm rate of all its tests, so false alarms
cluster in a few streams even when the per-test rate is right on average.

Model
-----
In the kernel's feature space, with ``λ_l`` the eigenvalues of the covariance operator (estimated
from the reference's centred kernel matrix divided by ``n``), the mean-embedding errors are
approximately Gaussian: ``e_R ~ N(0, diag(λ)/n)``, ``e_W ~ N(0, diag(λ)/m)``, and

``MMD²_u(W, R) ≈ ||e_W - e_R||² - Σλ (1/m + 1/n)``.

Given ``e_R = r`` this is a weighted *non-central* chi-square in ``e_W``. Its upper
``1 - alpha`` quantile is computed from its first three cumulants with a shifted Gamma (Pearson
type III, as Imhof (1961) proposed for quadratic forms), which keeps the skewness and so the tail
of a spectrum dominated by a few eigenvalues. :func:`reference_aware_threshold` draws many ``r``
and returns the ``confidence`` quantile of those conditional thresholds: for all but
``1 - confidence`` of references, each test's false-alarm probability is at most ``alpha``.

Pure numpy/scipy, no I/O.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = ["conditional_quantiles", "kernel_spectrum", "reference_aware_threshold"]

FloatArray = npt.NDArray[np.float64]


def kernel_spectrum(K: npt.ArrayLike, rtol: float = 1e-10) -> FloatArray:
    """Eigenvalues of the empirical covariance operator of a kernel matrix ``K`` (n, n): the
    positive eigenvalues of ``H K H / n`` (``H`` centres), largest first; their sum is the mean
    squared feature-space distance to the mean (``1 - mean(K)`` for an RBF kernel).

    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(200, 3))
    >>> K = np.exp(-0.5 * ((X[:, None] - X[None]) ** 2).sum(-1) / 3.0)
    >>> lam = kernel_spectrum(K)
    >>> bool(abs(lam.sum() - (1 - K.mean())) < 1e-9)
    True
    """
    Kc = np.array(K, dtype=np.float64)
    n = Kc.shape[0]
    Kc -= Kc.mean(axis=0, keepdims=True)
    Kc -= Kc.mean(axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(Kc)[::-1] / n
    return lam[lam > rtol * max(float(lam[0]), 1e-300)]


def conditional_quantiles(lam: npt.ArrayLike, m: int, n: int, alpha: float, draws: npt.ArrayLike) -> FloatArray:
    """Upper ``1 - alpha`` quantiles of MMD² of a window of size ``m`` against references of
    size ``n`` whose mean-embedding errors are ``r = sqrt(lam / n) * draws`` (one row of ``draws``
    per reference, standard normal values).

    Given ``r``, ``X = ||e_W - r||²`` with ``e_W ~ N(0, diag(lam)/m)`` has the cumulants
    ``κ_j = 2^(j-1) (j-1)! Σ a_l^(j-1) (a_l + j r_l²)`` with ``a = lam / m``; a Gamma shifted to
    match ``κ_1, κ_2, κ_3`` gives the quantile, from which ``Σ lam (1/m + 1/n)`` is subtracted.

    With ``draws`` of zeros (a reference without error) it is the quantile of the window's noise
    alone:

    >>> import numpy as np
    >>> lam = np.full(50, 0.02)
    >>> q = conditional_quantiles(lam, 100, 500, 0.05, np.zeros((1, 50)))
    >>> bool(0 < q[0] < 0.01)
    True
    """
    lam = np.asarray(lam, dtype=np.float64)
    z = np.atleast_2d(np.asarray(draws, dtype=np.float64))
    a = lam / m
    r2 = z * z * (lam / n)  # squared error per component, one row per reference
    k1 = a.sum() + r2.sum(axis=1)
    k2 = 2.0 * ((a * a).sum() + 2.0 * (r2 * a).sum(axis=1))
    k3 = 8.0 * ((a**3).sum() + 3.0 * (r2 * a * a).sum(axis=1))
    shape = 4.0 * k2**3 / (k3 * k3)
    scale = k3 / (2.0 * k2)
    q = k1 - shape * scale + scale * stats.gamma.isf(alpha, shape)
    return np.asarray(q - lam.sum() * (1.0 / m + 1.0 / n), dtype=np.float64)


def reference_aware_threshold(
    lam: npt.ArrayLike,
    m: int,
    n: int,
    alpha: float,
    confidence: float,
    rng: np.random.Generator,
    n_draws: int = 2000,
) -> float:
    """Alarm threshold on MMD² (window ``m`` vs reference ``n``) such that, for a fraction
    ``confidence`` of references, each test's false-alarm probability is at most ``alpha``.

    ``lam`` is the kernel spectrum (:func:`kernel_spectrum` of the reference). ``n_draws`` random
    reference errors are drawn with ``rng``; the result is the ``confidence`` quantile of their
    :func:`conditional_quantiles`.

    The threshold grows with the reference's share of the noise (``1/n`` against ``1/m``):

    >>> import numpy as np
    >>> lam = 0.9 * 0.8 ** np.arange(40)
    >>> rng = np.random.default_rng(0)
    >>> small = reference_aware_threshold(lam, 200, 500, 1e-3, 0.99, rng)
    >>> large = reference_aware_threshold(lam, 200, 5000, 1e-3, 0.99, rng)
    >>> bool(small > large > 0)
    True
    """
    lam = np.asarray(lam, dtype=np.float64)
    z = rng.standard_normal((n_draws, lam.shape[0]))
    return float(np.quantile(conditional_quantiles(lam, m, n, alpha, z), confidence))
