"""Per-SNP ML and REML fits for scans, on the variance ratio.

In the kinship's eigenbasis ``V = sigma2_e H`` with ``H = diag(delta s + 1)`` and
``delta = sigma2_a / sigma2_e``. For a given ``delta``, beta and sigma2_e have closed
forms, so the ML and REML criteria are functions of ``delta`` alone. Everything
they and their first two derivatives need is in three weighted cross-product
matrices of ``Z = [covariates, snp, y]`` (all rotated)::

    M1 = Z' H^-1 Z,   M2 = Z' (H^-1 A H^-1) Z,   M3 = Z' (H^-1 A H^-1 A H^-1) Z

(``A = diag(s)`` here). The covariates and y are shared by every SNP, so a batch
of k SNPs costs a few passes over its ``k x n`` rotated genotypes per step and no
``(k, n, p)`` array is ever built. Near the null model's ratio, where nearly every
SNP's maximum lies, the three are power series in the ratio whose coefficients one
matrix product over the batch gives (:class:`Expansion`): a step then costs
O(p^2) per SNP, not O(n). Each SNP takes safeguarded Newton steps
on ``delta`` from the null model's estimate (which EM found) until the gain the
next step predicts is below the tolerance, the stopping rule of
:func:`emlmm._em.fit_em`. A SNP that does not converge within
:data:`MAX_NEWTON_STEPS` is left to the caller (the scan then runs EM on it).
The criterion may have more than one maximum, so every SNP's is also evaluated
on a grid of ratios (:data:`GRID`, as GEMMA does), and Newton runs again from a
grid ratio that beats the maximum it found (:func:`maximise_globally`).

These are the formulas of GEMMA's ``-lmm`` (Zhou & Stephens 2012), written in
cross-products so that they vectorise over SNPs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from emlmm._em import LOG_2PI, replace_rows, take_rows

Array = NDArray[np.float64]

#: Newton steps a SNP gets before it is handed to EM.
MAX_NEWTON_STEPS = 60
#: A last Newton step is taken without its derivatives from where the gain it
#: predicts is below this times sqrt(tol) (:func:`maximise`).
FINAL_GAIN = 1e-2
#: ... and the step changes the ratio by less than this, relatively.
FINAL_STEP = 1e-3
#: A ratio beyond this means sigma2_e is heading to 0: a boundary EM handles.
MAX_RATIO = 1e8
#: Where Newton starts when the null model has sigma2_e = 0 on a singular kinship
#: (an infinite ratio that the inverse ratio cannot take either).
LARGE_RATIO = 1e4
#: Fits use the inverse ratio sigma2_e / sigma2_a when the null model's is below this
#: (relative to the mean eigenvalue): a trait with h2 above ~0.99.
INVERSE_RATIO_SWITCH = 1e-2
#: Ratios at which every SNP's criterion is also evaluated: 0 and GEMMA's grid.
GRID = np.concatenate([[0.0], np.logspace(-5.0, 5.0, 11)])
#: A grid ratio must beat a local maximum by more than this (relative) to count.
_MARGIN = 1e-9
#: Terms of the power series in the ratio (:class:`Expansion`) ...
SERIES_TERMS = 30
#: ... used for a SNP whose ratio is this close to the series' centre, relatively (its
#: terms fall at least this fast: what the 31 terms leave out is below 1.5e-19 of the
#: sums, M3's tail being the largest).
SERIES_REACH = 0.2
#: No series where ``max(d w0)`` (and ``w0``) exceed this: their 33rd powers would
#: approach the largest float.
MAX_SERIES_SCALE = 1e6


@dataclass(frozen=True)
class Expansion:
    """A batch's cross-products as power series in its distance from a ratio.

    With ``w0 = 1 / (delta0 d + c)`` (``H^-1``'s diagonal at the centre ``delta0``)
    and ``t = delta0 - delta``, ``w = w0 / (1 - t d w0) = w0 sum_j (t d w0)^j``, so
    for ``a = 0, 1, 2`` (the weights of M1, M2 and M3)::

        Z' diag(d^a w^(a+1)) Z = sum_j C(j + a, a) t^j A_(j+a),
        A_m = Z' diag(d^m w0^(m+1)) Z,

    and with ``T_m = sum (d w0)^m``: ``tr(H^-1 H') = sum_j t^j T_(j+1)``,
    ``tr((H^-1 H')^2) = sum_j (j + 1) t^j T_(j+2)`` and ``log|H| = log|H0| - sum_m
    t^m T_m / m``. The ``A_m`` cost one matrix product over the batch's SNPs; then
    each evaluation of a SNP costs :data:`SERIES_TERMS` terms, not a pass over the
    individuals. The series converges where ``|t| max(d w0) < 1`` and is used where
    that is at most :data:`SERIES_REACH`: term ``j`` of M1 is then at most ``0.2^j``
    times ``sum w0 |z_a z_b|`` (of M2, M3 ``C(j + a, a) 0.2^j`` times their scale), so
    the series' rounding error is within a factor 2 of the direct sum's, and its
    truncation far below it.
    """

    centre: float
    inverse: bool
    #: ``max(d w0)``: ``|t|`` times this is the ratio of the series' terms.
    reach: float
    #: ``A_m`` of the shared columns, ``(m, f, f)``; of a SNP with the shared columns
    #: and then with itself, ``(k, m, f + 1)``; and ``T_m``, for ``m = 0, ...,
    #: SERIES_TERMS + 2``.
    shared: Array
    snp: Array
    traces: Array
    log_det: float

    @classmethod
    def around(cls, batch: SnpBatch, centre: float) -> Expansion | None:
        """The series around ``centre``; None where its powers would overflow (a
        ratio near 0 with the inverse parametrisation and a tiny eigenvalue, where
        the series would serve almost nothing anyway)."""
        d = batch.slopes
        w0 = 1.0 / (centre * d + batch.offsets)
        ratio = d * w0
        if not ratio.size or ratio.max() * max(float(w0.max()), 1.0) > MAX_SERIES_SCALE:
            return None
        powers = np.empty((SERIES_TERMS + 3, d.shape[0]))  # d^m w0^(m+1), row m
        powers[0] = w0
        for m in range(1, powers.shape[0]):
            np.multiply(powers[m - 1], ratio, out=powers[m])
        shared = batch._shared
        (k, n), f, terms = batch.snps.shape, shared.shape[1], powers.shape[0]
        weighted = (powers[:, :, None] * shared).transpose(1, 0, 2).reshape(n, terms * f)
        snp = np.empty((k, terms, f + 1))
        snp[:, :, :f] = (batch.snps @ weighted).reshape(k, terms, f)
        snp[:, :, f] = (batch.snps * batch.snps) @ powers.T
        return cls(
            centre,
            batch.inverse,
            float(ratio.max()),
            (powers @ batch._shared_products).reshape(terms, f, f),
            snp,
            (ratio[None, :] ** np.arange(terms)[:, None]).sum(axis=1),
            float(np.log(1.0 / w0).sum()),
        )

    def take(self, indices: NDArray[np.intp]) -> Expansion:
        return replace(self, snp=self.snp[indices])

    def near(self, delta: Array) -> NDArray[np.bool_]:
        """Which ratios the series serves."""
        return np.abs(self.centre - delta) * self.reach <= SERIES_REACH

    def powers(self, delta: Array, terms: int = SERIES_TERMS + 1) -> Array:
        """``t^j`` for ``j < terms``, ``(k, terms)`` (products, not ``pow``: 20x faster)."""
        powers = np.empty((delta.shape[0], terms))
        powers[:, 0] = 1.0
        powers[:, 1:] = (self.centre - delta)[:, None]
        return np.cumprod(powers, axis=1, out=powers)

    def cross_products(
        self, delta: Array, orders: tuple[int, ...], powers: Array | None = None
    ) -> Array:
        """``Z' diag(d^a w^(a+1)) Z`` at ``delta`` for each ``a`` in ``orders`` (0: M1,
        1: M2, 2: M3), ``(k, len(orders), p + 1, p + 1)``, ordered as
        :meth:`SnpBatch.cross_products` orders them (``powers``: :meth:`powers` at
        ``delta``, if known). Each order's coefficients sit at its offset in one row of
        ``(k, orders, m)``, so that one product over the terms gives every order."""
        j = np.arange(SERIES_TERMS + 1)
        powers = self.powers(delta) if powers is None else powers
        k, terms, f = powers.shape[0], self.snp.shape[1], self.shared.shape[-1]
        coefficients = np.zeros((k, len(orders), terms))
        for row, order in enumerate(orders):
            coefficients[:, row, order : order + SERIES_TERMS + 1] = powers * _binomial(
                j + order, order
            )
        shared = (coefficients.reshape(-1, terms) @ self.shared.reshape(terms, f * f)).reshape(
            k, len(orders), f, f
        )
        snp = np.matmul(coefficients, self.snp)
        return _assemble(shared, snp[..., :f], snp[..., f])

    def moments(self, delta: Array) -> Moments:
        powers = self.powers(delta)
        j = np.arange(SERIES_TERMS + 1)
        m = self.cross_products(delta, (0, 1, 2), powers)
        return Moments(
            delta,
            m[:, 0],
            m[:, 1],
            m[:, 2],
            powers @ self.traces[1 : SERIES_TERMS + 2],
            (powers * (j + 1)) @ self.traces[2 : SERIES_TERMS + 3],
        )

    def log_det_h(self, delta: Array) -> Array:
        m = np.arange(1, SERIES_TERMS + 2)
        return self.log_det - self.powers(delta, SERIES_TERMS + 2)[:, 1:] @ (self.traces[m] / m)


def _binomial(top: NDArray[np.intp], bottom: int) -> Array:
    """``C(top, bottom)`` for ``bottom`` in 0, 1, 2."""
    if bottom == 0:
        return np.ones(top.shape)
    if bottom == 1:
        return top.astype(float)
    return top * (top - 1) / 2.0


@dataclass(frozen=True)
class SnpBatch:
    """Rotated covariates and response, shared, and a batch of rotated SNPs.

    ``snps`` has one row per SNP (``k x n``, C-contiguous): a row is ``U' g``.
    With ``inverse`` the ratio is ``sigma2_e / sigma2_a`` instead, so that the
    boundary sigma2_e = 0 is the ratio 0: ``H = diag(s + delta)``, ``V = sigma2_a H``
    (which needs every eigenvalue positive). Either way ``H = diag(delta d + c)``
    with ``(d, c) = (s, 1)``, or ``(1, s)`` with ``inverse``.
    """

    covariates: Array
    endog: Array
    snps: Array
    eigenvalues: Array
    inverse: bool = False
    #: Observations, when more than the rows (a low-rank kinship's null space is held
    #: in fewer rows, whose weights are those of every row it stands for: see
    #: :func:`emlmm.gwas._compressed`); 0: the rows.
    n_total: int = 0
    #: The cross-products as power series around a ratio (:meth:`expanded`), if built.
    expansion: Expansion | None = None

    @cached_property
    def slopes(self) -> Array:
        """``d``: the derivative of H's diagonal with respect to the ratio."""
        return np.ones_like(self.eigenvalues) if self.inverse else self.eigenvalues

    @cached_property
    def offsets(self) -> Array:
        """``c``: H's diagonal at ratio 0."""
        return self.eigenvalues if self.inverse else np.ones_like(self.eigenvalues)

    @property
    def nobs(self) -> int:
        return self.n_total or int(self.eigenvalues.shape[0])

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
        return (shared[:, :, None] * shared[:, None, :]).reshape(shared.shape[0], -1)

    def take(self, indices: NDArray[np.intp]) -> SnpBatch:
        """The SNPs at ``indices``, with the shared columns."""
        expansion = None if self.expansion is None else self.expansion.take(indices)
        return replace(self, snps=self.snps[indices], expansion=expansion)

    def expanded(self, centre: float) -> SnpBatch:
        """This batch with its cross-products expanded around the ratio ``centre``
        (:class:`Expansion`), unless already expanded in this parametrisation."""
        if self.expansion is not None and self.expansion.inverse == self.inverse:
            return self
        expansion = Expansion.around(self, centre)
        return self if expansion is None else replace(self, expansion=expansion)

    def cross_products(self, weights: Array) -> Array:
        """``Z' diag(w) Z`` for every SNP, ``(k, p + 1, p + 1)``.

        ``weights`` is ``(k, n)``, one row per SNP, or ``(n,)`` shared by all SNPs
        (as at the null model's estimate, where every SNP starts), which is cheaper.
        Columns are ordered covariates, SNP, response.
        """
        k, f = self.snps.shape[0], self._shared.shape[1]
        if weights.ndim == 1:
            shared_shared = np.broadcast_to(
                (weights @ self._shared_products).reshape(f, f), (k, f, f)
            )
            snp_shared = self.snps @ (weights[:, None] * self._shared)
            weighted_snps = self.snps * weights
        else:
            shared_shared = (weights @ self._shared_products).reshape(k, f, f)
            weighted_snps = weights * self.snps
            snp_shared = weighted_snps @ self._shared
        return _assemble(
            shared_shared, snp_shared, np.einsum("kn,kn->k", weighted_snps, self.snps)
        )

    @cached_property
    def grid_fits(self) -> tuple[Array, Array, Array]:
        """``log|X'H^-1X|``, rss and log|H| at each ratio of :data:`GRID` (for every SNP).

        Computed once per batch, then shared by the ML and the REML check.
        """
        weights = 1.0 / (np.multiply.outer(GRID, self.slopes) + self.offsets)
        _, _, _, rss, log_det_xhx = _gls(self.cross_products_at(weights), self.k_exog)
        return log_det_xhx, rss, -np.log(weights).sum(axis=-1)

    def cross_products_at(self, weights: Array) -> Array:
        """As :meth:`cross_products` for several shared weight vectors at once.

        ``weights`` is ``(g, n)``; the result is ``(k, g, p + 1, p + 1)``, from two
        matrix products over the SNPs whatever ``g`` is.
        """
        (k, n), f, g = self.snps.shape, self._shared.shape[1], weights.shape[0]
        shared_shared = (weights @ self._shared_products).reshape(g, f, f)
        weighted_shared = (weights[:, :, None] * self._shared).transpose(1, 0, 2).reshape(n, g * f)
        snp_shared = (self.snps @ weighted_shared).reshape(k, g, f)
        snp_snp = (self.snps * self.snps) @ weights.T
        return _assemble(np.broadcast_to(shared_shared, (k, g, f, f)), snp_shared, snp_snp)


def _assemble(shared_shared: Array, snp_shared: Array, snp_snp: Array) -> Array:
    """Cross-products ordered covariates, SNP, response, from their blocks.

    ``shared_shared`` is ``(..., f, f)`` for the f shared columns (covariates, then
    the response), ``snp_shared`` ``(..., f)`` and ``snp_snp`` ``(...)``.
    """
    f = shared_shared.shape[-1]
    c = f - 1  # covariates
    products = np.empty((*snp_snp.shape, f + 1, f + 1))
    # Slices, not an index array of the shared columns' positions: 3x faster.
    products[..., :c, :c] = shared_shared[..., :c, :c]
    products[..., :c, f] = shared_shared[..., :c, c]
    products[..., f, :c] = shared_shared[..., c, :c]
    products[..., f, f] = shared_shared[..., c, c]
    products[..., c, :c] = snp_shared[..., :c]
    products[..., :c, c] = snp_shared[..., :c]
    products[..., c, f] = snp_shared[..., c]
    products[..., f, c] = snp_shared[..., c]
    products[..., c, c] = snp_snp
    return products


@dataclass(frozen=True)
class Profile:
    """The criterion's pieces at a ratio ``delta``, for every SNP of a batch.

    ``beta`` and ``cov_unscaled`` (``(X' H^-1 X)^-1``) are the GLS solution; ``rss``
    is ``y' P y`` with ``P = H^-1 - H^-1 X (X' H^-1 X)^-1 X' H^-1``; ``log_det_xhx``
    is ``log|X' H^-1 X|`` (REML's; NaN in ML fits of more than three columns).
    ``slope`` and ``curvature`` are the first and second derivatives of the profiled
    criterion with respect to ``delta`` (NaN when not asked for).
    """

    delta: Array
    beta: Array
    cov_unscaled: Array
    rss: Array
    log_det_xhx: Array
    slope: Array
    curvature: Array


@dataclass(frozen=True)
class Moments:
    """The cross-products at ratios ``delta`` (every SNP of a batch) from which the ML
    and REML criteria and their first two derivatives both follow: ``M1``, ``M2``,
    ``M3`` and the traces ``tr(H^-1 H')`` and ``tr((H^-1 H')^2)``; summed over the
    individuals or from a batch's :class:`Expansion`.
    """

    delta: Array
    m1: Array
    m2: Array
    m3: Array
    trace_1: Array
    trace_2: Array


def moments(batch: SnpBatch, delta: Array) -> Moments:
    """:class:`Moments` at ``delta`` (shape ``(k,)``): from the batch's
    :class:`Expansion` where it serves, directly elsewhere."""
    return _evaluate(batch, delta, Expansion.moments, _direct_moments)


_Result = TypeVar("_Result", Array, Moments)


def _evaluate(
    batch: SnpBatch,
    delta: Array,
    series: Callable[[Expansion, Array], _Result],
    direct: Callable[[SnpBatch, Array], _Result],
) -> _Result:
    """``series`` for the SNPs whose ratio the batch's expansion serves, ``direct``
    (sums over the individuals) for the others; one result, rows in order."""
    expansion = batch.expansion
    if expansion is None:
        return direct(batch, delta)
    near = expansion.near(delta)
    if not near.any():
        return direct(batch, delta)
    if near.all():
        return series(expansion, delta)
    rows, others = np.nonzero(near)[0], np.nonzero(~near)[0]
    served = series(expansion.take(rows), delta[rows])
    summed = direct(batch.take(others), delta[others])
    return _merged(delta.shape[0], ((rows, served), (others, summed)))


def _merged(k: int, parts: tuple[tuple[NDArray[np.intp], Any], ...]) -> Any:
    """Per-SNP arrays, or dataclasses of them, with each part's rows where it says."""
    template = parts[0][1]
    if isinstance(template, np.ndarray):
        merged = np.empty((k, *template.shape[1:]))
        for where, part in parts:
            merged[where] = part
        return merged
    empty = {
        name: np.empty((k, *np.shape(getattr(template, name))[1:]))
        for name in (field.name for field in fields(template))
    }
    result = replace(template, **empty)
    for where, part in parts:
        result = replace_rows(result, where, part)
    return result


def _direct_moments(batch: SnpBatch, delta: Array) -> Moments:
    """:class:`Moments` at ``delta`` from sums over the individuals."""
    weights = _weights(batch, delta)
    m1 = batch.cross_products(weights)
    scaled = weights * batch.slopes  # d w, d = dH / d delta
    m2_weights = scaled * weights  # d w^2
    m2 = batch.cross_products(m2_weights)
    m3 = batch.cross_products(m2_weights * scaled)  # d^2 w^3
    trace_1 = np.broadcast_to(scaled.sum(axis=-1), delta.shape)  # tr(H^-1 H')
    trace_2 = np.broadcast_to(
        np.einsum("...n,...n->...", scaled, scaled), delta.shape
    )  # tr((H^-1 H')^2)
    return Moments(delta, m1, m2, m3, trace_1, trace_2)


def _weights(batch: SnpBatch, delta: Array) -> Array:
    """``H^-1``'s diagonal at each SNP's ratio, ``(k, n)``, or ``(n,)`` shared by all SNPs
    when they are at the same ratio (cheaper cross-products)."""
    if delta.size and np.all(delta == delta[0]):
        return 1.0 / (delta[0] * batch.slopes + batch.offsets)
    weights = np.multiply.outer(delta, batch.slopes)
    weights += batch.offsets
    return np.reciprocal(weights, out=weights)


def profile(batch: SnpBatch, delta: Array, reml: bool, derivatives: bool = True) -> Profile:
    """Evaluate the profiled ML (or REML) criterion's pieces at ``delta`` (shape ``(k,)``)."""
    if derivatives:
        return derive(batch, moments(batch, delta), reml)
    m1 = _evaluate(
        batch,
        delta,
        lambda expansion, at: expansion.cross_products(at, (0,))[:, 0],
        lambda part, at: part.cross_products(_weights(part, at)),
    )
    cov_unscaled, beta, _, rss, log_det_xhx = _gls(m1, batch.k_exog, reml)
    nan = np.full_like(rss, np.nan)
    return Profile(delta, beta, cov_unscaled, rss, log_det_xhx, nan, nan)


def derive(batch: SnpBatch, at: Moments, reml: bool) -> Profile:
    """The ML (REML) criterion's pieces and derivatives from its :class:`Moments`."""
    p = batch.k_exog
    m2, m3 = at.m2, at.m3
    cov_unscaled, beta, u, rss, log_det_xhx = _gls(at.m1, p, reml)
    # rss' = -u' M2 u; rss'' = 2 (u' M3 u - v' (X'H^-1X)^-1 v) with v = (M2 u)_X.
    m2u = np.einsum("kij,kj->ki", m2, u)
    v = m2u[:, :p]
    rss_1 = -np.einsum("ki,ki->k", u, m2u)
    rss_2 = 2.0 * (
        np.einsum("ki,kij,kj->k", u, m3, u) - np.einsum("ki,kij,kj->k", v, cov_unscaled, v)
    )
    dof = batch.nobs - p if reml else batch.nobs
    ratio_1 = rss_1 / rss
    slope = -0.5 * dof * ratio_1 - 0.5 * at.trace_1
    curvature = -0.5 * dof * (rss_2 / rss - ratio_1**2) + 0.5 * at.trace_2
    if reml:
        # -1/2 log|X' H^-1 X|, whose derivative brings in M2 and M3 of the design.
        c = cov_unscaled @ m2[:, :p, :p]
        slope = slope + 0.5 * np.trace(c, axis1=1, axis2=2)
        curvature = curvature + 0.5 * np.einsum("kij,kji->k", c, c)
        curvature = curvature - np.einsum("kij,kji->k", cov_unscaled, m3[:, :p, :p])
    return Profile(at.delta, beta, cov_unscaled, rss, log_det_xhx, slope, curvature)


def _gls(m1: Array, p: int, log_det: bool = True) -> tuple[Array, Array, Array, Array, Array]:
    """GLS from ``M1 = Z' H^-1 Z`` (any leading axes): ``(X'H^-1X)^-1``, beta, u, rss
    and ``log|X'H^-1X|`` (which only REML uses: see :func:`_symmetric_inverse` for
    ``log_det``).

    ``u = (-beta, 1)``: ``Z u`` is the GLS residual, and ``u' M u`` its weighted sum
    of squares.
    """
    cov_unscaled, log_det_xhx = _symmetric_inverse(m1[..., :p, :p], log_det)
    beta = np.einsum("...ij,...j->...i", cov_unscaled, m1[..., :p, p])
    u = np.concatenate([-beta, np.ones((*beta.shape[:-1], 1))], axis=-1)
    rss = np.einsum("...i,...ij,...j->...", u, m1, u)
    return cov_unscaled, beta, u, rss, log_det_xhx


#: Largest matrices :func:`_symmetric_inverse` inverts by cofactors.
_COFACTOR_SIZE = 3


def _symmetric_inverse(a: Array, log_det: bool = True) -> tuple[Array, Array]:
    """The inverses of symmetric matrices ``a`` (``(..., q, q)``) and the logarithms of
    their absolute determinants.

    Up to 3 x 3 (a scan's design is the covariates and the SNP: an intercept alone
    makes 2 x 2) by cofactors, elementwise over the leading axes, which is 10-20x
    faster than LAPACK's inverse called once per matrix; their errors are of the
    same order, the condition number times the rounding unit. Larger ones by
    :func:`numpy.linalg.inv`, and their log-determinants by a second LAPACK call,
    made only if ``log_det`` (else they are NaN: cofactors give them for free, LAPACK
    does not). A singular matrix raises :class:`numpy.linalg.LinAlgError`, as
    :func:`numpy.linalg.inv` does.
    """
    q = a.shape[-1]
    if q > _COFACTOR_SIZE:
        inverse = np.asarray(np.linalg.inv(a), dtype=np.float64)
        return inverse, np.linalg.slogdet(a)[1] if log_det else np.full(a.shape[:-2], np.nan)
    cofactors = np.empty(a.shape)
    if q == 1:
        det = a[..., 0, 0].copy()
        cofactors[..., 0, 0] = 1.0
    elif q == 2:
        a00, a01, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 1]
        det = a00 * a11 - a01 * a01
        cofactors[..., 0, 0] = a11
        cofactors[..., 1, 1] = a00
        cofactors[..., 0, 1] = cofactors[..., 1, 0] = -a01
    else:
        a00, a01, a02 = a[..., 0, 0], a[..., 0, 1], a[..., 0, 2]
        a11, a12, a22 = a[..., 1, 1], a[..., 1, 2], a[..., 2, 2]
        c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
        det = a00 * c00 + a01 * c01 + a02 * c02
        cofactors[..., 0, 0], cofactors[..., 1, 1] = c00, a00 * a22 - a02 * a02
        cofactors[..., 2, 2] = a00 * a11 - a01 * a01
        cofactors[..., 0, 1] = cofactors[..., 1, 0] = c01
        cofactors[..., 0, 2] = cofactors[..., 2, 0] = c02
        cofactors[..., 1, 2] = cofactors[..., 2, 1] = a01 * a02 - a00 * a12
    if np.any(det == 0.0):
        raise np.linalg.LinAlgError("Singular matrix")
    cofactors /= det[..., None, None]
    return cofactors, np.log(np.abs(det))


def log_det_h(batch: SnpBatch, delta: Array) -> Array:
    """``log|H| = sum(log(delta d + c))`` for each ratio in ``delta`` (from the batch's
    :class:`Expansion` where it serves)."""
    return _evaluate(batch, delta, Expansion.log_det_h, _direct_log_det_h)


def _direct_log_det_h(batch: SnpBatch, delta: Array) -> Array:
    # log of 1 + delta s, not log1p: twice as fast, and each term is still within
    # one rounding of its value in absolute terms, which is what the sum needs.
    terms = np.multiply.outer(delta, batch.slopes)
    terms += batch.offsets
    return np.log(terms, out=terms).sum(axis=-1)


def _value(
    rss: Array, log_det: Array, log_det_xhx: Array, nobs: int, k_exog: int, reml: bool
) -> Array:
    """The profiled ML (REML) log-likelihood from its pieces (``log_det_xhx``:
    ``log|X' H^-1 X|``, which only REML uses)."""
    dof = nobs - k_exog if reml else nobs
    value = -0.5 * (dof * (LOG_2PI + 1.0 + np.log(rss / dof)) + log_det)
    if reml:
        value = value - 0.5 * log_det_xhx
    return value


def criterion(batch: SnpBatch, fit: Profile, reml: bool) -> Array:
    """The ML (REML) log-likelihood at ``fit.delta``, beta and sigma2_e profiled out.

    Equal to :func:`emlmm._em.log_likelihood` (:func:`emlmm._em.restricted_log_likelihood`)
    at the estimates :func:`variances` returns.
    """
    log_det = log_det_h(batch, fit.delta)
    return _value(fit.rss, log_det, fit.log_det_xhx, batch.nobs, batch.k_exog, reml)


def grid_criterion(batch: SnpBatch, reml: bool) -> Array:
    """The criterion of every SNP (rows) at every ratio of :data:`GRID` (columns)."""
    log_det_xhx, rss, log_det = batch.grid_fits
    return _value(rss, log_det, log_det_xhx, batch.nobs, batch.k_exog, reml)


def parametrise(batch: SnpBatch, sigma2_a: float, sigma2_e: float) -> tuple[SnpBatch, float]:
    """The batch in the ratio to use near (sigma2_a, sigma2_e), and their ratio there.

    Near the boundary sigma2_e = 0 (a highly heritable trait) that is the inverse
    ratio sigma2_e / sigma2_a, where the boundary is 0 and Newton reaches it exactly;
    elsewhere sigma2_a / sigma2_e, where sigma2_a = 0 is.
    """
    eigenvalues = batch.eigenvalues
    if eigenvalues.min() > 0.0 and (
        sigma2_e <= INVERSE_RATIO_SWITCH * sigma2_a * float(eigenvalues.mean())
    ):
        return replace(batch, inverse=True), sigma2_e / sigma2_a
    # sigma2_e = 0 on a singular kinship still gives Newton a (large) finite start: a
    # SNP may bring sigma2_e back, and those that do not run off to EM.
    return batch, sigma2_a / sigma2_e if sigma2_e > 0 else LARGE_RATIO


def profiled_scale(batch: SnpBatch, fit: Profile, reml: bool) -> Array:
    """The profiled scale ``V / H``: sigma2_e (sigma2_a with ``inverse``)."""
    dof = batch.nobs - batch.k_exog if reml else batch.nobs
    return fit.rss / dof


def variances(batch: SnpBatch, fit: Profile, reml: bool) -> tuple[Array, Array]:
    """(sigma2_a, sigma2_e) at ``fit.delta``, the scale profiled."""
    scale = profiled_scale(batch, fit, reml)
    if batch.inverse:
        return scale, fit.delta * scale
    return fit.delta * scale, scale


@dataclass(frozen=True)
class RatioFit:
    """Where Newton's method left each SNP of a batch."""

    fit: Profile
    n_iter: NDArray[np.intp]
    converged: NDArray[np.bool_]


def maximise_globally(
    batch: SnpBatch, start: float, reml: bool, tol: float, maxiter: int = MAX_NEWTON_STEPS
) -> RatioFit:
    """:func:`maximise` from ``start``, checked against the ratios of :data:`GRID`.

    The criterion can have more than one maximum in ``delta``. Newton finds the one
    near ``start`` (the null model's ratio); where a grid ratio does better, by
    more than rounding, Newton runs again from the best grid ratio and the higher
    maximum is kept. GEMMA searches a similar grid. The grid costs two matrix
    products over the SNPs, and the check needs exact criteria only for SNPs whose
    grid maximum comes close to a cheap lower bound of their local maximum.
    """
    local = maximise(batch, start, reml, tol, maxiter)
    grid = grid_criterion(batch, reml)
    best = grid.argmax(axis=1)
    best_value = np.take_along_axis(grid, best[:, None], axis=1)[:, 0]
    # log|H| is concave in delta, so its tangent at ``start`` bounds it from above
    # and the criterion from below.
    d, c = batch.slopes, batch.offsets
    tangent = np.log(start * d + c).sum() + (d / (start * d + c)).sum() * (local.fit.delta - start)
    fit = local.fit
    bound = _value(fit.rss, tangent, fit.log_det_xhx, batch.nobs, batch.k_exog, reml)
    close = np.nonzero(local.converged & (best_value > bound - _MARGIN * (1.0 + np.abs(bound))))[0]
    if close.size == 0:
        return local
    value = criterion(batch.take(close), take_rows(fit, close), reml)
    better_grid = best_value[close] > value + _MARGIN * (1.0 + np.abs(value))
    again, value = close[better_grid], value[better_grid]
    if again.size == 0:
        return local
    part = batch.take(again)
    retry = maximise(part, GRID[best[again]], reml, tol, maxiter)
    better = retry.converged & (criterion(part, retry.fit, reml) > value)
    n_iter = local.n_iter.copy()
    n_iter[again] += retry.n_iter
    fit = replace_rows(fit, again[better], take_rows(retry.fit, np.nonzero(better)[0]))
    return RatioFit(fit, n_iter, local.converged)


def maximise(
    batch: SnpBatch,
    start: float | Array,
    reml: bool,
    tol: float,
    maxiter: int = MAX_NEWTON_STEPS,
) -> RatioFit:
    """Newton's method on ``delta`` for every SNP, from ``start``, kept in a bracket.

    A SNP stops when the gain a Newton step predicts, ``slope^2 / (2 |curvature|)``,
    is below ``tol``, or at ``delta = 0`` when the criterion falls from there (the
    boundary maximum sigma2_a = 0), or one step after a predicted gain below
    :data:`FINAL_GAIN` ``* sqrt(tol)`` (that step's fit is computed without the
    derivatives: quadratic convergence puts it within ``tol``). Each step updates a
    bracket ``[low, high]`` from the sign of the slope; a Newton step that would leave
    it, or that is not towards a maximum, is replaced by a trial of ``delta = 0`` (once, while the
    bracket reaches 0) or by bisection. Steps past :data:`MAX_RATIO` stop the SNP
    unconverged.
    """
    k = batch.snps.shape[0]
    delta = np.broadcast_to(np.asarray(start, dtype=float), (k,)).copy()
    low, high = np.zeros(k), np.full(k, np.inf)
    zero_tried = np.zeros(k, dtype=bool)
    n_iter = np.zeros(k, dtype=np.intp)
    converged = np.zeros(k, dtype=bool)
    result: Profile | None = None  # each SNP's latest evaluation
    active = np.arange(k)
    sub = batch
    for iteration in range(1, maxiter + 1):
        fit = profile(sub, delta[active], reml)
        result = fit if result is None else replace_rows(result, active, fit)
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
        zero_tried[active] |= d == 0.0
        # While the bracket still reaches 0, a bad step first tries the boundary
        # itself (a maximum there is only approached geometrically otherwise); other
        # bad steps bisect the bracket (geometrically when it is wide), or widen it
        # when it is open above.
        to_zero = (lo == 0.0) & (d > 0.0) & ~zero_tried[active]
        middle = np.where(
            (lo > 0.0) & (hi > 4.0 * lo),
            np.sqrt(lo * np.where(np.isfinite(hi), hi, 1.0)),
            0.5 * (lo + hi),
        )
        widened = np.where(d > 0.0, 4.0 * d, 1.0)
        fallback = np.where(np.isfinite(hi), middle, widened)
        step = np.where(inside, newton, np.where(to_zero, 0.0, fallback))
        # Newton converges quadratically: from where the step predicts a gain below
        # FINAL_GAIN * sqrt(tol), the next point's gain is about the square of that
        # (times a factor that is small for a log-likelihood of many observations),
        # far below tol. The step is taken and only the fit there is computed, without
        # the derivatives that would only confirm it.
        # Only for a small step (far out, where the criterion flattens as sigma2_e
        # heads to 0, small gains come with large steps that do not converge).
        small = np.abs(step - d) <= FINAL_STEP * d
        final = ~done & inside & small & (gain < FINAL_GAIN * np.sqrt(tol))
        if iteration < maxiter and final.any():
            rows = np.nonzero(final)[0]
            last = profile(sub.take(rows), step[rows], reml, derivatives=False)
            result = replace_rows(result, active[rows], last)
            n_iter[active[rows]] = iteration + 1
            done = done | final
        runaway = ~done & (step > MAX_RATIO)
        stop = done | runaway | (iteration == maxiter)
        converged[active[done]] = True
        keep = np.nonzero(~stop)[0]
        if keep.size == 0:
            break
        active = active[keep]
        low[active], high[active] = lo[keep], hi[keep]
        delta[active] = step[keep]
        if keep.size < sub.snps.shape[0]:
            sub = sub.take(keep)
    assert result is not None  # maxiter >= 1
    return RatioFit(result, n_iter, converged)
