"""The public scan object and the one genotype layer under every genotype reader."""

import ast
import dataclasses
import warnings
from pathlib import Path

import dense
import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink

import emlmm
from emlmm import EMLMM, GenomeScan, gwas, kinship, read_plink
from emlmm.__main__ import main
from emlmm.genotypes import Genotypes, default_chunk_size

dask_array = pytest.importorskip("dask.array")


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(17)
    n, m = 80, 30
    genotypes = rng.binomial(2, rng.uniform(0.15, 0.5, size=m), size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.02] = np.nan
    related = dense.random_genotype_kinship(rng, n, 160)
    y = np.nan_to_num(genotypes[:, 2], nan=1.0) + np.linalg.cholesky(
        related + 1e-9 * np.eye(n)) @ rng.normal(size=n) + rng.normal(size=n)
    ids = [f"s{i}" for i in range(n)]
    data = pd.DataFrame({"y": y, "x": rng.normal(size=n)}, index=ids)
    frame = pd.DataFrame(genotypes, index=ids, columns=[f"rs{j}" for j in range(m)])
    return data, frame, pd.DataFrame(related, index=ids, columns=ids)


# --- one row per input SNP -----------------------------------------------------------------

def test_duplicate_snp_ids_give_one_row_per_snp_in_input_order(study, tmp_path, capsys):
    data, frame, related = study
    ids = list(frame.columns)
    ids[7], ids[20] = ids[3], ids[3]  # rs3 three times
    ids[11] = ids[10]
    write_plink(tmp_path / "dup", frame.to_numpy(), sample_ids=list(frame.index), snp_ids=ids,
                phenotypes=data.y.to_numpy())
    with read_plink(tmp_path / "dup") as plink, pytest.warns(
        UserWarning, match=r"2 SNP ids appear more than once \('rs3', 'rs10'\)"
    ):
        table = gwas("y ~ 1 + snp", data, plink, related)
    assert len(table) == 30
    assert list(table.index) == ids
    reference = gwas("y ~ 1 + snp", data, frame, related)
    np.testing.assert_allclose(table.p_lrt.to_numpy(), reference.p_lrt.to_numpy(), rtol=1e-10)
    # The command line keeps them alike, and says so on one line.
    np.savetxt(tmp_path / "K.txt", related.to_numpy())
    out = tmp_path / "dup.tsv"
    assert main(["gwas", "--bfile", str(tmp_path / "dup"), "--kinship", str(tmp_path / "K.txt"),
                 "--quiet", "--out", str(out)]) == 0
    assert "emlmm: warning: 2 SNP ids appear more than once" in capsys.readouterr().err
    written = pd.read_csv(out, sep="\t")
    assert list(written.snp) == ids


def test_rows_follow_the_input_order_with_interleaved_chromosomes_and_loco(study):
    data, frame, _ = study
    chromosomes = np.tile([1, 2, 3], 10)
    table = gwas("y ~ 1 + snp", data, frame, None, loco=True, chromosomes=chromosomes)
    assert list(table.index) == list(frame.columns)
    assert list(table.chr) == list(chromosomes)
    scan = GenomeScan("y ~ 1 + snp", data, frame, None, loco=True, chromosomes=chromosomes)
    assert not scan.in_input_order
    with pytest.raises(ValueError, match="interleaved"):
        scan.write(Path("unused.tsv"))


# --- the scan object ---------------------------------------------------------------------

def test_tables_from_any_start_are_the_rows_of_the_whole_scan(study):
    data, frame, related = study
    scan = GenomeScan("y ~ 1 + x + snp", data, frame, related, chunk_size=8)
    whole = scan.run()
    for start in (0, 5, 8, 29):
        tables = list(scan.tables(start=start))
        assert [len(t) for t in tables][:1] == [min(8, 30 - start)]
        part = pd.concat(tables)
        pd.testing.assert_frame_equal(part, whole.iloc[start:], rtol=1e-9, check_exact=False)
    assert list(scan.tables(start=30)) == []
    pd.testing.assert_frame_equal(
        whole, gwas("y ~ 1 + x + snp", data, frame, related), rtol=1e-9, check_exact=False
    )


def test_progress_counts_snps_from_the_start(study):
    data, frame, related = study
    scan = GenomeScan("y ~ 1 + snp", data, frame, related, chunk_size=8)
    seen = []
    list(scan.tables(start=5, progress=lambda done, total: seen.append((done, total))))
    assert seen == [(13, 30), (21, 30), (29, 30), (30, 30)]


