"""A dense, brute-force implementation of the model, written only for the tests.

It shares no code with emlmm: n x n covariance matrices, Cholesky factors and a
general-purpose optimiser. Slow, obviously right, and independent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize


def covariance(kinship, sigma2_a, sigma2_e):
    return sigma2_a * kinship + sigma2_e * np.eye(kinship.shape[0])


def loglike(y, X, kinship, beta, sigma2_a, sigma2_e):
    """Full Gaussian log-likelihood from a Cholesky factor of the dense covariance."""
    factor = linalg.cholesky(covariance(kinship, sigma2_a, sigma2_e), lower=True)
    whitened = linalg.solve_triangular(factor, y - X @ beta, lower=True)
    return -0.5 * (len(y) * np.log(2 * np.pi) + 2 * np.log(np.diag(factor)).sum()
                   + whitened @ whitened)


def gls(y, X, V):
    Vinv = np.linalg.inv(V)
    cov_beta = np.linalg.inv(X.T @ Vinv @ X)
    return cov_beta @ X.T @ Vinv @ y, cov_beta


def reml_loglike(y, X, kinship, sigma2_a, sigma2_e):
    """-1/2 [(n-p) log 2pi + log|V| + log|X'V^-1 X| + r'V^-1 r], r the GLS residual."""
    n, p = X.shape
    V = covariance(kinship, sigma2_a, sigma2_e)
    beta, cov_beta = gls(y, X, V)
    r = y - X @ beta
    return -0.5 * (
        (n - p) * np.log(2 * np.pi)
        + np.linalg.slogdet(V)[1]
        - np.linalg.slogdet(cov_beta)[1]
        + r @ np.linalg.solve(V, r)
    )


@dataclass
class DenseFit:
    beta: np.ndarray
    sigma2_a: float
    sigma2_e: float
    llf: float
    cov_beta: np.ndarray


def maximise(y, X, kinship, reml=False, start=(1.0, 1.0)):
    """Maximise the (restricted) likelihood over log-variances with a general optimiser.

    beta is profiled out by GLS, its closed-form maximiser for given variances.
    """

    def objective(log_variances):
        s2a, s2e = np.exp(log_variances)
        if reml:
            return -reml_loglike(y, X, kinship, s2a, s2e)
        beta, _ = gls(y, X, covariance(kinship, s2a, s2e))
        return -loglike(y, X, kinship, beta, s2a, s2e)

    best = optimize.minimize(objective, np.log(start), method="Nelder-Mead",
                             options={"xatol": 1e-6, "fatol": 1e-10})
    best = optimize.minimize(objective, best.x, method="BFGS", options={"gtol": 1e-9})
    s2a, s2e = np.exp(best.x)
    beta, cov_beta = gls(y, X, covariance(kinship, s2a, s2e))
    return DenseFit(beta, s2a, s2e, -best.fun, cov_beta)


def expected_information(X, kinship, sigma2_a, sigma2_e, reml=False):
    """1/2 tr(Q dV_j Q dV_k) with Q = V^-1 (ML) or P (REML), formed densely."""
    V = covariance(kinship, sigma2_a, sigma2_e)
    Q = np.linalg.inv(V)
    if reml:
        Q = Q - Q @ X @ np.linalg.inv(X.T @ Q @ X) @ X.T @ Q
    derivatives = [kinship, np.eye(kinship.shape[0])]
    return np.array([[0.5 * np.trace(Q @ dj @ Q @ dk) for dk in derivatives]
                     for dj in derivatives])


def random_genotype_kinship(rng, n, m):
    """A standardized genomic relationship matrix from random genotypes."""
    freqs = rng.uniform(0.1, 0.9, size=m)
    genotypes = rng.binomial(2, freqs, size=(n, m))
    Z = (genotypes - 2 * freqs) / np.sqrt(2 * freqs * (1 - freqs))
    return Z @ Z.T / m


def informative_contrasts(kinship, X, tol=1e-8):
    """Orthonormal columns spanning the directions the likelihood keeps.

    Where the covariates reach every direction of the kinship's null space (a
    centered kinship with an intercept), those directions are fitted exactly for
    every parameter value and are dropped; otherwise every direction is kept.
    Built from scipy's SVD-based null spaces, not from an eigendecomposition.
    """
    n = kinship.shape[0]
    null = linalg.null_space(kinship, rcond=tol)
    if null.shape[1] == 0:
        return np.eye(n)
    reached = null @ null.T @ X
    absorbed = linalg.orth(reached, rcond=tol)
    if absorbed.shape[1] < null.shape[1]:
        return np.eye(n)
    return linalg.null_space(absorbed.T)


def _profiled_gls(yk, design, H, reml):
    """GLS of ``yk`` on ``design`` with covariance ``tau H``, tau profiled: the
    (restricted) log-likelihood, the coefficients and their covariance."""
    factor = linalg.cholesky(H, lower=True)
    wy = linalg.solve_triangular(factor, yk, lower=True)
    wx = linalg.solve_triangular(factor, design, lower=True)
    xtx = wx.T @ wx
    coef = np.linalg.solve(xtx, wx.T @ wy)
    resid = wy - wx @ coef
    dof = len(yk) - design.shape[1] if reml else len(yk)
    tau = resid @ resid / dof
    value = -0.5 * (dof * (np.log(2 * np.pi * tau) + 1) + 2 * np.log(np.diag(factor)).sum())
    if reml:
        value -= 0.5 * np.linalg.slogdet(xtx)[1]
    return value, coef, tau * np.linalg.inv(xtx), tau


def _column_space(matrix, size):
    """An orthonormal basis of the column space (singular values above 1e-8 size)."""
    left, values, _ = np.linalg.svd(matrix, full_matrices=False)
    return left[:, values > 1e-8 * size]


def _maximise_ratio(value, max_ratio=1e6):
    """The ratio sigma2_e / sigma2_a in [0, max_ratio] maximising ``value``: a log grid
    with 0 itself (the boundary, evaluated exactly), then a bounded scalar search."""
    grid = np.concatenate([[0.0], np.logspace(-8, np.log10(max_ratio), 60)])
    values = [value(r) for r in grid]
    best = int(np.argmax(values))
    lower, upper = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    found = optimize.minimize_scalar(lambda r: -value(r), bounds=(lower, upper),
                                     method="bounded", options={"xatol": 1e-14})
    return found.x if -found.fun > values[best] else grid[best]


def support_fit(y, X, kinship, ratio, reml=False, contrasts=None):
    """Profiled fit to the informative data ``K'y`` with ``V = tau (K'AK + ratio I)``:
    the ratio is sigma2_e / sigma2_a, so ratio = 0 is the boundary sigma2_e = 0,
    evaluated exactly. ``K'X`` is replaced by an orthonormal basis of its column
    space (its rank may drop). Returns (value, coefficients, their covariance, tau)."""
    K = informative_contrasts(kinship, X) if contrasts is None else contrasts
    yk, ak = K.T @ y, K.T @ kinship @ K
    design = _column_space(K.T @ X, np.linalg.norm(X, 2))
    return _profiled_gls(yk, design, ak + ratio * np.eye(len(yk)), reml)


def maximise_support(y, X, kinship, reml=False):
    """The (restricted) likelihood of the informative data, maximised over the ratio
    sigma2_e / sigma2_a. Returns (value, sigma2_a, sigma2_e)."""
    K = informative_contrasts(kinship, X)
    ratio = _maximise_ratio(lambda r: support_fit(y, X, kinship, r, reml, K)[0])
    value, _, _, tau = support_fit(y, X, kinship, ratio, reml, K)
    return value, tau, ratio * tau


def support_last_effect(y, X, kinship, contrasts, reml=True):
    """The last column's coefficient and standard error at the maximum of the
    (restricted) likelihood of the informative data ``K'y`` (``contrasts`` = K, from
    the model without that column, so that both models see the same data)."""
    K = contrasts
    yk, ak = K.T @ y, K.T @ kinship @ K
    design = np.column_stack([_column_space(K.T @ X[:, :-1], np.linalg.norm(X, 2)),
                              K.T @ X[:, -1]])

    def fit(ratio):
        return _profiled_gls(yk, design, ak + ratio * np.eye(len(yk)), reml)

    _, coef, cov, _ = fit(_maximise_ratio(lambda r: fit(r)[0]))
    return coef[-1], np.sqrt(cov[-1, -1])
