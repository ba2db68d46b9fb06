r"""Several variance components: V = sum_k theta_k G_k + theta_e I, fitted by EM and AI.

The components are a kinship diagonalised by the rotation (``G = diag(d)`` in its
eigenbasis, the one-kinship model's spectral path) and any number of low-rank or
general components given by factors, ``G_k = F_k F_k'`` (``F_k`` is ``n x r_k``, in
the same rotated coordinates): an iid effect of a grouping factor is ``F_k = U'Z``
with ``r_k`` its number of levels; another kinship ``A_k = Q L Q'`` is
``F_k = U' Q L^{1/2}``; a kinship of lines with replicated rows is ``Z Q L^{1/2}``.
With ``F = [F_1, ..., F_K]`` (``L`` columns in all) and ``S`` the diagonal of their
variances, Woodbury's identity in the rotated coordinates,

.. math::

    V^{-1} = D^{-1} - D^{-1} B M^{-1} B' D^{-1}, \qquad B = F S^{1/2},\quad
    M = I_L + B' D^{-1} B,\quad D = \theta_a d + \theta_e,

costs ``O(n L^2 + L^3)`` per evaluation: seconds for ``n = 2,000`` and a grouping of
100 levels. A second general kinship has ``L = n``, and each evaluation costs
``O(n^3)``, as any method without shared structure. ``M`` is positive definite even
when a variance is 0, so the boundary needs no special case.

Fitting is the lab's EM, one update per component (``theta_k <- theta_k +
theta_k^2 (r' V^-1 G_k V^-1 r - tr(P G_k)) / q_k`` with ``q_k`` the dimension of the
effect, P = V^-1 for ML), optionally followed by an average-information step kept
only where it raises the criterion; a component whose score at 0 is negative is
moved to the boundary 0 when that is at least as good.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from scipy import linalg

from emlmm._em import LOG_2PI

Array = NDArray[np.float64]


@dataclass(frozen=True)
class ComponentData:
    """Rotated, scaled response and design, and the components' structure.

    ``eigenvalues`` is the spectral kinship's ``d`` (``None`` without one);
    ``factors`` the ``F_k``; ``dims`` the dimension of each effect (the spectral
    kinship's rank, each ``r_k``, and ``n`` for the residual, last).
    """

    endog: Array
    exog: Array
    eigenvalues: Array | None
    factors: tuple[Array, ...]
    dims: Array

    @property
    def nobs(self) -> int:
        return int(self.endog.shape[0])

    @property
    def k_exog(self) -> int:
        return int(self.exog.shape[1])

    @property
    def n_components(self) -> int:
        """Variances, the residual's included (last)."""
        return len(self.dims)

    @cached_property
    def stacked(self) -> Array:
        """``F``: the factors side by side."""
        if not self.factors:
            return np.zeros((self.nobs, 0))
        return np.concatenate(self.factors, axis=1)


class Evaluation:
    """Everything about V at one value of the variances ``theta``."""

    def __init__(self, data: ComponentData, theta: Array) -> None:
        self.data, self.theta = data, np.asarray(theta, dtype=np.float64)
        spectral = data.eigenvalues is not None
        diagonal = np.full(data.nobs, self.theta[-1])
        if spectral:
            assert data.eigenvalues is not None
            diagonal = diagonal + self.theta[0] * data.eigenvalues
        if np.any(diagonal <= 0):
            raise np.linalg.LinAlgError("V is singular: the residual variance is 0")
        self.diagonal = diagonal
        offset = 1 if spectral else 0
        scales = np.concatenate(
            [np.full(f.shape[1], self.theta[offset + k]) for k, f in enumerate(data.factors)]
            or [np.zeros(0)]
        )
        self.loadings = data.stacked * np.sqrt(np.maximum(scales, 0.0))  # B
        self.weighted_loadings = self.loadings / diagonal[:, None]  # D^-1 B
        inner = np.eye(self.loadings.shape[1]) + self.loadings.T @ self.weighted_loadings
        self.inner = linalg.cho_factor(inner, lower=True)

    def solve(self, values: Array) -> Array:
        """``V^-1 values`` (a vector or the columns of a matrix)."""
        scaled = values / (self.diagonal[:, None] if values.ndim == 2 else self.diagonal)
        if self.loadings.shape[1] == 0:
            return scaled
        correction = linalg.cho_solve(self.inner, self.loadings.T @ scaled)
        return scaled - self.weighted_loadings @ correction

    @cached_property
    def logdet(self) -> float:
        """``log |V|``."""
        return float(np.log(self.diagonal).sum() + 2.0 * np.log(np.diag(self.inner[0])).sum())

    @cached_property
    def inverse_diagonal(self) -> Array:
        """``diag(V^-1)``."""
        if self.loadings.shape[1] == 0:
            return 1.0 / self.diagonal
        solved = linalg.cho_solve(self.inner, self.weighted_loadings.T)
        return 1.0 / self.diagonal - np.einsum("ij,ji->i", self.weighted_loadings, solved)

    @cached_property
    def gls(self) -> tuple[Array, Array, Array, Array]:
        """beta, ``(X'V^-1 X)^-1``, ``V^-1 X`` and ``V^-1 r`` (r the GLS residual)."""
        data = self.data
        solved_exog = self.solve(data.exog)
        cov_beta = np.linalg.inv(data.exog.T @ solved_exog)
        beta = cov_beta @ (solved_exog.T @ data.endog)
        projected = self.solve(data.endog - data.exog @ beta)
        return beta, cov_beta, solved_exog, projected

    def criterion(self, reml: bool) -> float:
        """ML log-likelihood (at the GLS beta), or REML with MixedLM's constant."""
        beta, cov_beta, _, projected = self.gls
        resid = self.data.endog - self.data.exog @ beta
        quadratic = float(resid @ projected)
        if not reml:
            return -0.5 * (self.data.nobs * LOG_2PI + self.logdet + quadratic)
        _, logdet_cov = np.linalg.slogdet(cov_beta)
        return -0.5 * (
            (self.data.nobs - self.data.k_exog) * LOG_2PI + self.logdet - logdet_cov + quadratic
        )

    def derivative(self, k: int, values: Array) -> Array:
        """``G_k values``."""
        data = self.data
        spectral = data.eigenvalues is not None
        if k == data.n_components - 1:
            return values
        if spectral and k == 0:
            assert data.eigenvalues is not None
            d = data.eigenvalues
            return d[:, None] * values if values.ndim == 2 else d * values
        factor = data.factors[k - (1 if spectral else 0)]
        return factor @ (factor.T @ values)

    def traces(self, reml: bool) -> Array:
        """``tr(P G_k)`` for every component (``P = V^-1`` for ML)."""
        data = self.data
        spectral = data.eigenvalues is not None
        values = []
        for k in range(data.n_components):
            if k == data.n_components - 1:
                trace = float(self.inverse_diagonal.sum())
            elif spectral and k == 0:
                assert data.eigenvalues is not None
                trace = float(self.inverse_diagonal @ data.eigenvalues)
            else:
                factor = data.factors[k - (1 if spectral else 0)]
                trace = float(np.einsum("ij,ij->", factor, self.solve(factor)))
            if reml:
                _, cov_beta, solved_exog, _ = self.gls
                block = solved_exog.T @ self.derivative(k, solved_exog)
                trace -= float(np.einsum("ij,ji->", cov_beta, block))
            values.append(trace)
        return np.array(values)

    def score(self, reml: bool) -> Array:
        """Gradient of the criterion in the variances."""
        projected = self.gls[3]
        quadratic = np.array(
            [projected @ self.derivative(k, projected) for k in range(self.data.n_components)]
        )
        return 0.5 * (quadratic - self.traces(reml))

    def project(self, values: Array) -> Array:
        """``P values``: V^-1, then the part the fixed effects explain removed."""
        _, cov_beta, solved_exog, _ = self.gls
        solved = self.solve(values)
        return solved - solved_exog @ (cov_beta @ (self.data.exog.T @ solved))

    def average_information(self) -> Array:
        """``AI_kl = 1/2 r'V^-1 G_k P G_l V^-1 r``: positive definite, cheap."""
        projected = self.gls[3]
        columns = np.column_stack(
            [self.derivative(k, projected) for k in range(self.data.n_components)]
        )
        return 0.5 * columns.T @ self.project(columns)


@dataclass(frozen=True)
class ComponentFit:
    theta: Array
    beta: Array
    cov_beta: Array
    llf: float
    n_iter: int
    converged: bool
    llf_history: list[float]


def _em_update(evaluation: Evaluation, reml: bool) -> Array:
    """One EM iteration: every component updated from the same posterior."""
    theta = evaluation.theta
    return np.maximum(theta + 2.0 * theta**2 * evaluation.score(reml) / evaluation.data.dims, 0.0)


def fit(
    data: ComponentData,
    start: Array,
    *,
    reml: bool,
    maxiter: int,
    tol: float,
    accelerate: bool,
    callback: object = None,
) -> ComponentFit:
    """Maximise the ML or REML criterion over the variances from ``start``.

    Stops when the gain an average-information step over the free variances
    predicts (``1/2 s' AI^-1 s``) is below ``tol``; variances at 0 whose score is
    negative are not free.
    """
    theta = np.asarray(start, dtype=np.float64)
    evaluation = Evaluation(data, theta)
    value = evaluation.criterion(reml)
    history = [value]
    converged = False
    iteration = 0
    floor = 1e-12 * max(float(theta.sum()), 1e-300)
    for iteration in range(1, maxiter + 1):
        candidate = _em_update(evaluation, reml)
        candidate[-1] = max(candidate[-1], floor)
        new = Evaluation(data, candidate)
        new_value = new.criterion(reml)
        if new_value < value - 1e-12 * abs(value):
            new, new_value = evaluation, value  # EM never decreases; guard round-off
        if accelerate:
            new, new_value = _try_ai_step(data, new, new_value, reml, floor)
        new, new_value = _try_boundaries(data, new, new_value, reml)
        evaluation, value = new, new_value
        history.append(value)
        if callable(callback):
            callback(iteration, value)
        if _predicted_gain(evaluation, reml) < tol:
            converged = True
            break
    beta, cov_beta, _, _ = evaluation.gls
    return ComponentFit(evaluation.theta, beta, cov_beta, value, iteration, converged, history)


def _free(evaluation: Evaluation, score: Array) -> NDArray[np.bool_]:
    return ~((evaluation.theta <= 0.0) & (score <= 0.0))


def _predicted_gain(evaluation: Evaluation, reml: bool) -> float:
    score = evaluation.score(reml)
    free = _free(evaluation, score)
    if not free.any():
        return 0.0
    information = evaluation.average_information()[np.ix_(free, free)]
    try:
        step = np.linalg.solve(information, score[free])
    except np.linalg.LinAlgError:
        return float("inf")
    return float(0.5 * score[free] @ step)


def _try_ai_step(
    data: ComponentData, evaluation: Evaluation, value: float, reml: bool, floor: float
) -> tuple[Evaluation, float]:
    """The average-information step from ``evaluation``, if it does better."""
    score = evaluation.score(reml)
    free = _free(evaluation, score)
    if not free.any():
        return evaluation, value
    try:
        step = np.linalg.solve(evaluation.average_information()[np.ix_(free, free)], score[free])
    except np.linalg.LinAlgError:
        return evaluation, value
    theta = evaluation.theta.copy()
    theta[free] += step
    theta = np.maximum(theta, 0.0)
    theta[-1] = max(theta[-1], floor)
    try:
        candidate = Evaluation(data, theta)
        candidate_value = candidate.criterion(reml)
    except np.linalg.LinAlgError:
        return evaluation, value
    if candidate_value > value:
        return candidate, candidate_value
    return evaluation, value


def _try_boundaries(
    data: ComponentData, evaluation: Evaluation, value: float, reml: bool
) -> tuple[Evaluation, float]:
    """Set to 0 each (non-residual) variance whose value is small and whose move to 0
    does not lower the criterion: EM approaches 0 only geometrically."""
    theta = evaluation.theta
    total = float(theta.sum())
    for k in range(data.n_components - 1):
        if 0.0 < theta[k] <= 1e-4 * total:
            trial = theta.copy()
            trial[k] = 0.0
            candidate = Evaluation(data, trial)
            candidate_value = candidate.criterion(reml)
            if candidate_value >= value:
                evaluation, value, theta = candidate, candidate_value, trial
    return evaluation, value


def expected_information(evaluation: Evaluation, reml: bool) -> Array:
    """``1/2 tr(P G_k P G_l)`` (``V^-1`` for ML): the inverse gives the variances'
    standard errors. Costs ``O(n^2 K)`` memory-light products."""
    data = evaluation.data
    size = data.n_components
    n = data.nobs
    identity = np.eye(n)
    applied = []
    for k in range(size):
        columns = evaluation.derivative(k, identity)
        applied.append(evaluation.project(columns) if reml else evaluation.solve(columns))
    information = np.empty((size, size))
    for k in range(size):
        for j in range(size):
            information[k, j] = 0.5 * float(np.einsum("ij,ji->", applied[k], applied[j]))
    return information
