"""Many phenotypes in one scan: each phenotype's rows are its own scan's, while the
eigendecomposition and each chunk's rotation are shared where the individuals are."""

import dense
import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from plink_fixtures import write_plink

from emlmm import GenomeScan, gwas
from emlmm.__main__ import main

gwas_module = __import__("emlmm.gwas", fromlist=["rotate_block"])


@pytest.fixture(scope="module")
def study():
    """Families, a covariate, four phenotypes: two complete (one highly heritable), one
    with missing values, one missing on the same individuals as another."""
    rng = np.random.default_rng(31)
    n, m = 90, 40
    genotypes = rng.binomial(2, rng.uniform(0.1, 0.5, size=m), size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.02] = np.nan
    related = dense.random_genotype_kinship(rng, n, 150)
    root = np.linalg.cholesky(related + 1e-9 * np.eye(n))
    ids = [f"i{k}" for k in range(n)]
    sex = rng.integers(0, 2, size=n).astype(float)
    signal = np.nan_to_num(genotypes[:, 5], nan=1.0)
    data = pd.DataFrame({
        "y1": 0.5 * sex + signal + root @ rng.normal(size=n) + rng.normal(size=n),
        "y2": 3.0 * root @ rng.normal(size=n) + 0.05 * rng.normal(size=n),
        "y3": root @ rng.normal(size=n) + rng.normal(size=n) - signal,
        "y4": rng.normal(size=n),
        "sex": sex,
    }, index=ids)  # fmt: skip
    gaps = rng.random(n) < 0.15
    data.loc[gaps, "y3"] = np.nan
    data.loc[gaps, "y4"] = np.nan
    frame = pd.DataFrame(genotypes, index=ids, columns=[f"rs{j}" for j in range(m)])
    return data, frame, pd.DataFrame(related, index=ids, columns=ids)


PHENOTYPES = ["y1", "y2", "y3", "y4"]


@pytest.mark.parametrize("method", ["exact", "fixed"])
def test_each_phenotype_is_its_own_scan(study, method):
    data, frame, related = study
    together = gwas("~ 1 + sex + snp", data, frame, related, method, chunk_size=15,
                    phenotypes=PHENOTYPES)
    assert list(together.columns[:1]) == ["phenotype"]
    # GEMMA's filters, on the individuals analysed for any phenotype, keep 37 SNPs.
    kept = gwas("y1 ~ 1 + sex + snp", data, frame, related, method).index
    assert len(kept) == 37
    assert len(together) == len(PHENOTYPES) * len(kept)
    # A row per SNP and phenotype: SNPs in input order, each SNP's phenotypes in turn.
    assert list(together.index[:5]) == ["rs0"] * 4 + ["rs1"]
    assert list(together.phenotype[:5]) == [*PHENOTYPES, "y1"]
    for name in PHENOTYPES:
        alone = gwas(f"{name} ~ 1 + sex + snp", data, frame, related, method, chunk_size=15)
        mine = together[together.phenotype == name].drop(columns="phenotype")
        # A SNP the filters drop on this phenotype's own individuals is not tested for it.
        dropped = mine.note.str.startswith("filtered out on this phenotype's individuals")
        assert set(mine.index[~dropped]) == set(alone.index)
        assert mine[dropped].p_lrt.isna().all()
        pd.testing.assert_frame_equal(mine[~dropped], alone, rtol=1e-9, check_exact=False)
    everything = gwas("~ 1 + sex + snp", data, frame, related, method, chunk_size=15,
                      phenotypes=PHENOTYPES, min_maf=0, max_missing=1)
    for name in PHENOTYPES:
        alone = gwas(f"{name} ~ 1 + sex + snp", data, frame, related, method, chunk_size=15,
                     min_maf=0, max_missing=1)
        mine = everything[everything.phenotype == name].drop(columns="phenotype")
        pd.testing.assert_frame_equal(mine, alone, rtol=1e-9, check_exact=False)
    # The phenotype with missing values is analysed on fewer individuals.
    assert together.phenotype.unique().tolist() == PHENOTYPES


