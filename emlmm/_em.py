"""EM numerics for y = X beta + a + e on data rotated into the kinship's eigenbasis.

With ``A = U diag(s) U'``, ``y~ = U'y`` and ``X~ = U'X``, the marginal covariance
``V = sigma2_a A + sigma2_e I`` becomes ``diag(d)`` with ``d = sigma2_a s + sigma2_e``.
Every quantity the lab computes with n x n generalised inverses is then a sum over
the n eigen-directions, so one EM iteration costs O(n p) instead of O(n^3).

Nothing here knows about pandas, formulas or statsmodels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

LOG_2PI = float(np.log(2.0 * np.pi))

#: Lab start values (QG16 lab 10): sigma2_a = 70, sigma2_e = 10, beta = 0.
LAB_START_SIGMA2_A = 70.0
LAB_START_SIGMA2_E = 10.0
#: Default bound on the log-likelihood gain still available at convergence; it puts
#: the estimates within about 1e-6 standard errors of the maximum.
DEFAULT_TOLERANCE = 1e-12
#: The lab stops when one iteration raises the log-likelihood by less than this.
LAB_TOLERANCE = 1e-5

Array = NDArray[np.float64]


@dataclass(frozen=True)
class RotatedData:
    """Response and design in the kinship eigenbasis, with the kinship's eigenvalues."""

    endog: Array
    exog: Array
    eigenvalues: Array

    @property
    def nobs(self) -> int:
        return int(self.endog.shape[0])

    @property
    def k_exog(self) -> int:
        return int(self.exog.shape[1])

    @cached_property
    def rank(self) -> int:
        """Rank of the kinship: the dimension the random effect lives in."""
        return int(np.count_nonzero(self.eigenvalues))

    @cached_property
    def exog_pinv(self) -> Array:
        """Pseudo-inverse of the rotated design, for the lab's OLS beta update."""
        return np.linalg.pinv(self.exog)


@dataclass(frozen=True)
class Estimate:
    """A point in the parameter space: fixed effects and the two variances."""

    beta: Array
    sigma2_a: float
    sigma2_e: float


@dataclass
class EMTrace:
    """What an EM run produced: the final estimate and how it got there."""

    estimate: Estimate
    llf_history: list[float] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False


def marginal_variances(data: RotatedData, sigma2_a: float, sigma2_e: float) -> Array:
    """Diagonal of V in the eigenbasis."""
    return sigma2_a * data.eigenvalues + sigma2_e


def gls(data: RotatedData, variances: Array) -> tuple[Array, Array, Array]:
    """Generalised least squares for given marginal variances.

    Returns beta, ``(X' V^-1 X)^-1`` and the rotated residual ``y~ - X~ beta``.
    """
    weighted = data.exog / variances[:, None]
    information = data.exog.T @ weighted
    cov_beta = np.linalg.inv(information)
    beta = cov_beta @ (weighted.T @ data.endog)
    return beta, cov_beta, data.endog - data.exog @ beta


def log_likelihood(data: RotatedData, estimate: Estimate) -> float:
    """Full Gaussian log-likelihood, comparable with ``OLS(...).fit().llf``."""
    variances = marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
    resid = data.endog - data.exog @ estimate.beta
    return -0.5 * float(
        data.nobs * LOG_2PI + np.log(variances).sum() + (resid**2 / variances).sum()
    )


def restricted_log_likelihood(data: RotatedData, sigma2_a: float, sigma2_e: float) -> float:
    """REML log-likelihood, with the constant statsmodels' ``MixedLM`` uses.

    ``-1/2 [(n - p) log 2 pi + log|V| + log|X' V^-1 X| + r' V^-1 r]`` with r the GLS
    residual (no ``log|X'X|`` term, as in ``MixedLM`` and lme4).
    """
    variances = marginal_variances(data, sigma2_a, sigma2_e)
    _, cov_beta, resid = gls(data, variances)
    _, logdet_cov_beta = np.linalg.slogdet(cov_beta)
    n_free = data.nobs - data.k_exog
    return -0.5 * float(
        n_free * LOG_2PI + np.log(variances).sum() - logdet_cov_beta + (resid**2 / variances).sum()
    )


def criterion(data: RotatedData, estimate: Estimate, reml: bool) -> float:
    """The objective the fit maximises: ML or REML log-likelihood."""
    if reml:
        return restricted_log_likelihood(data, estimate.sigma2_a, estimate.sigma2_e)
    return log_likelihood(data, estimate)


def _trace_against(cov_beta: Array, weighted: Array, weights: Array) -> float:
    """``tr((X'V^-1 X)^-1 W' diag(weights) W)`` with ``W = V^-1 X``."""
    return float(np.einsum("ij,ji->", cov_beta, weighted.T @ (weights[:, None] * weighted)))


def _reml_traces(data: RotatedData, variances: Array, cov_beta: Array) -> tuple[float, float]:
    """``tr(P A)`` and ``tr(P)`` in the eigenbasis, in O(n p^2)."""
    weighted = data.exog / variances[:, None]
    s = data.eigenvalues
    trace_pa = float(
        (s / variances).sum() - np.trace(cov_beta @ (weighted.T @ (s[:, None] * weighted)))
    )
    trace_p = float((1.0 / variances).sum() - np.trace(cov_beta @ (weighted.T @ weighted)))
    return trace_pa, trace_p


