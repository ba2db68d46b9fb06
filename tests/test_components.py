"""Several variance components: a kinship plus grouped effects (vc_formula), several
kinships, replicated lines; against MixedLM, a dense optimiser and the one-kinship path."""

import itertools
import time

import dense
import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import optimize

from emlmm import EMLMM, gwas


def dense_fit(y, X, covariances, reml):
    """Maximise the (restricted) Gaussian likelihood of V = sum_k t_k G_k + t_e I over
    log-variances with a general optimiser; beta profiled by GLS."""
    n, p = X.shape

    def negative(log_theta):
        theta = np.exp(log_theta)
        V = sum(t * G for t, G in zip(theta[:-1], covariances, strict=True)) \
            + theta[-1] * np.eye(n)
        Vi = np.linalg.inv(V)
        cov = np.linalg.inv(X.T @ Vi @ X)
        r = y - X @ (cov @ X.T @ Vi @ y)
        value = np.linalg.slogdet(V)[1] + r @ Vi @ r
        if reml:
            return 0.5 * ((n - p) * np.log(2 * np.pi) + value - np.linalg.slogdet(cov)[1])
        return 0.5 * (n * np.log(2 * np.pi) + value)

    start = np.zeros(len(covariances) + 1)
    best = optimize.minimize(negative, start, method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 20000})
    best = optimize.minimize(negative, best.x, method="BFGS", options={"gtol": 1e-10})
    return np.exp(best.x), -best.fun


@pytest.fixture(scope="module")
def mice():
    """Mice in litters (a kinship of ones within a litter) housed in cages that cut
    across litters."""
    rng = np.random.default_rng(13)
    litters, per = 30, 4
    n = litters * per
    litter = np.repeat(np.arange(litters), per)
    cage = rng.integers(0, 12, size=n)
    x = rng.normal(size=n)
    y = (2 + 0.7 * x + 1.2 * rng.normal(size=litters)[litter]
         + 0.9 * rng.normal(size=12)[cage] + rng.normal(size=n))
    ids = [f"m{i}" for i in range(n)]
    data = pd.DataFrame({"y": y, "x": x, "litter": litter, "cage": cage}, index=ids)
    kinship = pd.DataFrame((litter[:, None] == litter[None, :]).astype(float), index=ids,
                           columns=ids)
    return data, kinship


@pytest.mark.parametrize("reml", [False, True])
def test_a_kinship_and_a_crossed_group_match_mixedlm(mice, reml):
    data, kinship = mice
    ours = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                              vc_formula={"cage": "0 + C(cage)"}).fit(reml=reml)
    # Crossed effects in MixedLM: one group holding everyone, both as variance components.
    theirs = smf.mixedlm("y ~ 1 + x", data.assign(everyone=1), groups="everyone",
                         re_formula="0", vc_formula={"cage": "0 + C(cage)",
                                                     "litter": "0 + C(litter)"}
                         ).fit(reml=reml, method="lbfgs")
    scale = theirs.scale
    assert ours.llf == pytest.approx(theirs.llf, abs=1e-4)
    np.testing.assert_allclose(ours.params.iloc[:2], theirs.fe_params, rtol=1e-4)
    # MixedLM's bse_fe inverts its observed information of all parameters; ours is the
    # GLS (X'V^-1 X)^-1, as statsmodels' other mixed models and GEMMA report.
    np.testing.assert_allclose(ours.bse.iloc[:2], theirs.bse_fe, rtol=2e-2)
    vcomp = dict(zip(theirs.model.exog_vc.names, theirs.vcomp, strict=True))
    expected = [vcomp["litter"], vcomp["cage"], scale]  # vcomp is not relative to scale
    np.testing.assert_allclose(ours.variance_components, expected, rtol=1e-3)
    assert list(ours.variance_components.index) == ["kinship", "cage", "residual"]
    assert ours.converged
    t_a, t_c, t_e = ours.variance_components
    cage = (data.cage.to_numpy()[:, None] == np.arange(12)[None, :]).astype(float)
    V = t_a * kinship.to_numpy() + t_c * cage @ cage.T + t_e * np.eye(len(data))
    X = np.column_stack([np.ones(len(data)), data.x])
    cov = np.linalg.inv(X.T @ np.linalg.solve(V, X))
    np.testing.assert_allclose(ours.bse.iloc[:2], np.sqrt(np.diag(cov)), rtol=1e-8)
    # params names every component, as MixedLM's do.
    assert list(ours.params.index) == ["Intercept", "x", "kinship Var", "cage Var",
                                       "residual Var"]
    np.testing.assert_allclose(ours.params.iloc[2:], ours.variance_components, rtol=1e-12)
    np.testing.assert_allclose(ours.bse.iloc[2:], ours.bse_variance_components, rtol=1e-12)
    assert ours.t_test("x = 0").pvalue < 1e-3


