"""A GEMMA user's first day on the command line: phenotype and covariate files, SNP
filters, GEMMA's output columns, the run log, GEMMA's kinship and GCTA's GRM."""

import importlib
from pathlib import Path

import dense
import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink

from emlmm import EMLMM, gwas, kinship, read_grm, read_plink
from emlmm.__main__ import main
from emlmm.genotypes import hwe_exact_pvalues

kinship_module = importlib.import_module("emlmm.kinship")

N, M = 120, 40


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A fileset with three phenotypes in the .fam, SNPs the filters remove, and
    GEMMA-style phenotype and covariate files."""
    rng = np.random.default_rng(30)
    genotypes = rng.binomial(2, rng.uniform(0.15, 0.5, size=M), size=(N, M)).astype(float)
    genotypes[:, 5] = 0.0
    genotypes[:3, 5] = 1.0  # af 3 / 240 = 0.0125 over all; below 0.01 among the analysed
    genotypes[:, 6] = 2.0  # monomorphic
    genotypes[rng.random(N) < 0.12, 7] = np.nan  # too many missing
    genotypes[:, 8] = 1.0  # every call heterozygous (GEMMA drops it too)
    related = dense.random_genotype_kinship(rng, N, 300)
    polygenic = np.linalg.cholesky(related + 1e-9 * np.eye(N)) @ rng.normal(size=N)
    age = rng.uniform(20, 60, size=N)
    y1 = genotypes[:, 0] + polygenic + rng.normal(size=N)
    y2 = 1.0 + 0.05 * age + 0.8 * genotypes[:, 1] + polygenic + rng.normal(size=N)
    y3 = rng.normal(size=N)
    y2[:3] = np.nan  # the three carriers of SNP 5 have no phenotype 2
    y2[10] = -9
    folder = tmp_path_factory.mktemp("gemma")
    prefix = folder / "study"
    ids = [f"i{i}" for i in range(N)]
    write_plink(prefix, genotypes, sample_ids=ids, chromosomes=[1] * 20 + [2] * 20)
    fam = [
        f"f{i} {ids[i]} 0 0 1 {fmt(y1[i])} {fmt(y2[i])} {fmt(y3[i])}" for i in range(N)
    ]
    (folder / "study.fam").write_text("\n".join(fam) + "\n")
    (folder / "pheno.txt").write_text(
        "\n".join(f"{fmt(y3[i])} {fmt(y2[i])}" for i in range(N)) + "\n"
    )
    order = rng.permutation(N)
    (folder / "pheno_plink.txt").write_text(
        "FID IID trait3 trait2\n"
        + "\n".join(f"f{i} {ids[i]} {fmt(y3[i])} {fmt(y2[i])}" for i in order) + "\n"
    )
    (folder / "covar.txt").write_text("\n".join(f"1 {age[i]:.6f}" for i in range(N)) + "\n")
    (folder / "covar_plink.txt").write_text(
        "FID IID age\n" + "\n".join(f"f{i} {ids[i]} {age[i]:.6f}" for i in order) + "\n"
    )
    np.savetxt(folder / "K.txt", related)
    data = pd.DataFrame({"y": y2, "age": np.round(age, 6)}, index=pd.Index(ids, name="sample"))
    data.loc[data.y == -9, "y"] = np.nan
    return prefix, folder, genotypes, data, related


def fmt(value):
    return "NA" if np.isnan(value) else f"{value:.10g}"


def gwas_args(prefix, folder, out, *extra):
    return ["gwas", "--bfile", str(prefix), "--kinship", str(folder / "K.txt"), "--quiet",
            "--out", str(out), *extra]


def frame(study):
    _, _, genotypes, data, related = study
    ids = data.index
    snps = pd.DataFrame(genotypes, index=ids, columns=[f"rs{j + 1}" for j in range(M)])
    return data, snps, pd.DataFrame(related, index=ids, columns=ids)


# --- phenotypes ---------------------------------------------------------------------------

def test_pheno_col_is_gemmas_n_in_the_fam_and_in_a_phenotype_file(study, tmp_path):
    prefix, folder, *_ = study
    data, snps, related = frame(study)
    expected = gwas("y ~ 1 + snp", data, snps, related)
    runs = {
        "fam": ["--pheno-col", "2"],
        "gemma file": ["--pheno", str(folder / "pheno.txt"), "--pheno-col", "2"],
        "plink file": ["--pheno", str(folder / "pheno_plink.txt"), "--pheno-col", "2"],
    }
    for name, extra in runs.items():
        out = tmp_path / f"{name}.tsv"
        assert main(gwas_args(prefix, folder, out, *extra)) == 0, name
        table = pd.read_csv(out, sep="\t", index_col="snp")
        assert list(table.index) == list(expected.index), name
        np.testing.assert_allclose(table.p_lrt, expected.p_lrt, rtol=1e-5, err_msg=name)


def test_a_phenotype_that_does_not_exist_is_one_line_before_any_work(study, tmp_path,
                                                                      monkeypatch):
    prefix, folder, *_ = study

    def no_work(*args, **kwargs):
        raise AssertionError("a kinship was computed before the inputs were checked")

    monkeypatch.setattr(kinship_module, "kinship_sum", no_work)
    args = ["gwas", "--bfile", str(prefix), "--quiet"]
    with pytest.raises(SystemExit, match=r"^emlmm: error: phenotype column 4 does not exist: "
                                         r".*holds 3 phenotypes"):
        main([*args, "--out", str(tmp_path / "a.tsv"), "--pheno-col", "4"])
    with pytest.raises(SystemExit, match=r"^emlmm: error: phenotype column 3 does not exist: "
                                         r".*holds 2 phenotype"):
        main([*args, "--out", str(tmp_path / "b.tsv"), "--pheno", str(folder / "pheno.txt"),
              "--pheno-col", "3"])
    with pytest.raises(SystemExit, match=r"^emlmm: error: PLINK fileset .* is incomplete"):
        main(["gwas", "--bfile", str(folder / "nowhere"), "--out", str(tmp_path / "c.tsv")])
    for name in ("a.tsv", "b.tsv", "c.tsv"):
        assert not (tmp_path / name).exists()


# --- covariates -----------------------------------------------------------------------------

def test_covariate_files_in_gemmas_and_plinks_formats(study, tmp_path, capsys):
    prefix, folder, *_ = study
    data, snps, related = frame(study)
    expected = gwas("y ~ 1 + age + snp", data, snps, related)
    for name in ("covar.txt", "covar_plink.txt"):
        out = tmp_path / f"{name}.tsv"
        assert main(gwas_args(prefix, folder, out, "--pheno-col", "2", "--covar",
                              str(folder / name))) == 0
        table = pd.read_csv(out, sep="\t", index_col="snp")
        np.testing.assert_allclose(table.beta, expected.beta, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(table.p_lrt, expected.p_lrt, rtol=1e-5, err_msg=name)
    # The PLINK table has no column of 1s: an intercept is added, as GEMMA does.
    assert "an intercept is added" in capsys.readouterr().err


def test_a_bad_covariate_file_is_one_line(study, tmp_path):
    prefix, folder, *_ = study
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2\n" * 5 + "1 male\n" + "1 3\n" * (N - 6))
    with pytest.raises(SystemExit, match=r"^emlmm: error: .*bad\.txt.*line 6"):
        main(gwas_args(prefix, folder, tmp_path / "x.tsv", "--covar", str(bad)))


# --- SNP filters ------------------------------------------------------------------------------

def test_filters_are_gemmas_on_the_individuals_analysed(study, tmp_path):
    prefix, folder, *_ = study
    out = tmp_path / "filtered.tsv"
    assert main(gwas_args(prefix, folder, out, "--pheno-col", "2")) == 0
    table = pd.read_csv(out, sep="\t", index_col="snp")
    assert {"rs6", "rs7", "rs8", "rs9"}.isdisjoint(table.index)
    assert len(table) == M - 4
    log = Path(f"{out}.log").read_text()
    # GEMMA's order: the all-2 SNP fails the maf filter before the polymorphism check.
    assert "SNPs: 40 in total, 36 analysed; left out: 1 missing, 2 maf, 1 monomorphic, 0 hwe" \
        in log
    assert "individuals: 120 in total, 116 analysed, 4 dropped" in log
    assert "dropped: 4 without a phenotype, 0 more without every covariate" in log
    # Over everyone, SNP 6 passes the maf filter: the filter looks at the analysed only.
    data, snps, related = frame(study)
    everyone = gwas("y ~ 1 + snp", data.fillna(0.0), snps, related)
    assert "rs6" in everyone.index
    off = tmp_path / "unfiltered.tsv"
    assert main(gwas_args(prefix, folder, off, "--pheno-col", "2", "--maf", "0",
                          "--miss", "1")) == 0
    unfiltered = pd.read_csv(off, sep="\t", index_col="snp")
    assert len(unfiltered) == M
    assert unfiltered.loc["rs7", "note"] == "monomorphic"


def gemma_hwe(n_hom1, n_hom2, n_ab):
    """GEMMA's CalcHWE (src/mathfunc.cpp), line by line: the reference."""
    n_aa, n_bb = min(n_hom1, n_hom2), max(n_hom1, n_hom2)
    rare = 2 * n_aa + n_ab
    genotypes = n_ab + n_bb + n_aa
    probs = [0.0] * (rare + 1)
    mid = rare * (2 * genotypes - rare) // (2 * genotypes)
    if (rare & 1) ^ (mid & 1):
        mid += 1
    homr, homc = (rare - mid) // 2, genotypes - mid - (rare - mid) // 2
    probs[mid] = 1.0
    total = 1.0
    hets = mid
    while hets > 1:
        probs[hets - 2] = probs[hets] * hets * (hets - 1.0) / (4.0 * (homr + 1.0) * (homc + 1.0))
        total += probs[hets - 2]
        homr, homc, hets = homr + 1, homc + 1, hets - 2
    homr, homc = (rare - mid) // 2, genotypes - mid - (rare - mid) // 2
    hets = mid
    while hets <= rare - 2:
        probs[hets + 2] = probs[hets] * 4.0 * homr * homc / ((hets + 2.0) * (hets + 1.0))
        total += probs[hets + 2]
        homr, homc, hets = homr - 1, homc - 1, hets + 2
    probs = [p / total for p in probs]
    return min(1.0, sum(p for p in probs if p <= probs[n_ab]))


