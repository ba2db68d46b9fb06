"""EMLMM fits against independent references: MixedLM, a dense oracle, OLS, closed forms."""

import re
import warnings

import dense
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.tools.sm_exceptions import ConvergenceWarning, ModelWarning

from emlmm import EMLMM, EMLMMResults

FORMULA = "y ~ 1 + x + sex"


@pytest.mark.parametrize("reml", [False, True])
def test_block_diagonal_kinship_matches_mixedlm(grouped, reml):
    df, kinship = grouped
    ours = EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit(reml=reml)
    with warnings.catch_warnings():  # gtol is tighter than MixedLM's own convergence flag
        warnings.simplefilter("ignore")
        theirs = smf.mixedlm(FORMULA, df, groups="g").fit(reml=reml, method="bfgs", gtol=1e-10)
    k = len(ours.params)
    np.testing.assert_allclose(ours.params, theirs.fe_params, rtol=1e-6)
    np.testing.assert_allclose(ours.sigma2_e, theirs.scale, rtol=1e-5)
    np.testing.assert_allclose(ours.sigma2_a, theirs.cov_re.iloc[0, 0], rtol=1e-5)
    np.testing.assert_allclose(ours.llf, theirs.llf, rtol=1e-9)
    assert list(ours.params.index) == list(theirs.params.index[:k])
    assert ours.converged


@pytest.mark.parametrize("reml", [False, True])
def test_em_optimum_is_the_dense_maximum(genomic, reml):
    y, X, kinship = genomic
    ours = EMLMM(y, X, kinship).fit(reml=reml)
    oracle = dense.maximise(y, X, kinship, reml=reml)
    np.testing.assert_allclose(ours.llf, oracle.llf, rtol=1e-10)
    np.testing.assert_allclose(
        [ours.sigma2_a, ours.sigma2_e], [oracle.sigma2_a, oracle.sigma2_e], rtol=1e-5
    )
    np.testing.assert_allclose(ours.params, oracle.beta, rtol=1e-6)
    np.testing.assert_allclose(ours.cov_params(), oracle.cov_beta, rtol=1e-5)


@pytest.mark.parametrize("reml", [False, True])
def test_loglike_and_information_match_dense_formulas(genomic, reml):
    y, X, kinship = genomic
    model = EMLMM(y, X, kinship)
    beta, s2a, s2e = np.array([9.0, 0.4]), 2.5, 1.3
    if reml:
        expected = dense.reml_loglike(y, X, kinship, s2a, s2e)
    else:
        expected = dense.loglike(y, X, kinship, beta, s2a, s2e)
    assert model.loglike(np.r_[beta, s2a, s2e], reml=reml) == pytest.approx(expected, rel=1e-12)
    result = model.fit(reml=reml)
    information = dense.expected_information(X, kinship, result.sigma2_a, result.sigma2_e, reml)
    np.testing.assert_allclose(
        result.cov_variance_components, np.linalg.inv(information), rtol=1e-8
    )
    assert result.bse_sigma2_a == pytest.approx(np.sqrt(np.linalg.inv(information)[0, 0]))


def test_results_quantities_follow_their_definitions(genomic):
    y, X, kinship = genomic
    result = EMLMM(y, X, kinship).fit()
    n, k = X.shape
    V = dense.covariance(kinship, result.sigma2_a, result.sigma2_e)
    blup = result.sigma2_a * kinship @ np.linalg.solve(V, y - X @ result.params)
    np.testing.assert_allclose(result.random_effects, blup, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.fittedvalues, X @ result.params + blup, rtol=1e-8)
    np.testing.assert_allclose(result.resid, y - result.fittedvalues, atol=1e-10)
    assert result.aic == pytest.approx(-2 * result.llf + 2 * (k + 2))
    assert result.bic == pytest.approx(-2 * result.llf + np.log(n) * (k + 2))
    mean_diagonal = np.trace(kinship) / n
    h2 = result.sigma2_a * mean_diagonal / (result.sigma2_a * mean_diagonal + result.sigma2_e)
    assert result.h2 == pytest.approx(h2)
    z = result.params / np.sqrt(np.diag(result.cov_params()))
    np.testing.assert_allclose(result.tvalues, z)
    np.testing.assert_allclose(result.pvalues, 2 * stats.norm.sf(np.abs(z)))
    np.testing.assert_allclose(result.predict(), X @ result.params)
    assert isinstance(result._results, EMLMMResults)