@pytest.mark.parametrize("reml", [False, True])
def test_two_general_kinships_match_a_dense_optimiser(reml):
    rng = np.random.default_rng(21)
    n = 100
    additive = dense.random_genotype_kinship(rng, n, 300)
    genotypes = rng.binomial(2, 0.4, size=(n, 200)).astype(float)
    heterozygous = (genotypes == 1).astype(float)
    heterozygous -= heterozygous.mean(axis=0)
    dominance = heterozygous @ heterozygous.T / 200
    x = rng.normal(size=n)
    y = (1 + x + np.linalg.cholesky(additive + 1e-9 * np.eye(n)) @ rng.normal(size=n)
         + 0.7 * np.linalg.cholesky(dominance + 1e-9 * np.eye(n)) @ rng.normal(size=n)
         + rng.normal(size=n))
    data = pd.DataFrame({"y": y, "x": x})
    result = EMLMM.from_formula("y ~ 1 + x", data,
                                kinship={"additive": additive, "dominance": dominance}
                                ).fit(reml=reml)
    X = np.column_stack([np.ones(n), x])
    theta, value = dense_fit(y, X, [additive, dominance], reml)
    assert result.llf == pytest.approx(value, abs=1e-6)
    # (here the dominance variance is on its boundary, 0: exactly 0 for us)
    np.testing.assert_allclose(result.variance_components, theta, rtol=2e-3, atol=1e-6)
    assert list(result.variance_components.index) == ["additive", "dominance", "residual"]


def test_replicated_lines_use_a_kinship_of_lines():
    rng = np.random.default_rng(8)
    lines, plants = 40, 3
    ids = [f"L{i}" for i in range(lines)]
    kinship = pd.DataFrame(dense.random_genotype_kinship(rng, lines, 200), index=ids,
                           columns=ids)
    line = np.repeat(ids, plants)
    genetic = np.linalg.cholesky(kinship.to_numpy() + 1e-9 * np.eye(lines)) @ \
        rng.normal(size=lines)
    y = 3 + np.repeat(genetic, plants) + 0.5 * rng.normal(size=lines * plants)
    data = pd.DataFrame({"y": y, "line": line})
    result = EMLMM.from_formula("y ~ 1", data, kinship=kinship, kinship_ids="line").fit(reml=True)
    expanded = kinship.loc[line, line].to_numpy()
    theta, value = dense_fit(y, np.ones((len(y), 1)), [expanded], reml=True)
    assert result.llf == pytest.approx(value, abs=1e-6)
    np.testing.assert_allclose(result.variance_components, theta, rtol=2e-3)


def test_a_component_on_its_boundary_is_zero_and_the_lr_test_uses_the_mixture(mice):
    data, kinship = mice
    rng = np.random.default_rng(2)
    data = data.assign(pen=rng.integers(0, 10, size=len(data)))  # no pen effect
    full = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                              vc_formula={"pen": "0 + C(pen)"}).fit()
    one = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit()
    statistic, pvalue, df = full.compare_lr_test(one)
    assert df == 1
    if full.variance_components["pen"] == 0:
        assert statistic == pytest.approx(0, abs=1e-6) and pvalue == 1.0
    else:
        from scipy import stats
        assert pvalue == pytest.approx(0.5 * stats.chi2.sf(statistic, 1))
    # At zero the two fits are the same model.
    assert full.llf >= one.llf - 1e-8
    with_cage = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                                   vc_formula={"cage": "0 + C(cage)"}).fit()
    statistic, pvalue, df = with_cage.compare_lr_test(one)
    assert statistic > 5 and pvalue < 0.05


