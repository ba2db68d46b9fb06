"""Predictions of the kinship effect (BLUP) and profiles of the heritability.

Everything here works in the eigenbasis of the fitted kinship and in the scaled units
of :class:`emlmm._design.FitData`, so no ``n x n`` system is ever solved:

* **BLUP and its prediction error variance** (Henderson). For individuals ``*``
  related to the fitted ones ``o`` by the kinship block ``A_*o``,

  .. math::

      \\hat a_* = \\sigma_a^2 A_{*o} V^{-1} (y - X\\hat\\beta), \\qquad
      \\mathrm{PEV}_* = \\sigma_a^2 A_{**} - \\sigma_a^4 \\operatorname{diag}(A_{*o} P A_{o*}),

  with ``P = V^-1 - V^-1 X (X' V^-1 X)^-1 X' V^-1``, which accounts for
  estimating beta. With ``V = U D U'``, ``A_*o P A_o* = C (D^-1 - D^-1 X~ F^-1 X~'
  D^-1) C'`` where ``C = A_*o U``, ``X~ = U'X`` and ``F = X~' D^-1 X~``: one product
  ``A_*o U`` (``m x n x n``) and ``O(m n)`` work after it. For the fitted individuals
  themselves ``C = U diag(d)``.
* **The profile likelihood of h2.** For a given ``h2`` the variances are
  ``s^2 (h2 d / m)`` and ``s^2 (1 - h2)`` (``m`` the mean diagonal of the kinship),
  and ``s^2`` and beta have closed forms, so the profile costs ``O(n p^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from emlmm import _em

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Prediction:
    """BLUPs and prediction error variances, in the numerics' scaled units."""

    blup: Array
    pev: Array
    prior: Array  # sigma2_a A_ii, the prior variance of a_i


def predict(
    data: _em.RotatedData,
    estimate: _em.Estimate,
    cross: Array,
    diagonal: Array,
) -> Prediction:
    """BLUPs of the individuals whose kinship with the fitted ones, rotated into the
    eigenbasis, is ``cross`` (``A_*o U``), and whose own kinship diagonal is
    ``diagonal``."""
    sigma2_a, sigma2_e = float(estimate.sigma2_a), float(estimate.sigma2_e)
    variances = sigma2_a * data.eigenvalues + sigma2_e
    if np.any(variances <= 0):
        raise ValueError("V is singular at these estimates: BLUPs are not defined")
    resid = data.endog - data.exog @ estimate.beta
    blup = sigma2_a * (cross @ (resid / variances))
    weighted = data.exog / variances[:, None]
    information = data.exog.T @ weighted  # X~' D^-1 X~
    reached = cross @ weighted  # C D^-1 X~
    explained = (cross**2) @ (1.0 / variances) - np.einsum(
        "ij,ij->i", reached, np.linalg.solve(information, reached.T).T
    )
    prior = sigma2_a * diagonal
    pev = np.maximum(prior - sigma2_a**2 * explained, 0.0)
    return Prediction(blup, pev, prior)


def profile(data: _em.RotatedData, h2: float, mean_diagonal: float, reml: bool) -> float:
    """The (restricted) log-likelihood maximised over beta and the total variance,
    at heritability ``h2``."""
    relative = (h2 / mean_diagonal) * data.eigenvalues + (1.0 - h2)
    if np.any(relative <= 0):
        return -np.inf
    beta, _, resid = _em.gls(data, relative)
    rss = float(resid @ (resid / relative))
    scale = rss / (data.nobs - (data.k_exog if reml else 0))
    estimate = _em.Estimate.of(beta, scale * h2 / mean_diagonal, scale * (1.0 - h2))
    return float(_em.criterion(data, estimate, reml))


def observed_se(
    data: _em.RotatedData, h2: float, mean_diagonal: float, reml: bool, step: float = 1e-4
) -> float:
    """Standard error of h2 from the curvature of its profile likelihood (the observed
    information); NaN within ``step`` of a boundary, where it is not defined."""
    if not step <= h2 <= 1.0 - step:
        return float("nan")
    values = [profile(data, h2 + k * step, mean_diagonal, reml) for k in (-1, 0, 1)]
    curvature = (values[0] - 2.0 * values[1] + values[2]) / step**2
    return float(1.0 / np.sqrt(-curvature)) if curvature < 0 else float("nan")


def profile_interval(
    data: _em.RotatedData, h2: float, mean_diagonal: float, reml: bool, alpha: float
) -> tuple[float, float]:
    """The h2 values whose profile log-likelihood is within chi2_1(1 - alpha) / 2 of
    the maximum at ``h2``; an end is 0 (or 1) where the profile does not drop enough."""
    from scipy import optimize, stats  # here: a scan (which never asks) need not import them

    drop = stats.chi2.ppf(1.0 - alpha, 1) / 2.0
    best = profile(data, h2, mean_diagonal, reml)
    # h2 = 1 means sigma2_e = 0, possible only where every eigenvalue is positive.
    top = 1.0 if np.all(data.eigenvalues > 0) else 1.0 - 1e-10

    def excess(value: float) -> float:
        return profile(data, value, mean_diagonal, reml) - (best - drop)

    lower = 0.0 if excess(0.0) >= 0 else optimize.brentq(excess, 0.0, h2, xtol=1e-10)
    upper = top if excess(top) >= 0 else optimize.brentq(excess, h2, top, xtol=1e-10)
    return float(lower), float(upper)
