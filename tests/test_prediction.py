"""Prediction and statsmodels completeness: BLUPs with Henderson's errors, GBLUP of
relatives without a phenotype, h2's observed SE and profile interval, remove_data,
summary2, mle_retvals, and keywords that are refused rather than ignored."""

import pickle

import dense
import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from emlmm import EMLMM


def families(rng, n_families, size):
    """A kinship of families (parents' genomes shared) and labels."""
    n = n_families * size
    related = dense.random_genotype_kinship(rng, n, 400)
    family = np.repeat(np.arange(n_families), size)
    related = related + 0.25 * (family[:, None] == family[None, :])
    labels = pd.Index([f"id{i:03d}" for i in range(n)])
    return pd.DataFrame(related, index=labels, columns=labels)


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(12)
    kinship = families(rng, 40, 5)
    n = len(kinship)
    genetic = np.linalg.cholesky(kinship.to_numpy() + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    x = rng.normal(size=n)
    y = 3 + 0.5 * x + 1.5 * genetic + rng.normal(size=n)
    data = pd.DataFrame({"y": y, "x": x}, index=kinship.index)
    return data, kinship


def dense_blup(y, X, kinship_all, fitted, sigma2_a, sigma2_e):
    """Henderson's formulas with dense matrices, for every row of ``kinship_all``."""
    A = kinship_all[np.ix_(fitted, fitted)]
    V = sigma2_a * A + sigma2_e * np.eye(len(y))
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    P = Vi - Vi @ X @ np.linalg.inv(X.T @ Vi @ X) @ X.T @ Vi
    cross = kinship_all[:, fitted]
    blup = sigma2_a * cross @ Vi @ (y - X @ beta)
    pev = sigma2_a * np.diag(kinship_all) - sigma2_a**2 * np.einsum(
        "ij,jk,ik->i", cross, P, cross)
    return blup, pev, 1 - pev / (sigma2_a * np.diag(kinship_all))


@pytest.mark.parametrize("reml", [False, True])
def test_blups_and_their_errors_are_hendersons(study, reml):
    data, kinship = study
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit(reml=reml)
    table = result.blup()
    X = np.column_stack([np.ones(len(data)), data.x])
    blup, pev, reliability = dense_blup(data.y.to_numpy(), X, kinship.to_numpy(),
                                        np.arange(len(data)), result.sigma2_a, result.sigma2_e)
    np.testing.assert_allclose(table.blup, blup, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(table.se, np.sqrt(pev), rtol=1e-7)
    np.testing.assert_allclose(table.reliability, reliability, rtol=1e-7)
    np.testing.assert_allclose(table.blup, result.random_effects, rtol=1e-10)
    assert list(table.index) == list(data.index) and table.phenotyped.all()
    assert ((table.reliability > 0) & (table.reliability < 1)).all()


def test_relatives_without_a_phenotype_get_predictions_and_errors(study):
    data, kinship = study
    unphenotyped = data.index[::4]  # 50 of 200
    fitted = data.drop(index=unphenotyped)
    result = EMLMM.from_formula("y ~ 1 + x", fitted, kinship=kinship).fit(reml=True)
    table = result.blup(kinship=kinship)
    assert list(table.index) == list(kinship.index)
    assert (table.phenotyped == ~kinship.index.isin(unphenotyped)).all()
    positions = kinship.index.get_indexer(fitted.index)
    X = np.column_stack([np.ones(len(fitted)), fitted.x])
    blup, pev, reliability = dense_blup(fitted.y.to_numpy(), X, kinship.to_numpy(), positions,
                                        result.sigma2_a, result.sigma2_e)
    np.testing.assert_allclose(table.blup, blup, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(table.se, np.sqrt(pev), rtol=1e-7)
    np.testing.assert_allclose(table.reliability, reliability, rtol=1e-7)
    # The unphenotyped are predicted from their relatives, less reliably.
    unseen = table.loc[unphenotyped]
    assert unseen.blup.abs().gt(0).all()
    assert unseen.reliability.mean() < table.loc[fitted.index].reliability.mean()
    truth = data.y - 3 - 0.5 * data.x
    assert np.corrcoef(unseen.blup, truth.loc[unphenotyped])[0, 1] > 0.3
    # The predictions of the fitted individuals are those of blup() without a kinship.
    np.testing.assert_allclose(table.loc[fitted.index].to_numpy(dtype=float),
                               result.blup().to_numpy(dtype=float), rtol=1e-8)


def test_blup_refuses_a_kinship_that_is_not_the_fitted_one(study):
    data, kinship = study
    result = EMLMM.from_formula("y ~ 1 + x", data.iloc[:100], kinship=kinship).fit()
    with pytest.raises(ValueError, match="not the kinship the model was fitted with"):
        result.blup(kinship=kinship * 1.1)
    with pytest.raises(ValueError, match="2 fitted individuals have no row"):
        result.blup(kinship=kinship.iloc[2:, 2:])
    with pytest.raises(TypeError, match="labelled DataFrame"):
        result.blup(kinship=kinship.to_numpy())


def test_blups_with_a_centered_kinship_match_the_dense_formulas(study):
    data, kinship = study
    n = len(kinship)
    P = np.eye(n) - 1.0 / n
    centered = pd.DataFrame(P @ kinship.to_numpy() @ P, index=kinship.index,
                            columns=kinship.index)
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=centered).fit(reml=True)
    X = np.column_stack([np.ones(n), data.x])
    blup, pev, _ = dense_blup(data.y.to_numpy(), X, centered.to_numpy(), np.arange(n),
                              result.sigma2_a, result.sigma2_e)
    table = result.blup()
    np.testing.assert_allclose(table.blup, blup, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(table.se, np.sqrt(pev), rtol=1e-6)


# --- predictions of the fixed part ----------------------------------------------------------

def test_get_prediction_is_statsmodels_shaped_and_right(study):
    data, kinship = study
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit()
    new = pd.DataFrame({"x": [-1.0, 0.0, 2.5]})
    frame = result.get_prediction(new).summary_frame(alpha=0.1)
    assert list(frame.columns) == ["mean", "mean_se", "mean_ci_lower", "mean_ci_upper"]
    X = np.column_stack([np.ones(3), new.x])
    cov = result.cov_params().to_numpy()
    se = np.sqrt(np.einsum("ij,jk,ik->i", X, cov, X))
    np.testing.assert_allclose(frame["mean"], X @ result.params.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(frame.mean_se, se, rtol=1e-12)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(frame.mean_ci_upper, frame["mean"] + z * se, rtol=1e-12)
    fitted = result.get_prediction().summary_frame()
    assert len(fitted) == len(data)


# --- heritability -------------------------------------------------------------------------

def dense_profile(y, X, kinship, h2, reml):
    """The (restricted) log-likelihood at h2, maximised over beta and the total variance
    by a general optimiser, with dense matrices."""
    m = np.trace(kinship) / len(y)

    def negative(log_scale):
        scale = np.exp(log_scale)
        s2a, s2e = scale * h2 / m, scale * (1 - h2)
        if reml:
            return -dense.reml_loglike(y, X, kinship, s2a, s2e)
        beta, _ = dense.gls(y, X, dense.covariance(kinship, s2a, s2e))
        return -dense.loglike(y, X, kinship, beta, s2a, s2e)

    best = optimize.minimize_scalar(negative, bounds=(-10, 10), method="bounded",
                                    options={"xatol": 1e-10})
    return -best.fun


@pytest.mark.parametrize("reml", [False, True])
def test_the_h2_interval_ends_are_where_the_dense_profile_drops(study, reml):
    data, kinship = study
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit(reml=reml)
    low, high = result.h2_conf_int(alpha=0.05)
    assert 0 < low < result.h2 < high < 1
    y, K = data.y.to_numpy(), kinship.to_numpy()
    X = np.column_stack([np.ones(len(y)), data.x])
    top = dense_profile(y, X, K, result.h2, reml)
    assert top == pytest.approx(result.llf, abs=1e-6)
    for end in (low, high):
        drop = top - dense_profile(y, X, K, end, reml)
        assert drop == pytest.approx(stats.chi2.ppf(0.95, 1) / 2, abs=1e-5)
    narrower = result.h2_conf_int(alpha=0.5)
    assert low < narrower[0] < narrower[1] < high


def test_the_h2_interval_starts_at_zero_when_the_profile_stays_high():
    rng = np.random.default_rng(5)
    kinship = families(rng, 30, 4)
    data = pd.DataFrame({"y": rng.normal(size=len(kinship))}, index=kinship.index)
    result = EMLMM.from_formula("y ~ 1", data, kinship=kinship).fit(reml=True)
    low, high = result.h2_conf_int()
    assert low == 0.0 and high > result.h2
    assert np.isnan(result.bse_h2_observed) or result.h2 > 1e-4


@pytest.mark.parametrize("reml", [False, True])
def test_the_observed_h2_se_is_the_dense_observed_information(study, reml):
    data, kinship = study
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit(reml=reml)
    y, K = data.y.to_numpy(), kinship.to_numpy()
    X = np.column_stack([np.ones(len(y)), data.x])
    m = np.trace(K) / len(y)

    def value(theta):  # (sigma2_a, sigma2_e), beta profiled (ML) or absent (REML)
        s2a, s2e = theta
        if reml:
            return dense.reml_loglike(y, X, K, s2a, s2e)
        beta, _ = dense.gls(y, X, dense.covariance(K, s2a, s2e))
        return dense.loglike(y, X, K, beta, s2a, s2e)

    theta = np.array([result.sigma2_a, result.sigma2_e])
    steps = 1e-4 * theta
    hessian = np.empty((2, 2))
    for i in range(2):
        for j in range(2):
            ei, ej = np.eye(2)[i] * steps[i], np.eye(2)[j] * steps[j]
            hessian[i, j] = (value(theta + ei + ej) - value(theta + ei - ej)
                             - value(theta - ei + ej) + value(theta - ei - ej)) / (
                4 * steps[i] * steps[j])
    covariance = np.linalg.inv(-hessian)
    total = m * theta[0] + theta[1]
    gradient = np.array([m * theta[1], -m * theta[0]]) / total**2
    expected = np.sqrt(gradient @ covariance @ gradient)
    assert result.bse_h2_observed == pytest.approx(expected, rel=1e-3)
    assert result.bse_h2_observed != pytest.approx(result.bse_h2, rel=1e-6)


# --- the statsmodels protocol -------------------------------------------------------------

def test_remove_data_shrinks_the_pickle_and_keeps_the_summary():
    rng = np.random.default_rng(8)
    kinship = families(rng, 100, 5)
    n = len(kinship)
    data = pd.DataFrame({"x": rng.normal(size=n)}, index=kinship.index)
    data["y"] = 1 + data.x + np.linalg.cholesky(kinship.to_numpy() + 1e-9 * np.eye(n)) @ \
        rng.normal(size=n) + rng.normal(size=n)
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit()
    before = len(pickle.dumps(result))
    summary = result.summary().as_text()
    params, bse = result.params.copy(), result.bse.copy()
    result.remove_data()
    after = len(pickle.dumps(result))
    assert after < 0.1 * before, (before, after)
    restored = pickle.loads(pickle.dumps(result))
    assert restored.summary().as_text().split("Date:")[0] == summary.split("Date:")[0]
    pd.testing.assert_series_equal(restored.params, params)
    pd.testing.assert_series_equal(restored.bse, bse)
    assert restored.t_test("x = 1").pvalue >= 0
    frame = restored.get_prediction(pd.DataFrame({"x": [0.0, 1.0]})).summary_frame()
    np.testing.assert_allclose(frame["mean"], [params.iloc[0], params.sum()])
    for name in ("fittedvalues", "random_effects", "resid"):
        with pytest.raises(ValueError, match="remove_data"):
            getattr(restored, name)
    with pytest.raises(ValueError, match="remove_data"):
        restored.blup()


def test_summary2_and_mle_retvals(study):
    data, kinship = study
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit(reml=True)
    text = str(result.summary2())
    assert "sigma2_a (kinship)" in text and "Intercept" in text
    retvals = result.mle_retvals
    assert retvals["converged"] is True and retvals["iterations"] == result.n_iter
    assert retvals["method"] == "accelerated" and retvals["reml"] is True
    assert abs(retvals["final_gain"]) < 1e-6


@pytest.mark.parametrize("keyword", ["weights", "offset", "groups", "typo"])
def test_unsupported_keywords_are_refused_not_ignored(study, keyword):
    data, kinship = study
    value = np.ones(len(data))
    with pytest.raises(TypeError, match=rf"unexpected keyword arguments \['{keyword}'\]"):
        EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship, **{keyword: value})
    with pytest.raises(TypeError, match=rf"\['{keyword}'\]"):
        EMLMM(data.y, np.ones((len(data), 1)), kinship, **{keyword: value})
