"""Properties that must hold for any data (hypothesis generates the data sets)."""

import dense
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emlmm import EMLMM, gwas

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def simulate_study(seed, n, heritability, n_snps):
    """A related sample with a covariate and a heritable trait: y, X, kinship, rng."""
    rng = np.random.default_rng(seed)
    kinship = dense.random_genotype_kinship(rng, n, n_snps)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    polygenic = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    y = X @ [1.0, 0.5] + np.sqrt(heritability) * polygenic \
        + np.sqrt(1 - heritability) * rng.normal(size=n)
    return y, X, kinship, rng


@st.composite
def studies(draw):
    """:func:`simulate_study` from a random seed, size, heritability and SNP count."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(12, 40))
    heritability = draw(st.floats(0.0, 0.9))
    return simulate_study(seed, n, heritability, draw(st.integers(n // 2, 3 * n)))


def estimates(result):
    return np.r_[np.asarray(result.params), result.sigma2_a, result.sigma2_e]


def close(a, b, scale):
    """Agreement to the precision the stopping rule guarantees (~1e-6 standard errors)."""
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


@SETTINGS
@given(studies())
def test_permuting_individuals_changes_nothing(study):
    y, X, kinship, rng = study
    order = rng.permutation(len(y))
    base = EMLMM(y, X, kinship).fit()
    permuted = EMLMM(y[order], X[order], kinship[np.ix_(order, order)]).fit()
    assert permuted.llf == pytest.approx(base.llf, rel=1e-9, abs=1e-9)
    close(estimates(permuted), estimates(base), np.var(y))


@SETTINGS
@given(studies(), st.floats(1e-3, 1e3))
def test_scaling_the_response_scales_beta_and_the_variances(study, factor):
    y, X, kinship, _ = study
    base = EMLMM(y, X, kinship).fit()
    scaled = EMLMM(factor * y, X, kinship).fit()
    close(np.asarray(scaled.params) / factor, np.asarray(base.params), np.std(y))
    close(np.array([scaled.sigma2_a, scaled.sigma2_e]) / factor**2,
          np.array([base.sigma2_a, base.sigma2_e]), np.var(y))


@SETTINGS
@given(studies(), st.floats(-1e3, 1e3))
def test_shifting_the_response_changes_only_the_intercept(study, shift):
    y, X, kinship, _ = study
    base = EMLMM(y, X, kinship).fit()
    shifted = EMLMM(y + shift, X, kinship).fit()
    assert shifted.params[0] == pytest.approx(base.params[0] + shift, rel=1e-6, abs=1e-4)
    close(estimates(shifted)[1:], estimates(base)[1:], np.var(y))


@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
@SETTINGS
@given(studies(), st.sampled_from(["em", "accelerated"]), st.booleans())
def test_em_never_decreases_the_likelihood(study, method, reml):
    y, X, kinship, _ = study
    result = EMLMM(y, X, kinship).fit(method=method, reml=reml, start_params=None,
                                      maxiter=300)
    steps = np.diff(result.llf_history)
    assert np.all(steps >= -1e-9 * max(1.0, abs(result.llf)))


@SETTINGS
@given(studies(), st.floats(0.0, 0.9), st.floats(0.1, 1.0))
def test_a_snp_identical_to_a_covariate_gets_nan_and_a_reason(study, low, width):
    y, X, kinship, rng = study
    data = pd.DataFrame({"y": y, "age": X[:, 1]})
    age = X[:, 1]
    genotypes = pd.DataFrame({
        # any affine copy of the covariate, within the genotype range 0-2
        "copy": low + width * (age - age.min()) / np.ptp(age),
        "random": rng.integers(0, 3, size=len(y)).astype(float),
    })
    table = gwas("y ~ 1 + age + snp", data, genotypes, kinship, method="fixed")
    assert table.loc["copy", "note"] == "collinear with the covariates"
    assert table.loc["copy", ["beta", "p_wald", "p_lrt", "p_score"]].isna().all()
