"""Tests of emlmm.plotting: genomic-control lambda, QQ, Manhattan and convergence plots."""

import itertools
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from emlmm import plotting  # noqa: E402
from emlmm.plotting import genomic_control_lambda, manhattan, plot_convergence, qq  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def scatters(ax):
    """Every scatter drawn on ax, in drawing order."""
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def points(ax):
    """Offsets of every scatter drawn on ax, in drawing order."""
    return [c.get_offsets() for c in scatters(ax)]


def n_points(ax):
    return sum(len(offsets) for offsets in points(ax))


@pytest.fixture
def gwas_results():
    """A small GWAS table over chromosomes given out of order, with a NaN and a zero p."""
    rng = np.random.default_rng(3)
    chromosomes = ["10", "2", "1", "X", "2", "1", "10", "1", "X", "2"]
    positions = rng.integers(1, 10_000, size=len(chromosomes))
    pvalues = rng.uniform(size=len(chromosomes))
    pvalues[1] = np.nan
    pvalues[4] = 0.0
    pvalues[6] = 1e-12
    index = [f"rs{i}" for i in range(len(chromosomes))]
    return pd.DataFrame({"chr": chromosomes, "pos": positions, "p_lrt": pvalues}, index=index)


# --- genomic_control_lambda ------------------------------------------------------------


def test_lambda_exact_on_tiny_set():
    pvalues = [0.01, np.nan, 0.2, 0.5]
    # chi2(1) quantiles are squared normal quantiles; the median of the three is at p = 0.2.
    expected = stats.norm.isf(0.2 / 2) ** 2 / stats.norm.isf(0.25) ** 2
    assert genomic_control_lambda(pvalues) == pytest.approx(expected, rel=1e-12)


def test_lambda_uniform_is_one():
    rng = np.random.default_rng(0)
    assert genomic_control_lambda(rng.uniform(size=50_000)) == pytest.approx(1.0, abs=0.04)


def test_lambda_detects_inflation():
    rng = np.random.default_rng(1)
    statistics = (1.5 * rng.standard_normal(50_000)) ** 2
    pvalues = stats.chi2.sf(statistics, 1)
    assert genomic_control_lambda(pvalues) == pytest.approx(2.25, rel=0.03)


@pytest.mark.parametrize("pvalues", [[], [np.nan, np.nan], [0.5, 1.5], [-0.1]])
def test_lambda_rejects_bad_input(pvalues):
    with pytest.raises(ValueError, match="p-values"):
        genomic_control_lambda(pvalues)


# --- qq --------------------------------------------------------------------------------


def test_qq_points_band_and_lambda():
    rng = np.random.default_rng(2)
    pvalues = rng.uniform(size=200)
    pvalues[[3, 50]] = np.nan
    pvalues[7] = 0.0
    ax = qq(pvalues, label="scan")

    (offsets,) = points(ax)
    assert len(offsets) == 198
    n = len(offsets)
    np.testing.assert_allclose(offsets[:, 0], -np.log10(np.arange(1, n + 1) / (n + 1)))
    assert np.all(np.isfinite(offsets))
    finite = np.sort(pvalues[pvalues > 0])
    assert offsets[:, 1].max() == pytest.approx(-np.log10(finite[0]))

    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    lam = genomic_control_lambda(pvalues)
    assert ax.get_legend().get_texts()[0].get_text() == f"scan (λ_GC = {lam:.2f})"


def test_qq_without_band_on_given_axes():
    _, ax = plt.subplots()
    assert qq([0.1, 0.5, 0.9], ax=ax, ci=None) is ax
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert ax.get_legend().get_texts()[0].get_text().startswith("λ_GC = ")


def test_qq_rejects_bad_ci():
    with pytest.raises(ValueError, match="ci"):
        qq([0.1, 0.5], ci=1.5)


# --- manhattan -------------------------------------------------------------------------


def test_manhattan_points_and_natural_chromosome_order(gwas_results):
    ax = manhattan(gwas_results)
    assert n_points(ax) == 9  # one NaN p-value dropped
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "10", "X"]
    ticks = ax.get_xticks()
    assert np.all(np.diff(ticks) > 0)
    # Every SNP lies on its chromosome's stretch of the axis, in position order.
    (offsets,) = points(ax)
    kept = gwas_results[gwas_results.p_lrt.notna()]
    for name in ["1", "2", "10", "X"]:
        on = (kept.chr == name).to_numpy()
        x = offsets[on, 0]
        order = np.argsort(kept.pos.to_numpy()[on], kind="stable")
        assert np.all(np.diff(x[order]) >= 0)
    x_by_chromosome = [offsets[(kept.chr == name).to_numpy(), 0] for name in ["1", "2", "10", "X"]]
    for left, right in itertools.pairwise(x_by_chromosome):
        assert left.max() < right.min()


