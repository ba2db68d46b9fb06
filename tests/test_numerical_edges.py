"""Numerical edges: the boundary sigma2_e = 0 with a singular (centered) kinship,
extreme scales, and ill-conditioned designs. Every number is checked against the
dense oracle in ``dense.py`` or against the same fit at another scale."""

import warnings

import dense
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statsmodels.tools.sm_exceptions import ConvergenceWarning
from test_properties import simulate_study

from emlmm import EMLMM, gwas


def family_study(seed=1, n_families=30, size=4, n_snps=400, noise=0.3):
    """Families of four, each member sharing about half its genotypes with a family
    founder; GEMMA's centered kinship (``-gk 1``, singular along the ones); a trait
    with a strong family effect and little noise, so the ML null model sits at
    sigma2_e = 0."""
    rng = np.random.default_rng(seed)
    n = n_families * size
    freqs = rng.uniform(0.05, 0.5, n_snps)
    founders = rng.binomial(2, freqs, size=(n_families, n_snps))
    own = rng.binomial(2, freqs, size=(n, n_snps))
    family = np.repeat(np.arange(n_families), size)
    shared = rng.random((n, n_snps)) < 0.5
    genotypes = np.where(shared, founders[family], own).astype(float)
    centered = genotypes - genotypes.mean(axis=0)
    kinship = centered @ centered.T / n_snps
    y = 2.0 * rng.normal(size=n_families)[family] + noise * rng.normal(size=n)
    return y, genotypes, kinship


@pytest.fixture(scope="module")
def family():
    return family_study()


def test_a_centered_kinship_is_singular_along_the_ones(family):
    _, _, kinship = family
    model = EMLMM(np.arange(len(kinship), dtype=float), np.ones((len(kinship), 1)), kinship)
    assert model.spectrum.rank == len(kinship) - 1


