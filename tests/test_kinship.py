"""kinship(): GEMMA's -gk 1 / -gk 2 matrices against a plain loop over SNPs."""

import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink

from emlmm.io import read_plink
from emlmm.kinship import kinship

METHODS = ["centered", "standardized"]
NO_FILTERS = {"min_maf": 0.0, "max_missing": 1.0}


def assert_close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=1e-10, atol=1e-12)


def reference_kinship(genotypes, method, min_maf=0.0, max_missing=1.0):
    """GEMMA's definition, one SNP at a time (PlinkKin / ReadFile_bed in gemma_io.cpp)."""
    n, m = genotypes.shape
    total = np.zeros((n, n))
    used = 0
    for j in range(m):
        snp = genotypes[:, j]
        observed = snp[~np.isnan(snp)]
        if observed.size == 0 or observed.min() == observed.max():
            continue  # not polymorphic
        if (n - observed.size) / n > max_missing:
            continue
        frequency = observed.sum() / (2.0 * observed.size)
        if frequency < min_maf or frequency > 1.0 - min_maf:
            continue
        mean = observed.mean()
        column = np.where(np.isnan(snp), mean, snp) - mean
        if method == "standardized":
            variance = sum(value * value for value in column) / n  # divisor n, as GEMMA
            column = column / np.sqrt(variance)
        for a in range(n):
            for b in range(n):
                total[a, b] += column[a] * column[b]
        used += 1
    return total / used


@pytest.fixture
def genotypes():
    """40 x 30 genotypes with scattered missing values, a monomorphic SNP (5), a SNP
    monomorphic among its observed values (11) and an entirely missing SNP (17)."""
    rng = np.random.default_rng(3)
    n, m = 40, 30
    frequencies = rng.uniform(0.1, 0.9, size=m)
    values = rng.binomial(2, frequencies, size=(n, m)).astype(float)
    values[rng.random((n, m)) < 0.03] = np.nan
    values[:, 5] = 1.0
    values[:, 11] = 2.0
    values[[0, 7], 11] = np.nan
    values[:, 17] = np.nan
    return values


@pytest.mark.parametrize("method", METHODS)
def test_array_matches_definition_with_missing_and_monomorphic(genotypes, method):
    assert np.isnan(genotypes).sum() > 30
    result = kinship(genotypes, method, **NO_FILTERS)
    assert isinstance(result, np.ndarray)
    assert_close(result, reference_kinship(genotypes, method))
    np.testing.assert_array_equal(result, result.T)


@pytest.mark.parametrize("method", METHODS)
def test_monomorphic_snps_are_left_out_of_the_count(genotypes, method):
    polymorphic = np.delete(genotypes, [5, 11, 17], axis=1)
    assert_close(
        kinship(genotypes, method, **NO_FILTERS), kinship(polymorphic, method, **NO_FILTERS)
    )
    # on data without missing values the definition is K = W W' / m
    complete = np.nan_to_num(polymorphic, nan=1.0)
    centered = complete - complete.mean(axis=0)
    if method == "standardized":
        centered /= complete.std(axis=0)  # ddof=0
    assert_close(
        kinship(complete, method, **NO_FILTERS), centered @ centered.T / complete.shape[1]
    )


@pytest.mark.parametrize("method", METHODS)
def test_default_filters_are_gemmas(genotypes, method):
    values = genotypes.copy()
    values[:6, 2] = np.nan  # 15% missing: dropped by -miss 0.05
    values[:2, 3] = np.nan  # exactly 5% missing: kept (GEMMA drops only > 5%)
    values[:, 4] = 0.0
    values[0, 4] = 1.0  # allele frequency 1/80 = 1.25%: kept by -maf 0.01
    values[:, 8] = 2.0
    values[0, 8] = 1.0  # frequency 79/80: kept
    result = kinship(values, method)
    expected = reference_kinship(values, method, min_maf=0.01, max_missing=0.05)
    assert_close(result, expected)
    assert_close(result, kinship(np.delete(values, 2, axis=1), method))
    assert_close(
        kinship(values, method, min_maf=0.02),
        reference_kinship(values, method, min_maf=0.02, max_missing=0.05),
    )
    assert not np.allclose(result, kinship(values, method, **NO_FILTERS))


def test_maf_boundary_is_inclusive():
    values = np.zeros((50, 2))
    values[0, 0] = 1.0  # frequency exactly 1/100: kept by -maf 0.01
    values[:25, 1] = 1.0
    with_boundary = kinship(values, min_maf=0.01)
    assert_close(with_boundary, reference_kinship(values, "centered"))
    assert_close(kinship(values, min_maf=0.011), kinship(values[:, 1:]))


@pytest.mark.parametrize("method", METHODS)
def test_dataframe_in_dataframe_out(genotypes, method):
    ids = [f"ind{i}" for i in range(genotypes.shape[0])]
    frame = pd.DataFrame(
        genotypes, index=pd.Index(ids, name="sample"), columns=[f"rs{j}" for j in range(30)]
    )
    result = kinship(frame, method, chunk_size=4, **NO_FILTERS)
    assert isinstance(result, pd.DataFrame)
    assert list(result.index) == ids and list(result.columns) == ids
    assert_close(result.to_numpy(), reference_kinship(genotypes, method))


