"""Diagnostic plots: EM convergence, Manhattan and QQ plots of GWAS p-values.

matplotlib is an optional dependency (``pip install "emlmm[plot]"``). It is imported
inside the plotting functions, so importing this module does not import matplotlib.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from numbers import Integral, Real
from types import ModuleType
from typing import TYPE_CHECKING, SupportsInt, cast

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy import stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["genomic_control_lambda", "manhattan", "plot_convergence", "qq"]

# Run the plotting doctests only where matplotlib is installed (pytest-doctestplus).
__doctest_requires__ = {("manhattan", "qq", "plot_convergence"): ["matplotlib"]}

#: Median of the chi-squared distribution with one degree of freedom.
_CHI2_1_MEDIAN = float(stats.chi2.ppf(0.5, 1))

_CHROMOSOME_COLORS = ("#1f4e79", "#7fa7cf")
_HIGHLIGHT_COLOR = "#d62728"
_THRESHOLD_COLOR = "0.25"
_NEG_LOG10_P = r"$-\log_{10}(p)$"
# Non-numeric chromosomes after the autosomes, in this order; others follow alphabetically.
_SEX_AND_MITO = {"X": 0, "Y": 1, "XY": 2, "M": 3, "MT": 3}


def _pyplot() -> ModuleType:
    """Import and return matplotlib.pyplot, with an actionable error if it is missing."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            'emlmm plotting needs matplotlib; install it with pip install "emlmm[plot]"'
        ) from err
    return plt


def _axes(ax: Axes | None) -> Axes:
    """Return ``ax``, or the Axes of a new figure when it is None."""
    if ax is not None:
        return ax
    _, new_ax = _pyplot().subplots()
    return new_ax