def test_one_kinship_alone_is_the_spectral_path(mice):
    data, kinship = mice
    plain = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit(reml=True)
    as_dict = EMLMM.from_formula("y ~ 1 + x", data, kinship={"litter": kinship}).fit(reml=True)
    assert type(plain).__name__ == "EMLMMResultsWrapper"
    assert as_dict.llf == pytest.approx(plain.llf, abs=1e-8)
    np.testing.assert_allclose(as_dict.variance_components,
                               [plain.sigma2_a, plain.sigma2_e], rtol=1e-6)
    np.testing.assert_allclose(as_dict.params.iloc[:2], plain.params, rtol=1e-7)


def test_the_em_method_follows_the_lab_and_reaches_the_same_maximum(mice, capsys):
    data, kinship = mice
    model = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                               vc_formula={"cage": "0 + C(cage)"})
    em = model.fit(method="em", disp=True, maxiter=20000)
    fast = model.fit()
    assert em.llf == pytest.approx(fast.llf, abs=1e-7)
    assert fast.n_iter < em.n_iter
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("iteration = 1, loglikelihood = ")
    values = [float(line.split("= ")[-1]) for line in lines]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(values))
    with pytest.raises(ValueError, match="lab's algorithm fits one kinship"):
        model.fit(method="lab")