def test_nullable_integer_dataframe():
    frame = pd.DataFrame({"a": [0, 1, 2, None], "b": [1, 1, 0, 2]}, dtype="Int64")
    expected = reference_kinship(np.array([[0, 1], [1, 1], [2, 0], [np.nan, 2]]), "centered")
    assert_close(kinship(frame, **NO_FILTERS).to_numpy(), expected)


@pytest.mark.parametrize("method", METHODS)
def test_chunk_size_does_not_change_the_result(genotypes, method):
    whole = kinship(genotypes, method, chunk_size=1000, **NO_FILTERS)
    for chunk_size in (1, 7, 29):
        assert_close(kinship(genotypes, method, chunk_size=chunk_size, **NO_FILTERS), whole)


@pytest.mark.parametrize("method", METHODS)
def test_plink_is_read_in_chunks_and_matches_memory(tmp_path, genotypes, method, monkeypatch):
    ids = [f"id{i}" for i in range(genotypes.shape[0])]
    write_plink(tmp_path / "geno", genotypes, sample_ids=ids)
    with read_plink(tmp_path / "geno") as plink:
        widths = []
        read = plink.read

        def recording_read(start=0, stop=None, dtype=np.float64):
            block = read(start, stop, dtype)
            widths.append(block.shape[1])
            return block

        monkeypatch.setattr(plink, "read", recording_read)
        result = kinship(plink, method, chunk_size=7)
    assert widths == [7, 7, 7, 7, 2]
    assert isinstance(result, pd.DataFrame)
    assert list(result.index) == ids and list(result.columns) == ids
    assert result.index.name == "sample"
    assert_close(result.to_numpy(), kinship(genotypes, method))
    assert_close(
        result.to_numpy(), reference_kinship(genotypes, method, min_maf=0.01, max_missing=0.05)
    )


def test_out_of_range_genotype_names_the_snp(genotypes):
    values = genotypes.copy()
    values[3, 9] = 3.0
    with pytest.raises(ValueError, match=r"SNP 'snp10' has 1 values outside \[0, 2\], e\.g\. 3"):
        kinship(values, chunk_size=4)
    frame = pd.DataFrame(values, columns=[f"rs{j}" for j in range(30)])
    with pytest.raises(ValueError, match=r"SNP 'rs9' has 1 values outside"):
        kinship(frame)
    values[3, 9] = -1.0
    with pytest.raises(ValueError, match=r"e\.g\. -1"):
        kinship(values)


def test_wrong_input_types():
    with pytest.raises(TypeError, match=r"DataFrame, a numpy array .* not list"):
        kinship([[0, 1], [1, 2]])
    with pytest.raises(TypeError, match="column 'b' has dtype"):
        kinship(pd.DataFrame({"a": [0, 1], "b": ["x", "y"]}))
    with pytest.raises(TypeError, match="numeric array"):
        kinship(np.array([["0", "1"], ["1", "2"]]))
    with pytest.raises(TypeError, match="chunk_size must be an integer"):
        kinship(np.eye(3), chunk_size=2.5)


def test_invalid_arguments(genotypes):
    with pytest.raises(ValueError, match="2-D array"):
        kinship(np.zeros(4))
    with pytest.raises(ValueError, match="method must be 'centered' or 'standardized'"):
        kinship(genotypes, "gk1")
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        kinship(genotypes, chunk_size=0)
    with pytest.raises(ValueError, match=r"min_maf must be between 0 and 0\.5"):
        kinship(genotypes, min_maf=0.6)
    with pytest.raises(ValueError, match="max_missing must be between 0 and 1"):
        kinship(genotypes, max_missing=-0.1)


def test_no_usable_snp_says_why(genotypes):
    with pytest.raises(
        ValueError,
        match=r"of 3 SNPs, 3 are monomorphic .*, 0 have too many missing genotypes",
    ):
        kinship(genotypes[:, [5, 11, 17]])
    with pytest.raises(ValueError, match=r"of 30 SNPs, 3 are monomorphic.* and 27 too low"):
        kinship(genotypes, min_maf=0.5, max_missing=1.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("band", [1, 7, 13, 40])
def test_products_by_bands_of_rows_match_the_definition(genotypes, method, band, monkeypatch):
    # The kinship's products go by bands of rows (never BLAS's dsyrk, which crashed
    # at n = 20,000): bands of any size, uneven last ones included, give the matrix.
    import importlib

    module = importlib.import_module("emlmm.kinship")  # the name is also a function's
    monkeypatch.setattr(module, "PRODUCT_BAND", band)
    assert_close(kinship(genotypes, method, chunk_size=7, **NO_FILTERS),
                 reference_kinship(genotypes, method))


def test_a_low_rank_kinship_densified_by_bands_is_its_outer_product(monkeypatch):
    import importlib

    from emlmm import LowRankKinship

    module = importlib.import_module("emlmm.kinship")

    factor = np.random.default_rng(5).normal(size=(50, 4))
    for band in (3, 50, 64):
        monkeypatch.setattr(module, "PRODUCT_BAND", band)
        dense = LowRankKinship(factor).to_dense()
        np.testing.assert_array_equal(dense, dense.T)
        np.testing.assert_allclose(dense, np.einsum("ik,jk->ij", factor, factor), rtol=1e-13,
                                   atol=1e-13)
