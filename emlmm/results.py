"""Results of an EMLMM fit: statsmodels-style estimates, tests and summary."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from statsmodels.base import wrapper as wrap
from statsmodels.base.model import LikelihoodModelResults, LikelihoodResultsWrapper
from statsmodels.iolib.summary import Summary
from statsmodels.iolib.table import SimpleTable

from emlmm import _em

if TYPE_CHECKING:
    from emlmm._design import FitData
    from emlmm.model import EMLMM

__all__ = ["EMLMMResults", "EMLMMResultsWrapper", "LikelihoodRatioTest"]


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


class EMLMMResults(LikelihoodModelResults):
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
        data = fit_data.rotated
        variances = _em.marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
        _, cov_gamma, _ = _em.gls(data, variances)
        params, sigma2_a, sigma2_e = fit_data.to_user(estimate)
        self._scaled_cov_beta = fit_data.coefficient_covariance(
            cov_gamma, float(estimate.sigma2_e)
        )
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

    @cached_property
    def llf(self) -> float:
        """Log-likelihood at the estimates (restricted log-likelihood for REML).

        Where the covariates absorb the kinship's null space (a centered kinship
        with an intercept), the maximum-likelihood value is that of the data in the
        kinship's column space, ``n - n0`` dimensional: the full likelihood has no
        maximum there (see :ref:`the boundary tutorial <boundary-singular>`).
        """
        return self._criterion + self._fit_data.llf_offset(self.reml)

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
    def aic(self) -> float:
        """Akaike's criterion; NaN for REML fits, as in ``MixedLM``."""
        return np.nan if self.reml else -2.0 * self.llf + 2.0 * self.df_modelwc

    @cached_property
    def bic(self) -> float:
        """Schwarz's criterion; NaN for REML fits, as in ``MixedLM``."""
        return np.nan if self.reml else -2.0 * self.llf + np.log(self.nobs) * self.df_modelwc

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
        estimate = self._estimate  # scale-free, so computed in the numerics' units
        scaled = float(estimate.sigma2_a) * self.model.spectrum.mean_diagonal
        return scaled / (scaled + float(estimate.sigma2_e))

    @cached_property
    def bse_h2(self) -> float:
        """Standard error of ``h2`` by the delta method."""
        mean_diagonal = self.model.spectrum.mean_diagonal
        sigma2_a, sigma2_e = float(self._estimate.sigma2_a), float(self._estimate.sigma2_e)
        total = sigma2_a * mean_diagonal + sigma2_e
        gradient = np.array([mean_diagonal * sigma2_e, -mean_diagonal * sigma2_a])
        gradient /= total**2
        return float(np.sqrt(gradient @ self._scaled_variance_covariance @ gradient))

    @cached_property
    def random_effects(self) -> NDArray[np.float64]:
        """Best linear unbiased prediction of ``a``: ``sigma2_a A V^-1 (y - X beta)``."""
        fit_data, estimate = self._fit_data, self._estimate
        data = fit_data.rotated
        variances = _em.marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
        resid = data.endog - data.exog @ estimate.beta
        rotated = estimate.sigma2_a * data.eigenvalues * resid / variances
        eigenvectors = self.model.spectrum.eigenvectors[:, fit_data.kept]  # a view
        return fit_data.endog_scale * (eigenvectors @ rotated)

    @cached_property
    def fittedvalues(self) -> NDArray[np.float64]:
        """Conditional fitted values ``X beta + a_hat`` (as in ``MixedLM``)."""
        return self.model.exog @ self.params + self.random_effects

    @cached_property
    def resid(self) -> NDArray[np.float64]:
        """Conditional residuals ``y - X beta - a_hat``."""
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
        if df_diff <= 0:
            raise ValueError(
                f"the restricted fit has {small_model.k_exog} fixed effects and this one "
                f"{full_model.k_exog}; call compare_lr_test on the larger model"
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
            SimpleTable(
                [[f"{value:#.6g}", f"{bse:#.4g}"] for _, value, bse in rows],
                headers=["Variance components", "std err"],
                stubs=[name for name, _, _ in rows],
                title="",
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