@pytest.mark.parametrize("reml", [False, True])
def test_the_null_at_sigma2_e_0_is_the_dense_support_maximum(family, reml):
    y, _, kinship = family
    X = np.ones((len(y), 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = EMLMM(y, X, kinship).fit(reml=reml)
    value, sigma2_a, sigma2_e = dense.maximise_support(y, X, kinship, reml=reml)
    assert sigma2_e == 0.0  # the oracle's maximum is on the boundary, evaluated exactly
    assert result.sigma2_e == 0.0
    assert result.sigma2_a == pytest.approx(sigma2_a, rel=1e-9)
    assert np.isfinite(result.bse_sigma2_a)
    if reml:
        # REML of the full data, bounded at the boundary: its limit there.
        limit = dense.reml_loglike(y, X, kinship, sigma2_a, 1e-10 * sigma2_a)
        assert result.llf == pytest.approx(limit, abs=1e-6)
    else:
        assert result.llf == pytest.approx(value, rel=1e-12)


def test_away_from_the_boundary_ml_on_the_support_is_the_dense_one(family):
    y, genotypes, kinship = family
    rng = np.random.default_rng(8)
    y = y + 2.0 * rng.normal(size=len(y))
    X = np.column_stack([np.ones(len(y)), genotypes[:, 0]])
    result = EMLMM(y, X, kinship).fit()
    value, sigma2_a, sigma2_e = dense.maximise_support(y, X, kinship)
    assert 0 < sigma2_e
    assert result.llf == pytest.approx(value, rel=1e-10)
    np.testing.assert_allclose([result.sigma2_a, result.sigma2_e], [sigma2_a, sigma2_e],
                               rtol=1e-5)
    reml = EMLMM(y, X, kinship).fit(reml=True)
    oracle = dense.maximise(y, X, kinship, reml=True, start=(reml.sigma2_a, reml.sigma2_e))
    assert reml.llf == pytest.approx(oracle.llf, rel=1e-10)
    np.testing.assert_allclose(np.asarray(reml.bse), np.sqrt(np.diag(oracle.cov_beta)),
                               rtol=1e-4)


@pytest.fixture(scope="module")
def family_scan(family):
    y, genotypes, kinship = family
    data = pd.DataFrame({"y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = gwas("y ~ 1 + snp", data, genotypes[:, :40], kinship)
    return table


def test_a_scan_at_the_boundary_gives_every_snp_finite_statistics(family, family_scan):
    _, genotypes, _ = family
    polymorphic = np.ptp(genotypes[:, :40], axis=0) > 0
    table = family_scan[polymorphic]
    assert (table.note == "").all()
    assert table.converged.all()
    statistics = table[["beta", "se", "p_wald", "lrt", "p_lrt", "p_score"]]
    assert np.isfinite(statistics.to_numpy()).all()
    # Newton lands on the boundary in a step or two: as fast as away from it.
    assert table.n_iter.max() <= 5


def test_a_scan_at_the_boundary_matches_the_dense_oracle(family, family_scan):
    y, genotypes, kinship = family
    X = np.ones((len(y), 1))
    contrasts = dense.informative_contrasts(kinship, X)
    null, _, _ = dense.maximise_support(y, X, kinship)
    for j in range(0, 40, 5):
        if np.ptp(genotypes[:, j]) == 0:
            continue
        design = np.column_stack([X, genotypes[:, j]])
        alternative, _, _ = dense.maximise_support(y, design, kinship)
        row = family_scan.iloc[j]
        assert row.lrt == pytest.approx(2 * (alternative - null), abs=1e-7)
        beta, se = dense.support_last_effect(y, design, kinship, contrasts)
        assert row.beta == pytest.approx(beta, rel=1e-6, abs=1e-9)
        assert row.se == pytest.approx(se, rel=1e-6)


def test_a_scan_at_the_boundary_with_a_full_rank_kinship_matches_the_dense_oracle(family):
    y, genotypes, kinship = family
    kinship = kinship + 0.05 * np.eye(len(y))  # full rank: sigma2_e = 0 is plain GLS
    X = np.ones((len(y), 1))
    null, _, null_sigma2_e = dense.maximise_support(y, X, kinship)
    assert null_sigma2_e == 0.0 and EMLMM(y, X, kinship).fit().sigma2_e == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = gwas("y ~ 1 + snp", pd.DataFrame({"y": y}), genotypes[:, :12], kinship)
    assert (table.note == "").all() and table.converged.all() and table.n_iter.max() <= 5
    contrasts = np.eye(len(y))
    for j in range(0, 12, 3):
        design = np.column_stack([X, genotypes[:, j]])
        alternative, _, _ = dense.maximise_support(y, design, kinship)
        assert table.lrt.iloc[j] == pytest.approx(2 * (alternative - null), abs=1e-7)
        beta, se = dense.support_last_effect(y, design, kinship, contrasts)
        assert table.beta.iloc[j] == pytest.approx(beta, rel=1e-6, abs=1e-9)
        assert table.se.iloc[j] == pytest.approx(se, rel=1e-6)


def test_the_fixed_scan_at_the_boundary_is_finite(family):
    y, genotypes, kinship = family
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = gwas("y ~ 1 + snp", pd.DataFrame({"y": y}), genotypes[:, :10], kinship,
                     method="fixed")
    assert np.isfinite(table[["beta", "se", "p_wald", "lrt", "p_score"]].to_numpy()).all()


# --- scale-free numerics -------------------------------------------------------------

@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(4)
    n = 60
    kinship = dense.random_genotype_kinship(rng, n, 200)
    x = rng.normal(size=n)
    polygenic = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    y = 1.0 + 0.5 * x + polygenic + rng.normal(size=n)
    return y, x, kinship


def _fit(y, x, kinship, reml=False):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return EMLMM(y, np.column_stack([np.ones(len(y)), x]), kinship).fit(reml=reml)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exponent=st.integers(-300, 300), mantissa=st.floats(1.0, 9.99), reml=st.booleans())
def test_scaling_the_response_by_any_factor_scales_the_fit_exactly(study, exponent, mantissa,
                                                                     reml):
    y, x, kinship = study
    factor = mantissa * 10.0**exponent
    base, scaled = _fit(y, x, kinship, reml), _fit(factor * y, x, kinship, reml)
    np.testing.assert_allclose(np.asarray(scaled.params) / factor, np.asarray(base.params),
                               rtol=1e-9)
    # Variances of a response beyond ~1e154 are beyond the largest float: inf.
    with np.errstate(over="ignore"):
        expected = np.array([base.sigma2_a, base.sigma2_e]) * factor * factor
    np.testing.assert_allclose([scaled.sigma2_a, scaled.sigma2_e], expected, rtol=1e-9)
    assert scaled.h2 == pytest.approx(base.h2, rel=1e-9)
    assert scaled.lr_test_ols().statistic == pytest.approx(base.lr_test_ols().statistic,
                                                           rel=1e-8, abs=1e-9)
    shift = (len(y) - (2 if reml else 0)) * np.log(factor)
    assert scaled.llf == pytest.approx(base.llf - shift, rel=1e-12, abs=1e-8)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(exponent=st.integers(-300, 300))
def test_scaling_a_covariate_by_any_factor_scales_its_coefficient(study, exponent):
    y, x, kinship = study
    factor = 10.0**exponent
    base, scaled = _fit(y, x, kinship), _fit(y, factor * x, kinship)
    assert scaled.params[1] * factor == pytest.approx(base.params[1], rel=1e-9)
    assert scaled.bse[1] * factor == pytest.approx(base.bse[1], rel=1e-9)
    assert scaled.params[0] == pytest.approx(base.params[0], rel=1e-9)
    assert scaled.llf == pytest.approx(base.llf, rel=1e-12)


@pytest.mark.parametrize("factor", [1e-300, 1e-150, 1e150, 1e300])
def test_a_scan_is_the_same_at_any_scale(study, factor):
    y, x, kinship = study
    rng = np.random.default_rng(0)
    genotypes = rng.integers(0, 3, size=(len(y), 6)).astype(float)
    data = pd.DataFrame({"y": y, "x": x})
    base = gwas("y ~ 1 + x + snp", data, genotypes, kinship)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = gwas("y ~ 1 + x + snp", data.assign(y=factor * y), genotypes, kinship)
    for column in ["p_wald", "lrt", "p_lrt", "p_score"]:
        np.testing.assert_allclose(scaled[column], base[column], rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(scaled.beta / factor, base.beta, rtol=1e-8)
    with np.errstate(over="ignore", under="ignore"):
        expected = base.sigma2_a * factor * factor
    np.testing.assert_allclose(scaled.sigma2_a, expected, rtol=1e-8)


@pytest.mark.parametrize("factor", [1e-300, 1e300])
def test_a_scan_is_the_same_with_a_covariate_at_any_scale(study, factor):
    y, x, kinship = study
    rng = np.random.default_rng(0)
    genotypes = rng.integers(0, 3, size=(len(y), 6)).astype(float)
    data = pd.DataFrame({"y": y, "x": x})
    base = gwas("y ~ 1 + x + snp", data, genotypes, kinship)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = gwas("y ~ 1 + x + snp", data.assign(x=factor * x), genotypes, kinship)
    columns = ["beta", "se", "p_wald", "lrt", "p_lrt", "p_score", "sigma2_a", "sigma2_e"]
    np.testing.assert_allclose(scaled[columns], base[columns], rtol=1e-8, atol=1e-12)


def test_a_tiny_response_is_not_mistaken_for_a_constant(study):
    y, x, kinship = study
    result, base = _fit(1e-300 * y, x, kinship), _fit(y, x, kinship)
    assert result.h2 == pytest.approx(base.h2, rel=1e-9) and base.h2 > 0.1
    assert result.params[1] / 1e-300 == pytest.approx(base.params[1], rel=1e-9)
    with pytest.raises(ValueError, match="exactly a linear combination"):
        EMLMM(np.full(len(y), 1e-300), np.ones((len(y), 1)), kinship)


@pytest.mark.parametrize("factor", [1e-200, 1e200])
def test_a_covariate_in_tiny_or_huge_units_is_not_called_redundant(study, factor):
    y, x, kinship = study
    assert _fit(y, factor * x, kinship).params[1] * factor == pytest.approx(
        _fit(y, x, kinship).params[1], rel=1e-9)


# --- ill-conditioned designs ---------------------------------------------------------

def test_nearly_collinear_covariates_are_named_with_their_condition_number(study):
    y, x, kinship = study
    rng = np.random.default_rng(1)
    data = pd.DataFrame({"y": y, "x": x, "x2": 2 * x + 1e-10 * rng.normal(size=len(y)),
                         "z": rng.normal(size=len(y))})
    with pytest.raises(ValueError, match=r"ill-conditioned.*condition number.*'x', 'x2'"):
        EMLMM.from_formula("y ~ 1 + z + x + x2", data, kinship=kinship)


def test_a_large_offset_is_fitted_until_it_makes_the_design_ill_conditioned(study):
    y, x, kinship = study
    data = pd.DataFrame({"y": y, "x": 1e4 + x})  # condition number ~1e4: sound
    result = EMLMM.from_formula("y ~ 1 + x", data, kinship=kinship).fit()
    assert result.params["x"] == pytest.approx(_fit(y, x, kinship).params[1], rel=1e-6)
    with pytest.raises(ValueError, match=r"condition number is 1\.\de\+08.*'Intercept', 'x'"):
        EMLMM.from_formula("y ~ 1 + x", data.assign(x=1e8 + x), kinship=kinship)


@pytest.mark.parametrize("heritability", [0.45, 0.9])
def test_regression_a_small_study_that_made_the_null_fit_singular(heritability):
    """n = 14 with a rank-13 kinship: on the code before the fix every fit of it (and
    its scan) ended in LinAlgError: Singular matrix."""
    y, X, kinship, rng = simulate_study(392, 14, heritability, 14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for factor in (1e-3, 1.0, 1e3):
            result = EMLMM(factor * y, X, kinship).fit()
            assert result.converged and np.isfinite(result.llf)
        age = X[:, 1]
        genotypes = pd.DataFrame({"copy": (age - age.min()) / np.ptp(age),
                                  "random": rng.integers(0, 3, size=14).astype(float)})
        table = gwas("y ~ 1 + age + snp", pd.DataFrame({"y": y, "age": age}), genotypes,
                     kinship, method="fixed")
    assert table.loc["copy", "note"] == "collinear with the covariates"
    value, _sigma2_a, _sigma2_e = dense.maximise_support(y, X, kinship)
    result = EMLMM(y, X, kinship).fit()
    assert result.llf == pytest.approx(value, rel=1e-9)


# --- failures are loud ---------------------------------------------------------------

def _poison(monkeypatch, error):
    """Make the scan's statistics raise ``error`` for every batch holding SNP 'bad'
    (a SNP that is 0 in the first individual and 2 in the second)."""
    from emlmm.gwas import _Scanner

    original = _Scanner._statistics

    def fragile(self, rotated):
        first_two = (rotated @ self.rotation.T)[:, :2]
        if np.any(np.all(np.isclose(first_two, [0.0, 2.0]), axis=1)):
            raise error
        return original(self, rotated)

    monkeypatch.setattr(_Scanner, "_statistics", fragile)


@pytest.fixture
def small_scan(study):
    y, x, kinship = study
    rng = np.random.default_rng(2)
    genotypes = pd.DataFrame(rng.integers(0, 3, size=(len(y), 5)).astype(float),
                             columns=[f"rs{j}" for j in range(5)])
    genotypes.loc[:1, "rs2"] = [0.0, 2.0]
    genotypes.loc[:1, ["rs0", "rs1", "rs3", "rs4"]] = 1.0
    return pd.DataFrame({"y": y, "x": x}), genotypes, kinship


def test_a_numerically_failed_snp_is_counted_in_a_warning(small_scan, monkeypatch):
    data, genotypes, kinship = small_scan
    _poison(monkeypatch, np.linalg.LinAlgError("simulated breakdown"))
    with pytest.warns(ConvergenceWarning, match=r"1 of 5 SNPs failed.*simulated breakdown"):
        table = gwas("y ~ 1 + x + snp", data, genotypes, kinship)
    assert table.note.str.startswith("failed").sum() == 1
    assert table.loc["rs2", "note"] == "failed: LinAlgError: simulated breakdown"


def test_a_programming_error_is_not_turned_into_a_note(small_scan, monkeypatch):
    data, genotypes, kinship = small_scan
    _poison(monkeypatch, AttributeError("a bug"))
    with pytest.raises(AttributeError, match="a bug"):
        gwas("y ~ 1 + x + snp", data, genotypes, kinship)


def test_the_command_line_exits_non_zero_when_snps_fail(tmp_path, monkeypatch, capsys):
    from plink_fixtures import write_plink

    from emlmm.__main__ import main

    rng = np.random.default_rng(3)
    n = 50
    genotypes = rng.integers(0, 3, size=(n, 6)).astype(float)
    genotypes[:2, :] = 1.0
    genotypes[:2, 4] = [0.0, 2.0]
    kinship = dense.random_genotype_kinship(rng, n, 100)
    y = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n) + rng.normal(size=n)
    write_plink(tmp_path / "s", genotypes, phenotypes=y)
    np.savetxt(tmp_path / "k.txt", kinship)
    _poison(monkeypatch, np.linalg.LinAlgError("simulated breakdown"))
    out = tmp_path / "out.tsv"
    code = main(["gwas", "--bfile", str(tmp_path / "s"), "--kinship", str(tmp_path / "k.txt"),
                 "--out", str(out), "--quiet"])
    assert code == 1
    assert "error: 1 SNPs failed" in capsys.readouterr().err
    assert len(pd.read_csv(out, sep="\t")) == 6  # the table is still written whole


# --- secondary outputs against independent computations ------------------------------

def test_allele_frequencies_are_the_mean_of_the_observed_genotypes(study):
    y, x, kinship = study
    rng = np.random.default_rng(6)
    genotypes = rng.integers(0, 3, size=(len(y), 4)).astype(float)
    genotypes[rng.random(genotypes.shape) < 0.1] = np.nan
    data = pd.DataFrame({"y": y, "x": x})
    data.loc[3, "y"] = np.nan  # a dropped individual does not count
    table = gwas("y ~ 1 + x + snp", data, genotypes, kinship, max_missing=1)  # 10% missing
    kept = np.arange(len(y)) != 3
    np.testing.assert_allclose(table.af, np.nanmean(genotypes[kept], axis=0) / 2, rtol=1e-12)
    np.testing.assert_array_equal(table.n_miss, np.isnan(genotypes[kept]).sum(axis=0))


@pytest.mark.parametrize("reml", [False, True])
def test_variance_standard_errors_are_the_dense_inverse_expected_information(study, reml):
    y, x, kinship = study
    X = np.column_stack([np.ones(len(y)), x])
    result = EMLMM(y, X, kinship).fit(reml=reml)
    information = dense.expected_information(X, kinship, result.sigma2_a, result.sigma2_e,
                                             reml=reml)
    covariance = np.linalg.inv(information)
    assert result.bse_sigma2_a == pytest.approx(np.sqrt(covariance[0, 0]), rel=1e-8)
    assert result.bse_sigma2_e == pytest.approx(np.sqrt(covariance[1, 1]), rel=1e-8)
    mean_diagonal = np.trace(kinship) / len(y)

    def h2(variances):
        return variances[0] * mean_diagonal / (variances[0] * mean_diagonal + variances[1])

    point = np.array([result.sigma2_a, result.sigma2_e])
    step = 1e-6 * point
    gradient = np.array([(h2(point + step * e) - h2(point - step * e)) / (2 * step @ e)
                         for e in np.eye(2)])
    assert result.bse_h2 == pytest.approx(np.sqrt(gradient @ covariance @ gradient), rel=1e-6)


def test_newton_alone_finds_every_snps_maximum(study):
    """With maxiter equal to Newton's own budget the scan has no EM fallback, so a
    wrong Newton step cannot hide behind it."""
    from emlmm import _scan

    y, x, kinship = study
    rng = np.random.default_rng(12)
    genotypes = rng.integers(0, 3, size=(len(y), 8)).astype(float)
    data = pd.DataFrame({"y": y, "x": x})
    table = gwas("y ~ 1 + x + snp", data, genotypes, kinship, maxiter=_scan.MAX_NEWTON_STEPS)
    assert table.converged.all()
    X = np.column_stack([np.ones(len(y)), x])
    null = dense.maximise(y, X, kinship)
    for j in range(0, 8, 2):
        alternative = dense.maximise(y, np.column_stack([X, genotypes[:, j]]), kinship,
                                     start=(null.sigma2_a, null.sigma2_e))
        assert table.lrt.iloc[j] == pytest.approx(2 * (alternative.llf - null.llf), abs=1e-6)
        assert table.sigma2_a.iloc[j] == pytest.approx(alternative.sigma2_a, rel=1e-4)


def test_a_single_precision_centred_kinship_keeps_the_intercept_at_the_mean(tmp_path):
    """GCTA's .grm.bin holds a kinship in single precision: its null vector (the ones
    of GEMMA's centring) is then exact only to rounding, and the intercept, which only
    that direction sees, must still be the mean (it once came out at -8e5 +- 2e6)."""
    from emlmm import kinship, read_grm, write_grm

    rng = np.random.default_rng(0)
    n = 600
    genotypes = rng.binomial(2, 0.3, size=(n, 3000)).astype(float)
    ids = [f"i{j}" for j in range(n)]
    exact = pd.DataFrame(kinship(genotypes), index=ids, columns=ids)
    write_grm(tmp_path / "k", exact)
    rounded = read_grm(tmp_path / "k")
    rounded.index = rounded.columns = ids
    data = pd.DataFrame({"y": 10 + 3 * rng.normal(size=n)}, index=ids)
    fits = [EMLMM.from_formula("y ~ 1", data, kinship=k).fit(reml=True)
            for k in (exact, rounded)]
    assert fits[0].params["Intercept"] == pytest.approx(data.y.mean(), rel=1e-12)
    assert fits[1].params["Intercept"] == pytest.approx(data.y.mean(), rel=1e-9)
    assert fits[1].bse["Intercept"] == pytest.approx(fits[0].bse["Intercept"], rel=1e-4)
    assert fits[1].llf == pytest.approx(fits[0].llf, abs=1e-3)