def test_hwe_p_values_are_gemmas():
    rng = np.random.default_rng(3)
    cases = [(25, 50, 25), (50, 0, 50), (10, 80, 10), (90, 9, 1), (0, 0, 7), (3, 1, 0)]
    cases += [tuple(int(v) for v in rng.multinomial(rng.integers(5, 300),
                                                    rng.dirichlet([1, 1, 1])))
              for _ in range(200)]
    ours = hwe_exact_pvalues(*np.array(cases).T)
    reference = [gemma_hwe(hom1, hom2, het) for hom1, het, hom2 in cases]
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-300)


def test_the_hwe_filter_leaves_out_snps_out_of_equilibrium(study, tmp_path):
    prefix, folder, genotypes, *_ = study
    strict = tmp_path / "hwe.tsv"
    assert main(gwas_args(prefix, folder, strict, "--pheno-col", "2", "--hwe", "0.05")) == 0
    kept = set(pd.read_csv(strict, sep="\t").snp)
    analysed = np.ones(N, bool)
    analysed[[0, 1, 2, 10]] = False
    for j in range(M):
        calls = genotypes[analysed, j]
        counts = [int(np.sum(calls == v)) for v in (0, 1, 2)]
        p = gemma_hwe(counts[0], counts[2], counts[1])
        if f"rs{j + 1}" in kept:
            assert p >= 0.05
    log = Path(f"{strict}.log").read_text()
    assert "hwe = 0.05" in log