@pytest.mark.parametrize("threads", [1, 2])
def test_one_eigendecomposition_and_one_rotation_per_group(study, monkeypatch, threads):
    data, frame, related = study
    # One scan thread, or two sharing each chunk's rotation in pieces (emlmm.gwas._scanned).
    monkeypatch.setattr(gwas_module, "_scan_threads", lambda: threads)
    eighs, rotations, widths = [], [], []
    original_eigh, original_rotate = scipy.linalg.eigh, gwas_module.rotate_block

    def counting_eigh(matrix, *args, **kwargs):
        eighs.append(matrix.shape)
        return original_eigh(matrix, *args, **kwargs)

    def counting_rotate(block, eigenvectors):
        rotations.append(block.shape)
        widths.append(eigenvectors.shape[1])  # a group's individuals
        return original_rotate(block, eigenvectors)

    monkeypatch.setattr(scipy.linalg, "eigh", counting_eigh)
    monkeypatch.setattr(gwas_module, "rotate_block", counting_rotate)
    scan = GenomeScan("~ 1 + sex + snp", data, frame, related, chunk_size=20,
                      phenotypes=PHENOTYPES)
    complete = int(data.y3.notna().sum())
    # y1, y2 on every individual, y3 and y4 on the same fewer: two groups, two eighs.
    assert sorted(eighs) == [(complete, complete), (90, 90)]
    table = scan.run()
    # Two chunks (of 20 SNPs, less those filtered out), each rotated once per group.
    if threads == 1:
        assert sorted(rows for rows, _ in rotations) == [complete, complete, 90, 90]
    else:  # in pieces of individuals: each genotype once per group
        assert len(rotations) > 4
        assert set(widths) == {complete, 90}
        kept = len(table) // len(PHENOTYPES)  # a row per SNP and phenotype
        for group in (complete, 90):
            cells = [rows * snps for (rows, snps), width in zip(rotations, widths, strict=True)
                     if width == group]
            assert sum(cells) == group * kept
    assert scan.individuals == {"total": 90, "analysed": 90, "dropped": 0}
    assert scan.phenotype_individuals == {"y1": 90, "y2": 90, "y3": complete, "y4": complete}
    assert set(scan.null_estimates) == {f"{name}, all" for name in PHENOTYPES}
    report = scan.report()
    assert "## phenotypes: 4, each scanned on its own (univariate), in 2 group(s)" in report
    assert f"##   y3: {complete} individuals analysed" in report


def test_phenotypes_are_checked(study):
    data, frame, related = study
    with pytest.raises(ValueError, match=r"formula must have no response .*'~ 1 \+ sex \+ snp'"):
        GenomeScan("y1 ~ 1 + sex + snp", data, frame, related, phenotypes=["y1"])
    with pytest.raises(ValueError, match="not among the columns of data: 'y9'"):
        GenomeScan("~ 1 + snp", data, frame, related, phenotypes=["y1", "y9"])
    with pytest.raises(ValueError, match="phenotypes repeat: 'y1'"):
        GenomeScan("~ 1 + snp", data, frame, related, phenotypes=["y1", "y2", "y1"])
    with pytest.raises(ValueError, match="phenotypes is empty"):
        GenomeScan("~ 1 + snp", data, frame, related, phenotypes=[])
    with pytest.raises(TypeError, match="list of column names"):
        GenomeScan("~ 1 + snp", data, frame, related, phenotypes="y1")
    with pytest.raises(ValueError, match="vc_formula together are not supported"):
        GenomeScan("~ 1 + snp", data, frame, related, phenotypes=["y1"],
                   vc_formula={"sex": "0 + C(sex)"})


def test_a_written_scan_of_several_phenotypes_resumes(study, tmp_path):
    data, frame, related = study
    scan = GenomeScan("~ 1 + sex + snp", data, frame, related, chunk_size=15,
                      phenotypes=PHENOTYPES, min_maf=0, max_missing=1)
    whole = tmp_path / "whole.tsv"
    summary = scan.write(whole)
    assert summary.n_snps == frame.shape[1]
    lines = whole.read_text().splitlines(keepends=True)
    assert lines[0].split("\t")[:2] == ["snp", "phenotype"]
    assert len(lines) == 1 + len(PHENOTYPES) * frame.shape[1]
    # Killed mid-SNP, mid-line: the SNP's rows written so far are dropped and redone.
    cut = tmp_path / "cut.tsv"
    cut.write_text("".join(lines[: 1 + 4 * 7 + 2]) + lines[31][:12])
    (tmp_path / "cut.tsv.scan.json").write_text((tmp_path / "whole.tsv.scan.json").read_text())
    resumed = scan.write(cut, resume=True)
    assert resumed.resumed_from == 7
    assert cut.read_text() == whole.read_text()
    # Another set of phenotypes is another scan.
    other = GenomeScan("~ 1 + sex + snp", data, frame, related, chunk_size=15,
                       phenotypes=PHENOTYPES[:2], min_maf=0, max_missing=1)
    with pytest.raises(gwas_module.ScanFileError, match="written by another scan"):
        other.write(whole, resume=True)


