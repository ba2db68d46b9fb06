"""One kinship's model without statsmodels' model layer: its checked data, its EM fits
and the numbers its results report.

:class:`emlmm.EMLMM` (a statsmodels ``LikelihoodModel``) builds and fits a model with
one kinship through the functions here, from the arrays statsmodels' data handling
gives it. A genome scan's null models go through the same functions from the formula
directly (:meth:`NullModel.from_formula`), so that a scan, and the command line, never
import the model layer: statsmodels' ``base.model`` imports ``scipy.stats``, which
takes 0.5-0.7 s, a third of the command's whole run on GEMMA's example. The model
itself is built only if asked for (:attr:`emlmm.GenomeScan.null_model`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import patsy
from numpy.typing import NDArray
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from emlmm import _blup, _em
from emlmm._data import (
    align_kinship,
    check_design,
    check_kinship,
    check_numeric,
    formula_data,
)
from emlmm._design import FitData
from emlmm._spectral import KinshipSpectrum
from emlmm._threads import one_blas_thread
from emlmm.kinship import LowRankKinship

Array = NDArray[np.float64]


@dataclass(frozen=True)
class NullFit:
    """A fitted null model, as the values a genome scan needs (from
    :meth:`emlmm.EMLMM.fit_for_scan`).

    Everything is in the units of the model's numerics: scaled, rotated, and reduced
    to the kinship's column space where the covariates absorb its null space;
    ``data`` maps statistics back to the user's units.

    Attributes
    ----------
    data : emlmm._design.FitData
        The null model's scaled, rotated data and the maps back (an internal type:
        its fields are documented in ``emlmm/_design.py``).
    spectrum : emlmm._spectral.KinshipSpectrum
        The kinship's eigendecomposition (internal; from a
        :class:`~emlmm.LowRankKinship`, its eigenvectors held implicitly).
    ml, reml : emlmm._em.Estimate
        The maximum-likelihood and REML estimates (internal: ``beta``, ``sigma2_a``
        and ``sigma2_e`` in the units of ``data``).
    """

    data: FitData
    spectrum: KinshipSpectrum
    ml: _em.Estimate
    reml: _em.Estimate

    @property
    def eigenvectors(self) -> Array:
        """The kinship's eigenvectors for the directions in ``data`` (n x (n - n0)): a
        SNP's rotated genotypes are ``g @ eigenvectors``. Formed on first use from a
        low-rank kinship's factor (a scan rotates by the eigenvectors of non-zero
        eigenvalues only, and holds the null space in a few rows)."""
        return self.spectrum.columns(self.data.kept)


# ------------------------------------------------------------------------ the data


def check_inputs(
    endog: Any, exog: Any, kinship: Any, missing: str, missing_idx: Any
) -> tuple[Array | None, Array | None]:
    """The checks made before statsmodels' data handling drops incomplete rows: a
    numeric response and design with a complete row, and the kinship, for all
    ``len(missing_idx)`` input rows (``missing_idx``: the rows the formula dropped, or
    None). Returns the checked kinship matrix, or a low-rank kinship's factor rows for
    the rows kept (one of the two is None)."""
    n_rows = len(missing_idx) if missing_idx is not None else len(endog)
    check_rows(endog, exog, missing)
    if isinstance(kinship, LowRankKinship):
        return None, _factor_rows(kinship, n_rows, endog, exog, missing, missing_idx)
    return check_kinship(kinship, n_rows), None


def spectrum_and_data(
    endog: Array,
    exog: Array,
    exog_names: list[str],
    kinship: Array | None,
    factor: Array | None,
) -> tuple[KinshipSpectrum, FitData]:
    """The kinship's eigendecomposition (of the matrix, or of ``F F'`` from its factor)
    and the model's scaled, rotated data, for the rows analysed; a design, kinship or
    response the model cannot be fitted with raises a ``ValueError`` that says why."""
    check_design(endog, exog, exog_names)
    if factor is None:
        assert kinship is not None
        spectrum = KinshipSpectrum.from_kinship(kinship)
    else:
        spectrum = KinshipSpectrum.from_factor(factor)
    if spectrum.rank == 0:
        raise ValueError("kinship is zero: it has no positive eigenvalue")
    eigenvalues = spectrum.eigenvalues
    if eigenvalues.max() - eigenvalues.min() <= 1e-8 * eigenvalues.max():
        raise ValueError(
            f"kinship is proportional to the identity (every eigenvalue is "
            f"{eigenvalues.max():.6g}), so V = (c sigma2_a + sigma2_e) I and sigma2_a and "
            "sigma2_e are not separately identifiable; fit OLS instead"
        )
    fit_data = FitData.build(spectrum, endog, exog)
    ols_variance = float(_em.ols_estimate(fit_data.rotated, reml=False).sigma2_e)
    # The data are scaled to a largest value near 1, so this threshold is relative.
    if np.sqrt(ols_variance) <= 1e-10:
        raise ValueError(
            "endog is exactly a linear combination of exog (for example a constant "
            "response with an intercept): there is no variance to model"
        )
    return spectrum, fit_data


def check_rows(endog: Any, exog: Any, missing: str) -> None:
    """A numeric response and design (``TypeError``), with a complete row left
    (``ValueError``, before statsmodels fails obscurely)."""
    check_numeric("endog", endog)
    check_numeric("exog", exog)
    complete = np.zeros(0, dtype=bool)
    if len(endog) > 0:
        complete = np.isfinite(np.asarray(endog, dtype=float)).reshape(len(endog), -1).all(axis=1)
        if missing == "drop":
            complete &= (
                np.isfinite(np.asarray(exog, dtype=float)).reshape(len(exog), -1).all(axis=1)
            )
    if not complete.any():
        raise ValueError(
            "no observations left: every row has a missing value in the response or a covariate"
        )


def _factor_rows(
    kinship: LowRankKinship,
    n_rows: int,
    endog: Any,
    exog: Any,
    missing: str,
    missing_idx: Any,
) -> Array:
    """A low-rank kinship's factor rows for the rows the model keeps."""
    factor = kinship.factor
    if factor.shape[0] != n_rows:
        raise ValueError(
            f"the kinship's factor has {factor.shape[0]} rows but the data have {n_rows} "
            "observations; it must have one row per individual, in the same order (or be "
            "labelled by the data's index)"
        )
    if missing_idx is not None:  # from_formula: the rows patsy dropped
        return factor[~np.asarray(missing_idx, dtype=bool)]
    if missing == "drop":
        values = [np.asarray(endog, dtype=float), np.asarray(exog, dtype=float)]
        complete = np.ones(n_rows, dtype=bool)
        for array in values:
            complete &= ~np.isnan(array.reshape(n_rows, -1)).any(axis=1)
        return factor[complete]
    return factor


