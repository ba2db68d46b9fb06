"""GWAS scans against per-SNP EMLMM fits, dense references and edge cases."""

import dense
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from emlmm import EMLMM, gwas


@pytest.fixture(scope="module")
def study():
    """120 related individuals, a covariate, 25 SNPs (two causal), some missing values."""
    rng = np.random.default_rng(17)
    n, m = 120, 25
    kinship = dense.random_genotype_kinship(rng, n, 300)
    ids = [f"i{k:03d}" for k in range(n)]
    freqs = rng.uniform(0.1, 0.5, size=m)
    genotypes = pd.DataFrame(
        rng.binomial(2, freqs, size=(n, m)).astype(float),
        index=ids,
        columns=[f"rs{j}" for j in range(m)],
    )
    polygenic = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    data = pd.DataFrame({"age": rng.uniform(20, 60, size=n)}, index=ids)
    data["y"] = (
        5
        + 0.05 * data.age
        + 0.8 * genotypes.rs3
        - 0.6 * genotypes.rs7
        + 1.2 * polygenic
        + rng.normal(size=n)
    )
    genotypes.iloc[[4, 9, 30], 5] = np.nan
    return data, genotypes, pd.DataFrame(kinship, index=ids, columns=ids)


@pytest.fixture(scope="module")
def exact(study):
    data, genotypes, kinship = study
    return gwas("y ~ 1 + age + snp", data, genotypes, kinship)


def imputed(genotypes, snp):
    column = genotypes[snp]
    return column.fillna(column.mean())


def test_p_lrt_equals_separate_fits_compared_by_lr_test(study, exact):
    data, genotypes, kinship = study
    null = EMLMM.from_formula("y ~ 1 + age", data=data, kinship=kinship).fit()
    for snp in genotypes.columns:
        frame = data.assign(snp=imputed(genotypes, snp))
        full = EMLMM.from_formula("y ~ 1 + age + snp", data=frame, kinship=kinship).fit()
        _, p_value, df_diff = full.compare_lr_test(null)
        assert df_diff == 1
        assert exact.loc[snp, "p_lrt"] == pytest.approx(p_value, rel=1e-6)
        assert exact.loc[snp, "llf"] == pytest.approx(full.llf, rel=1e-10)
        assert exact.loc[snp, "sigma2_a"] == pytest.approx(full.sigma2_a, rel=1e-4)


@pytest.mark.parametrize("snp", ["rs3", "rs5", "rs12"])
def test_p_wald_equals_a_dense_reml_computation(study, exact, snp):
    data, genotypes, kinship = study
    X = np.column_stack([np.ones(len(data)), data.age, imputed(genotypes, snp)])
    oracle = dense.maximise(data.y.to_numpy(), X, kinship.to_numpy(), reml=True)
    se = np.sqrt(oracle.cov_beta[-1, -1])
    assert exact.loc[snp, "beta"] == pytest.approx(oracle.beta[-1], rel=1e-5)
    assert exact.loc[snp, "se"] == pytest.approx(se, rel=1e-5)
    p_wald = stats.f.sf((oracle.beta[-1] / se) ** 2, 1, len(data) - 3)
    assert exact.loc[snp, "p_wald"] == pytest.approx(p_wald, rel=1e-4)


def test_p_score_is_gemmas_score_test_at_the_null_ml_estimates(study, exact):
    data, genotypes, kinship = study
    y, K = data.y.to_numpy(), kinship.to_numpy()
    W = np.column_stack([np.ones(len(y)), data.age])
    # The null ML fit is checked against the dense optimiser in test_model.py.
    null = EMLMM.from_formula("y ~ 1 + age", data=data, kinship=kinship).fit()
    H = dense.covariance(K, null.sigma2_a / null.sigma2_e, 1.0)  # GEMMA's lambda K + I
    Hinv = np.linalg.inv(H)
    P = Hinv - Hinv @ W @ np.linalg.inv(W.T @ Hinv @ W) @ W.T @ Hinv
    for snp in ("rs3", "rs5", "rs20"):
        x = imputed(genotypes, snp).to_numpy()
        statistic = len(y) * (x @ P @ y) ** 2 / ((y @ P @ y) * (x @ P @ x))
        expected = stats.f.sf(statistic, 1, len(y) - W.shape[1] - 1)
        assert exact.loc[snp, "p_score"] == pytest.approx(expected, rel=1e-5)