# --- GEMMA's output ---------------------------------------------------------------------------

GEMMA_HEADER = ("chr\trs\tps\tn_miss\tallele1\tallele0\taf\tbeta\tse\tlogl_H1\tl_remle\tl_mle"
                "\tp_wald\tp_lrt\tp_score")


def test_gemma_format_is_gemmas_assoc_txt(study, tmp_path):
    prefix, folder, *_ = study
    out, gemma_out = tmp_path / "emlmm.tsv", tmp_path / "gemma.assoc.txt"
    assert main(gwas_args(prefix, folder, out, "--pheno-col", "2")) == 0
    assert main(gwas_args(prefix, folder, gemma_out, "--pheno-col", "2", "--format",
                          "gemma")) == 0
    lines = gemma_out.read_text().splitlines()
    assert lines[0] == GEMMA_HEADER
    fields = lines[1].split("\t")
    assert fields[:4] == ["1", "rs1", "1000", "0"]
    assert len(fields[6].split(".")[1]) == 3  # af to 3 decimals
    assert all("e" in value for value in fields[7:])  # %.6e
    ours = pd.read_csv(out, sep="\t", index_col="snp")
    gemma = pd.read_csv(gemma_out, sep="\t", index_col="rs")
    assert list(gemma.index) == list(ours.index)
    with read_plink(prefix) as plink:
        bim = plink.snps.loc[gemma.index]
    assert list(gemma.allele1) == list(bim.a1) and list(gemma.allele0) == list(bim.a2)
    assert list(ours.allele1) == list(bim.a1)
    np.testing.assert_allclose(gemma.af, ours.af, atol=5e-4)
    for ours_column, gemma_column in [("beta", "beta"), ("se", "se"), ("p_wald", "p_wald"),
                                      ("p_lrt", "p_lrt"), ("p_score", "p_score"),
                                      ("llf", "logl_H1")]:
        np.testing.assert_allclose(gemma[gemma_column], ours[ours_column], rtol=2e-5)
    np.testing.assert_allclose(gemma.l_mle, ours.sigma2_a / ours.sigma2_e, rtol=1e-5)
    # l_remle is the REML ratio of the SNP's own fit: a dense REML fit of one SNP.
    data, snps, related = frame(study)
    used = data.y.notna()
    X = np.column_stack([np.ones(used.sum()), snps.loc[used, "rs2"]])
    fit = dense.maximise(data.y[used].to_numpy(), X, related.loc[used, used].to_numpy(),
                         reml=True)
    assert gemma.loc["rs2", "l_remle"] == pytest.approx(fit.sigma2_a / fit.sigma2_e, rel=1e-4)