def _pvalue_array(pvalues: ArrayLike) -> NDArray[np.float64]:
    """Validated 1-D float array of the non-missing p-values."""
    values = np.asarray(pvalues, dtype=float).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise ValueError("no p-values to use: the input is empty or all NaN")
    if np.any((values < 0) | (values > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    return values


def _neg_log10(pvalues: NDArray[np.float64]) -> NDArray[np.float64]:
    """-log10 of p-values in [0, 1], with p = 0 mapped to the largest finite value."""
    positive = pvalues > 0
    scores = np.empty_like(pvalues)
    scores[positive] = -np.log10(pvalues[positive])
    if positive.any():
        top = float(scores[positive].max())
    else:
        top = -np.log10(np.finfo(float).tiny)
    scores[~positive] = top
    return scores


def genomic_control_lambda(pvalues: ArrayLike) -> float:
    """Genomic-control inflation factor of a set of p-values.

    Each p-value is turned into the chi-squared(1) statistic it corresponds to; the
    median of those statistics divided by the median of chi-squared(1) (about 0.4549) is
    the inflation factor lambda_GC. It is near 1 when the test statistics follow their
    null distribution and above 1 when they are inflated (e.g. by population structure).

    Parameters
    ----------
    pvalues : array_like
        P-values in [0, 1]. NaN values are ignored.

    Returns
    -------
    float
        ``median(chi2.isf(p, 1)) / chi2.ppf(0.5, 1)``.

    Raises
    ------
    ValueError
        If there are no non-NaN p-values or some lie outside [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> from emlmm.plotting import genomic_control_lambda
    >>> print(f"{genomic_control_lambda([0.5, 0.5, np.nan]):.3f}")
    1.000
    >>> from scipy import stats
    >>> rng = np.random.default_rng(0)
    >>> statistics = 1.2 * rng.chisquare(1, size=20_000)  # inflated by 1.2
    >>> print(f"{genomic_control_lambda(stats.chi2.sf(statistics, 1)):.1f}")
    1.2
    """
    values = _pvalue_array(pvalues)
    return float(np.median(stats.chi2.isf(values, 1)) / _CHI2_1_MEDIAN)


def qq(
    pvalues: ArrayLike,
    ax: Axes | None = None,
    ci: float | None = 0.95,
    label: str | None = None,
) -> Axes:
    """Quantile-quantile plot of p-values against the uniform distribution, on -log10 scale.

    The i-th smallest of n p-values is plotted against its expected value under the null,
    ``i / (n + 1)``, both as -log10. The diagonal marks perfect agreement; the shaded band
    is the pointwise confidence interval of each order statistic, which follows
    Beta(i, n - i + 1) under the null. The legend shows the genomic-control inflation
    factor (:func:`genomic_control_lambda`).

    Parameters
    ----------
    pvalues : array_like
        P-values in [0, 1]. NaN values are dropped. A p-value of 0 is plotted at the
        largest finite -log10(p) rather than at infinity.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure is created when None.
    ci : float or None, default 0.95
        Coverage of the pointwise confidence band; None draws no band.
    label : str, optional
        Legend label of the points; lambda_GC is appended to it.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If there are no non-NaN p-values, some lie outside [0, 1], or ``ci`` is not in (0, 1).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from emlmm.plotting import qq
    >>> pvalues = np.linspace(0.001, 0.999, 500)
    >>> ax = qq(pvalues, label="null")
    >>> print(ax.get_legend().get_texts()[0].get_text())
    null (λ_GC = 1.00)
    >>> print(len(ax.collections[-1].get_offsets()))
    500
    >>> plt.close(ax.figure)
    """
    _pyplot()
    if ci is not None and not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1) or None, got {ci!r}")
    values = np.sort(_pvalue_array(pvalues))
    n_points = values.size
    rank = np.arange(1, n_points + 1)
    expected = -np.log10(rank / (n_points + 1))
    observed = _neg_log10(values)
    inflation = genomic_control_lambda(values)

    ax = _axes(ax)
    if ci is not None:
        lower = stats.beta.ppf((1 - ci) / 2, rank, n_points - rank + 1)
        upper = stats.beta.ppf((1 + ci) / 2, rank, n_points - rank + 1)
        ax.fill_between(expected, -np.log10(upper), -np.log10(lower), color="0.85", lw=0)
    ax.plot([0, expected[0]], [0, expected[0]], color="0.4", lw=1, ls="--")
    text = f"λ_GC = {inflation:.2f}"
    ax.scatter(
        expected,
        observed,
        s=8,
        label=text if label is None else f"{label} ({text})",
    )
    ax.set_xlabel(f"expected {_NEG_LOG10_P}")
    ax.set_ylabel(f"observed {_NEG_LOG10_P}")
    ax.legend(loc="upper left")
    return ax


def _chromosome_label(value: object) -> str:
    """Text of a chromosome value, with integral floats (from NaN-padded columns) as ints."""
    if isinstance(value, Real) and not isinstance(value, Integral) and float(value).is_integer():
        # numbers.Real does not declare __int__, but the reals a chromosome column holds
        # (float, NumPy floating scalars) define it.
        return str(int(cast(SupportsInt, value)))
    return str(value)


def _chromosome_sort_key(label: str) -> tuple[int, int, str]:
    """Natural order: 1, 2, ..., 10, ..., 22, X, Y, XY, MT, then others alphabetically."""
    name = re.sub(r"^chr", "", label, flags=re.IGNORECASE)
    if name.isdigit():
        return (0, int(name), "")
    upper = name.upper()
    if upper in _SEX_AND_MITO:
        return (1, _SEX_AND_MITO[upper], "")
    return (2, 0, upper)


def manhattan(
    results: pd.DataFrame,
    ax: Axes | None = None,
    pvalue: str = "p_lrt",
    chr: str = "chr",
    pos: str = "pos",
    threshold: float | None = 5e-8,
    suggestive: float | None = None,
    highlight: Iterable[Hashable] | None = None,
) -> Axes:
    """Manhattan plot: -log10(p) of every SNP along the genome.

    Chromosomes are drawn in natural order (1, 2, ..., 10, ..., 22, X, Y, MT, with an
    optional ``chr`` prefix ignored when sorting) in alternating colours, each
    chromosome's SNPs ordered by position, and the x ticks sit at the chromosome centres.
    Without a chromosome column the SNPs are plotted against their row number.

    Parameters
    ----------
    results : pandas.DataFrame
        One row per SNP, indexed by SNP id, as returned by :func:`emlmm.gwas`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure is created when None.
    pvalue : str, default "p_lrt"
        Column holding the p-values. Rows with a NaN p-value are skipped. A p-value of
        0 is plotted at the largest finite -log10(p) rather than at infinity.
    chr : str, default "chr"
        Column holding the chromosome. When absent, the x axis is the SNP's row number.
    pos : str, default "pos"
        Column holding the base-pair position. When absent, SNPs keep their row order
        within each chromosome. Rows with a missing chromosome or position are skipped.
    threshold : float or None, default 5e-8
        Genome-wide significance level, drawn as a dashed horizontal line at
        -log10(threshold); None draws no line.
    suggestive : float or None, optional
        Suggestive significance level, drawn as a dotted line; None draws no line.
    highlight : iterable of hashable, optional
        SNP ids (index values of ``results``) drawn in a distinct colour on top of the
        others. Ids not in ``results`` are ignored.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    KeyError
        If ``results`` has no column named ``pvalue``.
    ValueError
        If there are no non-NaN p-values or some lie outside [0, 1].

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import pandas as pd
    >>> from emlmm.plotting import manhattan
    >>> results = pd.DataFrame(
    ...     {
    ...         "chr": [10, 2, 1, 1, 2],
    ...         "pos": [500, 300, 100, 200, 100],
    ...         "p_lrt": [0.3, 1e-9, 0.02, float("nan"), 0.7],
    ...     },
    ...     index=["rs5", "rs4", "rs1", "rs2", "rs3"],
    ... )
    >>> ax = manhattan(results, highlight=["rs4"])
    >>> print([tick.get_text() for tick in ax.get_xticklabels()])
    ['1', '2', '10']
    >>> print(sum(len(points.get_offsets()) for points in ax.collections))
    4
    >>> plt.close(ax.figure)
    """
    _pyplot()
    if pvalue not in results.columns:
        raise KeyError(f"results has no p-value column {pvalue!r}; pass pvalue=<column name>")
    has_chromosome = chr in results.columns
    table = pd.DataFrame({"p": results[pvalue].to_numpy(dtype=float)}, index=results.index)
    table["row"] = np.arange(len(table))
    if has_chromosome:
        table["chromosome"] = results[chr].to_numpy()
        if pos in results.columns:
            table["position"] = results[pos].to_numpy(dtype=float)
        else:
            table["position"] = table["row"].astype(float)
        table = table.dropna(subset=["chromosome", "position"])
    table = table[table["p"].notna()]
    scores = _neg_log10(_pvalue_array(table["p"].to_numpy()))

    ax = _axes(ax)
    x = np.empty(len(table))
    colors = np.empty(len(table), dtype=object)
    if has_chromosome:
        labels = table["chromosome"].map(_chromosome_label).to_numpy()
        positions = table["position"].to_numpy()
        order = sorted(set(labels), key=_chromosome_sort_key)
        spans = {name: np.ptp(positions[labels == name]) for name in order}
        gap = 0.02 * max(sum(spans.values()), 1.0)
        offset = 0.0
        centres = []
        for number, name in enumerate(order):
            on_chromosome = labels == name
            x[on_chromosome] = offset + positions[on_chromosome] - positions[on_chromosome].min()
            colors[on_chromosome] = _CHROMOSOME_COLORS[number % 2]
            centres.append(offset + spans[name] / 2)
            offset += spans[name] + gap
        ax.set_xticks(centres, order)
        ax.set_xlabel("chromosome")
    else:
        x[:] = table["row"].to_numpy()
        colors[:] = _CHROMOSOME_COLORS[0]
        ax.set_xlabel("SNP index")

    highlighted = np.zeros(len(table), dtype=bool)
    if highlight is not None:
        highlighted = table.index.isin(list(highlight))
    plain = ~highlighted
    ax.scatter(x[plain], scores[plain], c=list(colors[plain]), s=8, linewidths=0)
    if highlighted.any():
        ax.scatter(
            x[highlighted], scores[highlighted], c=_HIGHLIGHT_COLOR, s=16, linewidths=0, zorder=3
        )
    if threshold is not None:
        ax.axhline(-np.log10(threshold), color=_THRESHOLD_COLOR, lw=1, ls="--")
    if suggestive is not None:
        ax.axhline(-np.log10(suggestive), color=_THRESHOLD_COLOR, lw=1, ls=":")
    ax.set_ylim(bottom=0)
    ax.set_ylabel(_NEG_LOG10_P)
    return ax


def plot_convergence(
    llf_history: ArrayLike,
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """Plot the log-likelihood at each EM iteration.

    Parameters
    ----------
    llf_history : array_like
        Log-likelihood (or REML criterion) by iteration; entry 0 is the value at the
        start values, entry i the value after iteration i (``EMLMMResults.llf_history``).
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure is created when None.
    label : str, optional
        Legend label of the line; a legend is drawn only when given.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.

    Raises
    ------
    ImportError
        If matplotlib is not installed.
    ValueError
        If ``llf_history`` is not a non-empty 1-D array.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from emlmm.plotting import plot_convergence
    >>> ax = plot_convergence([-120.0, -101.5, -100.2, -100.1])
    >>> line = ax.get_lines()[0]
    >>> print(line.get_xdata().tolist(), line.get_ydata().tolist())
    [0, 1, 2, 3] [-120.0, -101.5, -100.2, -100.1]
    >>> plt.close(ax.figure)
    """
    _pyplot()
    from matplotlib.ticker import MaxNLocator

    history = np.asarray(llf_history, dtype=float)
    if history.ndim != 1 or history.size == 0:
        raise ValueError(f"llf_history must be a non-empty 1-D array, got shape {history.shape}")
    ax = _axes(ax)
    ax.plot(np.arange(history.size), history, marker="o", markersize=4, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("log-likelihood")
    if label is not None:
        ax.legend()
    return ax