# ------------------------------------------------------------------------- the fits


def run_em(
    data: FitData,
    start: _em.Estimate,
    *,
    reml: bool,
    method: str,
    maxiter: int,
    tol: float,
    callback: Callable[[int, float], None] | None = None,
    stacklevel: int = 2,
) -> _em.EMTrace:
    """EM on ``data`` from ``start`` (``method``: "em", "accelerated" or "lab"), with a
    ``ConvergenceWarning`` (``stacklevel`` frames above the caller) if it stops at
    ``maxiter``."""
    with one_blas_thread(data.rotated.k_exog):
        trace = _em.fit_em(
            data.rotated,
            start,
            reml=reml,
            lab=method == "lab",
            maxiter=maxiter,
            tol=tol,
            accelerate=method == "accelerated",
            callback=callback,
        )
    if not trace.converged.all():
        warnings.warn(
            f"EM did not converge in {maxiter} iterations (last log-likelihood "
            f"{trace.llf_history[-1] + data.llf_offset(reml):.6f}); raise maxiter or "
            "loosen tol",
            ConvergenceWarning,
            stacklevel=stacklevel + 1,
        )
    return trace


def fit_null(spectrum: KinshipSpectrum, data: FitData, maxiter: int, tol: float) -> NullFit:
    """The ML and REML fits a scan needs (accelerated EM from the grid's start, as
    :meth:`emlmm.EMLMM.fit` by default)."""
    estimates = []
    for restricted in (False, True):
        trace = run_em(
            data,
            _em.grid_start(data.rotated, restricted),
            reml=restricted,
            method="accelerated",
            maxiter=maxiter,
            tol=tol,
            stacklevel=3,  # the caller of fit_for_scan
        )
        estimates.append(trace.estimate)
    ml, reml = estimates
    return NullFit(data, spectrum, ml, reml)