def test_gemma_text_is_what_to_csv_would_write(tmp_path):
    # The GEMMA table is written by joining its text (faster than DataFrame.to_csv):
    # the same bytes, with a missing value empty, NaN "nan", signed zeros and a
    # phenotype column; af rounds as printf does.
    gwas_module = importlib.import_module("emlmm.gwas")
    statistics = ["beta", "se", "llf", "l_remle", "sigma2_a", "sigma2_e", "p_wald", "p_lrt",
                  "p_score"]  # fmt: skip
    rows = pd.DataFrame(
        {"chr": ["1", None, "X"], "pos": [1, 2, 3], "af": [0.0005, np.nan, 0.9995],
         "n_miss": [0, 1, 2], **{name: [np.nan, -0.0, 1e-300] for name in statistics}},
        index=["a", "b", "c"],
    )  # fmt: skip
    for labelled in (rows, rows.drop(columns=["chr", "pos"]).assign(phenotype=["y1", "y2", "y1"])):
        table = gwas_module._gemma_table(labelled)
        path = tmp_path / "out.txt"
        with gwas_module.ScanOutput(path, overwrite=True) as output:
            output.begin({}, list(table.columns))
            output.append(table, "gemma")
        body = path.read_text().split("\n", 1)[1]
        assert body == table.to_csv(sep="\t", header=False, index=False)
    assert body.splitlines()[1].split("\t")[:3] == ["y2", "-9", "b"]
    assert body.splitlines()[0].split("\t")[7:9] == ["0.001", "nan"]