def test_the_identity_changes_with_anything_that_changes_the_results(study):
    data, frame, related = study
    base = GenomeScan("y ~ 1 + snp", data, frame, related).identity
    assert GenomeScan("y ~ 1 + snp", data, frame, related, chunk_size=3).identity == base
    variants = [
        GenomeScan("y ~ 1 + snp", data, frame, related, method="fixed"),
        GenomeScan("y ~ 1 + x + snp", data, frame, related),
        GenomeScan("y ~ 1 + snp", data.assign(y=data.y + 1e-9), frame, related),
        GenomeScan("y ~ 1 + snp", data, frame, related * 1.000001),
        GenomeScan("y ~ 1 + snp", data.iloc[1:], frame, related),
        GenomeScan("y ~ 1 + snp", data, frame.iloc[:, 1:], related),
        GenomeScan("y ~ 1 + snp", data, frame, related, maxiter=50),
    ]
    for scan in variants:
        assert scan.identity != base


def test_the_null_fit_is_handed_to_the_scanner_as_values(study):
    data, _, related = study
    model = EMLMM.from_formula("y ~ 1 + x", data, kinship=related)
    null = model.fit_for_scan()
    with pytest.raises(dataclasses.FrozenInstanceError):
        null.ml = null.reml  # type: ignore[misc]
    ml, reml = model.fit(), model.fit(reml=True)
    scale = null.data.endog_scale ** 2
    assert null.ml.sigma2_a * scale == pytest.approx(ml.sigma2_a, rel=1e-12)
    assert null.reml.sigma2_e * scale == pytest.approx(reml.sigma2_e, rel=1e-12)
    # The scan module reads no private attribute of another object.
    tree = ast.parse(Path(emlmm.__file__).with_name("gwas.py").read_text())
    private = [
        f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_")
        and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
        and node.value.id not in ("self", "_em", "_scan")
    ]
    private += [
        node.attr for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("_fit_data", "_results",
                                                             "_estimate", "_rotated")
    ]
    assert private == [], private


def test_the_formula_sees_the_namespace_where_the_scan_was_built(study):
    data, frame, related = study

    def scan_shifted(shift):
        return GenomeScan("I(y + shift) ~ 1 + snp", data, frame.iloc[:, :4], related)

    def gwas_scaled(factor):
        return gwas("I(factor * y) ~ 1 + snp", data, frame.iloc[:, :4], related)

    shifted = scan_shifted(3.0).run()
    scaled = gwas_scaled(2.0)
    plain = gwas("y ~ 1 + snp", data, frame.iloc[:, :4], related)
    np.testing.assert_allclose(shifted.p_lrt, plain.p_lrt, rtol=1e-8)
    np.testing.assert_allclose(scaled.beta, 2 * plain.beta, rtol=1e-8)


def test_a_scan_on_a_dask_client_writes_the_in_process_file(study, tmp_path):
    distributed = pytest.importorskip("distributed")
    data, frame, related = study
    scan = GenomeScan("y ~ 1 + snp", data, frame, related, chunk_size=7)
    scan.write(tmp_path / "here.tsv")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        scan.write(tmp_path / "there.tsv", client=client)
    here = pd.read_csv(tmp_path / "here.tsv", sep="\t", index_col="snp")
    there = pd.read_csv(tmp_path / "there.tsv", sep="\t", index_col="snp")
    pd.testing.assert_frame_equal(there, here, rtol=1e-5, check_exact=False)


# --- one genotype layer --------------------------------------------------------------------

