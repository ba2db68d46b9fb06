"""Per-SNP ML and REML fits for scans, on the variance ratio, in O(n) per SNP and step.

In the kinship's eigenbasis ``V = sigma2_e H`` with ``H = diag(delta s + 1)`` and
``delta = sigma2_a / sigma2_e``. For a given ``delta``, beta and sigma2_e have closed
forms, so the ML and REML criteria are functions of ``delta`` alone. Everything
they and their first two derivatives need is in three weighted cross-product
matrices of ``Z = [covariates, snp, y]`` (all rotated)::

    M1 = Z' H^-1 Z,   M2 = Z' (H^-1 A H^-1) Z,   M3 = Z' (H^-1 A H^-1 A H^-1) Z

(``A = diag(s)`` here). The covariates and y are shared by every SNP, so a batch
of k SNPs costs a few passes over its ``k x n`` rotated genotypes per step and no
``(k, n, p)`` array is ever built. Each SNP then takes safeguarded Newton steps
on ``delta`` from the null model's estimate (which EM found) until the gain the
next step predicts is below the tolerance, the stopping rule of
:func:`emlmm._em.fit_em`. A SNP that does not converge within
:data:`MAX_NEWTON_STEPS` is left to the caller (the scan then runs EM on it).

These are the formulas of GEMMA's ``-lmm`` (Zhou & Stephens 2012), written in
cross-products so that they vectorise over SNPs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

from emlmm._em import LOG_2PI

Array = NDArray[np.float64]

#: Newton steps a SNP gets before it is handed to EM.
MAX_NEWTON_STEPS = 60
#: A ratio beyond this means sigma2_e is heading to 0: a boundary EM handles.
MAX_RATIO = 1e8
#: Where Newton starts when the null model has sigma2_e = 0 (an infinite ratio).
LARGE_RATIO = 1e4


@dataclass(frozen=True)
class SnpBatch:
    """Rotated covariates and response, shared, and a batch of rotated SNPs.

    ``snps`` has one row per SNP (``k x n``, C-contiguous): a row is ``U' g``.
    """

    covariates: Array
    endog: Array
    snps: Array
    eigenvalues: Array

    @property
    def nobs(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def k_exog(self) -> int:
        """Columns of each SNP's design: the covariates and the SNP."""
        return int(self.covariates.shape[1]) + 1

    @cached_property
    def _shared(self) -> Array:
        """``[covariates, y]``, the columns every SNP's model shares."""
        return np.column_stack([self.covariates, self.endog])

    @cached_property
    def _shared_products(self) -> Array:
        """Row-wise outer products of the shared columns, ``n x f^2``."""
        shared = self._shared
        return (shared[:, :, None] * shared[:, None, :]).reshape(self.nobs, -1)

    def take(self, indices: NDArray[np.intp]) -> SnpBatch:
        batch = replace(self, snps=self.snps[indices])
        # The shared arrays are the same for any subset of SNPs.
        batch.__dict__.update(
            {
                key: self.__dict__[key]
                for key in ("_shared", "_shared_products")
                if key in self.__dict__
            }
        )
        return batch

    def cross_products(self, weights: Array) -> Array:
        """``Z' diag(w) Z`` for every SNP, ``(k, p + 1, p + 1)``.

        ``weights`` is ``(k, n)``, one row per SNP, or ``(n,)`` shared by all SNPs
        (as at the null model's estimate, where every SNP starts), which is cheaper.
        Columns are ordered covariates, SNP, response.
        """
        shared = self._shared
        k, f = self.snps.shape[0], shared.shape[1]
        products = np.empty((k, f + 1, f + 1))
        # Positions of the shared columns among covariates, SNP, response.
        where = np.r_[0 : f - 1, f]
        if weights.ndim == 1:
            products[:, where[:, None], where] = (weights @ self._shared_products).reshape(f, f)
            snp_shared = self.snps @ (weights[:, None] * shared)
            weighted_snps = self.snps * weights
        else:
            products[:, where[:, None], where] = (weights @ self._shared_products).reshape(k, f, f)
            weighted_snps = weights * self.snps
            snp_shared = weighted_snps @ shared
        products[:, f - 1, where] = snp_shared
        products[:, where, f - 1] = snp_shared
        products[:, f - 1, f - 1] = np.einsum("kn,kn->k", weighted_snps, self.snps)
        return products