# --- the run log ------------------------------------------------------------------------------

def test_the_log_reports_the_null_model_as_the_api_fits_it(study, tmp_path):
    prefix, folder, *_ = study
    out = tmp_path / "logged.tsv"
    assert main(gwas_args(prefix, folder, out, "--pheno-col", "2", "--covar",
                          str(folder / "covar.txt"))) == 0
    log = Path(f"{out}.log").read_text()
    data, _, related = frame(study)
    model = EMLMM.from_formula("y ~ 1 + age", data, kinship=related)
    for name, result in (("REML", model.fit(reml=True)), ("ML", model.fit())):
        row = next(line for line in log.splitlines() if line.startswith(f"##   {name} "))
        values = [float(v) for v in row.split()[2:]]
        expected = [result.sigma2_a, result.sigma2_e, result.sigma2_a / result.sigma2_e,
                    result.h2, result.bse_h2_observed, result.llf, *np.ravel(
                        np.column_stack([result.params, result.bse]))]
        np.testing.assert_allclose(values, expected, rtol=1e-4)
    assert "## command: emlmm gwas --bfile " in log and "## time (s): " in log
    assert f"## phenotype: column 2 of {prefix}.fam" in log


# --- kinships ---------------------------------------------------------------------------------

def test_the_kinship_chooses_its_snps_on_the_individuals_analysed(study, tmp_path):
    prefix, _, genotypes, data, _ = study
    out = tmp_path / "k2.txt"
    assert main(["kinship", "--bfile", str(prefix), "--pheno-col", "2", "--out",
                 str(out)]) == 0
    analysed = data.y.notna().to_numpy()
    # GEMMA: the filters see the analysed; centering and the matrix cover everyone.
    seen = genotypes[analysed]
    af = np.nanmean(seen, axis=0) / 2
    keep = ((np.isnan(seen).mean(axis=0) <= 0.05) & (af >= 0.01) & (af <= 0.99)
            & (np.nanmax(seen, axis=0) > np.nanmin(seen, axis=0)))
    assert not keep[5] and keep[0]
    chosen = genotypes[:, keep]
    filled = np.where(np.isnan(chosen), np.nanmean(chosen, axis=0), chosen)
    centred = filled - filled.mean(axis=0)
    np.testing.assert_allclose(np.loadtxt(out), centred @ centred.T / keep.sum(), atol=1e-9)
    everyone = kinship(genotypes)
    assert np.abs(np.loadtxt(out) - everyone).max() > 1e-4  # SNP 5 made the difference


def test_gcta_grm_out_and_in(study, tmp_path):
    prefix, *_ = study
    assert main(["kinship", "--bfile", str(prefix), "--out", str(tmp_path / "text.txt")]) == 0
    assert main(["kinship", "--bfile", str(prefix), "--format", "grm", "--out",
                 str(tmp_path / "k")]) == 0
    grm = read_grm(tmp_path / "k")
    np.testing.assert_allclose(grm.to_numpy(), np.loadtxt(tmp_path / "text.txt"), atol=1e-6)
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        main(["kinship", "--bfile", str(prefix), "--format", "grm", "--out",
              str(tmp_path / "k")])
    from_grm, from_text = tmp_path / "grm.tsv", tmp_path / "text.tsv"
    base = ["gwas", "--bfile", str(prefix), "--quiet", "--pheno-col", "2"]
    assert main([*base, "--kinship", str(tmp_path / "k.grm.bin"), "--out", str(from_grm)]) == 0
    assert main([*base, "--kinship", str(tmp_path / "text.txt"), "--out", str(from_text)]) == 0
    a = pd.read_csv(from_grm, sep="\t", index_col="snp")
    b = pd.read_csv(from_text, sep="\t", index_col="snp")
    np.testing.assert_allclose(a.p_lrt, b.p_lrt, rtol=1e-4)  # float32 GRM


