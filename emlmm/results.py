"""Results of an EMLMM fit: statsmodels-style estimates, tests and summary."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import stats
from statsmodels.base import wrapper as wrap
from statsmodels.base.model import LikelihoodModelResults, LikelihoodResultsWrapper
from statsmodels.iolib.summary import Summary
from statsmodels.iolib.table import SimpleTable
from statsmodels.iolib.tableformatting import fmt_params

from emlmm import _blup, _components, _em, _fitting

if TYPE_CHECKING:
    from emlmm._design import FitData
    from emlmm.model import EMLMM

__all__ = [
    "ComponentsResults",
    "EMLMMResults",
    "EMLMMResultsWrapper",
    "LikelihoodRatioTest",
]


@dataclass(frozen=True)
class LikelihoodRatioTest:
    """A likelihood-ratio test of sigma2_a = 0 (the kinship explains nothing).

    Attributes
    ----------
    statistic : float
        ``2 (llf - llf_ols)``, at least 0.
    df : int
        Number of restrictions (1).
    pvalue : float
        From the 50:50 mixture of chi2(0) and chi2(1), the null distribution when
        the parameter is on the boundary of its space (Self and Liang, 1987).
    pvalue_naive : float
        From chi2(1), which ignores the boundary and is twice as large.

    Examples
    --------
    >>> from emlmm import EMLMM
    >>> from emlmm.datasets import load_lab
    >>> lab = load_lab()
    >>> result = EMLMM.from_formula("y ~ 1", data=lab.phenotype.to_frame(),
    ...                             kinship=lab.kinship).fit()
    >>> test = result.lr_test_ols()
    >>> print(f"LR = {test.statistic:.2f} on {test.df} df, p = {test.pvalue:.2e}")
    LR = 27.23 on 1 df, p = 9.03e-08
    >>> test.pvalue_naive == 2 * test.pvalue
    True
    """

    statistic: float
    df: int
    pvalue: float
    pvalue_naive: float


#: Width of statsmodels' summary tables: the variance table is as wide as the others.
_SUMMARY_WIDTH = 78


def _variance_table(rows: list[list[str]], headers: list[str], stubs: list[str]) -> SimpleTable:
    """A summary block of variance components, as wide as the parameter table above."""
    fmt = copy.deepcopy(fmt_params)
    stub = max(22, *(len(name) + 2 for name in stubs))
    columns = len(headers)
    rest = _SUMMARY_WIDTH - stub - columns * len(fmt["colsep"])
    fmt["colwidths"] = [stub] + [rest // columns + (k < rest % columns) for k in range(columns)]
    return SimpleTable(rows, headers=headers, stubs=stubs, title="", txt_fmt=fmt)


class _InformationCriteria:
    """AIC and BIC from ``llf`` and ``df_modelwc``, NaN for REML fits (as ``MixedLM``)."""

    @cached_property
    def aic(self) -> float:
        """Akaike's criterion; NaN for REML fits, as in ``MixedLM``."""
        fit: Any = self  # a results class: llf, nobs, reml and df_modelwc
        return np.nan if fit.reml else -2.0 * fit.llf + 2.0 * fit.df_modelwc

    @cached_property
    def bic(self) -> float:
        """Schwarz's criterion; NaN for REML fits, as in ``MixedLM``."""
        fit: Any = self
        return np.nan if fit.reml else -2.0 * fit.llf + np.log(fit.nobs) * fit.df_modelwc


def _mle_retvals(results: Any, method: str, reml: bool) -> dict[str, Any]:
    """What statsmodels' fits report of their optimiser."""
    history = results.llf_history
    return {
        "converged": results.converged,
        "iterations": results.n_iter,
        "method": method,
        "reml": reml,
        "final_gain": float(history[-1] - history[-2]) if len(history) > 1 else np.nan,
    }