def test_llf_history_never_decreases_and_ends_at_llf(genomic):
    y, X, kinship = genomic
    result = EMLMM(y, X, kinship).fit(start_params="lab", method="em")
    assert np.all(np.diff(result.llf_history) >= -1e-9)
    assert result.llf_history[-1] == result.llf
    assert len(result.llf_history) == result.n_iter + 1


def test_zero_kinship_variance_lands_on_the_boundary_and_equals_ols():
    rng = np.random.default_rng(3)
    n = 120
    kinship = dense.random_genotype_kinship(rng, n, 300)
    X = sm.add_constant(rng.normal(size=n))
    y = X @ [1.0, 2.0] + rng.normal(size=n)  # no kinship effect at all
    result = EMLMM(y, X, kinship).fit()
    ols = sm.OLS(y, X).fit()
    if result.sigma2_a == 0.0:  # the ML estimate is on the boundary for this seed
        assert result.converged
        assert result.llf == pytest.approx(ols.llf, rel=1e-12)
        np.testing.assert_allclose(result.params, ols.params, rtol=1e-10)
        assert result.lr_test_ols().pvalue == 1.0
    else:
        pytest.fail(f"expected a boundary estimate, got sigma2_a = {result.sigma2_a}")


def test_lr_test_ols_matches_an_ols_fit(grouped):
    df, kinship = grouped
    result = EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit()
    ols = smf.ols(FORMULA, df).fit()
    test = result.lr_test_ols()
    assert test.statistic == pytest.approx(2 * (result.llf - ols.llf))
    assert test.df == 1
    assert test.pvalue_naive == pytest.approx(stats.chi2.sf(test.statistic, 1))
    assert test.pvalue == pytest.approx(test.pvalue_naive / 2)


def test_compare_lr_test_against_nested_fit(grouped):
    df, kinship = grouped
    full = EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit()
    small = EMLMM.from_formula("y ~ 1 + x", data=df, kinship=kinship).fit()
    lr_stat, p_value, df_diff = full.compare_lr_test(small)
    assert df_diff == 1
    assert lr_stat == pytest.approx(2 * (full.llf - small.llf))
    assert p_value == pytest.approx(stats.chi2.sf(lr_stat, 1))


def test_compare_lr_test_refuses_what_it_cannot_compare(grouped):
    df, kinship = grouped
    full = EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit()
    with pytest.raises(ValueError, match="not nested"):
        full.compare_lr_test(
            EMLMM.from_formula("y ~ 1 + np.exp(x)", data=df, kinship=kinship).fit()
        )
    with pytest.raises(ValueError, match="larger model"):
        EMLMM.from_formula("y ~ 1", data=df, kinship=kinship).fit().compare_lr_test(full)
    with pytest.raises(ValueError, match="REML"):
        EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit(reml=True).compare_lr_test(
            EMLMM.from_formula("y ~ 1", data=df, kinship=kinship).fit(reml=True)
        )
    other = df.assign(y=df.y[::-1].to_numpy())
    with pytest.raises(ValueError, match="different responses"):
        full.compare_lr_test(EMLMM.from_formula("y ~ 1", data=other, kinship=kinship).fit())
    with pytest.raises(ValueError, match="different kinship"):
        full.compare_lr_test(EMLMM.from_formula("y ~ 1", data=df, kinship=2 * kinship).fit())
    with pytest.raises(TypeError, match="EMLMM fit"):
        full.compare_lr_test(smf.ols("y ~ 1", df).fit())


def test_compare_lr_test_of_two_fits_of_one_size_says_why(grouped):
    df, kinship = grouped
    full = EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit()
    with pytest.raises(ValueError, match="both fits have 3 fixed effects"):
        full.compare_lr_test(full)


