"""A low-rank kinship F F' given by its factor gives the answers of the dense matrix."""

import dense
import numpy as np
import pandas as pd
import pytest

from emlmm import EMLMM, GenomeScan, LowRankKinship, gwas
from emlmm._spectral import KinshipSpectrum


@pytest.fixture(scope="module")
def study():
    """Families (a kinship from 25 SNPs: rank 25 of 150), a covariate, a heritable trait
    with a causal SNP, missing phenotypes and genotypes."""
    rng = np.random.default_rng(41)
    n, m, k = 150, 60, 25
    founders = rng.binomial(2, 0.4, size=(n // 3, k + m)).astype(float)
    family = np.repeat(np.arange(n // 3), 3)
    genotypes = np.clip(founders[family] + rng.integers(-1, 2, size=(n, k + m)), 0, 2)
    kinship_snps, scanned = genotypes[:, :k], genotypes[:, k:]
    scanned[rng.random(scanned.shape) < 0.01] = np.nan
    ids = [f"i{j}" for j in range(n)]
    factor = LowRankKinship.from_snps(pd.DataFrame(kinship_snps, index=ids))
    related = factor.to_dense()
    root = np.linalg.cholesky(related.to_numpy() + 1e-8 * np.eye(n))
    sex = rng.integers(0, 2, size=n).astype(float)
    y = 0.3 * sex + 0.5 * np.nan_to_num(scanned[:, 3], nan=1.0) + 1.5 * root @ rng.normal(
        size=n) + rng.normal(size=n)
    data = pd.DataFrame({"y": y, "sex": sex, "z": rng.normal(size=n)}, index=ids)
    data.loc[rng.random(n) < 0.08, "y"] = np.nan
    frame = pd.DataFrame(scanned, index=ids, columns=[f"rs{j}" for j in range(m)])
    return data, frame, factor, related


def test_the_spectrum_from_the_factor_is_that_of_the_dense_matrix():
    rng = np.random.default_rng(3)
    factor = rng.normal(size=(60, 12))
    factor[:, 11] = factor[:, 0] - factor[:, 1]  # rank 11
    low = KinshipSpectrum.from_factor(factor)
    full = KinshipSpectrum.from_kinship(factor @ factor.T)
    np.testing.assert_allclose(low.eigenvalues, full.eigenvalues, atol=1e-10)
    assert low.rank == full.rank == 11
    vectors = low.eigenvectors
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(60), atol=1e-12)
    np.testing.assert_allclose((vectors * low.eigenvalues) @ vectors.T, factor @ factor.T,
                               atol=1e-10)


@pytest.mark.parametrize("n, k", [(40, 40), (30, 45), (50, 1)])
def test_the_spectrum_of_square_wide_and_rank_one_factors_with_a_zero_column(n, k):
    # A zero column makes LAPACK's reflector the identity (tau = 0); k >= n leaves no
    # null space outside R's; k = 1 is a single SNP.
    rng = np.random.default_rng(n + k)
    factor = rng.normal(size=(n, k))
    if k > 1:
        factor[:, 0] = 0.0
    low = KinshipSpectrum.from_factor(factor)
    full = KinshipSpectrum.from_kinship(factor @ factor.T)
    np.testing.assert_allclose(low.eigenvalues, full.eigenvalues, atol=1e-9)
    assert low.rank == full.rank == min(n, k - (k > 1))
    vectors = low.eigenvectors
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(n), atol=1e-12)
    np.testing.assert_allclose((vectors * low.eigenvalues) @ vectors.T, factor @ factor.T,
                               atol=1e-9)


@pytest.mark.parametrize("n, k", [(60, 12), (40, 40), (30, 45), (50, 1)])
def test_the_implicit_eigenvectors_rotate_as_the_formed_ones(n, k):
    # rotate, unrotate and columns work on the reflectors without forming the n x n
    # eigenvectors; checked against the formed matrix (made afterwards) and against
    # the dense eigendecomposition's invariants.
    rng = np.random.default_rng(7 * n + k)
    factor = rng.normal(size=(n, k))
    if k > 2:
        factor[:, -1] = factor[:, 0] - factor[:, 1]  # a zero eigenvalue inside the span
    low = KinshipSpectrum.from_factor(factor)
    arrays = rng.normal(size=(n, 3))
    rotated, back = low.rotate(arrays), low.unrotate(arrays)
    along = low.rotate(arrays[:, 0])
    span = low.columns(slice(n - min(n, k), None))
    some = low.columns(slice(2, 7))
    assert low.implicit  # nothing above formed the n x n matrix
    vectors = low.eigenvectors
    assert not low.implicit
    np.testing.assert_allclose(rotated, vectors.T @ arrays, atol=1e-12)
    np.testing.assert_allclose(along, vectors.T @ arrays[:, 0], atol=1e-12)
    np.testing.assert_allclose(back, vectors @ arrays, atol=1e-12)
    np.testing.assert_allclose(span, vectors[:, n - min(n, k):], atol=1e-12)
    np.testing.assert_allclose(some, vectors[:, 2:7], atol=1e-12)
    np.testing.assert_allclose(low.unrotate(low.rotate(arrays)), arrays, atol=1e-12)
    # U diag(lambda) U' = F F' through the implicit products alone.
    implicit = KinshipSpectrum.from_factor(factor)
    kinship = implicit.unrotate(implicit.eigenvalues[:, None] * implicit.rotate(np.eye(n)))
    np.testing.assert_allclose(kinship, factor @ factor.T, atol=1e-10)


def test_fits_scans_and_predictions_never_form_n_by_n_matrices(study):
    # What makes a low-rank kinship scale: the model, its fit, its BLUPs and a scan
    # hold the factor and its reflectors only (O(n k)), never F F' or n x n
    # eigenvectors; the answers are the dense kinship's (checked in the tests below).
    data, frame, factor, related = study
    model = EMLMM.from_formula("y ~ 1 + sex", data, kinship=factor)
    result = model.fit(reml=True)
    blups, effects = result.blup(), result.random_effects
    slow = EMLMM.from_formula("y ~ 1 + sex", data, kinship=related).fit(reml=True)
    np.testing.assert_allclose(effects, slow.random_effects, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(blups.se, slow.blup().se, rtol=1e-6, atol=1e-9)
    scan = GenomeScan("y ~ 1 + sex + snp", data, frame, factor)
    table = scan.run()
    assert len(table) > 50
    assert model.spectrum.implicit and model._kinship is None
    assert scan.null_model.spectrum.implicit and scan.null_model._kinship is None
    # Asked for, they are formed, and are the dense ones.
    np.testing.assert_allclose(model.kinship, related.loc[model.data.row_labels,
                                                          model.data.row_labels])
    n = len(model.endog)
    assert model.spectrum.eigenvectors.shape == (n, n) and not model.spectrum.implicit


@pytest.mark.parametrize("reml", [False, True])
def test_a_fit_with_the_factor_is_the_dense_fit(study, reml):
    data, _, factor, related = study
    fast = EMLMM.from_formula("y ~ 1 + sex", data, kinship=factor).fit(reml=reml)
    slow = EMLMM.from_formula("y ~ 1 + sex", data, kinship=related).fit(reml=reml)
    assert fast.nobs == slow.nobs == data.y.notna().sum()
    np.testing.assert_allclose(fast.params, slow.params, rtol=1e-7)
    np.testing.assert_allclose(fast.bse, slow.bse, rtol=1e-6)
    assert fast.llf == pytest.approx(slow.llf, rel=1e-10)
    # And both are the dense brute-force maximum.
    used = data.dropna()
    X = np.column_stack([np.ones(len(used)), used.sex])
    brute = dense.maximise(used.y.to_numpy(), X, related.loc[used.index, used.index].to_numpy(),
                           reml=reml)
    assert fast.llf == pytest.approx(brute.llf, abs=1e-5)
    blups = fast.blup()
    np.testing.assert_allclose(blups.blup, slow.blup().blup, rtol=1e-6, atol=1e-9)


def test_an_unlabelled_factor_follows_the_rows_and_drops_missing_ones(study):
    data, _, factor, related = study
    plain = LowRankKinship(factor.factor)
    fast = EMLMM(data.y.to_numpy(), np.column_stack([np.ones(len(data)), data.sex]), plain,
                 missing="drop").fit()
    slow = EMLMM.from_formula("y ~ 1 + sex", data, kinship=related).fit()
    np.testing.assert_allclose(fast.params, slow.params, rtol=1e-7)


@pytest.mark.parametrize("method", ["exact", "fixed"])
def test_a_scan_with_the_factor_is_the_dense_scan(study, method):
    data, frame, factor, related = study
    fast = gwas("y ~ 1 + sex + snp", data, frame, factor, method)
    slow = gwas("y ~ 1 + sex + snp", data, frame, related, method)
    assert len(fast) > 50
    pd.testing.assert_index_equal(fast.index, slow.index)
    for column in ("p_wald", "p_lrt", "p_score"):
        np.testing.assert_allclose(np.log10(fast[column]), np.log10(slow[column]), atol=1e-5,
                                   err_msg=column)
    np.testing.assert_allclose(fast.beta, slow.beta, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(fast.llf, slow.llf, rtol=1e-9)
    np.testing.assert_allclose(fast.sigma2_e, slow.sigma2_e, rtol=1e-5)
    assert (fast.note == slow.note).all()


def test_a_snp_in_the_kinship_and_the_em_fallback_match_the_dense_scan(study, monkeypatch):
    """A SNP inside the factor's span (nothing left in the null space) and SNPs that
    Newton hands to EM (forced here) are fitted as the dense kinship fits them."""
    import importlib

    scan_module = importlib.import_module("emlmm._scan")
    data, frame, factor, related = study
    inside = frame.iloc[:, :6].copy()
    inside["in_span"] = pd.Series(factor.factor[:, 0], index=frame.index) + 1.0
    monkeypatch.setattr(scan_module, "MAX_NEWTON_STEPS", 1)
    fast = gwas("~ 1 + snp", data, inside, factor, phenotypes=["y", "z"], min_maf=0,
                max_missing=1)
    slow = gwas("~ 1 + snp", data, inside, related, phenotypes=["y", "z"], min_maf=0,
                max_missing=1)
    assert (fast.n_iter > 1).any()  # EM did some of the work
    np.testing.assert_allclose(np.log10(fast.p_lrt), np.log10(slow.p_lrt), atol=1e-5)
    np.testing.assert_allclose(np.log10(fast.p_wald), np.log10(slow.p_wald), atol=1e-5)


def test_a_low_rank_kinship_is_checked_and_refused_clearly(study):
    data, frame, factor, _ = study
    with pytest.raises(ValueError, match="must be finite; row 2"):
        LowRankKinship(np.array([[1.0], [2.0], [np.nan]]))
    with pytest.raises(ValueError, match="n x k matrix with k >= 1"):
        LowRankKinship(np.ones(5))
    with pytest.raises(TypeError, match="numeric n x k matrix"):
        LowRankKinship([["a", "b"]])
    with pytest.raises(ValueError, match="have no row in the kinship's factor"):
        GenomeScan("y ~ 1 + snp", data, frame,
                   LowRankKinship(pd.DataFrame(factor.factor[:-1], index=data.index[:-1])))
    with pytest.raises(ValueError, match="factor has 149 rows but the data have 150"):
        EMLMM(data.z.to_numpy(), np.ones((150, 1)), LowRankKinship(factor.factor[:-1]))


def test_several_components_use_the_dense_matrix(study):
    data, _, factor, related = study
    cages = {"cage": "0 + C(sex)"}
    fast = EMLMM.from_formula("z ~ 1", data, kinship=factor, vc_formula=cages).fit()
    slow = EMLMM.from_formula("z ~ 1", data, kinship=related, vc_formula=cages).fit()
    np.testing.assert_allclose(fast.params, slow.params, rtol=1e-10)