def test_blups_per_component_add_up_to_the_dense_conditional_mean(mice):
    data, kinship = mice
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                                vc_formula={"cage": "0 + C(cage)"}).fit(reml=True)
    t_a, t_c, t_e = result.variance_components
    cage = (data.cage.to_numpy()[:, None] == np.arange(12)[None, :]).astype(float)
    K = kinship.to_numpy()
    V = t_a * K + t_c * cage @ cage.T + t_e * np.eye(len(data))
    X = np.column_stack([np.ones(len(data)), data.x])
    r = data.y.to_numpy() - X @ result.params.to_numpy()[:2]
    solved = np.linalg.solve(V, r)
    np.testing.assert_allclose(result.random_effects["kinship"], t_a * K @ solved, rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(result.random_effects["cage"], t_c * cage @ cage.T @ solved,
                               rtol=1e-6, atol=1e-9)
    text = result.summary().as_text()
    assert "cage" in text and "share" in text
    assert result.shares.sum() == pytest.approx(1.0)


def test_two_thousand_mice_with_a_hundred_cages_fit_in_seconds():
    rng = np.random.default_rng(4)
    n = 2000
    kinship = dense.random_genotype_kinship(rng, n, 500)
    cage = rng.integers(0, 100, size=n)
    y = (np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
         + 0.5 * rng.normal(size=100)[cage] + rng.normal(size=n))
    data = pd.DataFrame({"y": y, "cage": cage})
    model = EMLMM.from_formula("y ~ 1", data, kinship=kinship, vc_formula={"cage": "0 + C(cage)"})
    started = time.perf_counter()
    result = model.fit(reml=True)
    assert result.converged
    assert time.perf_counter() - started < 60  # seconds in fact; generous for loaded CI
    assert result.variance_components["cage"] > 0


def test_bad_components_are_named(mice):
    data, kinship = mice
    with pytest.raises(ValueError, match="distinct names other than 'residual'"):
        EMLMM.from_formula("y ~ 1", data, kinship=kinship,
                           vc_formula={"residual": "0 + C(cage)"})
    with pytest.raises(ValueError, match="is not a column of data"):
        EMLMM.from_formula("y ~ 1", data, kinship=kinship, kinship_ids="nope")
    with pytest.raises(TypeError, match="labelled by those ids"):
        EMLMM.from_formula("y ~ 1", data, kinship=kinship.to_numpy(), kinship_ids="litter")


@pytest.fixture(scope="module")
def caged_scan():
    rng = np.random.default_rng(31)
    n, m = 160, 12
    kinship = dense.random_genotype_kinship(rng, n, 300)
    genotypes = rng.binomial(2, 0.35, size=(n, m)).astype(float)
    cage = rng.integers(0, 12, size=n)
    y = (0.7 * genotypes[:, 2] + np.linalg.cholesky(kinship + 1e-9 * np.eye(n))
         @ rng.normal(size=n) + 0.9 * rng.normal(size=12)[cage] + rng.normal(size=n))
    data = pd.DataFrame({"y": y, "cage": cage})
    snps = pd.DataFrame(genotypes, columns=[f"rs{j}" for j in range(m)])
    return data, snps, kinship


def test_a_fixed_scan_with_a_cage_effect_is_a_one_kinship_scan_on_the_same_v(caged_scan):
    from emlmm import gwas

    data, snps, kinship = caged_scan
    vc = {"cage": "0 + C(cage)"}
    ours = gwas("y ~ 1 + snp", data, snps, kinship, method="fixed", vc_formula=vc)
    null = EMLMM.from_formula("y ~ 1", data, kinship=kinship, vc_formula=vc).fit(reml=True)
    t_a, t_c, _ = null.variance_components
    cage = (data.cage.to_numpy()[:, None] == np.arange(12)[None, :]).astype(float)
    combined = kinship + (t_c / t_a) * cage @ cage.T  # V = t_a * combined + t_e I
    reference = gwas("y ~ 1 + snp", data, snps, combined, method="fixed")
    for column in ("beta", "se", "p_wald", "lrt", "p_lrt"):
        np.testing.assert_allclose(ours[column], reference[column], rtol=1e-5, err_msg=column)
    assert ours.p_lrt.idxmin() == "rs2"


def test_an_exact_scan_with_a_cage_effect_equals_separate_fits(caged_scan):
    from scipy import stats

    from emlmm import gwas

    data, snps, kinship = caged_scan
    vc = {"cage": "0 + C(cage)"}
    table = gwas("y ~ 1 + snp", data, snps.iloc[:, :4], kinship, vc_formula=vc)
    null = EMLMM.from_formula("y ~ 1", data, kinship=kinship, vc_formula=vc).fit()
    for snp in table.index:
        frame = data.assign(g=snps[snp])
        ml = EMLMM.from_formula("y ~ 1 + g", frame, kinship=kinship, vc_formula=vc).fit()
        reml = EMLMM.from_formula("y ~ 1 + g", frame, kinship=kinship,
                                  vc_formula=vc).fit(reml=True)
        assert table.loc[snp, "llf"] == pytest.approx(ml.llf, abs=1e-6)
        lrt = max(2 * (ml.llf - null.llf), 0.0)
        assert table.loc[snp, "p_lrt"] == pytest.approx(stats.chi2.sf(lrt, 1), rel=1e-5)
        assert table.loc[snp, "beta"] == pytest.approx(reml.params["g"], rel=1e-6)
        assert table.loc[snp, "se"] == pytest.approx(reml.bse["g"], rel=1e-6)


def test_missing_values_drop_rows_everywhere(mice):
    data, kinship = mice
    gappy = data.copy()
    gappy.iloc[3, gappy.columns.get_loc("y")] = np.nan
    gappy["cage"] = gappy.cage.astype(float)
    gappy.iloc[7, gappy.columns.get_loc("cage")] = np.nan
    vc = {"cage": "0 + C(cage)"}
    for given in (kinship, kinship.to_numpy()):
        result = EMLMM.from_formula("y ~ 1 + x", gappy, kinship=given, vc_formula=vc).fit()
        kept = gappy.index.drop(gappy.index[[3, 7]])
        reference = EMLMM.from_formula("y ~ 1 + x", data.loc[kept],
                                       kinship=kinship.loc[kept, kept], vc_formula=vc).fit()
        assert result.nobs == len(data) - 2
        assert result.llf == pytest.approx(reference.llf, abs=1e-8)


def test_lr_tests_refuse_fits_that_are_not_nested_or_not_of_the_same_data(mice):
    data, kinship = mice
    n = len(data)
    genomic = dense.random_genotype_kinship(np.random.default_rng(0), n, 400)
    centred = (np.eye(n) - 1 / n) @ genomic @ (np.eye(n) - 1 / n)  # one null direction
    vc = {"cage": "0 + C(cage)"}
    full = EMLMM.from_formula("y ~ 1 + x", data, kinship=centred, vc_formula=vc).fit()
    reduced_one = EMLMM.from_formula("y ~ 1 + x", data, kinship=centred).fit()
    with pytest.raises(ValueError, match="kinship=\\{name: A\\} too"):
        full.compare_lr_test(reduced_one)
    # REML likelihoods of a reduced fit are those of all the data: comparable.
    reml_full = EMLMM.from_formula("y ~ 1 + x", data, kinship=centred, vc_formula=vc).fit(
        reml=True)
    reml_one = EMLMM.from_formula("y ~ 1 + x", data, kinship=centred).fit(reml=True)
    reml_same = EMLMM.from_formula("y ~ 1 + x", data, kinship={"kinship": centred}).fit(reml=True)
    assert reml_one.llf == pytest.approx(reml_same.llf, abs=1e-8)
    assert reml_full.compare_lr_test(reml_one) == pytest.approx(
        reml_full.compare_lr_test(reml_same))
    same_path = EMLMM.from_formula("y ~ 1 + x", data, kinship={"kinship": centred}).fit()
    assert full.compare_lr_test(same_path)[2] == 1
    other = EMLMM.from_formula("y ~ 1 + x", data, kinship=np.eye(n) + 0.1).fit()
    plain = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship, vc_formula=vc).fit()
    with pytest.raises(ValueError, match="not nested"):
        plain.compare_lr_test(other)


