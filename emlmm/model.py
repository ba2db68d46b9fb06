"""The EMLMM model: a linear mixed model with a known kinship, fitted by EM."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
import patsy
from numpy.typing import ArrayLike, NDArray
from statsmodels.base.model import LikelihoodModel
from statsmodels.tools.sm_exceptions import ConvergenceWarning, ModelWarning

from emlmm import _components, _em, _fitting
from emlmm._data import (
    align_kinship,
    capture_namespace,
    check_choice,
    check_count,
    check_design,
    check_flag,
    check_formula_inputs,
    check_kinship,
    check_positive,
    check_vc_formula,
    formula_data,
)
from emlmm._design import FitData
from emlmm._fitting import NullFit
from emlmm._spectral import KinshipSpectrum
from emlmm._threads import one_blas_thread
from emlmm.kinship import LowRankKinship, outer_products

__all__ = ["EMLMM", "LAB_START_SIGMA2_A", "LAB_START_SIGMA2_E", "ComponentsNullFit", "NullFit"]

#: Keywords statsmodels' from_formula passes to a model's constructor.
_STATSMODELS_KEYWORDS = frozenset(
    {"missing_idx", "formula", "model_spec", "design_info", "hasconst", "component_rows"}
)

#: The lab's start values of the variances (``fit(start_params="lab")``; beta starts at 0).
LAB_START_SIGMA2_A = _em.LAB_START_SIGMA2_A
LAB_START_SIGMA2_E = _em.LAB_START_SIGMA2_E

FitMethod = Literal["em", "accelerated", "lab"]


class EMLMM(LikelihoodModel):
    r"""Linear mixed model with a known kinship matrix, fitted by EM.

    .. math::

        y = X\beta + a + e,\qquad a \sim N(0, \sigma_a^2 A),\qquad
        e \sim N(0, \sigma_e^2 I)

    The kinship ``A`` is eigendecomposed once when the model is built; every EM
    iteration afterwards costs O(n p).

    Parameters
    ----------
    endog : array_like
        The response, one value per individual.
    exog : array_like
        The fixed-effects design matrix (include a constant column for an
        intercept, e.g. with :func:`statsmodels.api.add_constant`).
    kinship : array_like or pandas.DataFrame
        The n x n relatedness matrix ``A``: symmetric and positive semi-definite.
        A DataFrame labelled by the individuals is matched to ``endog``'s index
        (or to the formula data's index) by label; extra individuals in the
        kinship are left out.
    missing : {"none", "drop", "raise"}
        What to do with rows that have NaN in ``endog`` or ``exog``. With
        ``"drop"`` (the default of :meth:`from_formula`) the same rows *and*
        columns of the kinship are dropped.
    **kwargs
        Passed to :class:`statsmodels.base.model.LikelihoodModel`.

    Attributes
    ----------
    kinship : ndarray
        The kinship after alignment and dropping of missing rows.
    spectrum : KinshipSpectrum
        Its eigendecomposition.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from emlmm import EMLMM
    >>> rng = np.random.default_rng(0)
    >>> groups = np.repeat(np.arange(40), 5)
    >>> kinship = (groups[:, None] == groups[None, :]).astype(float)
    >>> df = pd.DataFrame({"x": rng.normal(size=200)})
    >>> df["y"] = 1 + 2 * df.x + rng.normal(size=40)[groups] + rng.normal(size=200)
    >>> result = EMLMM.from_formula("y ~ 1 + x", data=df, kinship=kinship).fit()
    >>> print(result.params.round(3))
    Intercept    0.756
    x            2.081
    dtype: float64
    >>> print(f"sigma2_a = {result.sigma2_a:.3f}, sigma2_e = {result.sigma2_e:.3f}")
    sigma2_a = 1.148, sigma2_e = 1.108
    >>> result.lr_test_ols().pvalue < 1e-10
    True
    """

    def __init__(
        self,
        endog: ArrayLike,
        exog: ArrayLike,
        kinship: ArrayLike | pd.DataFrame | dict[str, Any],
        missing: str = "none",
        *,
        exog_vc: dict[str, Any] | None = None,
        kinship_ids: ArrayLike | None = None,
        **kwargs: Any,
    ) -> None:
        if exog is None:
            raise ValueError(
                "exog is required; for an intercept-only model pass a column of ones "
                "(or use from_formula with 'y ~ 1')"
            )
        unknown = sorted(set(kwargs) - _STATSMODELS_KEYWORDS)
        if unknown:
            raise TypeError(
                f"EMLMM got unexpected keyword arguments {unknown}: weights and offsets are "
                "not supported (extra variance components are given by vc_formula, "
                "several kinships by a dict), and nothing is silently ignored"
            )
        missing_idx = kwargs.get("missing_idx")
        n_rows = len(missing_idx) if missing_idx is not None else len(endog)  # type: ignore[arg-type]
        self.components: _ComponentSpec | None = None
        if isinstance(kinship, dict) or exog_vc or kinship_ids is not None:
            _fitting.check_rows(endog, exog, missing)
            # A labelled kinship is aligned by label to the rows given here; from_formula
            # aligns it to its data (rows with missing values still in) itself.
            index = (
                endog.index
                if missing_idx is None and isinstance(endog, (pd.Series, pd.DataFrame))
                else None
            )
            spec = _ComponentSpec.build(kinship, exog_vc, kinship_ids, n_rows, index)
            super().__init__(
                endog, exog, missing=missing, kinship=spec.first_kinship,
                component_rows=np.arange(n_rows, dtype=float), **kwargs,
            )  # fmt: skip
            self.components = spec.for_rows(np.asarray(self.component_rows, dtype=np.intp))
            self._initialise_components()
            return
        if missing_idx is None and isinstance(endog, (pd.Series, pd.DataFrame)):
            kinship = align_kinship(kinship, endog.index)
        # The factor's rows follow the data's; statsmodels, which drops the rows and
        # columns of a kinship with missing data, never sees it (n x k is not square).
        kinship, factor = _fitting.check_inputs(endog, exog, kinship, missing, missing_idx)
        super().__init__(endog, exog, missing=missing, kinship=kinship, **kwargs)
        if factor is not None:
            if factor.shape[0] != len(self.endog):
                raise ValueError(  # pragma: no cover - statsmodels dropped other rows
                    "could not match the kinship factor's rows to the rows statsmodels kept"
                )
            self._kinship_factor = factor  # F F' is formed only if asked for
        self.endog: NDArray[np.float64]
        if self.endog.ndim == 2 and self.endog.shape[1] == 1:
            self.endog = self.endog[:, 0]
        if self.endog.ndim != 1:
            raise ValueError(f"endog must be one column; it has shape {self.endog.shape}")
        with np.errstate(over="ignore"):  # statsmodels names columns from their variance
            exog_names = self.exog_names
        self.spectrum, self._fit_data = _fitting.spectrum_and_data(
            self.endog, self.exog, exog_names, None if factor is not None else self.kinship, factor
        )

    #: The kinship as given (None with kinship ids), or formed from the factor.
    _kinship: Any = None
    #: A low-rank kinship's factor (rows analysed), if the model was given one.
    _kinship_factor: NDArray[np.float64] | None = None

    @property
    def kinship(self) -> NDArray[np.float64]:
        """The ``n x n`` kinship of the rows analysed; from a
        :class:`~emlmm.LowRankKinship`, ``F F'``, formed only when first asked for
        (fits and scans never need it)."""
        if self._kinship is None and self._kinship_factor is not None:
            self._kinship = outer_products(self._kinship_factor)
        kinship: NDArray[np.float64] = self._kinship
        return kinship

    @kinship.setter
    def kinship(self, value: Any) -> None:
        self._kinship = value

    @property
    def kinship_factor(self) -> NDArray[np.float64] | None:
        """A :class:`~emlmm.LowRankKinship`'s factor ``F`` for the rows analysed
        (:attr:`kinship` is ``F F'``), or None for a kinship given as a matrix.

        Examples
        --------
        >>> import numpy as np
        >>> from emlmm import EMLMM, LowRankKinship
        >>> rng = np.random.default_rng(0)
        >>> factor = rng.normal(size=(20, 3))
        >>> model = EMLMM(rng.normal(size=20), np.ones((20, 1)), LowRankKinship(factor))
        >>> model.kinship_factor.shape, model.kinship.shape
        ((20, 3), (20, 20))
        """
        return self._kinship_factor

    def _kinship_diagonal(self) -> NDArray[np.float64]:
        """The kinship's diagonal (from a factor, without forming ``F F'``)."""
        if self._kinship is None and self._kinship_factor is not None:
            diagonal: NDArray[np.float64] = np.einsum(
                "ij,ij->i", self._kinship_factor, self._kinship_factor
            )
            return diagonal
        return np.diag(self.kinship).copy()

    def _initialise_components(self) -> None:
        """Several variance components: eigendecompose the first kinship (without
        ``kinship_ids``), and express every other component by its factor in that
        eigenbasis (:mod:`emlmm._components`)."""
        spec = self.components
        assert spec is not None
        if self.endog.ndim == 2 and self.endog.shape[1] == 1:
            self.endog = self.endog[:, 0]
        with np.errstate(over="ignore"):
            exog_names = self.exog_names
        check_design(self.endog, self.exog, exog_names)
        n = self.endog.shape[0]
        factors: list[NDArray[np.float64]] = []
        dims: list[float] = []
        spectral = spec.ids is None
        if spectral:
            self.kinship = spec.kinships[0][1]
            self.spectrum = KinshipSpectrum.from_kinship(self.kinship)
            dims.append(float(self.spectrum.rank))
            others = [matrix for _, matrix in spec.kinships[1:]]
        else:
            self.kinship = None
            self.spectrum = KinshipSpectrum(np.zeros(n), np.eye(n))
            assert spec.ids is not None
            lines = pd.Index(pd.unique(spec.ids))
            incidence = (spec.ids[:, None] == lines.to_numpy()[None, :]).astype(np.float64)
            others = []
            for _, matrix in spec.kinships:
                factor = incidence @ _factor(check_kinship(matrix.loc[lines, lines], len(lines)))
                factors.append(factor)
                dims.append(float(factor.shape[1]))
        for matrix in others:
            factors.append(_factor(matrix))
            dims.append(float(factors[-1].shape[1]))
        for name, design, _ in spec.groups:
            used = np.any(design != 0, axis=0)
            if not used.any():
                raise ValueError(f"variance component {name!r} has no level among the rows")
            factors.append(design[:, used])
            dims.append(float(used.sum()))
        dims.append(float(n))
        fit_data = FitData.build(self.spectrum, self.endog, self.exog, reduce=False)
        self._fit_data = fit_data
        rotate = self.spectrum.eigenvectors.T if spectral else None
        rotated = tuple(f if rotate is None else rotate @ f for f in factors)
        self._component_data = _components.ComponentData(
            fit_data.rotated.endog,
            fit_data.rotated.exog,
            self.spectrum.eigenvalues if spectral else None,
            rotated,
            np.array(dims),
        )
        self.component_names = [*spec.names, "residual"]
        # As MixedLM: the results' params are the fixed effects, then the variances.
        self.data.param_names = [*exog_names, *(f"{n} Var" for n in self.component_names)]

    def _component_trace(
        self,
        start_params: ArrayLike | str | None,
        method: FitMethod,
        maxiter: int,
        tol: float | None,
        reml: bool,
        disp: bool,
    ) -> _components.ComponentFit:
        """Fit the variance components (checking the arguments), in scaled units."""
        if method == "lab":
            raise ValueError(
                "the lab's algorithm fits one kinship; with several variance components use "
                "method='em' (the lab's EM, one update per component) or 'accelerated'"
            )
        maxiter, tol, reml = _check_fit_arguments(maxiter, tol, reml)
        tol = _em.DEFAULT_TOLERANCE if tol is None else tol
        data = self._component_data
        scale = self._fit_data.endog_scale**2
        size = data.n_components
        if start_params is None:
            total = float(_em.ols_estimate(self._fit_data.rotated, reml).sigma2_e)
            start = np.full(size, total / size)
        else:
            start = np.asarray(start_params, dtype=np.float64) / scale
            if start.shape != (size,) or not np.all(start >= 0) or start[-1] <= 0:
                raise ValueError(
                    f"start_params must give the {size} variances "
                    f"({', '.join(self.component_names)}), >= 0 with a positive residual"
                )
        offset = self._fit_data.llf_offset(reml)
        with one_blas_thread(data.k_exog + data.stacked.shape[1]):
            fit = _components.fit(
                data,
                start,
                reml=reml,
                maxiter=maxiter,
                tol=tol,
                accelerate=method == "accelerated",
                callback=(lambda k, value: _print_iteration(k, value + offset)) if disp else None,
            )
        if not fit.converged:
            warnings.warn(
                f"EM did not converge in {maxiter} iterations; raise maxiter",
                ConvergenceWarning,
                stacklevel=4,
            )
        return fit

    @cached_property
    def _lab_data(self) -> FitData:
        """The data for the lab's algorithm: scaled and rotated, never reduced (the
        lab's ginv treatment of a singular kinship works on every direction)."""
        if not self._fit_data.reduced:
            return self._fit_data
        return FitData.build(self.spectrum, self.endog, self.exog, reduce=False)

    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        kinship: ArrayLike | pd.DataFrame | dict[str, Any],
        subset: Any = None,
        drop_cols: Any = None,
        *args: Any,
        vc_formula: dict[str, str] | None = None,
        kinship_ids: str | None = None,
        **kwargs: Any,
    ) -> EMLMM:
        """Create a model from a formula and a DataFrame.

        Parameters
        ----------
        formula : str
            A patsy formula, e.g. ``"y ~ 1 + sex + snp"``.
        data : pandas.DataFrame
            The data, one row per individual.
        kinship : array_like or pandas.DataFrame
            The kinship, in the order of ``data``'s rows, or a DataFrame labelled
            by ``data.index`` (aligned by label).
            A dict of kinships (``{"additive": A, "dominance": D}``) fits one
            variance per kinship.
        subset, drop_cols, *args, **kwargs
            As for :meth:`statsmodels.base.model.Model.from_formula`. Rows with
            missing values are dropped (``missing="drop"``), together with the
            matching rows and columns of the kinship.
        vc_formula : dict of str, optional
            Extra variance components, as in statsmodels' ``MixedLM``: each formula
            (e.g. ``{"cage": "0 + C(cage)"}``) gives a design whose columns are iid
            random effects with a variance of their own.
        kinship_ids : str, optional
            A column of ``data`` naming each row's individual (line) in the kinship(s),
            which are then DataFrames labelled by those ids: ``V = sigma2_a Z A Z' +
            ...`` for replicated lines, without expanding A to the rows.

        Returns
        -------
        EMLMM

        Notes
        -----
        With several variance components the first kinship is eigendecomposed once
        and every other component enters through Woodbury's identity in its
        eigenbasis: an iteration costs ``O(n L^2 + L^3)`` for ``L`` columns of
        grouped effects in all (seconds for n = 2,000 and 100 cages). A second
        general kinship has ``L = n``: ``O(n^3)`` per iteration, as for any method
        without shared structure. One kinship alone keeps the spectral path
        (``O(n)`` per iteration).
        """
        check_formula_inputs(formula, data)
        vc_formula = check_vc_formula(vc_formula)
        data = formula_data(pd.DataFrame(data) if isinstance(data, dict) else data)
        if subset is not None:
            data = data.loc[subset]
        several = isinstance(kinship, dict) or bool(vc_formula) or kinship_ids is not None
        if several:  # several components use dense kinships
            kinship = _dense(kinship)
        if not several:
            kinship = align_kinship(kinship, data.index)
        elif kinship_ids is None:
            named = kinship if isinstance(kinship, dict) else {"kinship": kinship}
            aligned = {name: align_kinship(matrix, data.index) for name, matrix in named.items()}
            kinship = aligned if isinstance(kinship, dict) else aligned["kinship"]
        # As in statsmodels, eval_env=0 (the default) is the caller's namespace. It is
        # captured here, once, and handed down as values.
        eval_env = kwargs.pop("eval_env", None)
        if eval_env is None:
            eval_env = 0
        if isinstance(eval_env, (int, np.integer)) and eval_env >= 0:
            eval_env = capture_namespace(int(eval_env))
        kwargs["eval_env"] = eval_env
        if several:
            namespace = (
                patsy.EvalEnvironment([eval_env]) if isinstance(eval_env, dict) else eval_env
            )
            if vc_formula:
                # Rows missing a variable of a variance component are left out, as rows
                # missing one of the formula's (with their kinship rows and columns).
                complete = np.ones(len(data), dtype=bool)
                for term in vc_formula.values():
                    kept = patsy.dmatrix(term, data, eval_env=namespace, NA_action="drop",
                                         return_type="dataframe").index  # fmt: skip
                    complete &= data.index.isin(kept)
                if not complete.all():
                    data, kinship = _drop_rows(data, kinship, complete, kinship_ids)
                kwargs["exog_vc"] = {
                    name: patsy.dmatrix(
                        term,
                        data,
                        eval_env=namespace,
                        NA_action="raise",
                        return_type="dataframe",
                    )
                    for name, term in vc_formula.items()
                }
            if kinship_ids is not None:
                if kinship_ids not in data.columns:
                    raise ValueError(f"kinship_ids={kinship_ids!r} is not a column of data")
                kwargs["kinship_ids"] = data[kinship_ids].to_numpy()
        return super().from_formula(
            formula, data, None, drop_cols, *args, kinship=kinship, **kwargs
        )

    def initialize(self) -> None:
        self.nobs = float(self.endog.shape[0])
        self.k_exog = int(self.exog.shape[1])
        self.rank = self.k_exog
        self.df_model = float(self.k_exog - self.k_constant)
        self.df_resid = float(self.nobs - self.k_exog)

    def loglike(self, params: ArrayLike, reml: bool = False) -> float:
        """Log-likelihood at ``params`` = (fixed effects..., sigma2_a, sigma2_e).

        The full Gaussian log-likelihood (constant included), comparable with
        ``OLS(...).fit().llf``; with ``reml=True`` the restricted likelihood of
        the variance components (the fixed effects in ``params`` are then ignored).
        """
        coefficients, sigma2_a, sigma2_e = self._unpack(params)
        data = self._fit_data
        estimate = data.from_user(coefficients, sigma2_a, sigma2_e)
        return float(_em.criterion(data.rotated, estimate, reml)) + data.llf_offset(reml)

    def predict(
        self, params: ArrayLike, exog: ArrayLike | None = None, which: str = "mean"
    ) -> NDArray[np.float64]:
        """Marginal mean ``exog @ params`` (fixed effects only; ``which`` is "mean" or
        "linear", the same here, as statsmodels' prediction tools ask for either)."""
        check_choice("which", which, ("mean", "linear"))
        exog = self.exog if exog is None else np.asarray(exog, dtype=float)
        return exog @ np.asarray(params, dtype=float)[: self.k_exog]

    def _unpack(self, params: ArrayLike) -> tuple[NDArray[np.float64], float, float]:
        values = np.asarray(params, dtype=float)
        if values.shape != (self.k_exog + 2,):
            raise ValueError(
                f"params must hold {self.k_exog} fixed effects followed by sigma2_a and "
                f"sigma2_e ({self.k_exog + 2} values); got shape {values.shape}"
            )
        if not np.isfinite(values).all():
            raise ValueError(f"params must be finite; got {values}")
        if values[-2] < 0 or values[-1] <= 0:
            raise ValueError(
                f"variances must satisfy sigma2_a >= 0 and sigma2_e > 0; got {values[-2:]}"
            )
        return values[: self.k_exog], float(values[-2]), float(values[-1])

    def _start(
        self, data: FitData, start_params: ArrayLike | str | None, reml: bool
    ) -> _em.Estimate:
        """Start values in the units of ``data``'s numerics."""
        if start_params is None:
            return _em.grid_start(data.rotated, reml)
        if isinstance(start_params, str):
            if start_params != "lab":
                raise ValueError(
                    f"start_params must be None, 'lab' or an array, not {start_params!r}"
                )
            return data.from_user(
                np.zeros(self.k_exog), _em.LAB_START_SIGMA2_A, _em.LAB_START_SIGMA2_E
            )
        coefficients, sigma2_a, sigma2_e = self._unpack(start_params)
        if sigma2_a == 0.0:
            raise ValueError("EM cannot leave sigma2_a = 0; start it at a positive value")
        return data.from_user(coefficients, sigma2_a, sigma2_e)

    def fit(
        self,
        start_params: ArrayLike | str | None = None,
        method: FitMethod = "accelerated",
        maxiter: int = 10_000,
        tol: float | None = None,
        reml: bool = False,
        disp: bool = False,
        use_t: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Fit by EM.

        Parameters
        ----------
        start_params : None, "lab" or array_like
            ``None`` (default) starts from the best heritability on a grid;
            ``"lab"`` from the lab's values (sigma2_a = 70, sigma2_e = 10,
            beta = 0); an array gives fixed effects, sigma2_a and sigma2_e.
        method : {"accelerated", "em", "lab"}
            ``"em"``: plain EM in the lab's order of updates, stopping when the gain a
            Fisher-scoring step predicts is below ``tol`` (default 1e-12), which
            EM's slow crawl near sigma2_a = 0 cannot fool; a maximum on the
            boundary sigma2_a = 0 (or sigma2_e = 0) is detected and taken.
            ``"accelerated"`` (the default): the same, with each EM step followed
            by that Fisher-scoring step wherever it raises the likelihood further:
            the same maximum in a handful of iterations where EM needs hundreds
            or thousands. Use ``"em"`` to follow the lab's trajectory. ``"lab"``: the
            lab's algorithm verbatim, including its stopping rule (an iteration
            gains less than ``tol``, default 1e-5) and its ``ginv`` treatment of
            a singular kinship, which does not maximise the likelihood.
        maxiter : int
            Maximum number of EM iterations; reaching it raises a
            :class:`~statsmodels.tools.sm_exceptions.ConvergenceWarning`.
        tol : float, optional
            Convergence tolerance (see ``method``).
        reml : bool
            Restricted maximum likelihood by REML EM updates (``"em"`` and
            ``"accelerated"``; the lab's algorithm is ML only).
        disp : bool
            Print one line per iteration, as the lab asks:
            ``iteration = 1, loglikelihood = -500.123`` (the log-likelihood ``llf``
            reports). With ``method="lab"`` the lines are the lab's own: its
            ``log_L`` (R's value, which leaves out the constant ``-n/2 log 2 pi``
            that ``llf`` includes) to 9 decimals, numbered as R's ``log_L`` vector
            (1 is the start values, k + 1 after iteration k), so they match the
            lab's R output line by line.
        use_t : bool
            Use t rather than normal reference distributions for the fixed effects.

        Returns
        -------
        EMLMMResultsWrapper
            Results whose ``params`` carry the design's column names.
        """
        from emlmm.results import EMLMMResults, EMLMMResultsWrapper

        if kwargs:
            raise TypeError(f"fit() got unexpected keyword arguments {sorted(kwargs)}")
        check_choice("method", method, ("accelerated", "em", "lab"))
        if self.components is not None:
            from emlmm.results import ComponentsResults, ComponentsResultsWrapper

            fit = self._component_trace(start_params, method, maxiter, tol, reml, disp)
            return ComponentsResultsWrapper(
                ComponentsResults(self, fit, reml=reml, method=method, use_t=use_t)
            )
        trace, data = self._fit_trace(start_params, method, maxiter, tol, reml, disp)
        results = EMLMMResults(self, trace, data, reml=reml, method=method, use_t=use_t)
        return EMLMMResultsWrapper(results)

    def fit_for_scan(
        self, maxiter: int = 10_000, tol: float = _em.DEFAULT_TOLERANCE
    ) -> NullFit | ComponentsNullFit:
        """Fit this model as a scan's null model: the values a genome scan needs.

        A scan (:class:`emlmm.GenomeScan`) tests each SNP against this model. It needs
        the model's ML and REML estimates and the data they were computed from, not
        the model itself; they are handed over as a frozen :class:`~emlmm.model.NullFit`.

        Parameters
        ----------
        maxiter, tol : int, float
            As for :meth:`fit` (accelerated EM).

        Returns
        -------
        NullFit or ComponentsNullFit
            The latter for a model with several variance components.

        Examples
        --------
        >>> from emlmm import EMLMM
        >>> from emlmm.datasets import load_lab
        >>> lab = load_lab()
        >>> model = EMLMM.from_formula("y ~ 1", lab.phenotype.to_frame(), kinship=lab.kinship)
        >>> null = model.fit_for_scan()
        >>> bool(null.ml.sigma2_a == model.fit().sigma2_a / null.data.endog_scale**2)
        True
        """
        if self.components is not None:
            ml_theta, reml_theta = (
                self._component_trace(None, "accelerated", maxiter, tol, reml, False).theta
                for reml in (False, True)
            )
            return ComponentsNullFit(
                self._fit_data, self._component_data, self.spectrum.eigenvectors,
                ml_theta, reml_theta,
            )  # fmt: skip
        maxiter, checked_tol, _ = _check_fit_arguments(maxiter, tol, False)
        tol = _em.DEFAULT_TOLERANCE if checked_tol is None else checked_tol
        return _fitting.fit_null(self.spectrum, self._fit_data, maxiter, tol)

    def _fit_trace(
        self,
        start_params: ArrayLike | str | None,
        method: FitMethod,
        maxiter: int,
        tol: float | None,
        reml: bool,
        disp: bool,
    ) -> tuple[_em.EMTrace, FitData]:
        """Run EM (checking the arguments) and return its trace and the data it saw."""
        maxiter, tol, reml = _check_fit_arguments(maxiter, tol, reml)
        lab = method == "lab"
        if lab and reml:
            raise ValueError("the lab's algorithm is maximum likelihood; use method='em' for REML")
        if lab and self.spectrum.rank < self.spectrum.n:
            warnings.warn(
                f"the kinship is singular (rank {self.spectrum.rank} of {self.spectrum.n}); "
                "the lab's ginv-based EM then does not maximise the likelihood (it "
                "leaves the fixed effects in the kinship's null space where they start). "
                "Use method='em' for the maximum-likelihood fit.",
                ModelWarning,
                stacklevel=3,
            )
        if tol is None:
            tol = _em.LAB_TOLERANCE if lab else _em.DEFAULT_TOLERANCE
        data = self._lab_data if lab else self._fit_data
        offset = data.llf_offset(reml)
        start = self._start(data, start_params, reml)
        callback = None
        if disp and lab:
            # The lab's own log_L (without -n/2 log 2 pi), numbered as R's log_L vector:
            # 1 is the start, k + 1 after iteration k; so it reads as the student's R.
            offset += 0.5 * data.rotated.nobs * _em.LOG_2PI
            print(_lab_line(1, float(_em.criterion(data.rotated, start, False)) + offset))
            callback = lambda k, value: print(_lab_line(k + 1, value + offset))  # noqa: E731
        elif disp:
            callback = lambda k, value: _print_iteration(k, value + offset)  # noqa: E731
        trace = _fitting.run_em(
            data,
            start,
            reml=reml,
            method=method,
            maxiter=maxiter,
            tol=tol,
            callback=callback,
            stacklevel=3,
        )
        return trace, data


def _check_fit_arguments(maxiter: Any, tol: Any, reml: Any) -> tuple[int, float | None, bool]:
    """``maxiter``, ``tol`` (None: the method's default) and ``reml``, checked."""
    return (
        check_count("maxiter", maxiter),
        None if tol is None else check_positive("tol", tol),
        check_flag("reml", reml),
    )


def _lab_line(iteration: int, log_l: float) -> str:
    """A line as the lab asks for it, with R's precision (``print`` shows 7 digits;
    these are 9 decimals, so they match the student's to the last digit shown)."""
    return f"iteration = {iteration}, loglikelihood = {log_l:.9f}"


def _print_iteration(iteration: int, llf: float) -> None:
    print(f"iteration = {iteration}, loglikelihood = {llf:.3f}")


@dataclass(frozen=True)
class ComponentsNullFit:
    """A fitted null model with several variance components, as the values a genome
    scan needs (from :meth:`emlmm.EMLMM.fit_for_scan`).

    Attributes
    ----------
    data : emlmm._design.FitData
        The scaled, rotated null data (its maps back to the user's units).
    components : emlmm._components.ComponentData
        The components' structure in the same coordinates.
    eigenvectors : ndarray of shape (n, n)
        The rotation: a SNP's rotated genotypes are ``g @ eigenvectors``.
    ml, reml : ndarray
        The variances at the ML and REML maxima (scaled units), the residual last.
    """

    data: FitData
    components: _components.ComponentData
    eigenvectors: NDArray[np.float64]
    ml: NDArray[np.float64]
    reml: NDArray[np.float64]


@dataclass(frozen=True)
class _ComponentSpec:
    """The variance components of a model with more than one: kinships (the first is
    diagonalised; with ``ids``, kinships of the ids, labelled) and grouped effects
    (one design matrix each, a column per level), for the input's rows."""

    kinships: tuple[tuple[str, Any], ...]
    groups: tuple[tuple[str, NDArray[np.float64], tuple[str, ...]], ...]
    ids: NDArray[Any] | None

    @classmethod
    def build(
        cls,
        kinship: Any,
        exog_vc: dict[str, Any] | None,
        kinship_ids: ArrayLike | None,
        n_rows: int,
        index: pd.Index | None,
    ) -> _ComponentSpec:
        named = dict(kinship) if isinstance(kinship, dict) else {"kinship": kinship}
        if not named:
            raise ValueError("kinship must hold at least one matrix")
        ids = None
        kinships: list[tuple[str, Any]] = []
        if kinship_ids is not None:
            ids = np.asarray(kinship_ids, dtype=object)
            if ids.shape != (n_rows,):
                raise ValueError(
                    f"kinship_ids must give one id per row ({n_rows}); got shape {ids.shape}"
                )
            if pd.isna(ids).any():
                raise ValueError("kinship_ids has missing values: drop those rows first")
            for name, matrix in named.items():
                if not isinstance(matrix, pd.DataFrame):
                    raise TypeError(
                        f"with kinship_ids, kinship {name!r} must be a DataFrame labelled by "
                        "those ids"
                    )
                absent = pd.Index(pd.unique(ids)).difference(matrix.index)
                if len(absent):
                    raise ValueError(
                        f"{len(absent)} ids of kinship_ids have no row in kinship {name!r}: "
                        f"{', '.join(map(repr, list(absent)[:5]))}"
                    )
                kinships.append((str(name), matrix))
        else:
            for name, matrix in named.items():
                if index is not None:
                    matrix = align_kinship(matrix, index)
                kinships.append((str(name), check_kinship(matrix, n_rows)))
        groups = []
        for name, design in (exog_vc or {}).items():
            labels = (
                tuple(map(str, design.columns))
                if isinstance(design, pd.DataFrame)
                else tuple(f"{name}[{j}]" for j in range(np.shape(design)[1]))
            )
            values = np.asarray(design, dtype=np.float64)
            if values.ndim != 2 or values.shape[0] != n_rows:
                raise ValueError(
                    f"the design of variance component {name!r} must have one row per "
                    f"observation ({n_rows}); got shape {values.shape}"
                )
            if not np.isfinite(values).all():
                raise ValueError(f"the design of variance component {name!r} has NaN or inf")
            groups.append((str(name), values, labels))
        names = [name for name, _ in kinships] + [name for name, _, _ in groups]
        if len(set(names)) != len(names) or "residual" in names:
            raise ValueError(
                f"variance components need distinct names other than 'residual': {names}"
            )
        return cls(tuple(kinships), tuple(groups), ids)

    @property
    def first_kinship(self) -> Any:
        """The kinship statsmodels carries along (and subsets by row and column)."""
        return self.kinships[0][1] if self.ids is None else None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.kinships] + [name for name, _, _ in self.groups]

    def for_rows(self, rows: NDArray[np.intp]) -> _ComponentSpec:
        """The components of the rows kept (missing values dropped)."""
        kinships = tuple(
            (name, matrix if self.ids is not None else matrix[np.ix_(rows, rows)])
            for name, matrix in self.kinships
        )
        groups = tuple((name, design[rows], labels) for name, design, labels in self.groups)
        return _ComponentSpec(kinships, groups, None if self.ids is None else self.ids[rows])


def _factor(matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """``Q L^{1/2}`` with ``A = Q L Q'`` (the eigenvalues within round-off of zero left
    out): ``A = F F'`` with as many columns as A's rank."""
    spectrum = KinshipSpectrum.from_kinship(matrix)
    positive = spectrum.eigenvalues > 0
    return spectrum.eigenvectors[:, positive] * np.sqrt(spectrum.eigenvalues[positive])


def _dense(kinship: Any) -> Any:
    """Kinships with every :class:`~emlmm.LowRankKinship` made dense."""
    if isinstance(kinship, dict):
        return {name: _dense(matrix) for name, matrix in kinship.items()}
    return kinship.to_dense() if isinstance(kinship, LowRankKinship) else kinship


def _drop_rows(
    data: pd.DataFrame, kinship: Any, keep: NDArray[np.bool_], kinship_ids: str | None
) -> tuple[pd.DataFrame, Any]:
    """``data``'s rows ``keep``, with the rows and columns of (aligned) kinships."""
    if kinship_ids is not None:
        return data[keep], kinship  # kinships of ids: nothing to drop
    named = kinship if isinstance(kinship, dict) else {"kinship": kinship}
    positions = np.nonzero(keep)[0]
    dropped = {
        name: (matrix.iloc[positions, positions] if isinstance(matrix, pd.DataFrame)
               else np.asarray(matrix)[np.ix_(positions, positions)])
        for name, matrix in named.items()
    }  # fmt: skip
    return data[keep], dropped if isinstance(kinship, dict) else dropped["kinship"]