def test_fixed_scan_is_gls_at_the_null_reml_variances(study):
    data, genotypes, kinship = study
    fixed = gwas("y ~ 1 + age + snp", data, genotypes, kinship, method="fixed")
    null = EMLMM.from_formula("y ~ 1 + age", data=data, kinship=kinship).fit(reml=True)
    V = dense.covariance(kinship.to_numpy(), null.sigma2_a, null.sigma2_e)
    for snp in ("rs3", "rs5"):
        X = np.column_stack([np.ones(len(data)), data.age, imputed(genotypes, snp)])
        beta, cov_beta = dense.gls(data.y.to_numpy(), X, V)
        assert fixed.loc[snp, "beta"] == pytest.approx(beta[-1], rel=1e-8)
        assert fixed.loc[snp, "se"] == pytest.approx(np.sqrt(cov_beta[-1, -1]), rel=1e-8)
        assert fixed.loc[snp, "lrt"] == pytest.approx(beta[-1] ** 2 / cov_beta[-1, -1], rel=1e-6)
    np.testing.assert_allclose(fixed.sigma2_a, null.sigma2_a, rtol=1e-12)


def test_scan_finds_the_causal_snps(exact):
    assert exact.p_lrt.idxmin() == "rs3"
    assert exact.converged.all()
    assert list(exact.columns) == [
        "af",
        "n_miss",
        "beta",
        "se",
        "p_wald",
        "lrt",
        "p_lrt",
        "p_score",
        "llf",
        "sigma2_a",
        "sigma2_e",
        "n_iter",
        "converged",
        "note",
    ]
    assert exact.loc["rs5", "n_miss"] == 3
    assert exact.loc["rs5", "af"] == pytest.approx(exact.loc["rs5", "af"])


def test_bad_snps_get_nan_and_a_reason_without_stopping_the_scan(study):
    data, genotypes, kinship = study
    odd = genotypes.iloc[:, :4].copy()
    odd["mono"] = 1.0
    odd["gone"] = np.nan
    odd["aged"] = (data.age - 20) / 20  # collinear with the covariate and intercept
    # Without GEMMA's SNP filters (on by default since they exist), every SNP has a row.
    table = gwas("y ~ 1 + age + snp", data, odd, kinship, method="exact", min_maf=0,
                 max_missing=1)
    assert table.loc["mono", "note"] == "monomorphic"
    assert table.loc["gone", "note"] == "all genotypes missing"
    assert table.loc["aged", "note"] == "collinear with the covariates"
    assert (
        table.loc[["mono", "gone", "aged"], ["beta", "p_lrt", "p_wald", "p_score"]]
        .isna()
        .all()
        .all()
    )
    assert table.loc[genotypes.columns[:4], "p_lrt"].notna().all()
    assert (table.loc[genotypes.columns[:4], "note"] == "").all()


def test_chunks_and_row_order_do_not_change_results(study, exact):
    data, genotypes, kinship = study
    shuffled = genotypes.sample(frac=1.0, random_state=1)
    seen = []
    table = gwas(
        "y ~ 1 + age + snp",
        data,
        shuffled,
        kinship,
        chunk_size=7,
        progress=lambda done, total: seen.append((done, total)),
    )
    pd.testing.assert_frame_equal(table, exact, rtol=1e-8, check_exact=False)
    assert seen == [(7, 25), (14, 25), (21, 25), (25, 25)]


def test_rows_missing_in_the_data_are_dropped_everywhere(study, exact):
    data, genotypes, kinship = study
    holes = data.copy()
    holes.iloc[[2, 50], holes.columns.get_loc("y")] = np.nan
    table = gwas("y ~ 1 + age + snp", holes, genotypes.iloc[:, :5], kinship)
    keep = holes.index[holes.y.notna()]
    reference = gwas(
        "y ~ 1 + age + snp",
        data.loc[keep],
        genotypes.loc[keep].iloc[:, :5],
        kinship.loc[keep, keep].to_numpy(),
    )
    pd.testing.assert_frame_equal(table, reference, rtol=1e-8, check_exact=False)


def test_ndarray_genotypes_follow_the_data_rows(study, exact):
    data, genotypes, kinship = study
    table = gwas("y ~ 1 + age + snp", data, genotypes.to_numpy()[:, :3], kinship)
    np.testing.assert_allclose(table.p_lrt, exact.p_lrt.iloc[:3], rtol=1e-8)
    assert list(table.index) == ["snp1", "snp2", "snp3"]
    with pytest.raises(ValueError, match=r"one row per row of data \(120\); got shape \(119, 3\)"):
        gwas("y ~ 1 + age + snp", data, genotypes.to_numpy()[1:, :3], kinship)


def test_genotypes_missing_individuals_are_named(study):
    data, genotypes, kinship = study
    with pytest.raises(
        ValueError,
        match=r"1 individuals in the data have no row in the "
        r"genotypes: 'i000'",
    ):
        gwas("y ~ 1 + snp", data, genotypes.iloc[1:], kinship)