def variance_score(data: RotatedData, estimate: Estimate, reml: bool) -> Array:
    """Gradient of the criterion with respect to (sigma2_a, sigma2_e).

    For ML the residual is taken at ``estimate.beta``; for REML beta is profiled out.
    """
    variances = marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
    s = data.eigenvalues
    if reml:
        _, cov_beta, resid = gls(data, variances)
        trace_pa, trace_p = _reml_traces(data, variances, cov_beta)
    else:
        resid = data.endog - data.exog @ estimate.beta
        trace_pa, trace_p = float((s / variances).sum()), float((1.0 / variances).sum())
    scaled = resid**2 / variances**2
    return 0.5 * np.array([(s * scaled).sum() - trace_pa, scaled.sum() - trace_p])


def variance_information(data: RotatedData, sigma2_a: float, sigma2_e: float, reml: bool) -> Array:
    """Expected (Fisher) information for (sigma2_a, sigma2_e), ML or REML."""
    variances = marginal_variances(data, sigma2_a, sigma2_e)
    derivatives = (data.eigenvalues, np.ones_like(variances))
    information = np.empty((2, 2))
    if reml:
        weighted = data.exog / variances[:, None]
        _, cov_beta, _ = gls(data, variances)
        blocks = [weighted.T @ (dj[:, None] * weighted) for dj in derivatives]
    for j, dj in enumerate(derivatives):
        for k, dk in enumerate(derivatives):
            value = (dj * dk / variances**2).sum()
            if reml:
                value += -2.0 * np.trace(
                    cov_beta @ (weighted.T @ ((dj * dk / variances)[:, None] * weighted))
                )
                value += np.trace(cov_beta @ blocks[j] @ cov_beta @ blocks[k])
            information[j, k] = 0.5 * value
    return information


def predicted_gain(data: RotatedData, estimate: Estimate, reml: bool) -> tuple[float, bool]:
    """How much one Fisher-scoring step from ``estimate`` would raise the criterion.

    This measures the distance to the maximum directly, so it does not mistake EM's
    slow crawl (tiny gains per iteration, far from the optimum) for convergence.
    The step is projected onto ``sigma2_a >= 0``. Returns the gain and whether the
    unconstrained step would cross that boundary.
    """
    score = variance_score(data, estimate, reml)
    information = variance_information(data, estimate.sigma2_a, estimate.sigma2_e, reml)
    step = np.linalg.solve(information, score)
    crosses_boundary = estimate.sigma2_a + step[0] < 0.0
    if crosses_boundary:
        step_a = -estimate.sigma2_a
        step = np.array([step_a, (score[1] - information[1, 0] * step_a) / information[1, 1]])
    gain = float(score @ step - 0.5 * step @ information @ step)
    if not reml:
        variances = marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
        beta_gls, cov_beta, _ = gls(data, variances)
        beta_step = beta_gls - estimate.beta
        gain += 0.5 * float(beta_step @ np.linalg.solve(cov_beta, beta_step))
    return gain, crosses_boundary


def boundary_estimate(data: RotatedData, reml: bool) -> Estimate:
    """The best point with sigma2_a = 0: ordinary least squares."""
    beta, _, resid = gls(data, np.ones(data.nobs))
    dof = data.nobs - data.k_exog if reml else data.nobs
    return Estimate(beta=beta, sigma2_a=0.0, sigma2_e=float(resid @ resid) / dof)


def grid_start(data: RotatedData, reml: bool, n_grid: int = 30) -> Estimate:
    """A data-driven start: the best heritability on a grid, other parameters profiled.

    For a share ``h`` of variance on the kinship (relative to its mean diagonal),
    the overall scale and beta have closed forms, so each grid point costs O(n p^2).
    """
    mean_diagonal = float(data.eigenvalues.mean())
    best: tuple[float, Estimate] | None = None
    for h in 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, n_grid))):
        unit_variances = h * data.eigenvalues / mean_diagonal + (1.0 - h)
        beta, _, resid = gls(data, unit_variances)
        dof = data.nobs - data.k_exog if reml else data.nobs
        scale = float((resid**2 / unit_variances).sum()) / dof
        candidate = Estimate(beta, h * scale / mean_diagonal, (1.0 - h) * scale)
        value = criterion(data, candidate, reml)
        if best is None or value > best[0]:
            best = (value, candidate)
    assert best is not None
    return best[1]