def test_manhattan_alternating_colours(gwas_results):
    ax = manhattan(gwas_results)
    (scatter,) = scatters(ax)
    colours = {tuple(c) for c in scatter.get_facecolors()}
    assert colours == {to_rgba(c) for c in plotting._CHROMOSOME_COLORS}


def test_manhattan_chromosome_names_with_prefix_and_numbers():
    results = pd.DataFrame(
        {"chr": ["chr10", "chr2", "chrX", "chr1"], "pos": [1, 1, 1, 1], "p_lrt": [0.5] * 4}
    )
    ax = manhattan(results)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["chr1", "chr2", "chr10", "chrX"]
    numeric = pd.DataFrame({"chr": [10.0, 2.0, 1.0], "pos": [5, 5, 5], "p_lrt": [0.5] * 3})
    ax = manhattan(numeric)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "10"]


def test_manhattan_threshold_lines(gwas_results):
    ax = manhattan(gwas_results, threshold=1e-6, suggestive=1e-4)
    heights = sorted(line.get_ydata()[0] for line in ax.get_lines())
    np.testing.assert_allclose(heights, [4.0, 6.0])
    ax = manhattan(gwas_results, threshold=None)
    assert not ax.get_lines()


def test_manhattan_highlight_colour(gwas_results):
    highlight = ["rs0", "rs6", "rs1", "not_a_snp"]  # rs1 has a NaN p-value
    ax = manhattan(gwas_results, highlight=highlight)
    plain, highlighted = points(ax)
    assert len(plain) == 7
    assert len(highlighted) == 2
    plain_scatter, highlight_scatter = scatters(ax)
    highlight_rgba = to_rgba(plotting._HIGHLIGHT_COLOR)
    np.testing.assert_allclose(highlight_scatter.get_facecolors(), [highlight_rgba])
    assert highlight_rgba not in {tuple(c) for c in plain_scatter.get_facecolors()}
    expected = -np.log10(gwas_results.p_lrt[["rs0", "rs6"]].to_numpy())
    np.testing.assert_allclose(sorted(highlighted[:, 1]), sorted(expected))


def test_manhattan_zero_pvalue_at_top_finite_value(gwas_results):
    ax = manhattan(gwas_results)
    heights = np.concatenate([offsets[:, 1] for offsets in points(ax)])
    assert np.all(np.isfinite(heights))
    assert heights.max() == pytest.approx(12.0)
    assert np.sum(heights == heights.max()) == 2  # the 1e-12 SNP and the p = 0 SNP
    assert np.isfinite(ax.get_ylim()[1])


def test_manhattan_without_chromosome_uses_index():
    results = pd.DataFrame({"p": [0.1, np.nan, 0.01, 0.5]}, index=list("abcd"))
    ax = manhattan(results, pvalue="p", threshold=None)
    (offsets,) = points(ax)
    np.testing.assert_allclose(offsets, [[0, 1], [2, 2], [3, -np.log10(0.5)]])
    assert ax.get_xlabel() == "SNP index"


def test_manhattan_missing_pvalue_column(gwas_results):
    with pytest.raises(KeyError, match="p_wald"):
        manhattan(gwas_results, pvalue="p_wald")


# --- plot_convergence ------------------------------------------------------------------


def test_plot_convergence_line_is_history():
    history = np.array([-250.0, -231.2, -230.05, -230.01])
    _, ax = plt.subplots()
    assert plot_convergence(history, ax=ax, label="EM") is ax
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), np.arange(4))
    np.testing.assert_array_equal(line.get_ydata(), history)
    assert line.get_marker() not in (None, "None", "")
    assert ax.get_xlabel() == "iteration"
    assert ax.get_ylabel() == "log-likelihood"
    assert ax.get_legend().get_texts()[0].get_text() == "EM"


def test_plot_convergence_rejects_empty():
    with pytest.raises(ValueError, match="llf_history"):
        plot_convergence([])


# --- optional dependency ---------------------------------------------------------------


def test_import_does_not_import_matplotlib():
    code = "import sys, emlmm, emlmm.plotting; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "emlmm\[plot\]"'):
        qq([0.5])
    # Pure-numpy helper still works.
    assert genomic_control_lambda([0.5]) == pytest.approx(1.0)