def test_information_criteria_count_every_variance(mice):
    data, kinship = mice
    fit = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                             vc_formula={"cage": "0 + C(cage)"}).fit()
    assert fit.df_modelwc == 2 + 3
    assert fit.aic == pytest.approx(-2 * fit.llf + 2 * 5)
    assert fit.bic == pytest.approx(-2 * fit.llf + np.log(len(data)) * 5)
    one = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit()
    assert one.aic == pytest.approx(-2 * one.llf + 2 * 4)
    reml = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship,
                              vc_formula={"cage": "0 + C(cage)"}).fit(reml=True)
    assert np.isnan(reml.aic) and np.isnan(reml.bic)


@pytest.mark.parametrize(
    ("vc_formula", "message"),
    [
        ("cage", "vc_formula must be a dict of names to formulas.* not str"),
        (["cage"], "vc_formula must be a dict.* not list"),
        ({"cage": 3}, "vc_formula's formulas must be strings .*; 'cage' is not"),
    ],
)
def test_vc_formula_of_the_wrong_type(mice, vc_formula, message):
    data, kinship = mice
    with pytest.raises(TypeError, match=message):
        EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship, vc_formula=vc_formula)
    genotypes = pd.DataFrame({"rs1": np.arange(len(data)) % 3.0}, index=data.index)
    with pytest.raises(TypeError, match=message):
        gwas("y ~ 1 + snp", data, genotypes, kinship, vc_formula=vc_formula)


def test_components_that_coincide_are_named(mice):
    # A kinship proportional to the identity is the residual again: the variances
    # cannot be told apart, and the fit says so instead of failing to invert.
    data, _ = mice
    identity = pd.DataFrame(np.eye(len(data)), index=data.index, columns=data.index)
    with pytest.raises(ValueError, match=r"not identifiable.*Components: kinship, cage, residual"):
        EMLMM.from_formula(
            "y ~ 1 + x", data, kinship=identity, vc_formula={"cage": "0 + C(cage)"}
        ).fit()