def test_formula_must_have_a_snp_term_alone(study):
    data, genotypes, kinship = study
    with pytest.raises(ValueError, match="no 'snp' term"):
        gwas("y ~ 1 + age", data, genotypes, kinship)
    with pytest.raises(ValueError, match="on its own"):
        gwas("y ~ 1 + age * snp", data, genotypes, kinship)
    with pytest.raises(ValueError, match="method must be"):
        gwas("y ~ 1 + snp", data, genotypes, kinship, method="score")


def test_plink_genotypes_equal_the_lab_text_genotypes_and_scan_alike(tmp_path):
    from plink_fixtures import write_plink

    from emlmm import read_lab, read_plink
    from emlmm.datasets import lab_files, load_lab

    paths = lab_files()
    text = read_lab(paths["X"], paths["Y"], paths["A"])
    lab = load_lab()
    write_plink(tmp_path / "lab", text.genotypes.to_numpy(), sample_ids=list(lab.genotypes.index),
                snp_ids=list(lab.genotypes.columns), chromosomes=list(lab.snps.chr),
                positions=list(lab.snps.pos), phenotypes=list(text.phenotype))
    with read_plink(tmp_path / "lab") as plink:
        np.testing.assert_array_equal(plink.read(), text.genotypes.to_numpy())
        np.testing.assert_allclose(plink.phenotype(), text.phenotype, rtol=1e-12)
        data = lab.phenotype.to_frame()
        from_plink = gwas("y ~ 1 + snp", data, plink, lab.kinship, method="fixed", chunk_size=128)
    from_frame = gwas("y ~ 1 + snp", data, lab.genotypes, lab.kinship, method="fixed")
    np.testing.assert_allclose(from_plink.p_wald, from_frame.p_wald, rtol=1e-10)
    assert list(from_plink.columns[:2]) == ["chr", "pos"]
    assert (from_plink.pos.to_numpy() == lab.snps.pos.to_numpy()).all()


def test_loco_scans_each_chromosome_with_the_other_chromosomes_kinship():
    from emlmm import kinship
    from emlmm.datasets import load_lab

    lab = load_lab()
    data = lab.phenotype.to_frame()
    chromosome = lab.snps.chr.to_numpy()
    loco = gwas("y ~ 1 + snp", data, lab.genotypes, None, method="fixed", loco=True,
                chromosomes=chromosome)
    assert list(loco.index) == list(lab.genotypes.columns)
    assert (loco.chr.to_numpy() == chromosome).all()
    for label in np.unique(chromosome):
        on = lab.genotypes.loc[:, chromosome == label]
        others = kinship(lab.genotypes.loc[:, chromosome != label])  # GEMMA -gk 1
        expected = gwas("y ~ 1 + snp", data, on, others, method="fixed")
        np.testing.assert_allclose(loco.loc[on.columns, "p_wald"], expected.p_wald, rtol=1e-8)
        np.testing.assert_allclose(loco.loc[on.columns, "sigma2_a"], expected.sigma2_a,
                                   rtol=1e-8)


def test_loco_needs_chromosomes_and_no_kinship(study):
    data, genotypes, kinship = study
    with pytest.raises(ValueError, match="pass kinship=None"):
        gwas("y ~ 1 + snp", data, genotypes, kinship, loco=True)
    with pytest.raises(ValueError, match="needs chromosome labels"):
        gwas("y ~ 1 + snp", data, genotypes, None, loco=True)
    with pytest.raises(ValueError, match=r"one label per SNP \(25\); got shape \(3,\)"):
        gwas("y ~ 1 + snp", data, genotypes, None, loco=True, chromosomes=[1, 2, 3])


def test_loco_with_interleaved_chromosomes_reads_the_right_columns():
    from emlmm.datasets import load_lab

    lab = load_lab()
    data = lab.phenotype.to_frame()
    order = np.random.default_rng(2).permutation(300)  # 300 SNPs, chromosomes interleaved
    shuffled = lab.genotypes.iloc[:, order]
    chromosome = lab.snps.chr.to_numpy()[order]
    table = gwas("y ~ 1 + snp", data, shuffled, None, method="fixed", loco=True,
                 chromosomes=chromosome, chunk_size=16)
    ordered = np.argsort(order)
    reference = gwas("y ~ 1 + snp", data, shuffled.iloc[:, ordered], None, method="fixed",
                     loco=True, chromosomes=chromosome[ordered])
    assert list(table.index) == list(shuffled.columns)
    np.testing.assert_allclose(table.loc[reference.index, "p_wald"], reference.p_wald, rtol=1e-9)


def test_loco_formula_sees_the_callers_namespace():
    from emlmm.datasets import load_lab

    lab = load_lab()
    data = lab.phenotype.to_frame()

    def shifted(values):
        return values + 1.0

    table = gwas("shifted(y) ~ 1 + snp", data, lab.genotypes.iloc[:, :40], None,
                 method="fixed", loco=True, chromosomes=[1] * 20 + [2] * 20)
    assert table.p_wald.notna().all()
