"""A dense NumPy port of the lab's EM algorithm (/work/shared/reference/lab_em.R).

Benchmark-only code: it follows the R function ``EM_algorithm`` line by line, with
``MASS::ginv`` -> ``numpy.linalg.pinv`` (same relative tolerance, sqrt(eps) times
the largest singular value), ``determinant(C)$modulus`` -> ``slogdet``, the same
start values (sigma2_a = 70, sigma2_e = 10, beta = 0) and the same stopping rule
(stop when an iteration raises log_L by less than 1e-5). Like the lab, log_L omits
the constant -n/2 log(2 pi). Every iteration costs O(n^3): two pseudo-inverses
(SVDs) of n x n matrices, an n x n x n product and a determinant.
"""

from __future__ import annotations

import time

import numpy as np

GINV_TOL = float(np.sqrt(np.finfo(float).eps))


def ginv(matrix: np.ndarray) -> np.ndarray:
    """MASS::ginv: pseudo-inverse dropping singular values <= sqrt(eps) * largest."""
    return np.linalg.pinv(matrix, rcond=GINV_TOL)


def em_algorithm(Y, X_j, A, tol=1e-5, max_iter=None, on_iteration=None):
    """The lab's EM_algorithm. Returns a dict like the R list, plus timing details.

    ``max_iter`` stops after that many EM updates (for timing a few iterations at
    large n); ``converged`` says whether the lab's stopping rule fired.
    """
    Y = np.asarray(Y, float).reshape(-1, 1)
    X_j = np.asarray(X_j, float).reshape(len(Y), -1)
    A = np.asarray(A, float)
    t0 = time.perf_counter()
    solve_A = ginv(A)
    n = len(Y)
    I = np.eye(n)
    log_L = []
    sigma_sq_a = 70.0
    sigma_sq_e = 10.0
    beta = np.zeros((X_j.shape[1], 1))
    C = A * sigma_sq_a + I * sigma_sq_e
    r = Y - X_j @ beta
    log_L.append(float(-0.5 * np.linalg.slogdet(C)[1] - 0.5 * (r.T @ ginv(C) @ r)[0, 0]))
    setup_time = time.perf_counter() - t0
    iter_times = []
    converged = False
    while True:
        t = time.perf_counter()
        S = ginv(I + solve_A * sigma_sq_e / sigma_sq_a)
        alpha = S @ (Y - X_j @ beta)
        V = S * sigma_sq_e
        beta = ginv(X_j.T @ X_j) @ X_j.T @ (Y - alpha)
        sigma_sq_a = float(
            1 / n * ((alpha.T @ solve_A @ alpha)[0, 0] + np.sum(np.diag(solve_A @ V)))
        )
        resid = Y - X_j @ beta - alpha
        sigma_sq_e = float(1 / n * ((resid.T @ resid)[0, 0] + np.sum(np.diag(V))))
        C = A * sigma_sq_a + I * sigma_sq_e
        r = Y - X_j @ beta
        log_L.append(float(-0.5 * np.linalg.slogdet(C)[1] - 0.5 * (r.T @ ginv(C) @ r)[0, 0]))
        iter_times.append(time.perf_counter() - t)
        if on_iteration is not None:
            on_iteration(len(log_L) - 1, log_L[-1])
        if log_L[-1] - log_L[-2] < tol:
            converged = True
            break
        if max_iter is not None and len(log_L) - 1 >= max_iter:
            break
    return {
        "beta": beta[:, 0],
        "sigma_sq_a": sigma_sq_a,
        "sigma_sq_e": sigma_sq_e,
        # The R function returns log_L[iter - 1], the value *before* the last update.
        "log_L": log_L[-2],
        "trace": log_L,
        "n_updates": len(log_L) - 1,
        "converged": converged,
        "setup_time": setup_time,
        "iter_times": iter_times,
    }