# --- progress ----------------------------------------------------------------------------------

def test_progress_in_a_log_file_is_plain_lines(study, tmp_path, capsys):
    prefix, folder, *_ = study
    args = gwas_args(prefix, folder, tmp_path / "p.tsv", "--pheno-col", "2")
    args.remove("--quiet")
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "40/40 SNPs (100%)" in err


# --- honest agreement -----------------------------------------------------------------------

def test_logl_h1_is_the_textbook_ml_maximum(study, tmp_path):
    """The ML log-likelihood written for each SNP (GEMMA's logl_H1 column) is the
    maximum of the full Gaussian likelihood, as a dense brute-force fit finds it, and
    p_lrt is the chi2(1) tail of twice its gain over the null's maximum."""
    from scipy import stats

    prefix, folder, *_ = study
    out = tmp_path / "gemma.txt"
    assert main(gwas_args(prefix, folder, out, "--pheno-col", "2", "--covar",
                          str(folder / "covar.txt"), "--format", "gemma")) == 0
    written = pd.read_csv(out, sep="\t", index_col="rs")
    data, snps, related = frame(study)
    table = gwas("y ~ 1 + age + snp", data, snps, related)
    np.testing.assert_allclose(written.logl_H1, table.llf, rtol=1e-6)  # printed precision
    used = data.y.notna().to_numpy()
    y, K = data.y.to_numpy()[used], related.to_numpy()[np.ix_(used, used)]
    covariates = np.column_stack([np.ones(used.sum()), data.age.to_numpy()[used]])
    null = dense.maximise(y, covariates, K)
    for snp in ("rs2",):  # the causal SNP
        X = np.column_stack([covariates, snps.loc[used, snp]])
        fit = dense.maximise(y, X, K)
        assert table.loc[snp, "llf"] == pytest.approx(fit.llf, abs=1e-6)
        lrt = max(2 * (fit.llf - null.llf), 0.0)
        assert table.loc[snp, "p_lrt"] == pytest.approx(stats.chi2.sf(lrt, 1), rel=1e-5)
        ratio = table.loc[snp, "sigma2_a"] / table.loc[snp, "sigma2_e"]
        assert ratio == pytest.approx(fit.sigma2_a / fit.sigma2_e, rel=1e-3)


def test_gemma_format_without_filters_is_not_a_failure(study, tmp_path):
    prefix, folder, *_ = study
    out = tmp_path / "new" / "folder" / "all.txt"  # folders are made, as GEMMA makes output/
    assert main(gwas_args(prefix, folder, out, "--pheno-col", "2", "--format", "gemma",
                          "--maf", "0", "--miss", "1")) == 0
    assert len(out.read_text().splitlines()) == 1 + M


def test_kinship_checks_its_phenotype_column(study, tmp_path):
    prefix, folder, *_ = study
    base = ["kinship", "--bfile", str(prefix), "--out", str(tmp_path / "k.txt")]
    with pytest.raises(SystemExit, match=r"^emlmm: error: --pheno-col counts from 1"):
        main([*base, "--pheno-col", "0"])
    with pytest.raises(SystemExit, match=r"^emlmm: error: phenotype column 9 does not exist"):
        main([*base, "--pheno", str(folder / "pheno.txt"), "--pheno-col", "9"])
    with pytest.raises(SystemExit, match=r"--pheno FILE"):
        main([*base, "--pheno-col", "7"])
    assert main([*base, "--pheno-col", "2", "--maf", "0.2"]) == 0