# -------------------------------------------------------- what the results report


def coefficient_covariance(data: FitData, estimate: _em.Estimate) -> Array:
    """Covariance of the fixed effects at ``estimate``, in the numerics' units (the
    user's: times ``outer(data.coefficient_scales, data.coefficient_scales)``)."""
    rotated = data.rotated
    variances = _em.marginal_variances(rotated, estimate.sigma2_a, estimate.sigma2_e)
    _, cov_gamma, _ = _em.gls(rotated, variances)
    return data.coefficient_covariance(cov_gamma, float(estimate.sigma2_e))


def heritability(estimate: _em.Estimate, mean_diagonal: float) -> float:
    """``sigma2_a m / (sigma2_a m + sigma2_e)``, m the kinship's mean diagonal (scale
    free, so computed in the numerics' units)."""
    scaled = float(estimate.sigma2_a) * mean_diagonal
    return scaled / (scaled + float(estimate.sigma2_e))


def log_likelihood(data: FitData, estimate: _em.Estimate, reml: bool) -> float:
    """The user's (restricted) log-likelihood at ``estimate``."""
    return float(_em.criterion(data.rotated, estimate, reml)) + data.llf_offset(reml)


@dataclass(frozen=True)
class Estimates:
    """A fit's estimates in the user's units, under the names
    :class:`emlmm.results.EMLMMResults` gives them (what a scan's log reports)."""

    params: pd.Series
    bse: pd.Series
    sigma2_a: float
    sigma2_e: float
    h2: float
    bse_h2_observed: float
    llf: float

    @classmethod
    def of(
        cls, null: NullFit, estimate: _em.Estimate, reml: bool, exog_names: list[str]
    ) -> Estimates:
        data, mean_diagonal = null.data, null.spectrum.mean_diagonal
        params, sigma2_a, sigma2_e = data.to_user(estimate)
        scaled = np.sqrt(np.diag(coefficient_covariance(data, estimate)))
        h2 = heritability(estimate, mean_diagonal)
        return cls(
            pd.Series(params, index=exog_names),
            pd.Series(scaled * data.coefficient_scales, index=exog_names),
            sigma2_a,
            sigma2_e,
            h2,
            _blup.observed_se(data.rotated, h2, mean_diagonal, reml),
            log_likelihood(data, estimate, reml),
        )


# ---------------------------------------------------------------- a scan's null model


class _RecordingNA(patsy.NAAction):
    """patsy's dropping of rows with a missing value, remembering which it dropped."""

    missing_mask: NDArray[np.bool_] | None = None

    def handle_NA(self, values: Any, is_NAs: Any, origins: Any) -> Any:
        if len(is_NAs):
            self.missing_mask = np.logical_or.reduce(is_NAs)
        return super().handle_NA(values, is_NAs, origins)