@dataclass(frozen=True)
class Profile:
    """The criterion's pieces at a ratio ``delta``, for every SNP of a batch.

    ``beta`` and ``cov_unscaled`` (``(X' H^-1 X)^-1``) are the GLS solution; ``rss``
    is ``y' P y`` with ``P = H^-1 - H^-1 X (X' H^-1 X)^-1 X' H^-1``. ``slope`` and
    ``curvature`` are the first and second derivatives of the profiled criterion
    with respect to ``delta`` (NaN when not asked for).
    """

    delta: Array
    beta: Array
    cov_unscaled: Array
    rss: Array
    slope: Array
    curvature: Array


def profile(batch: SnpBatch, delta: Array, reml: bool, derivatives: bool = True) -> Profile:
    """Evaluate the profiled ML (or REML) criterion's pieces at ``delta`` (shape ``(k,)``)."""
    s = batch.eigenvalues
    p = batch.k_exog
    if delta.size and np.all(delta == delta[0]):
        weights = 1.0 / (delta[0] * s + 1.0)  # one ratio for all: shared weights
    else:
        weights = np.multiply.outer(delta, s)
        weights += 1.0
        np.reciprocal(weights, out=weights)
    m1 = batch.cross_products(weights)
    cov_unscaled = np.linalg.inv(m1[:, :p, :p])
    beta = (cov_unscaled @ m1[:, :p, p, None])[..., 0]
    # u = (-beta, 1): Z u is the GLS residual, and u' M u its weighted sum of squares.
    u = np.concatenate([-beta, np.ones((beta.shape[0], 1))], axis=1)
    rss = np.einsum("ki,kij,kj->k", u, m1, u)
    if not derivatives:
        nan = np.full_like(rss, np.nan)
        return Profile(delta, beta, cov_unscaled, rss, nan, nan)
    scaled = weights * s  # s w
    m2_weights = scaled * weights  # s w^2
    m2 = batch.cross_products(m2_weights)
    m3 = batch.cross_products(m2_weights * scaled)  # s^2 w^3
    trace_1 = np.broadcast_to(scaled.sum(axis=-1), delta.shape)  # tr(H^-1 A)
    trace_2 = np.broadcast_to(
        np.einsum("...n,...n->...", scaled, scaled), delta.shape
    )  # tr((H^-1 A)^2)
    # rss' = -u' M2 u; rss'' = 2 (u' M3 u - v' (X'H^-1X)^-1 v) with v = (M2 u)_X.
    m2u = np.einsum("kij,kj->ki", m2, u)
    v = m2u[:, :p]
    rss_1 = -np.einsum("ki,ki->k", u, m2u)
    rss_2 = 2.0 * (
        np.einsum("ki,kij,kj->k", u, m3, u) - np.einsum("ki,kij,kj->k", v, cov_unscaled, v)
    )
    dof = batch.nobs - p if reml else batch.nobs
    ratio_1 = rss_1 / rss
    slope = -0.5 * dof * ratio_1 - 0.5 * trace_1
    curvature = -0.5 * dof * (rss_2 / rss - ratio_1**2) + 0.5 * trace_2
    if reml:
        # -1/2 log|X' H^-1 X|, whose derivative brings in M2 and M3 of the design.
        c = cov_unscaled @ m2[:, :p, :p]
        slope = slope + 0.5 * np.trace(c, axis1=1, axis2=2)
        curvature = curvature + 0.5 * np.einsum("kij,kji->k", c, c)
        curvature = curvature - np.einsum("kij,kji->k", cov_unscaled, m3[:, :p, :p])
    return Profile(delta, beta, cov_unscaled, rss, slope, curvature)


def log_det_h(batch: SnpBatch, delta: Array) -> Array:
    """``log|H| = sum(log(1 + delta s))`` for each ratio in ``delta``."""
    return np.log1p(np.multiply.outer(delta, batch.eigenvalues)).sum(axis=-1)


def criterion(batch: SnpBatch, fit: Profile, reml: bool) -> Array:
    """The ML (REML) log-likelihood at ``fit.delta``, beta and sigma2_e profiled out.

    Equal to :func:`emlmm._em.log_likelihood` (:func:`emlmm._em.restricted_log_likelihood`)
    at the estimates :func:`variances` returns.
    """
    n, p = batch.nobs, batch.k_exog
    dof = n - p if reml else n
    value = -0.5 * (dof * (LOG_2PI + 1.0 + np.log(fit.rss / dof)) + log_det_h(batch, fit.delta))
    if reml:
        value = value + 0.5 * np.linalg.slogdet(fit.cov_unscaled)[1]
    return value


