"""EM numerics for y = X beta + a + e on data rotated into the kinship's eigenbasis.

With ``A = U diag(s) U'``, ``y~ = U'y`` and ``X~ = U'X``, the marginal covariance
``V = sigma2_a A + sigma2_e I`` becomes ``diag(d)`` with ``d = sigma2_a s + sigma2_e``.
Every quantity the lab computes with n x n generalised inverses is then a sum over
the n eigen-directions, so one EM iteration costs O(n p) instead of O(n^3).

Every function broadcasts over leading batch axes: ``exog`` may be ``(n, p)`` for
one model or ``(k, n, p)`` for k models sharing the response and kinship (one per
SNP in a scan), with ``beta`` of shape ``(..., p)`` and the variances of shape
``(...)``. A single fit and a batched scan therefore run the same code.

Nothing here knows about pandas, formulas or statsmodels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

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


#: A dataclass whose fields are arrays with one entry per model of a batch.
Batch = TypeVar("Batch", bound=Any)


def take_rows(batch: Batch, rows: NDArray[np.intp] | int) -> Batch:
    """The models at ``rows`` of a batch (a dataclass of per-model arrays)."""
    return replace(batch, **{f.name: getattr(batch, f.name)[rows] for f in fields(batch)})


def replace_rows(full: Batch, rows: NDArray[np.intp], part: Batch) -> Batch:
    """``full`` with the models at ``rows`` taken from ``part`` (one entry per row)."""
    changes = {}
    for f in fields(full):
        values = getattr(full, f.name).copy()
        values[rows] = getattr(part, f.name)
        changes[f.name] = values
    return replace(full, **changes)


def _t(matrix: Array) -> Array:
    """Transpose the last two axes."""
    return np.swapaxes(matrix, -1, -2)


def _matvec(matrix: Array, vector: Array) -> Array:
    return (matrix @ vector[..., None])[..., 0]


@dataclass(frozen=True)
class RotatedData:
    """Response and design(s) in the kinship eigenbasis, with the kinship's eigenvalues.

    ``exog_pinv`` (the design's pseudo-inverse, used by the lab's OLS update of
    beta) is computed once by :meth:`build` and sliced with the designs by
    :meth:`take`, so batched iterations never recompute it.
    """

    endog: Array
    exog: Array
    eigenvalues: Array
    exog_pinv: Array

    @classmethod
    def build(cls, endog: Array, exog: Array, eigenvalues: Array) -> RotatedData:
        return cls(endog, exog, eigenvalues, np.asarray(np.linalg.pinv(exog), dtype=np.float64))

    @property
    def nobs(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def k_exog(self) -> int:
        return int(self.exog.shape[-1])

    @property
    def rank(self) -> int:
        """Rank of the kinship: the dimension the random effect lives in."""
        return int(np.count_nonzero(self.eigenvalues))

    def take(self, indices: NDArray[np.intp]) -> RotatedData:
        """The models at ``indices`` of a batch."""
        return replace(self, exog=self.exog[indices], exog_pinv=self.exog_pinv[indices])


@dataclass(frozen=True)
class Estimate:
    """Fixed effects and the two variances (arrays, possibly batched)."""

    beta: Array
    sigma2_a: Array
    sigma2_e: Array

    @classmethod
    def of(cls, beta: Array, sigma2_a: Array | float, sigma2_e: Array | float) -> Estimate:
        return cls(
            np.asarray(beta, float), np.asarray(sigma2_a, float), np.asarray(sigma2_e, float)
        )

    def where(self, mask: NDArray[np.bool_], other: Estimate) -> Estimate:
        """This estimate where ``mask`` holds, ``other`` elsewhere."""
        return Estimate(
            np.where(mask[..., None], self.beta, other.beta),
            np.where(mask, self.sigma2_a, other.sigma2_a),
            np.where(mask, self.sigma2_e, other.sigma2_e),
        )


@dataclass
class EMTrace:
    """What an EM run produced: the final estimate and how it got there.

    ``n_iter`` and ``converged`` are per model in a batch; ``llf_history`` and
    ``variance_history`` (sigma2_a, sigma2_e) are recorded for a single model only.
    """

    estimate: Estimate
    n_iter: NDArray[np.intp]
    converged: NDArray[np.bool_]
    llf_history: list[float] = field(default_factory=list)
    variance_history: list[tuple[float, float]] = field(default_factory=list)


def marginal_variances(data: RotatedData, sigma2_a: Array, sigma2_e: Array) -> Array:
    """Diagonal of V in the eigenbasis, shape ``(..., n)``."""
    return np.asarray(sigma2_a)[..., None] * data.eigenvalues + np.asarray(sigma2_e)[..., None]


def gls(data: RotatedData, variances: Array) -> tuple[Array, Array, Array]:
    """Generalised least squares for given marginal variances.

    Returns beta, ``(X' V^-1 X)^-1`` and the rotated residual ``y~ - X~ beta``.
    """
    weighted = data.exog / variances[..., :, None]
    cov_beta = np.asarray(np.linalg.inv(_t(data.exog) @ weighted), dtype=np.float64)
    beta = _matvec(cov_beta, _t(weighted) @ data.endog)
    return beta, cov_beta, data.endog - _matvec(data.exog, beta)


def log_likelihood(data: RotatedData, estimate: Estimate) -> Array:
    """Full Gaussian log-likelihood, comparable with ``OLS(...).fit().llf``."""
    variances = marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
    resid = data.endog - _matvec(data.exog, estimate.beta)
    return -0.5 * (
        data.nobs * LOG_2PI + np.log(variances).sum(axis=-1) + (resid**2 / variances).sum(axis=-1)
    )


def restricted_log_likelihood(data: RotatedData, sigma2_a: Array, sigma2_e: Array) -> Array:
    """REML log-likelihood, with the constant statsmodels' ``MixedLM`` uses.

    ``-1/2 [(n - p) log 2 pi + log|V| + log|X' V^-1 X| + r' V^-1 r]`` with r the GLS
    residual (no ``log|X'X|`` term, as in ``MixedLM`` and lme4).
    """
    variances = marginal_variances(data, sigma2_a, sigma2_e)
    _, cov_beta, resid = gls(data, variances)
    _, logdet_cov_beta = np.linalg.slogdet(cov_beta)
    return -0.5 * (
        (data.nobs - data.k_exog) * LOG_2PI
        + np.log(variances).sum(axis=-1)
        - logdet_cov_beta
        + (resid**2 / variances).sum(axis=-1)
    )


def criterion(data: RotatedData, estimate: Estimate, reml: bool) -> Array:
    """The objective the fit maximises: ML or REML log-likelihood."""
    if reml:
        return restricted_log_likelihood(data, estimate.sigma2_a, estimate.sigma2_e)
    return log_likelihood(data, estimate)


def _trace_against(cov_beta: Array, weighted: Array, weights: Array) -> Array:
    """``tr((X'V^-1 X)^-1 W' diag(weights) W)`` with ``W = V^-1 X``."""
    return np.einsum("...ij,...ji->...", cov_beta, _t(weighted) @ (weights[..., None] * weighted))


def _reml_traces(data: RotatedData, variances: Array, cov_beta: Array) -> tuple[Array, Array]:
    """``tr(P A)`` and ``tr(P)`` in the eigenbasis, in O(n p^2)."""
    weighted = data.exog / variances[..., :, None]
    s = data.eigenvalues
    trace_pa = (s / variances).sum(axis=-1) - _trace_against(cov_beta, weighted, s)
    trace_p = (1.0 / variances).sum(axis=-1) - _trace_against(cov_beta, weighted, np.ones_like(s))
    return trace_pa, trace_p


def variance_score(data: RotatedData, estimate: Estimate, reml: bool) -> Array:
    """Gradient of the criterion with respect to (sigma2_a, sigma2_e), shape ``(..., 2)``.

    For ML the residual is taken at ``estimate.beta``; for REML beta is profiled out.
    """
    variances = marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
    s = data.eigenvalues
    if reml:
        _, cov_beta, resid = gls(data, variances)
        trace_pa, trace_p = _reml_traces(data, variances, cov_beta)
    else:
        resid = data.endog - _matvec(data.exog, estimate.beta)
        trace_pa, trace_p = (s / variances).sum(axis=-1), (1.0 / variances).sum(axis=-1)
    scaled = resid**2 / variances**2
    return 0.5 * np.stack(
        [(s * scaled).sum(axis=-1) - trace_pa, scaled.sum(axis=-1) - trace_p], axis=-1
    )


def variance_information(data: RotatedData, sigma2_a: Array, sigma2_e: Array, reml: bool) -> Array:
    """Expected (Fisher) information for (sigma2_a, sigma2_e), shape ``(..., 2, 2)``."""
    variances = marginal_variances(data, sigma2_a, sigma2_e)
    derivatives = (data.eigenvalues, np.ones_like(data.eigenvalues))
    if reml:
        weighted = data.exog / variances[..., :, None]
        _, cov_beta, _ = gls(data, variances)
        blocks = [_t(weighted) @ (dj[:, None] * weighted) for dj in derivatives]
    entries = []
    for j, dj in enumerate(derivatives):
        for k, dk in enumerate(derivatives):
            value = (dj * dk / variances**2).sum(axis=-1)
            if reml:
                value = value - 2.0 * _trace_against(cov_beta, weighted, dj * dk / variances)
                value = value + np.einsum(
                    "...ij,...ji->...", cov_beta @ blocks[j], cov_beta @ blocks[k]
                )
            entries.append(0.5 * value)
    return np.stack(entries, axis=-1).reshape(*np.shape(entries[0]), 2, 2)


def predicted_gain(
    data: RotatedData, estimate: Estimate, reml: bool
) -> tuple[Array, NDArray[np.int8], Array]:
    """How much one Fisher-scoring step from ``estimate`` would raise the criterion.

    This measures the distance to the maximum directly, so it does not mistake EM's
    slow crawl (tiny gains per iteration, far from the optimum) for convergence.
    The step is projected onto the feasible set: ``sigma2_a >= 0``, and
    ``sigma2_e >= 0`` where the kinship has full rank (``sigma2_e > 0`` otherwise).
    Returns the gain, which boundary the unconstrained step would cross (0 none,
    1 ``sigma2_a = 0``, 2 ``sigma2_e = 0``), and the projected step for
    (sigma2_a, sigma2_e).
    """
    score = variance_score(data, estimate, reml)
    information = variance_information(data, estimate.sigma2_a, estimate.sigma2_e, reml)
    step = np.asarray(np.linalg.solve(information, score[..., None]), dtype=np.float64)[..., 0]
    crosses_a = estimate.sigma2_a + step[..., 0] < 0.0
    crosses_e = ~crosses_a & (estimate.sigma2_e + step[..., 1] < 0.0)
    # On a boundary, the other variance takes its best step with this one fixed.
    step_a = np.where(
        crosses_a,
        -estimate.sigma2_a,
        np.where(
            crosses_e,
            (score[..., 0] + information[..., 0, 1] * estimate.sigma2_e) / information[..., 0, 0],
            step[..., 0],
        ),
    )
    step_e = np.where(
        crosses_a,
        (score[..., 1] - information[..., 1, 0] * step_a) / information[..., 1, 1],
        np.where(crosses_e, -estimate.sigma2_e, step[..., 1]),
    )
    step = np.stack([step_a, step_e], axis=-1)
    gain = (score * step).sum(axis=-1) - 0.5 * np.einsum(
        "...i,...ij,...j->...", step, information, step
    )
    if not reml:
        variances = marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
        beta_gls, cov_beta, _ = gls(data, variances)
        beta_step = beta_gls - estimate.beta
        gain = gain + 0.5 * (
            beta_step * np.linalg.solve(cov_beta, beta_step[..., None])[..., 0]
        ).sum(axis=-1)
    crosses = np.where(crosses_a, 1, np.where(crosses_e, 2, 0)).astype(np.int8)
    return gain, crosses, step


def ols_estimate(data: RotatedData, reml: bool) -> Estimate:
    """The best point with sigma2_a = 0: ordinary least squares."""
    estimate = boundary_estimate(data, reml, variance=1)
    assert estimate is not None
    return estimate


def boundary_estimate(data: RotatedData, reml: bool, variance: int) -> Estimate | None:
    """The best point on a boundary of the variance components.

    ``variance=1``: sigma2_a = 0, i.e. ordinary least squares. ``variance=2``:
    sigma2_e = 0, i.e. generalised least squares with covariance sigma2_a A, which
    exists only when the kinship has full rank (``None`` otherwise).
    """
    if variance == 2 and data.rank < data.nobs:
        return None
    unit = np.ones(data.nobs) if variance == 1 else data.eigenvalues
    beta, _, resid = gls(data, np.broadcast_to(unit, (*data.exog.shape[:-2], data.nobs)))
    dof = data.nobs - data.k_exog if reml else data.nobs
    scale = (resid**2 / unit).sum(axis=-1) / dof
    zeros = np.zeros_like(scale)
    return Estimate.of(beta, zeros, scale) if variance == 1 else Estimate.of(beta, scale, zeros)


def grid_start(data: RotatedData, reml: bool, n_grid: int = 30) -> Estimate:
    """A data-driven start: the best heritability on a grid, other parameters profiled.

    For a share ``h`` of variance on the kinship (relative to its mean diagonal),
    the overall scale and beta have closed forms, so each grid point costs O(n p^2).
    """
    mean_diagonal = float(data.eigenvalues.mean())
    dof = data.nobs - data.k_exog if reml else data.nobs
    best: Estimate | None = None
    best_value = np.array(-np.inf)
    for h in 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, n_grid))):
        unit_variances = np.broadcast_to(
            h * data.eigenvalues / mean_diagonal + (1.0 - h), (*data.exog.shape[:-2], data.nobs)
        )
        beta, _, resid = gls(data, unit_variances)
        scale = (resid**2 / unit_variances).sum(axis=-1) / dof
        candidate = Estimate.of(beta, h * scale / mean_diagonal, (1.0 - h) * scale)
        value = criterion(data, candidate, reml)
        better = value > best_value
        best = candidate if best is None else candidate.where(better, best)
        best_value = np.where(better, value, best_value)
    assert best is not None
    return best


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
    sigma2_a, sigma2_e = estimate.sigma2_a[..., None], estimate.sigma2_e[..., None]
    variances = sigma2_a * s + sigma2_e
    shrinkage = sigma2_a * s / variances
    if ginv_null_space:
        shrinkage = np.where(s > 0.0, shrinkage, 1.0)
    resid = data.endog - _matvec(data.exog, estimate.beta)
    alpha = shrinkage * resid
    posterior_variance = shrinkage * sigma2_e
    beta = _matvec(data.exog_pinv, data.endog - alpha)
    # alpha' A^+ alpha and tr(A^+ V), written so that small eigenvalues do not blow
    # up; both vanish where s = 0 because A^+ does.
    sum_a = (
        sigma2_a**2 * s * resid**2 / variances**2 + sigma2_a * sigma2_e * (s > 0) / variances
    ).sum(axis=-1)
    divisor_a = data.nobs if ginv_null_space else data.rank
    new_resid = data.endog - _matvec(data.exog, beta) - alpha
    sigma2_e_new = ((new_resid**2).sum(axis=-1) + posterior_variance.sum(axis=-1)) / data.nobs
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
    sigma2_a_new = sigma2_a + sigma2_a**2 * ((s * scaled).sum(axis=-1) - trace_pa) / data.rank
    sigma2_e_new = sigma2_e + sigma2_e**2 * (scaled.sum(axis=-1) - trace_p) / data.nobs
    beta, _, _ = gls(data, marginal_variances(data, sigma2_a_new, sigma2_e_new))
    return Estimate(beta=beta, sigma2_a=sigma2_a_new, sigma2_e=sigma2_e_new)


def fit_em(
    data: RotatedData,
    start: Estimate,
    *,
    reml: bool = False,
    lab: bool = False,
    maxiter: int = 10_000,
    tol: float = DEFAULT_TOLERANCE,
    accelerate: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> EMTrace:
    """Iterate EM from ``start`` until converged or ``maxiter`` iterations.

    For a single model, ``llf_history[0]`` is the criterion at ``start`` and
    ``llf_history[i]`` after iteration i. With ``lab=True`` the lab's algorithm runs
    verbatim: its treatment of a singular kinship and its stopping rule (stop once
    an iteration gains less than ``tol``). Otherwise a model stops when the gain a
    Fisher-scoring step predicts is below ``tol``; where that step points past
    sigma2_a = 0, the boundary point (OLS) is tried and taken if it is at least as
    good. With ``accelerate`` each EM step is followed by that Fisher-scoring
    step, kept only where it raises the criterion further (so the criterion still
    never decreases): EM's robustness far from the optimum, Fisher scoring's speed
    near it. In a batch, models that have converged stop iterating.
    """
    single = data.exog.ndim == 2
    if single:
        data = replace(data, exog=data.exog[None], exog_pinv=data.exog_pinv[None])
        start = Estimate(start.beta[None], start.sigma2_a[None], start.sigma2_e[None])
    n_models = data.exog.shape[0]
    final = start
    n_iter = np.zeros(n_models, dtype=np.intp)
    converged = np.zeros(n_models, dtype=bool)
    history: list[float] = []
    variance_history: list[tuple[float, float]] = []
    active = np.arange(n_models)
    current, sub = start, data
    values = criterion(data, start, reml)
    if single:
        history.append(float(values[0]))
        variance_history.append((float(start.sigma2_a[0]), float(start.sigma2_e[0])))
    for iteration in range(1, maxiter + 1):
        if reml:
            current = reml_em_step(sub, current)
        else:
            current = lab_em_step(sub, current, ginv_null_space=lab)
        new_values = criterion(sub, current, reml)
        if lab:
            done = new_values - values < tol
        else:
            gain, crosses, step = predicted_gain(sub, current, reml)
            if accelerate:
                current, new_values, gain = _try_scoring_step(
                    sub, current, new_values, gain, step, reml
                )
            for variance in (1, 2):
                if np.any((crosses == variance) & (gain >= tol)):
                    current, new_values, gain = _try_boundary(
                        sub, current, new_values, gain, reml, variance
                    )
            done = gain < tol
        values = new_values
        if single:
            history.append(float(values[0]))
            variance_history.append((float(current.sigma2_a[0]), float(current.sigma2_e[0])))
            if callback is not None:
                callback(iteration, float(values[0]))
        n_iter[active] = iteration
        final = replace_rows(final, active, current)
        converged[active[done]] = True
        if done.all():
            break
        keep = np.nonzero(~done)[0]
        active, current, values = active[keep], take_rows(current, keep), values[keep]
        sub = data.take(active)
    if single:
        final = take_rows(final, 0)
    return EMTrace(final, n_iter, converged, history, variance_history)


def _try_scoring_step(
    data: RotatedData, estimate: Estimate, value: Array, gain: Array, step: Array, reml: bool
) -> tuple[Estimate, Array, Array]:
    """Take the (projected) Fisher-scoring step where it improves on ``estimate``.

    Where the full step does not improve (the expected information can misjudge the
    curvature, e.g. close to sigma2_e = 0), half and a quarter of it are tried.
    """
    best, best_value = estimate, value
    improved = np.zeros(np.shape(value), dtype=bool)
    for fraction in (1.0, 0.5, 0.25):
        sigma2_a = np.maximum(estimate.sigma2_a + fraction * step[..., 0], 0.0)
        sigma2_e = np.maximum(estimate.sigma2_e + fraction * step[..., 1], 0.0)
        # sigma2_e = 0 is allowed only where V = sigma2_a A stays positive definite.
        valid = (sigma2_e > 0.0) | ((data.rank == data.nobs) & (sigma2_a > 0.0))
        sigma2_e = np.where(valid, sigma2_e, estimate.sigma2_e)
        beta, _, _ = gls(data, marginal_variances(data, sigma2_a, sigma2_e))
        candidate = Estimate(beta, sigma2_a, sigma2_e)
        candidate_value = criterion(data, candidate, reml)
        take = valid & ~improved & (candidate_value > value)
        best = candidate.where(take, best)
        best_value = np.where(take, candidate_value, best_value)
        improved |= take
        if improved.all():
            break
    if not improved.any():
        return estimate, value, gain
    best_gain, _, _ = predicted_gain(data, best, reml)
    return best, best_value, np.where(improved, best_gain, gain)


def _try_boundary(
    data: RotatedData, estimate: Estimate, value: Array, gain: Array, reml: bool, variance: int
) -> tuple[Estimate, Array, Array]:
    """Move to the boundary where a variance is 0 where that is a maximum at least as
    good as ``estimate``.

    Plain EM approaches a boundary maximum only as 1/k, so without this check a fit
    whose answer is sigma2_a = 0 (or sigma2_e = 0) would run to ``maxiter``.
    """
    boundary = boundary_estimate(data, reml, variance)
    if boundary is None:
        return estimate, value, gain
    at_boundary = criterion(data, boundary, reml)
    outward = variance_score(data, boundary, reml)[..., variance - 1] <= 0.0
    take = (at_boundary >= value) & outward
    boundary_gain, _, _ = predicted_gain(data, boundary, reml)
    return (
        boundary.where(take, estimate),
        np.where(take, at_boundary, value),
        np.where(take, boundary_gain, gain),
    )
