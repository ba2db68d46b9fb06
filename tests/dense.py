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