def test_gemma_format_names_the_phenotype(study):
    data, frame, related = study
    table = GenomeScan("~ 1 + snp", data, frame.iloc[:, :6], related, phenotypes=["y1", "y2"],
                       min_maf=0, max_missing=1).run(format="gemma")
    assert list(table.columns[:3]) == ["phenotype", "chr", "rs"]
    assert table.phenotype.tolist() == ["y1", "y2"] * 6


def test_the_command_line_scans_several_phenotype_columns(tmp_path):
    rng = np.random.default_rng(5)
    n, m = 70, 20
    genotypes = rng.binomial(2, 0.3, size=(n, m)).astype(float)
    related = dense.random_genotype_kinship(rng, n, 100)
    phenotypes = rng.normal(size=(n, 3))
    phenotypes[rng.random(n) < 0.1, 2] = np.nan
    write_plink(tmp_path / "study", genotypes)
    # GEMMA's -p file: a column per phenotype, rows in .fam order, NA for missing.
    text = "\n".join(" ".join("NA" if np.isnan(v) else f"{v:.6f}" for v in row)
                     for row in phenotypes)
    (tmp_path / "pheno.txt").write_text(text + "\n")
    np.savetxt(tmp_path / "K.txt", related)
    base = ["gwas", "--bfile", str(tmp_path / "study"), "--kinship", str(tmp_path / "K.txt"),
            "--pheno", str(tmp_path / "pheno.txt"), "--quiet", "--maf", "0"]
    assert main([*base, "--pheno-col", "1", "3", "--out", str(tmp_path / "two.tsv")]) == 0
    assert main([*base, "--pheno-col", "all", "--out", str(tmp_path / "all.tsv")]) == 0
    two = pd.read_csv(tmp_path / "two.tsv", sep="\t")
    every = pd.read_csv(tmp_path / "all.tsv", sep="\t")
    assert two.phenotype.unique().tolist() == ["pheno1", "pheno3"]
    assert every.phenotype.unique().tolist() == ["pheno1", "pheno2", "pheno3"]
    for column in (1, 3):
        out = tmp_path / f"one{column}.tsv"
        assert main([*base, "--pheno-col", str(column), "--out", str(out)]) == 0
        alone = pd.read_csv(out, sep="\t")
        mine = two[two.phenotype == f"pheno{column}"].drop(columns="phenotype")
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), alone, rtol=1e-5,
                                      check_dtype=False, check_exact=False)
    log = (tmp_path / "two.tsv.log").read_text()
    assert "each scanned on its own (univariate)" in log


def test_threads_and_blocks_do_not_change_numbers(study, monkeypatch):
    """BLAS threads (one, or OpenBLAS's default) and the blocks a chunk's SNPs are
    fitted in change nothing beyond rounding."""
    from threadpoolctl import threadpool_limits

    data, frame, related = study
    scan = GenomeScan("y1 ~ 1 + sex + snp", data, frame, related)
    default = scan.run()
    with threadpool_limits(limits=1, user_api="blas"):
        one = scan.run()
    monkeypatch.setattr(gwas_module._Scanner, "BLOCK_ELEMENTS", 90 * 4)  # 4 SNPs a block
    small_blocks = scan.run()
    for other in (one, small_blocks):
        pd.testing.assert_frame_equal(other, default, rtol=1e-10, check_exact=False)


def test_a_pickled_plink_fileset_reopens_by_its_absolute_path(tmp_path, monkeypatch):
    """What a Dask worker receives opens the same files from any working directory."""
    import pickle

    from emlmm import read_plink

    genotypes = np.random.default_rng(1).binomial(2, 0.4, size=(12, 5)).astype(float)
    write_plink(tmp_path / "study", genotypes)
    monkeypatch.chdir(tmp_path)
    with read_plink("study") as plink:
        shipped = pickle.dumps(plink)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    copy = pickle.loads(shipped)
    assert copy.bed_path.is_absolute()
    np.testing.assert_array_equal(copy.read(1, 4), genotypes[:, 1:4])


def test_phenotype_individuals_is_empty_for_one_response(study):
    data, frame, related = study
    scan = GenomeScan("y1 ~ 1 + snp", data, frame.iloc[:, :3], related)
    assert scan.phenotype_individuals == {}


def test_non_numeric_phenotypes_are_named(study):
    data, frame, related = study
    odd = data.assign(label="a", flag=data.y1 > 0)
    message = r"phenotypes must be numeric columns; 'label', 'flag' are"
    with pytest.raises(TypeError, match=message):
        GenomeScan("~ 1 + snp", odd, frame, related, phenotypes=["y1", "label", "flag"])