def test_t_test_and_wald_test_use_labelled_params(grouped):
    df, kinship = grouped
    result = EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit()
    t = result.t_test("x = 1.5")
    assert t.effect[0] == pytest.approx(result.params["x"])
    assert t.tvalue[0, 0] == pytest.approx((result.params["x"] - 1.5) / result.bse["x"])
    assert t.sd[0, 0] == pytest.approx(result.bse["x"])
    wald = result.wald_test("x = 0, sex[T.M] = 0", scalar=True)
    b = result.params[["x", "sex[T.M]"]].to_numpy()
    cov = result.cov_params().loc[["x", "sex[T.M]"], ["x", "sex[T.M]"]].to_numpy()
    assert wald.statistic == pytest.approx(b @ np.linalg.solve(cov, b))
    assert result.conf_int().loc["x", 0] == pytest.approx(
        result.params["x"] - stats.norm.ppf(0.975) * result.bse["x"]
    )


def test_summary_shows_fixed_effects_and_variance_components(grouped):
    df, kinship = grouped
    text = str(EMLMM.from_formula(FORMULA, data=df, kinship=kinship).fit().summary())
    for expected in (
        "EMLMM",
        "ML (EM+FS)",
        "sex[T.M]",
        "sigma2_a",
        "sigma2_e",
        "h2",
        "Log-Likelihood",
        "Iterations",
        "Converged",
    ):
        assert expected in text