KINDS = {
    "DataFrame": lambda frame: frame,
    "ndarray": lambda frame: frame.to_numpy(),
    "dask": lambda frame: dask_array.from_array(frame.to_numpy(), chunks=(40, 7)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reader", ["gwas", "kinship"])
def test_every_genotype_kind_is_checked_alike(study, kind, reader):
    data, frame, related = study
    odd = frame.copy()
    odd.iloc[9, 12] = 3.0
    run = {
        "gwas": lambda g: gwas("y ~ 1 + snp", data, g, related),
        "kinship": lambda g: kinship(g),
    }[reader]
    name = "rs12" if kind == "DataFrame" else "snp13"
    with pytest.raises(ValueError, match=rf"between 0 and 2 .*: SNP '{name}' has 1 values "
                                         r"outside \[0, 2\], e\.g\. 3 in row 9"):
        run(KINDS[kind](odd))


@pytest.mark.parametrize("reader", ["gwas", "kinship"])
def test_unsupported_genotypes_get_the_same_type_errors(study, reader):
    data, frame, related = study
    run = {
        "gwas": lambda g: gwas("y ~ 1 + snp", data, g, related),
        "kinship": lambda g: kinship(g),
    }[reader]
    with pytest.raises(TypeError, match=r"a dask array or PLINK genotypes .* not list"):
        run(frame.to_numpy().tolist())
    with pytest.raises(TypeError, match=r"genotypes must be numeric .*column 'coded' has dtype"):
        run(frame.assign(coded="AA"))
    with pytest.raises(TypeError, match="numeric array"):
        run(np.full((80, 2), "AA"))


def test_kinship_reads_dask_arrays_and_plink_like_the_others(study, tmp_path):
    _, frame, _ = study
    expected = kinship(frame.to_numpy())
    np.testing.assert_allclose(kinship(KINDS["dask"](frame)), expected, rtol=1e-12)
    write_plink(tmp_path / "k", frame.to_numpy(), sample_ids=list(frame.index))
    with read_plink(tmp_path / "k") as plink:
        np.testing.assert_allclose(kinship(plink).to_numpy(), expected, rtol=1e-12)


def test_loco_from_a_dask_array_equals_loco_from_memory(study):
    data, frame, _ = study
    chromosomes = np.repeat([1, 2], 15)
    memory = gwas("y ~ 1 + snp", data, frame.to_numpy(), None, loco=True,
                  chromosomes=chromosomes)
    lazy = gwas("y ~ 1 + snp", data, KINDS["dask"](frame), None, loco=True,
                chromosomes=chromosomes)
    pd.testing.assert_frame_equal(lazy, memory, rtol=1e-10, check_exact=False)


def test_genotypes_are_read_a_chunk_at_a_time(study):
    data, frame, related = study
    odd = frame.copy()
    odd.iloc[0, 29] = -9.0  # in the last chunk only
    scan = GenomeScan("y ~ 1 + snp", data, odd, related, chunk_size=10)
    tables = scan.tables()
    assert len(next(tables)) == 10 and len(next(tables)) == 10
    with pytest.raises(ValueError, match="SNP 'rs29' has 1 values outside"):
        next(tables)


def test_one_chunk_size_rule(study):
    _, frame, _ = study
    genotypes = Genotypes.from_any(frame)
    sizes = [stop - start for start, stop, _ in genotypes.chunks()]
    assert sizes == [30]
    assert default_chunk_size(80) == 4096 and default_chunk_size(10_000) == 400
    assert default_chunk_size(1_000_000) == 64


def test_no_warning_without_duplicates(study):
    data, frame, related = study
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gwas("y ~ 1 + snp", data, frame.iloc[:, :3], related)


def test_a_loco_scan_restarts_anywhere_with_rows_left_out(study):
    data, frame, _ = study
    data = data.copy()
    data.iloc[[3, 40], 0] = np.nan  # two individuals without a phenotype
    chromosomes = np.repeat([1, 2, 3], 10)
    scan = GenomeScan("y ~ 1 + snp", data, frame, None, loco=True, chromosomes=chromosomes,
                      chunk_size=4)
    whole = scan.run()
    later = pd.concat(scan.tables(start=25))  # chromosome 3 only
    again = pd.concat(scan.tables(start=0))  # back to chromosome 1
    pd.testing.assert_frame_equal(later, whole.iloc[25:], rtol=1e-9, check_exact=False)
    pd.testing.assert_frame_equal(again, whole, rtol=1e-9, check_exact=False)
    assert [len(t) for t in scan.tables(start=6)] == [4, 4, 4, 2, 4, 4, 2]
    # Each chromosome against the kinship of the others (over all 80 individuals,
    # whose rows and columns of the 2 without a phenotype are then left out).
    direct = gwas("y ~ 1 + snp", data.dropna(), frame.iloc[:, :10],
                  kinship(frame[[f"rs{j}" for j in range(10, 30)]]))
    np.testing.assert_allclose(whole.p_lrt.iloc[:10], direct.p_lrt, rtol=1e-8)