def lab_em_step(data: RotatedData, estimate: Estimate, ginv_null_space: bool) -> Estimate:
    """One ML EM iteration in the lab's order.

    alpha = E[a | y]; beta = OLS of y - alpha on X; then sigma2_a and sigma2_e from
    alpha and its posterior variance (the trace terms). With ``ginv_null_space`` the
    directions where the kinship is zero are treated as the lab's ``ginv`` treats
    them (shrinkage 1, sigma2_a divided by n); otherwise as the model implies
    (E[a | y] = 0 there, sigma2_a divided by the rank of the kinship). The two agree
    whenever the kinship is non-singular.
    """
    s = data.eigenvalues
    sigma2_a, sigma2_e = estimate.sigma2_a, estimate.sigma2_e
    variances = marginal_variances(data, sigma2_a, sigma2_e)
    shrinkage = sigma2_a * s / variances
    if ginv_null_space:
        shrinkage = np.where(s > 0.0, shrinkage, 1.0)
    resid = data.endog - data.exog @ estimate.beta
    alpha = shrinkage * resid
    posterior_variance = shrinkage * sigma2_e
    beta = data.exog_pinv @ (data.endog - alpha)
    # alpha' A^+ alpha and tr(A^+ V), written so that small eigenvalues do not blow up.
    in_range = s > 0.0
    sum_a = float(
        (sigma2_a**2 * s[in_range] * resid[in_range] ** 2 / variances[in_range] ** 2).sum()
        + (sigma2_a * sigma2_e / variances[in_range]).sum()
    )
    divisor_a = data.nobs if ginv_null_space else data.rank
    new_resid = data.endog - data.exog @ beta - alpha
    sigma2_e_new = float((new_resid**2).sum() + posterior_variance.sum()) / data.nobs
    return Estimate(beta=beta, sigma2_a=sum_a / divisor_a, sigma2_e=sigma2_e_new)


def reml_em_step(data: RotatedData, estimate: Estimate) -> Estimate:
    """One REML EM iteration (beta integrated out with a flat prior).

    ``sigma2 <- sigma2 + sigma2^2 (r' V^-1 D V^-1 r - tr(P D)) / dim`` for each
    component with derivative matrix D, i.e. E[a' A^+ a | y] / rank(A) and
    E[e'e | y] / n under the REML posterior.
    """
    s = data.eigenvalues
    sigma2_a, sigma2_e = estimate.sigma2_a, estimate.sigma2_e
    variances = marginal_variances(data, sigma2_a, sigma2_e)
    _, cov_beta, resid = gls(data, variances)
    trace_pa, trace_p = _reml_traces(data, variances, cov_beta)
    scaled = resid**2 / variances**2
    sigma2_a_new = sigma2_a + sigma2_a**2 * ((s * scaled).sum() - trace_pa) / data.rank
    sigma2_e_new = sigma2_e + sigma2_e**2 * (scaled.sum() - trace_p) / data.nobs
    beta, _, _ = gls(data, marginal_variances(data, sigma2_a_new, sigma2_e_new))
    return Estimate(beta=beta, sigma2_a=float(sigma2_a_new), sigma2_e=float(sigma2_e_new))


def fit_em(
    data: RotatedData,
    start: Estimate,
    *,
    reml: bool = False,
    lab: bool = False,
    maxiter: int = 10_000,
    tol: float = DEFAULT_TOLERANCE,
    callback: Callable[[int, float], None] | None = None,
) -> EMTrace:
    """Iterate EM from ``start`` until converged or ``maxiter`` iterations.

    ``llf_history[0]`` is the criterion at ``start`` and ``llf_history[i]`` after
    iteration i. With ``lab=True`` the lab's algorithm runs verbatim: its treatment
    of a singular kinship and its stopping rule (stop once an iteration gains less
    than ``tol``). Otherwise the fit stops when the gain a Fisher-scoring step
    predicts is below ``tol``; where that step points past sigma2_a = 0, the
    boundary point (OLS) is tried and taken if it is at least as good.
    """
    estimate = start
    trace = EMTrace(estimate=start, llf_history=[criterion(data, start, reml)])
    for iteration in range(1, maxiter + 1):
        previous = trace.llf_history[-1]
        if reml:
            estimate = reml_em_step(data, estimate)
        else:
            estimate = lab_em_step(data, estimate, ginv_null_space=lab)
        value = criterion(data, estimate, reml)
        if not lab:
            gain, crosses_boundary = predicted_gain(data, estimate, reml)
            if crosses_boundary and gain >= tol:
                estimate, value, gain = _try_boundary(data, estimate, value, gain, reml)
        trace.llf_history.append(value)
        trace.n_iter = iteration
        trace.estimate = estimate
        if callback is not None:
            callback(iteration, value)
        if (value - previous < tol) if lab else (gain < tol):
            trace.converged = True
            break
    return trace


def _try_boundary(
    data: RotatedData, estimate: Estimate, value: float, gain: float, reml: bool
) -> tuple[Estimate, float, float]:
    """Move to sigma2_a = 0 if that is a maximum at least as good as ``estimate``.

    Plain EM approaches a boundary maximum only as 1/k, so without this check a fit
    whose answer is sigma2_a = 0 would run to ``maxiter``.
    """
    boundary = boundary_estimate(data, reml)
    at_boundary = criterion(data, boundary, reml)
    if at_boundary >= value and variance_score(data, boundary, reml)[0] <= 0.0:
        return boundary, at_boundary, predicted_gain(data, boundary, reml)[0]
    return estimate, value, gain