def _formula_frames(
    formula: str, data: pd.DataFrame, eval_env: Any
) -> tuple[pd.DataFrame, pd.DataFrame, NDArray[np.bool_] | None]:
    """The response and design of ``formula`` on ``data``, rows with a missing value
    dropped, and which rows were dropped (None: none).

    What ``Model.from_formula`` gets from statsmodels' default formula engine, patsy,
    done as statsmodels does it (``statsmodels.formula._manager``: pandas' string
    columns as objects, None and NaN missing, the namespace ``eval_env`` behind the
    data), without importing statsmodels' formula layer, which imports formulaic too
    (0.12 s). A scan's formulas are patsy's throughout (its ``snp`` term included);
    tests compare the result with ``EMLMM.from_formula``'s.
    """
    strings = [name for name in data.columns if isinstance(data[name].dtype, pd.StringDtype)]
    if strings:
        data = data.astype(dict.fromkeys(strings, object))
    namespace = patsy.EvalEnvironment([eval_env]) if isinstance(eval_env, dict) else eval_env
    action = _RecordingNA(on_NA="drop", NA_types=["None", "NaN"])
    endog, exog = patsy.dmatrices(
        formula, data, eval_env=namespace, NA_action=action, return_type="dataframe"
    )
    mask = action.missing_mask
    return endog, exog, mask if mask is not None and mask.any() else None


@dataclass(frozen=True, eq=False)
class NullModel:
    """A one-kinship model built from a formula without statsmodels' model layer: what
    :meth:`emlmm.EMLMM.from_formula` would hold (the same rows, arrays, kinship and
    eigendecomposition, through the same checks), for a genome scan's null model."""

    row_labels: pd.Index
    endog: Array
    exog: Array
    exog_names: list[str]
    #: The kinship of the rows analysed (None for a low-rank kinship's factor).
    kinship: Array | None
    kinship_factor: Array | None
    spectrum: KinshipSpectrum
    fit_data: FitData

    @classmethod
    def from_formula(
        cls, formula: str, data: pd.DataFrame, kinship: Any, eval_env: Any
    ) -> NullModel:
        """As ``EMLMM.from_formula(formula, data, kinship, eval_env=eval_env)`` for one
        kinship (a matrix, a labelled DataFrame or a :class:`~emlmm.LowRankKinship`)
        and a captured ``eval_env`` (:func:`_formula_frames`), then the model's checks."""
        data = formula_data(pd.DataFrame(data) if isinstance(data, dict) else data)
        kinship = align_kinship(kinship, data.index)
        endog_frame, exog_frame, missing_idx = _formula_frames(formula, data, eval_env)
        if endog_frame.ndim > 1 and endog_frame.shape[1] > 1:
            raise ValueError(  # statsmodels' words (Model.from_formula)
                "endog has evaluated to an array with multiple columns that has shape "
                f"{endog_frame.shape}. This occurs when the variable converted to endog is "
                "non-numeric (e.g., bool or str)."
            )
        matrix, factor = check_inputs(endog_frame, exog_frame, kinship, "drop", missing_idx)
        if matrix is not None and missing_idx is not None:
            kept = ~np.asarray(missing_idx, dtype=bool)
            matrix = matrix[kept][:, kept]  # as statsmodels drops a square array's rows
        endog = np.asarray(endog_frame, dtype=np.float64)
        if endog.ndim == 2:
            endog = endog[:, 0]
        exog = np.asarray(exog_frame, dtype=np.float64)
        names = [str(name) for name in exog_frame.columns]
        spectrum, fit_data = spectrum_and_data(endog, exog, names, matrix, factor)
        return cls(
            pd.Index(endog_frame.index), endog, exog, names, matrix, factor, spectrum, fit_data
        )

    def fit_for_scan(self, maxiter: int, tol: float) -> NullFit:
        """The ML and REML fits (as :meth:`emlmm.EMLMM.fit_for_scan`)."""
        return fit_null(self.spectrum, self.fit_data, maxiter, tol)

    @property
    def decomposed(self) -> tuple[str, Array, KinshipSpectrum]:
        """What was decomposed (the kind, ``"kinship"`` or ``"factor"``, and the matrix)
        and its spectrum, for :func:`emlmm._spectral.shared_spectra`'s ``known``: the
        model built from the same formula then reuses the decomposition."""
        if self.kinship_factor is not None:
            return "factor", self.kinship_factor, self.spectrum
        assert self.kinship is not None
        return "kinship", self.kinship, self.spectrum