def test_disp_prints_the_labs_lines(genomic, capsys):
    y, X, kinship = genomic
    result = EMLMM(y, X, kinship).fit(start_params="lab", method="em", disp=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == result.n_iter
    assert re.fullmatch(r"iteration = 1, loglikelihood = -\d+\.\d{3}", lines[0])
    assert lines[-1] == f"iteration = {result.n_iter}, loglikelihood = {result.llf:.3f}"


def test_maxiter_raises_convergence_warning(genomic):
    y, X, kinship = genomic
    with pytest.warns(ConvergenceWarning, match="did not converge in 3 iterations"):
        result = EMLMM(y, X, kinship).fit(start_params="lab", method="em", maxiter=3)
    assert not result.converged
    assert result.n_iter == 3


def test_stopping_rule_is_not_fooled_by_a_slow_crawl():
    """Near sigma2_a = 0, EM gains become tiny long before the estimate is right."""
    rng = np.random.default_rng(8)
    n = 150
    kinship = dense.random_genotype_kinship(rng, n, 500)
    X = np.ones((n, 1))
    a = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    y = 0.9 * a + rng.normal(size=n)
    oracle = dense.maximise(y, X, kinship, start=(0.5, 1.0))
    crawled = EMLMM(y, X, kinship).fit(start_params=[0.0, 5.0, 0.5], method="em")
    lab_rule = EMLMM(y, X, kinship).fit(start_params=[0.0, 5.0, 0.5], method="lab")
    assert crawled.llf == pytest.approx(oracle.llf, abs=1e-7)
    assert crawled.sigma2_a == pytest.approx(oracle.sigma2_a, rel=1e-3, abs=1e-4)
    # The lab's rule stops early here: evidence that the test can tell the two apart.
    assert oracle.llf - lab_rule.llf > 1e-4


@pytest.mark.parametrize("reml", [False, True])
def test_accelerated_em_reaches_the_same_maximum_where_plain_em_crawls(reml):
    rng = np.random.default_rng(8)
    n = 150
    kinship = dense.random_genotype_kinship(rng, n, 500)
    X = np.ones((n, 1))
    a = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    y = 0.7 * a + rng.normal(size=n)  # small but interior sigma2_a: plain EM crawls
    with pytest.warns(ConvergenceWarning):
        plain = EMLMM(y, X, kinship).fit(reml=reml, method="em", maxiter=2000)
    fast = EMLMM(y, X, kinship).fit(reml=reml, method="accelerated")
    oracle = dense.maximise(y, X, kinship, reml=reml, start=(0.1, 1.0))
    assert fast.converged and fast.n_iter < 50
    assert fast.llf == pytest.approx(oracle.llf, abs=1e-9)
    assert fast.sigma2_a == pytest.approx(oracle.sigma2_a, rel=1e-4)
    assert np.all(np.diff(fast.llf_history) >= -1e-12)
    assert plain.llf < fast.llf


def test_accelerated_reml_converges_close_to_sigma2_e_zero():
    # Near sigma2_e = 0 the expected information misjudges the curvature and the full
    # scoring step overshoots; without shorter steps EM crawled for 10,000 iterations.
    rng = np.random.default_rng(0)
    n = 40
    kinship = dense.random_genotype_kinship(rng, n, 200)
    snps = rng.binomial(2, 0.3, size=(n, 3)).astype(float)
    y = 3.0 + np.linalg.cholesky(kinship) @ rng.normal(size=n)  # no residual variance
    X = np.column_stack([np.ones(n), snps[:, 2]])
    fit = EMLMM(y, X, kinship).fit(reml=True)
    oracle = dense.maximise(y, X, kinship, reml=True, start=(0.75, 0.007))
    assert fit.converged and fit.n_iter < 20
    assert 0 < fit.sigma2_e < 0.01
    assert fit.llf == pytest.approx(oracle.llf, abs=1e-9)
    assert fit.sigma2_e == pytest.approx(oracle.sigma2_e, rel=1e-4)


def test_singular_kinship_em_is_maximum_likelihood():
    rng = np.random.default_rng(21)
    n, m = 60, 20
    kinship = dense.random_genotype_kinship(rng, n, m)  # rank 20 < 60
    X = sm.add_constant(rng.normal(size=n))
    y = (
        X @ [2.0, 1.0]
        + 1.5 * np.linalg.svd(kinship)[0][:, :m] @ rng.normal(size=m)
        + rng.normal(size=n)
    )
    result = EMLMM(y, X, kinship).fit()
    oracle = dense.maximise(y, X, kinship)
    assert result.model.spectrum.rank == m
    np.testing.assert_allclose(result.llf, oracle.llf, rtol=1e-10)
    np.testing.assert_allclose(
        [result.sigma2_a, result.sigma2_e], [oracle.sigma2_a, oracle.sigma2_e], rtol=1e-5
    )
    with pytest.warns(ModelWarning, match="singular"):
        EMLMM(y, X, kinship).fit(method="lab")


def test_estimates_scale_with_the_response(genomic):
    y, X, kinship = genomic
    base = EMLMM(y, X, kinship).fit()
    scaled = EMLMM(1e3 * y, X, kinship).fit()
    np.testing.assert_allclose(scaled.params, 1e3 * base.params, rtol=1e-6)
    assert scaled.sigma2_a == pytest.approx(1e6 * base.sigma2_a, rel=1e-5)
    assert scaled.sigma2_e == pytest.approx(1e6 * base.sigma2_e, rel=1e-5)


def test_fit_rejects_bad_options(genomic):
    y, X, kinship = genomic
    model = EMLMM(y, X, kinship)
    with pytest.raises(ValueError, match="method must be"):
        model.fit(method="newton")
    assert "ML (EM+FS)" in str(model.fit(method="accelerated").summary())
    with pytest.raises(ValueError, match="REML"):
        model.fit(method="lab", reml=True)
    with pytest.raises(ValueError, match="start_params"):
        model.fit(start_params="zero")
    with pytest.raises(ValueError, match="4 values"):
        model.fit(start_params=[1.0, 1.0])
    with pytest.raises(ValueError, match="cannot leave sigma2_a = 0"):
        model.fit(start_params=[0.0, 0.0, 0.0, 1.0])
    with pytest.raises(TypeError, match="unexpected keyword"):
        model.fit(gtol=1e-3)


def test_params_are_labelled_for_dataframes(genomic):
    y, X, kinship = genomic
    ids = [f"id{i}" for i in range(len(y))]
    exog = pd.DataFrame(X, columns=["const", "dose"], index=ids)
    result = EMLMM(pd.Series(y, index=ids, name="trait"), exog, kinship).fit()
    assert list(result.params.index) == ["const", "dose"]
    assert list(result.random_effects.index) == ids