class EMLMMResults(_InformationCriteria, LikelihoodModelResults):
    """Results of :meth:`emlmm.EMLMM.fit`.

    ``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int``, ``t_test`` and
    ``wald_test`` refer to the fixed effects, with covariance
    ``(X' V^-1 X)^-1`` at the estimated variances. The variance components
    are ``sigma2_a`` and ``sigma2_e``, with standard errors from the inverse
    expected information.

    Attributes
    ----------
    sigma2_a, sigma2_e : float
        Estimated kinship and residual variances.
    llf_history : ndarray
        The (restricted) log-likelihood at the start values (entry 0) and after
        each iteration.
    variance_history : ndarray of shape (n_iter + 1, 2)
        (sigma2_a, sigma2_e) at the start values and after each iteration.
    n_iter : int
        Number of EM iterations.
    converged : bool
        Whether the stopping rule was met before ``maxiter``.
    reml : bool
        Whether this is a REML fit.
    method : str
        The fitting method (``"em"``, ``"accelerated"`` or ``"lab"``).
    mle_retvals : dict
        As statsmodels' fits report them: ``converged``, ``iterations``,
        ``method``, ``reml`` and ``final_gain`` (the log-likelihood gain of the
        last iteration).

    Examples
    --------
    >>> from emlmm import EMLMM
    >>> from emlmm.datasets import load_lab
    >>> lab = load_lab()
    >>> data = lab.genotypes[["snp0021"]].assign(y=lab.phenotype)
    >>> result = EMLMM.from_formula("y ~ 1 + snp0021", data=data, kinship=lab.kinship).fit()
    >>> print(result.params.round(3))
    Intercept    11.551
    snp0021      -2.902
    dtype: float64
    >>> print(f"h2 = {result.h2:.3f} (se {result.bse_h2:.3f})")
    h2 = 0.471 (se 0.111)
    >>> test = result.lr_test_ols()
    >>> print(f"LR = {test.statistic:.2f}, p = {test.pvalue:.2g}")
    LR = 27.78, p = 6.8e-08
    """

    model: EMLMM

    def __init__(
        self,
        model: EMLMM,
        trace: _em.EMTrace,
        fit_data: FitData,
        *,
        reml: bool,
        method: str,
        use_t: bool,
    ) -> None:
        # ``trace`` is in the units of ``fit_data``'s numerics (scaled, and reduced to
        # the kinship's column space where the covariates absorb its null space).
        estimate = trace.estimate
        params, sigma2_a, sigma2_e = fit_data.to_user(estimate)
        self._scaled_cov_beta = _fitting.coefficient_covariance(fit_data, estimate)
        scales = fit_data.coefficient_scales
        with np.errstate(over="ignore"):  # inf beyond the largest float; bse stays exact
            cov_beta = self._scaled_cov_beta * scales[:, None] * scales[None, :]
        super().__init__(model, params, normalized_cov_params=cov_beta, scale=1.0)
        self.use_t = use_t
        self.nobs = model.nobs
        self.df_model = model.df_model
        self.df_resid = model.df_resid
        self.sigma2_a = sigma2_a
        self.sigma2_e = sigma2_e
        self.llf_history = np.asarray(trace.llf_history) + fit_data.llf_offset(reml)
        self.variance_history = fit_data.variances_to_user(
            np.asarray(trace.variance_history).reshape(-1, 2)
        )
        self.n_iter = int(trace.n_iter.max())
        self.converged = bool(trace.converged.all())
        self.reml = reml
        self.method = method
        self._estimate = estimate
        self._fit_data = fit_data
        self._data_removed = False
        self.mle_retvals = _mle_retvals(self, method, reml)

    @cached_property
    def llf(self) -> float:
        """Log-likelihood at the estimates (restricted log-likelihood for REML).

        Where the covariates absorb the kinship's null space (a centered kinship
        with an intercept), the maximum-likelihood value is that of the data in the
        kinship's column space, ``n - n0`` dimensional: the full likelihood has no
        maximum there (see :ref:`the boundary tutorial <boundary-singular>`).
        """
        return _fitting.log_likelihood(self._fit_data, self._estimate, self.reml)

    @cached_property
    def _criterion(self) -> float:
        """The (restricted) log-likelihood in the numerics' units: differences of it
        are the user's, without the large offsets of extreme scales."""
        return float(_em.criterion(self._fit_data.rotated, self._estimate, self.reml))

    @cached_property
    def df_modelwc(self) -> int:
        """Number of estimated parameters: the fixed effects and two variances."""
        return self.model.k_exog + 2

    @cached_property
    def bse(self) -> NDArray[np.float64]:
        """Standard errors of the fixed effects (computed before scaling back, so they
        are finite wherever the estimates are)."""
        scaled = np.sqrt(np.diag(self._scaled_cov_beta))
        return np.asarray(scaled * self._fit_data.coefficient_scales)

    @cached_property
    def _scaled_variance_covariance(self) -> NDArray[np.float64]:
        """Inverse expected information of the variances, in the numerics' units."""
        estimate = self._estimate
        information = _em.variance_information(
            self._fit_data.rotated, estimate.sigma2_a, estimate.sigma2_e, self.reml
        )
        return np.asarray(np.linalg.inv(information))

    @cached_property
    def cov_variance_components(self) -> NDArray[np.float64]:
        """Covariance of (sigma2_a, sigma2_e): the inverse expected information."""
        return self._fit_data.variances_to_user(self._scaled_variance_covariance, power=2)

    @cached_property
    def bse_sigma2_a(self) -> float:
        """Standard error of ``sigma2_a``."""
        scaled = np.sqrt(self._scaled_variance_covariance[0, 0])
        return float(self._fit_data.variances_to_user(scaled))

    @cached_property
    def bse_sigma2_e(self) -> float:
        """Standard error of ``sigma2_e``."""
        scaled = np.sqrt(self._scaled_variance_covariance[1, 1])
        return float(self._fit_data.variances_to_user(scaled))

    @cached_property
    def h2(self) -> float:
        """Share of phenotypic variance due to the kinship effect.

        ``sigma2_a m / (sigma2_a m + sigma2_e)`` with m the mean diagonal of the
        kinship, so that h2 is the heritability for a kinship scaled like a
        genomic relationship matrix.
        """
        return _fitting.heritability(self._estimate, self.model.spectrum.mean_diagonal)

    @cached_property
    def bse_h2(self) -> float:
        """Standard error of ``h2`` by the delta method, from the inverse *expected*
        information of (sigma2_a, sigma2_e), as ``bse_sigma2_a``.

        GEMMA's ``se(pve)`` uses the *observed* information instead:
        :attr:`bse_h2_observed`. The two agree in large samples; for an interval
        that respects the boundaries 0 and 1, use :meth:`h2_conf_int`.
        """
        mean_diagonal = self.model.spectrum.mean_diagonal
        sigma2_a, sigma2_e = float(self._estimate.sigma2_a), float(self._estimate.sigma2_e)
        total = sigma2_a * mean_diagonal + sigma2_e
        gradient = np.array([mean_diagonal * sigma2_e, -mean_diagonal * sigma2_a])
        gradient /= total**2
        return float(np.sqrt(gradient @ self._scaled_variance_covariance @ gradient))

    @cached_property
    def bse_h2_observed(self) -> float:
        """Standard error of ``h2`` from the observed information: the curvature of
        the profile (restricted) log-likelihood of h2 at its maximum, GEMMA's
        ``se(pve)`` convention. NaN when h2 is on a boundary (0 or 1)."""
        return _blup.observed_se(
            self._fit_data.rotated, self.h2, self.model.spectrum.mean_diagonal, self.reml
        )

    def h2_conf_int(self, alpha: float = 0.05) -> tuple[float, float]:
        """Profile-likelihood confidence interval for ``h2``.

        The values of h2 whose profile log-likelihood (maximised over the fixed
        effects and the total variance; restricted for a REML fit) lies within
        ``chi2_1(1 - alpha) / 2`` of its maximum. An end is 0 (or 1) when the
        profile does not drop that far before the boundary, so the interval is
        never outside [0, 1] and is right at h2 = 0.

        Examples
        --------
        >>> from emlmm import EMLMM
        >>> from emlmm.datasets import load_lab
        >>> lab = load_lab()
        >>> result = EMLMM.from_formula("y ~ 1", lab.phenotype.to_frame(),
        ...                             kinship=lab.kinship).fit(reml=True)
        >>> low, high = result.h2_conf_int()
        >>> print(f"h2 = {result.h2:.3f}, 95% CI [{low:.3f}, {high:.3f}]")
        h2 = 0.483, 95% CI [0.277, 0.673]
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
        return _blup.profile_interval(
            self._fit_data.rotated, self.h2, self.model.spectrum.mean_diagonal, self.reml,
            alpha,
        )  # fmt: skip

    def blup(self, kinship: pd.DataFrame | None = None) -> pd.DataFrame:
        """Best linear unbiased predictions of the kinship effect, with their errors.

        Parameters
        ----------
        kinship : pandas.DataFrame, optional
            A labelled kinship covering the fitted individuals and others (relatives
            without a phenotype, say): they get predictions too (GBLUP). Its block of
            the fitted individuals must be the kinship the model was fitted with.
            Only ``A_*o U`` is computed for the others: no ``n_all^3`` step.

        Returns
        -------
        pandas.DataFrame
            Indexed by individual: ``blup`` (E[a | y] at the estimates), ``se`` (the
            square root of Henderson's prediction error variance, which accounts for
            estimating beta: ``PEV = sigma2_a A_ii - sigma2_a^2 (A_*o P A_o*)_ii``) and
            ``reliability`` (``1 - PEV / (sigma2_a A_ii)``, the squared correlation
            of the BLUP with the true value), and ``phenotyped``.

        Examples
        --------
        >>> from emlmm import EMLMM
        >>> from emlmm.datasets import load_lab
        >>> lab = load_lab()
        >>> result = EMLMM.from_formula("y ~ 1", lab.phenotype.to_frame(),
        ...                             kinship=lab.kinship).fit(reml=True)
        >>> result.blup().round(3).head(3)
                 blup     se  reliability  phenotyped
        sample
        ind001  5.853  4.189        0.538        True
        ind002  1.342  4.319        0.555        True
        ind003  1.687  4.312        0.540        True
        """
        self._check_data("blup()")
        fit_data, estimate = self._fit_data, self._estimate
        spectrum = self.model.spectrum
        fitted = pd.Index(self.model.data.row_labels)
        if kinship is None:
            labels = fitted
            # A U = U diag(eigenvalues): the null space's columns are zero (from a
            # low-rank kinship's factor, only the others are formed). They come first.
            eigenvalues = fit_data.rotated.eigenvalues
            within = spectrum.nonzero_columns(fit_data.kept)
            zeros = eigenvalues.shape[0] - within.shape[1]
            cross = np.zeros((len(fitted), eigenvalues.shape[0]))
            cross[:, zeros:] = within * eigenvalues[zeros:]
            diagonal = self.model._kinship_diagonal()
        else:
            labels, cross, diagonal = self._cross_kinship(kinship, fitted, fit_data.kept)
        predicted = _blup.predict(fit_data.rotated, estimate, cross, diagonal)
        scale = fit_data.endog_scale
        with np.errstate(invalid="ignore", divide="ignore"):
            reliability = np.where(predicted.prior > 0, 1.0 - predicted.pev / predicted.prior,
                                   np.nan)  # fmt: skip
        return pd.DataFrame(
            {
                "blup": scale * predicted.blup,
                "se": scale * np.sqrt(predicted.pev),
                "reliability": reliability,
                "phenotyped": labels.isin(fitted),
            },
            index=labels,
        )

    def _cross_kinship(
        self, kinship: pd.DataFrame, fitted: pd.Index, kept: slice
    ) -> tuple[pd.Index, NDArray[np.float64], NDArray[np.float64]]:
        """Labels, ``A_*o U`` and ``diag(A_**)`` from a labelled kinship."""
        if not isinstance(kinship, pd.DataFrame):
            raise TypeError(
                "kinship must be a labelled DataFrame covering the fitted individuals, not "
                f"{type(kinship).__name__}"
            )
        if not kinship.index.equals(kinship.columns):
            raise ValueError("kinship must have the same labels, in the same order, on both axes")
        missing = fitted.difference(kinship.index)
        if len(missing):
            raise ValueError(
                f"{len(missing)} fitted individuals have no row in the kinship: "
                f"{', '.join(map(repr, missing[:5]))}"
            )
        values = kinship.to_numpy(dtype=float)
        columns = kinship.columns.get_indexer(fitted)
        block = values[np.ix_(columns, columns)]
        if not np.allclose(block, self.model.kinship, rtol=1e-8, atol=1e-10):
            raise ValueError(
                "the kinship's block of the fitted individuals is not the kinship the model "
                "was fitted with"
            )
        # A_*o U = (U' A_o*)'
        cross = self.model.spectrum.rotate(values[:, columns].T)[kept].T
        return kinship.index, cross, np.diag(values).copy()

    def get_prediction(
        self, exog: Any = None, transform: bool = True, row_labels: Any = None
    ) -> Any:
        """Predictions of the fixed part ``X beta`` with standard errors and confidence
        intervals, as statsmodels' ``get_prediction``.

        ``summary_frame(alpha)`` gives ``mean``, ``mean_se``, ``mean_ci_lower`` and
        ``mean_ci_upper``. For an individual's genetic value add its BLUP
        (:meth:`blup`, which a new individual gets from a kinship covering it).

        Parameters
        ----------
        exog : array_like or DataFrame, optional
            New values of the covariates (the variables of the formula, for a formula
            model); default: the fitted design.
        transform : bool
            Pass ``exog`` through the formula.
        row_labels : sequence, optional
            Labels of the predictions.

        Examples
        --------
        >>> import pandas as pd
        >>> from emlmm import EMLMM
        >>> from emlmm.datasets import load_lab
        >>> lab = load_lab()
        >>> data = lab.genotypes[["snp0021"]].assign(y=lab.phenotype)
        >>> result = EMLMM.from_formula("y ~ 1 + snp0021", data, kinship=lab.kinship).fit()
        >>> frame = result.get_prediction(pd.DataFrame({"snp0021": [0, 2]})).summary_frame()
        >>> print(frame.round(2))
            mean  mean_se  mean_ci_lower  mean_ci_upper
        0  11.55     1.53           8.56          14.54
        1   5.75     1.59           2.63           8.86
        """
        from statsmodels.base._prediction_inference import (
            PredictionResultsMean,
            get_prediction_linear,
        )
        from statsmodels.genmod.families import links

        if exog is None and self._data_removed:
            raise ValueError("remove_data() dropped the design: pass exog to predict")
        linear = get_prediction_linear(self, exog=exog, transform=transform,
                                       row_labels=row_labels)  # fmt: skip
        return PredictionResultsMean(
            linear.predicted, linear.var_pred, df=self.df_resid, dist=linear.dist,
            row_labels=linear.row_labels, linpred=linear, link=links.Identity(),
        )  # fmt: skip

    def remove_data(self) -> None:
        """Drop the data arrays, the kinship and its eigenvectors, so the results
        pickle in O(n) rather than O(n^2) memory.

        Estimates, standard errors, tests, ``summary()`` and predictions from new
        ``exog`` still work; what needs the data (``random_effects``,
        ``fittedvalues``, ``resid``, ``blup``) raises an error that says so.
        """
        for name in (
            "llf",
            "aic",
            "bic",
            "bse",
            "h2",
            "bse_h2",
            "bse_sigma2_a",
            "bse_sigma2_e",
            "cov_variance_components",
            "tvalues",
            "pvalues",
        ):
            getattr(self, name)  # fmt: skip
        super().remove_data()
        model = self.model
        model.kinship = np.empty((0, 0))
        model._kinship_factor = None
        model.spectrum = model.spectrum.without_eigenvectors()
        model.__dict__.pop("_lab_data", None)
        for name in ("random_effects", "fittedvalues", "resid"):
            self.__dict__.pop(name, None)
        self._data_removed = True

    def _check_data(self, what: str) -> None:
        if self._data_removed:
            raise ValueError(
                f"{what} needs the data and the kinship's eigenvectors, which remove_data() "
                "dropped; use a fit that kept them"
            )

    def summary2(
        self,
        yname: str | None = None,
        xname: list[str] | None = None,
        title: str | None = None,
        alpha: float = 0.05,
        float_format: str = "%.4f",
    ) -> Any:
        """The summary as statsmodels' ``summary2``: model information, the fixed
        effects and the variance components (DataFrames inside)."""
        from statsmodels.iolib import summary2

        smry = summary2.Summary()
        title = title or "Linear Mixed Model with Kinship Results"
        smry.add_base(results=self, alpha=alpha, float_format=float_format, xname=xname,
                      yname=yname, title=title)  # fmt: skip
        components = pd.DataFrame(
            {
                "Estimate": [self.sigma2_a, self.sigma2_e, self.h2],
                "Std.Err.": [self.bse_sigma2_a, self.bse_sigma2_e, self.bse_h2],
            },
            index=["sigma2_a (kinship)", "sigma2_e (residual)", "h2"],
        )
        smry.add_df(components, float_format=float_format)
        return smry

    @cached_property
    def random_effects(self) -> NDArray[np.float64]:
        """Best linear unbiased prediction of ``a``: ``sigma2_a A V^-1 (y - X beta)``
        (:meth:`blup` adds their errors)."""
        self._check_data("random_effects")
        fit_data, estimate = self._fit_data, self._estimate
        data = fit_data.rotated
        variances = _em.marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
        resid = data.endog - data.exog @ estimate.beta
        rotated = estimate.sigma2_a * data.eigenvalues * resid / variances
        # U_kept r: the dropped directions' entries are zero.
        kept = np.zeros(self.model.spectrum.n)
        kept[fit_data.kept] = rotated
        return fit_data.endog_scale * self.model.spectrum.unrotate(kept)

    @cached_property
    def fittedvalues(self) -> NDArray[np.float64]:
        """Conditional fitted values ``X beta + a_hat`` (as in ``MixedLM``)."""
        self._check_data("fittedvalues")
        return self.model.exog @ self.params + self.random_effects

    @cached_property
    def resid(self) -> NDArray[np.float64]:
        """Conditional residuals ``y - X beta - a_hat``."""
        self._check_data("resid")
        return self.model.endog - self.fittedvalues

    def plot_convergence(self, ax: Any = None) -> Any:
        """Plot the log-likelihood by EM iteration (``llf_history``).

        Returns
        -------
        matplotlib.axes.Axes
        """
        from emlmm.plotting import plot_convergence

        return plot_convergence(self.llf_history, ax=ax)

    def lr_test_ols(self) -> LikelihoodRatioTest:
        """Test sigma2_a = 0 against the fit without the kinship effect (OLS).

        For an ML fit the restricted model is ``OLS(y, X)`` (its log-likelihood
        equals ``OLS(...).fit().llf``, except where the covariates absorb the
        kinship's null space: then both are of the data outside it); for a REML
        fit, the REML log-likelihood of the same model with sigma2_a = 0.

        Returns
        -------
        LikelihoodRatioTest
        """
        data = self._fit_data.rotated
        restricted = float(_em.criterion(data, _em.ols_estimate(data, self.reml), self.reml))
        statistic = max(2.0 * (self._criterion - restricted), 0.0)
        naive = float(stats.chi2.sf(statistic, 1))
        pvalue = 1.0 if statistic == 0.0 else 0.5 * naive
        return LikelihoodRatioTest(statistic, 1, pvalue, naive)

    def compare_lr_test(self, restricted: Any) -> tuple[float, float, int]:
        """Likelihood-ratio test against a nested EMLMM fit with fewer fixed effects.

        Parameters
        ----------
        restricted : EMLMMResults
            A fit of the same response and kinship whose design's columns lie in
            the span of this fit's design.

        Returns
        -------
        lr_stat : float
            ``2 (llf - restricted.llf)``.
        p_value : float
            From chi2 with ``df_diff`` degrees of freedom.
        df_diff : int
            Number of fixed effects this fit has in addition.

        Examples
        --------
        >>> from emlmm import EMLMM
        >>> from emlmm.datasets import load_lab
        >>> lab = load_lab()
        >>> data = lab.genotypes[["snp0021"]].assign(y=lab.phenotype)
        >>> full = EMLMM.from_formula("y ~ 1 + snp0021", data=data, kinship=lab.kinship).fit()
        >>> null = EMLMM.from_formula("y ~ 1", data=data, kinship=lab.kinship).fit()
        >>> lr_stat, p_value, df_diff = full.compare_lr_test(null)
        >>> print(f"LR = {lr_stat:.3f}, p = {p_value:.2e}, df = {df_diff}")
        LR = 13.738, p = 2.10e-04, df = 1
        """
        other = getattr(restricted, "_results", restricted)
        if not isinstance(other, EMLMMResults):
            raise TypeError(f"restricted must be an EMLMM fit, not {type(restricted).__name__}")
        if self.reml or other.reml:
            raise ValueError(
                "REML log-likelihoods of models with different fixed effects are not "
                "comparable; fit both with reml=False for a likelihood-ratio test"
            )
        full_model, small_model = self.model, other.model
        if full_model.endog.shape != small_model.endog.shape or not np.allclose(
            full_model.endog, small_model.endog
        ):
            raise ValueError(
                "the two fits use different responses (or different rows); an LR test "
                "needs the same data"
            )
        if not np.allclose(full_model.kinship, small_model.kinship):
            raise ValueError("the two fits use different kinship matrices")
        if self._fit_data.reduced != other._fit_data.reduced:
            raise ValueError(
                "only one of the two designs reaches the kinship's null space (e.g. one "
                "has an intercept and the kinship is centered), so their likelihoods are "
                "of data of different dimensions; give both the same such covariates"
            )
        df_diff = full_model.k_exog - small_model.k_exog
        if df_diff < 0:
            raise ValueError(
                f"the restricted fit has {small_model.k_exog} fixed effects and this one "
                f"{full_model.k_exog}; call compare_lr_test on the larger model"
            )
        if df_diff == 0:
            raise ValueError(
                f"both fits have {full_model.k_exog} fixed effects: an LR test here compares "
                "a model with a restriction of it, which has fewer"
            )
        coef, *_ = np.linalg.lstsq(full_model.exog, small_model.exog, rcond=None)
        leftover = np.linalg.norm(small_model.exog - full_model.exog @ coef)
        if leftover > 1e-8 * max(float(np.linalg.norm(small_model.exog)), 1.0):
            raise ValueError(
                "the fits are not nested: the restricted design is not in the span of "
                "this fit's design"
            )
        lr_stat = 2.0 * (self.llf - other.llf)
        return lr_stat, float(stats.chi2.sf(lr_stat, df_diff)), df_diff

    def summary(
        self, yname: str | None = None, xname: list[str] | None = None, alpha: float = 0.05
    ) -> Summary:
        """Fixed-effects table and variance components, in statsmodels' style.

        Returns
        -------
        statsmodels.iolib.summary.Summary
        """
        algorithm = {"lab": "lab EM", "accelerated": "EM+FS"}.get(self.method, "EM")
        method = f"{'REML' if self.reml else 'ML'} ({algorithm})"
        top_left = [
            ("Dep. Variable:", None),
            ("Model:", ["EMLMM"]),
            ("Method:", [method]),
            ("Date:", None),
            ("Time:", None),
            ("No. Observations:", None),
            ("Kinship rank:", [str(self.model.spectrum.rank)]),
        ]
        top_right = [
            ("Log-Likelihood:", [f"{self.llf:#.6g}"]),
            ("AIC:", [f"{self.aic:#.6g}"]),
            ("BIC:", [f"{self.bic:#.6g}"]),
            ("Iterations:", [str(self.n_iter)]),
            ("Converged:", ["Yes" if self.converged else "No"]),
            ("Df Model:", None),
            ("Df Residuals:", None),
        ]
        smry = Summary()
        smry.add_table_2cols(
            self,
            gleft=top_left,
            gright=top_right,
            yname=yname,
            xname=xname,
            title="Linear Mixed Model with Kinship Results",
        )
        smry.add_table_params(self, yname=yname, xname=xname, alpha=alpha, use_t=self.use_t)
        rows = [
            ("sigma2_a (kinship)", self.sigma2_a, self.bse_sigma2_a),
            ("sigma2_e (residual)", self.sigma2_e, self.bse_sigma2_e),
            ("h2", self.h2, self.bse_h2),
        ]
        smry.tables.append(
            _variance_table(
                [[f"{value:#.6g}", f"{bse:#.4g}"] for _, value, bse in rows],
                ["Variance components", "std err"],
                [name for name, _, _ in rows],
            )
        )
        return smry


class EMLMMResultsWrapper(LikelihoodResultsWrapper):
    """Labels params by the design's columns and per-individual values by its rows."""

    _attrs: ClassVar[dict[str, str]] = {
        "random_effects": "rows",
        "fittedvalues": "rows",
        "resid": "rows",
    }
    _wrap_attrs = wrap.union_dicts(LikelihoodResultsWrapper._wrap_attrs, _attrs)
    _methods: ClassVar[dict[str, str]] = {}
    _wrap_methods = wrap.union_dicts(LikelihoodResultsWrapper._wrap_methods, _methods)


wrap.populate_wrapper(EMLMMResultsWrapper, EMLMMResults)


class ComponentsResults(_InformationCriteria, LikelihoodModelResults):
    """Results of :meth:`emlmm.EMLMM.fit` for a model with several variance components
    (several kinships, ``vc_formula``, or ``kinship_ids``).

    ``params`` holds the fixed effects, then every variance component (named
    ``"<component> Var"``, as in ``MixedLM``, the residual last); ``bse``,
    ``conf_int``, ``t_test`` follow: the fixed effects' covariance is
    ``(X' V^-1 X)^-1`` at the estimated variances, the variances' the inverse
    expected information (none for a variance on its boundary, 0).

    Attributes
    ----------
    variance_components : pandas.Series
        Each component's variance, named as given, the residual last.
    bse_variance_components : pandas.Series
        Their standard errors, from the inverse expected information.
    shares : pandas.Series
        Each component's share of the phenotypic variance, ``sigma2_k m_k / sum_j
        sigma2_j m_j`` with ``m_k`` the mean diagonal of its covariance ``G_k``
        (``h2`` for a kinship alone).
    llf, n_iter, converged, reml, method, mle_retvals, llf_history
        As for :class:`EMLMMResults`.
    """

    model: EMLMM

    def __init__(
        self, model: EMLMM, fit: Any, *, reml: bool, method: str, use_t: bool = False
    ) -> None:
        fit_data = model._fit_data
        data = model._component_data
        self._fit = fit
        self._evaluation = _components.Evaluation(data, fit.theta)
        scales = fit_data.coefficient_scales
        cov_beta = fit_data.coefficient_covariance(fit.cov_beta, 0.0)
        with np.errstate(over="ignore"):
            cov_beta = cov_beta * scales[:, None] * scales[None, :]
        # The variances' covariance from the inverse expected information; a variance on
        # its boundary (0) has none.
        information = _components.expected_information(self._evaluation, reml)
        size = len(fit.theta)
        free = fit.theta > 0
        cov_variances = np.full((size, size), np.nan)
        try:
            cov_variances[np.ix_(free, free)] = np.linalg.inv(information[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            raise ValueError(
                "the variance components are not identifiable: their information matrix "
                "is singular, so two of them change V alike (a kinship proportional to "
                "the identity is the residual again; or two kinships or groupings with "
                f"the same pattern). Components: {', '.join(model.component_names)}; drop "
                "one of those that coincide"
            ) from None
        cov_variances = fit_data.variances_to_user(cov_variances, power=2)
        p = len(fit.beta)
        cov_params = np.zeros((p + size, p + size))
        cov_params[:p, :p], cov_params[p:, p:] = cov_beta, cov_variances
        params = np.concatenate([fit_data.coefficients(fit.beta),
                                 fit_data.variances_to_user(fit.theta)])  # fmt: skip
        super().__init__(model, params, normalized_cov_params=cov_params, scale=1.0)
        self.use_t = use_t
        self.nobs, self.df_model, self.df_resid = model.nobs, model.df_model, model.df_resid
        self.reml, self.method = reml, method
        self.n_iter, self.converged = int(fit.n_iter), bool(fit.converged)
        offset = fit_data.llf_offset(reml)
        self.llf_history = np.asarray(fit.llf_history) + offset
        self._llf = float(fit.llf + offset)
        names = model.component_names
        variances = fit_data.variances_to_user(fit.theta)
        self.variance_components = pd.Series(variances, index=names, name="variance")
        self.bse_variance_components = pd.Series(
            np.sqrt(np.diag(cov_variances)), index=names, name="std err"
        )
        diagonals = [
            float(data.eigenvalues.mean()) if data.eigenvalues is not None and k == 0
            else 1.0 if k == len(names) - 1
            else float((data.factors[k - (data.eigenvalues is not None)] ** 2).sum() / data.nobs)
            for k in range(len(names))
        ]  # fmt: skip
        weighted = fit.theta * np.array(diagonals)
        self.shares = pd.Series(weighted / weighted.sum(), index=names, name="share")
        self.mle_retvals = _mle_retvals(self, method, reml)

    @cached_property
    def llf(self) -> float:
        """Log-likelihood at the estimates (restricted log-likelihood for REML)."""
        return self._llf

    @cached_property
    def df_modelwc(self) -> int:
        """Number of estimated parameters: the fixed effects and every variance."""
        return self.model.k_exog + len(self.model.component_names)

    @property
    def fe_params(self) -> pd.Series:
        """The fixed effects alone (as ``MixedLM``'s ``fe_params``)."""
        names = self.model.data.param_names[: self.model.k_exog]
        return pd.Series(np.asarray(self.params)[: self.model.k_exog], index=names)

    @property
    def bse_fe(self) -> pd.Series:
        """Standard errors of the fixed effects (as ``MixedLM``'s ``bse_fe``)."""
        names = self.model.data.param_names[: self.model.k_exog]
        return pd.Series(np.asarray(self.bse)[: self.model.k_exog], index=names)

    @cached_property
    def random_effects(self) -> dict[str, pd.Series]:
        """Each component's BLUP, one value per row: ``sigma2_k G_k V^-1 r``."""
        evaluation, model = self._evaluation, self.model
        projected = evaluation.gls[3]
        scale = model._fit_data.endog_scale
        labels = pd.Index(model.data.row_labels)
        effects = {}
        for k, name in enumerate(model.component_names[:-1]):
            rotated = evaluation.theta[k] * evaluation.derivative(k, projected)
            values = model.spectrum.eigenvectors @ rotated
            effects[name] = pd.Series(scale * values, index=labels, name=name)
        return effects

    def compare_lr_test(self, restricted: Any) -> tuple[float, float, int]:
        """Likelihood-ratio test against a nested fit: fewer variance components
        (an :class:`EMLMMResults` with the first kinship alone, or a fit of fewer
        components) and/or fewer fixed effects.

        When one variance component is tested at 0 with the same fixed effects, the
        statistic's null distribution is the 50:50 mixture of chi2(0) and chi2(1)
        (Self and Liang, 1987): the p-value is half chi2(1)'s. Otherwise chi2 with the
        difference in parameters.

        Returns
        -------
        lr_stat, p_value, df_diff
        """
        other = getattr(restricted, "_results", restricted)
        if other.reml != self.reml:
            raise ValueError("compare two ML fits, or two REML fits, not one of each")
        if not np.allclose(other.model.endog, self.model.endog):
            raise ValueError("the two fits use different responses (or different rows)")
        if isinstance(other, EMLMMResults):
            # REML adds the dropped directions' constant back; ML cannot.
            if other._fit_data.reduced and not self.reml:
                raise ValueError(
                    "the one-kinship fit's likelihood is of the data outside the kinship's "
                    "null space (its covariates absorb it), this fit's of all the data; fit "
                    "the smaller model as kinship={name: A} too, so both are of the same data"
                )
            same = self.model.kinship is not None and np.allclose(
                other.model.kinship, self.model.kinship
            )
            if not same:
                raise ValueError(
                    "the fits are not nested: the restricted fit's kinship is not this fit's "
                    "first kinship"
                )
        elif not set(other.model.component_names) <= set(self.model.component_names):
            raise ValueError(
                "the fits are not nested: the restricted fit has components "
                f"{other.model.component_names}, this one {self.model.component_names}"
            )
        size = lambda fit: len(getattr(fit, "variance_components", [0, 0]))  # noqa: E731
        df_variance = size(self) - size(other)
        df_fixed = self.model.k_exog - other.model.k_exog
        if self.reml and df_fixed != 0:
            raise ValueError("REML fits with different fixed effects cannot be compared")
        if df_variance < 0 or df_fixed < 0 or df_variance + df_fixed == 0:
            raise ValueError(
                "the restricted fit must have fewer parameters; call this on the larger"
            )
        statistic = max(2.0 * (self.llf - other.llf), 0.0)
        kept = getattr(other.model, "component_names", None) or [
            self.model.component_names[0],
            "residual",
        ]
        tested = [name for name in self.model.component_names if name not in kept]
        if df_fixed == 0 and all(self.variance_components[name] == 0.0 for name in tested):
            # Every tested component is exactly 0: the fits are the same model, and a
            # difference in their likelihoods is rounding between two numerical paths.
            statistic = 0.0
        df = df_variance + df_fixed
        pvalue = float(stats.chi2.sf(statistic, df))
        if df_variance == 1 and df_fixed == 0:
            pvalue = 1.0 if statistic == 0.0 else 0.5 * pvalue
        return statistic, pvalue, df

    def summary(
        self, yname: str | None = None, xname: list[str] | None = None, alpha: float = 0.05
    ) -> Summary:
        """Fixed-effects table and variance components, in statsmodels' style."""
        algorithm = "EM+AI" if self.method == "accelerated" else "EM"
        smry = Summary()
        smry.add_table_2cols(
            self,
            gleft=[("Dep. Variable:", None), ("Model:", ["EMLMM"]),
                   ("Method:", [f"{'REML' if self.reml else 'ML'} ({algorithm})"]),
                   ("No. Observations:", None)],
            gright=[("Log-Likelihood:", [f"{self.llf:#.6g}"]),
                    ("Iterations:", [str(self.n_iter)]),
                    ("Converged:", ["Yes" if self.converged else "No"]),
                    ("Df Residuals:", None)],
            yname=yname, xname=xname, title="Linear Mixed Model with Variance Components",
        )  # fmt: skip
        xname = xname or list(self.model.data.param_names)
        smry.add_table_params(self, yname=yname, xname=xname, alpha=alpha, use_t=self.use_t)
        rows = zip(self.variance_components.index, self.variance_components,
                   self.bse_variance_components, self.shares, strict=True)  # fmt: skip
        table = [[f"{v:#.6g}", f"{e:#.4g}", f"{s:.4f}"] for _, v, e, s in rows]
        smry.tables.append(
            _variance_table(
                table, ["Variance", "std err", "share"], list(self.variance_components.index)
            )
        )
        return smry


class ComponentsResultsWrapper(LikelihoodResultsWrapper):
    """Labels params by the design's columns."""


wrap.populate_wrapper(ComponentsResultsWrapper, ComponentsResults)