def variances(batch: SnpBatch, fit: Profile, reml: bool) -> tuple[Array, Array]:
    """(sigma2_a, sigma2_e) at ``fit.delta``, sigma2_e profiled."""
    dof = batch.nobs - batch.k_exog if reml else batch.nobs
    sigma2_e = fit.rss / dof
    return fit.delta * sigma2_e, sigma2_e


@dataclass(frozen=True)
class RatioFit:
    """Where Newton's method left each SNP of a batch."""

    fit: Profile
    n_iter: NDArray[np.intp]
    converged: NDArray[np.bool_]


def maximise(
    batch: SnpBatch, start: float, reml: bool, tol: float, maxiter: int = MAX_NEWTON_STEPS
) -> RatioFit:
    """Newton's method on ``delta`` for every SNP, from ``start``, kept in a bracket.

    A SNP stops when the gain a Newton step predicts, ``slope^2 / (2 |curvature|)``,
    is below ``tol``, or at ``delta = 0`` when the criterion falls from there (the
    boundary maximum sigma2_a = 0). Each step updates a bracket ``[low, high]`` from
    the sign of the slope; a Newton step that would leave it, or that is not
    towards a maximum, is replaced by bisection (or by a trial of ``delta = 0``
    when the step points below 0). Steps past :data:`MAX_RATIO` stop the SNP
    unconverged.
    """
    k = batch.snps.shape[0]
    delta = np.full(k, float(start))
    low, high = np.zeros(k), np.full(k, np.inf)
    n_iter = np.zeros(k, dtype=np.intp)
    converged = np.zeros(k, dtype=bool)
    final: list[tuple[NDArray[np.intp], Profile]] = []
    active = np.arange(k)
    sub = batch
    for iteration in range(1, maxiter + 1):
        fit = profile(sub, delta[active], reml)
        d, slope, curvature = fit.delta, fit.slope, fit.curvature
        n_iter[active] = iteration
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(curvature < 0.0, slope**2 / (-2.0 * curvature), np.inf)
            newton = d - slope / curvature
        at_boundary = (d == 0.0) & (slope <= 0.0)
        done = at_boundary | (gain < tol)
        lo = np.where(slope > 0.0, np.maximum(low[active], d), low[active])
        hi = np.where(slope < 0.0, np.minimum(high[active], d), high[active])
        inside = (curvature < 0.0) & (newton > lo) & (newton < hi)
        # A step to below zero tries the boundary; other bad steps bisect the bracket
        # (geometrically when it is wide), or widen it when it is open above.
        to_zero = (curvature < 0.0) & (newton <= 0.0) & (lo == 0.0) & (d > 0.0)
        middle = np.where(
            (lo > 0.0) & (hi > 4.0 * lo),
            np.sqrt(lo * np.where(np.isfinite(hi), hi, 1.0)),
            0.5 * (lo + hi),
        )
        widened = np.where(d > 0.0, 4.0 * d, 1.0)
        fallback = np.where(np.isfinite(hi), middle, widened)
        step = np.where(inside, newton, np.where(to_zero, 0.0, fallback))
        runaway = ~done & (step > MAX_RATIO)
        stop = done | runaway | (iteration == maxiter)
        converged[active[done]] = True
        if stop.any():
            final.append((active[stop], _take(fit, np.nonzero(stop)[0])))
        keep = np.nonzero(~stop)[0]
        if keep.size == 0:
            break
        active = active[keep]
        low[active], high[active] = lo[keep], hi[keep]
        delta[active] = step[keep]
        if keep.size < sub.snps.shape[0]:
            sub = sub.take(keep)
    return RatioFit(_gather(final, k), n_iter, converged)


def _take(fit: Profile, indices: NDArray[np.intp]) -> Profile:
    return Profile(*(getattr(fit, name)[indices] for name in Profile.__dataclass_fields__))


def _gather(parts: list[tuple[NDArray[np.intp], Profile]], k: int) -> Profile:
    """Reassemble per-SNP profiles recorded in pieces, in SNP order."""
    order = np.argsort(np.concatenate([indices for indices, _ in parts]))
    fields = {
        name: np.concatenate([getattr(part, name) for _, part in parts])[order]
        for name in Profile.__dataclass_fields__
    }
    assert len(order) == k
    return Profile(**fields)
