"""Phenotypes of the .fam, phenotype and covariate files, and GCTA's binary GRM."""

import os
import re

import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink

from emlmm.io import read_covariates, read_grm, read_phenotypes, read_plink, write_grm

SAMPLES = ["s1", "s2", "s3", "s4", "s5"]


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# ------------------------------------------------------------ phenotypes of the .fam


@pytest.fixture
def three_phenotypes(tmp_path):
    """A fileset whose .fam holds three phenotype columns (GEMMA's -n 1, 2, 3)."""
    prefix = tmp_path / "three"
    write_plink(prefix, np.zeros((5, 2)), sample_ids=SAMPLES)
    write_lines(
        tmp_path / "three.fam",
        [
            "f1 s1 0 0 1 1.5 10 -9",
            "f2 s2 0 0 2 -9 NA 0.25",
            "f3 s3 0 0 1 NA nan 7",
            "f4 s4 0 0 2 na -9.0 NaN",
            "f5 s5 0 0 1 -2 1e3 0",
        ],
    )
    return prefix


def test_phenotypes_reads_every_fam_column(three_phenotypes):
    with read_plink(three_phenotypes) as plink:
        table = plink.phenotypes()
    assert list(table.columns) == ["pheno1", "pheno2", "pheno3"]
    assert table.index.equals(pd.Index(SAMPLES, name="sample"))
    assert (table.dtypes == np.float64).all()
    expected = [
        [1.5, 10.0, np.nan],
        [np.nan, np.nan, 0.25],
        [np.nan, np.nan, 7.0],
        [np.nan, np.nan, np.nan],
        [-2.0, 1000.0, 0.0],
    ]
    np.testing.assert_array_equal(table.to_numpy(), expected)


def test_phenotype_column_follows_gemma_n(three_phenotypes):
    with read_plink(three_phenotypes) as plink:
        table = plink.phenotypes()
        first, second, third = (plink.phenotype(column) for column in (1, 2, 3))
        assert plink.phenotype().equals(first)
        assert plink.phenotype(np.int64(2)).equals(second)
    assert first.name == "pheno" and second.name == "pheno2" and third.name == "pheno3"
    for column, series in zip(["pheno1", "pheno2", "pheno3"], [first, second, third], strict=True):
        assert series.index.equals(table.index)
        np.testing.assert_array_equal(series.to_numpy(), table[column].to_numpy())


@pytest.mark.parametrize("column", [0, 4, -1])
def test_phenotype_column_beyond_the_fam(three_phenotypes, column):
    message = (
        rf"phenotype column {column} does not exist: .*three\.fam holds 3 phenotypes "
        r"\(columns 6 to 8\), phenotypes 1 to 3 as GEMMA's -n numbers them"
    )
    with read_plink(three_phenotypes) as plink:
        with pytest.raises(ValueError, match=message):
            plink.phenotype(column)


def test_standard_fam_has_one_phenotype(tmp_path):
    prefix = tmp_path / "six"
    write_plink(prefix, np.zeros((5, 2)), sample_ids=SAMPLES, phenotypes=[1, -9, "NA", 2.5, 0])
    with read_plink(prefix) as plink:
        table = plink.phenotypes()
        assert list(table.columns) == ["pheno1"]
        np.testing.assert_array_equal(table["pheno1"].to_numpy(), plink.phenotype().to_numpy())
        np.testing.assert_array_equal(table["pheno1"].to_numpy(), [1, np.nan, np.nan, 2.5, 0])
        with pytest.raises(ValueError, match=r"six\.fam holds one phenotype \(column 6\)"):
            plink.phenotype(2)
        with pytest.raises(TypeError, match="column must be an integer, not str"):
            plink.phenotype("2")


def test_non_numeric_phenotype_names_line_and_column(three_phenotypes):
    fam = three_phenotypes.with_name("three.fam")
    lines = fam.read_text().splitlines()
    lines[2] = "f3 s3 0 0 1 NA case 7"
    write_lines(fam, lines)
    message = r"three\.fam, line 3: phenotype 'case' is not a number \(column 7 of the \.fam"
    with read_plink(three_phenotypes) as plink:
        with pytest.raises(ValueError, match=message):
            plink.phenotypes()
        with pytest.raises(ValueError, match=message + r", phenotype 2\); use -9 or NA"):
            plink.phenotype(2)
        # the other columns are still readable one by one
        np.testing.assert_array_equal(plink.phenotype(3).to_numpy(), [np.nan, 0.25, 7, np.nan, 0])


def test_fam_with_ragged_phenotype_columns(three_phenotypes):
    fam = three_phenotypes.with_name("three.fam")
    lines = fam.read_text().splitlines()
    lines[3] = "f4 s4 0 0 2 na -9.0"
    write_lines(fam, lines)
    with read_plink(three_phenotypes) as plink:
        with pytest.raises(ValueError, match=r"three\.fam, line 4: 7 columns, but line 1 has 8"):
            plink.phenotypes()


def test_fam_changed_after_opening(three_phenotypes):
    fam = three_phenotypes.with_name("three.fam")
    with read_plink(three_phenotypes) as plink:
        write_lines(fam, fam.read_text().replace("s2", "t2").splitlines())
        with pytest.raises(ValueError, match=r"line 2: individual id 't2' is not 's2'.*changed"):
            plink.phenotypes()
        write_lines(fam, fam.read_text().splitlines()[:4])
        with pytest.raises(ValueError, match=r"now has 4 individuals, but 5 were read"):
            plink.phenotype()


# --------------------------------------------------------------------- read_phenotypes


def test_gemma_phenotype_file(tmp_path):
    path = write_lines(
        tmp_path / "pheno.txt",
        ["1.5 10", "NA 20", "", "# a comment", "2.5 -9", "nan 1e-3  # trailing", "-9.0 na"],
    )
    table = read_phenotypes(path, SAMPLES)
    assert list(table.columns) == ["pheno1", "pheno2"]
    assert table.index.equals(pd.Index(SAMPLES, name="sample"))
    expected = [[1.5, 10], [np.nan, 20], [2.5, np.nan], [np.nan, 1e-3], [np.nan, np.nan]]
    np.testing.assert_array_equal(table.to_numpy(), expected)


def test_gemma_phenotype_file_with_the_wrong_number_of_rows(tmp_path):
    path = write_lines(tmp_path / "pheno.txt", ["1", "2", "3", "4"])
    message = r"pheno\.txt has 4 rows but there are 5 sample ids: .* in \.fam order \(GEMMA's -p\)"
    with pytest.raises(ValueError, match=message):
        read_phenotypes(path, SAMPLES)


def test_gemma_phenotype_file_errors_name_line_and_column(tmp_path):
    path = write_lines(tmp_path / "pheno.txt", ["1 2", "3 4", "5 x", "7 8", "9 10"])
    with pytest.raises(ValueError, match=r"pheno\.txt, line 3, column 2: 'x' is not a number"):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["1 2", "3", "5 6"])
    with pytest.raises(ValueError, match=r"pheno\.txt, line 2: 1 values, but line 1 has 2"):
        read_phenotypes(path, SAMPLES)


def test_header_that_is_not_fid_iid(tmp_path):
    path = write_lines(tmp_path / "pheno.txt", ["height", "1", "2", "3", "4", "5"])
    message = r"line 1, column 1: 'height' is not a number.*must begin with FID IID"
    with pytest.raises(ValueError, match=message):
        read_phenotypes(path, SAMPLES)


def test_plink_phenotype_file_matched_by_iid(tmp_path):
    path = write_lines(
        tmp_path / "pheno.txt",
        [
            "fid IID height bmi",
            "f4 s4 170 -9",
            "x9 stranger 1 2",
            "f1 s1 165.5 22",
            "f5 s5 NA 30",
            "f2 s2 180 na",
        ],
    )
    table = read_phenotypes(path, SAMPLES)
    assert list(table.columns) == ["height", "bmi"]
    assert table.index.equals(pd.Index(SAMPLES, name="sample"))
    expected = [[165.5, 22], [180, np.nan], [np.nan, np.nan], [170, np.nan], [np.nan, 30]]
    np.testing.assert_array_equal(table.to_numpy(), expected)


@pytest.mark.parametrize("header", ["#FID IID y", "FID IID y", "#IID y", "IID y"])
def test_plink_and_plink2_headers(tmp_path, header):
    rows = [f"{iid} {value}" for iid, value in zip(SAMPLES[::-1], [5, 4, 3, 2, 1], strict=True)]
    if "FID" in header:
        rows = [f"fam {row}" for row in rows]
    table = read_phenotypes(write_lines(tmp_path / "pheno.txt", [header, *rows]), SAMPLES)
    assert list(table.columns) == ["y"]
    np.testing.assert_array_equal(table["y"].to_numpy(), [1, 2, 3, 4, 5])


def test_sample_ids_are_compared_as_strings(tmp_path):
    path = write_lines(tmp_path / "pheno.txt", ["FID IID y", "1 2 0.5", "1 1 1.5"])
    table = read_phenotypes(path, pd.Index([1, 2, 3]))
    assert list(table.index) == [1, 2, 3] and table.index.name == "sample"
    np.testing.assert_array_equal(table["y"].to_numpy(), [1.5, 0.5, np.nan])


def test_sample_ids_from_a_fileset(three_phenotypes, tmp_path):
    path = write_lines(tmp_path / "pheno.txt", ["FID IID y", "f3 s3 3", "f1 s1 1"])
    with read_plink(three_phenotypes) as plink:
        table = read_phenotypes(path, plink.sample_ids)
    assert table.index.equals(plink.sample_ids)
    np.testing.assert_array_equal(table["y"].to_numpy(), [1, np.nan, 3, np.nan, np.nan])


def test_plink_phenotype_file_errors(tmp_path):
    path = tmp_path / "pheno.txt"
    write_lines(path, ["FID IID y", "f s1 1", "f s2 2", "g s1 3", "f s3 4", "h s3 5"])
    message = r"pheno\.txt: individual ids \(IID, column 2\) must be unique; 2 repeat: 's1' "
    with pytest.raises(ValueError, match=message + r"\(lines 2, 4\), 's3' \(lines 5, 6\)"):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["FID IID y", "f a 1", "f b 2", "f c 3"])
    message = (
        r"none of the 3 individuals in .*pheno\.txt is among the 5 sample ids: the file has "
        r"'a', 'b', 'c', the samples are 's1', 's2', 's3', 's4', 's5'"
    )
    with pytest.raises(ValueError, match=message):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["FID IID y z", "f s1 1 2", "f s2 2"])
    message = r"pheno\.txt, line 3: 3 fields, but the header \(line 1\) has 4"
    with pytest.raises(ValueError, match=message):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["FID IID y", "f s1 1", "f s2 two"])
    with pytest.raises(ValueError, match=r"line 3, column 3 \(y\): 'two' is not a number"):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["FID IID"])
    with pytest.raises(ValueError, match=r"line 1 \(the header\) names no columns"):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["FID IID y y", "f s1 1 2"])
    with pytest.raises(ValueError, match=r"column names must be unique; repeated: 'y'"):
        read_phenotypes(path, SAMPLES)
    write_lines(path, ["", "FID IID y", ""])
    with pytest.raises(ValueError, match=r"pheno\.txt has a header but no individuals"):
        read_phenotypes(path, SAMPLES)


def test_plink_file_without_its_header(tmp_path):
    rows = [f"f{i} {iid} {i}.5" for i, iid in enumerate(SAMPLES)]
    path = write_lines(tmp_path / "pheno.txt", rows)
    message = r"column 2 holds the sample ids, so this looks like a PLINK phenotype file without"
    with pytest.raises(ValueError, match=message):
        read_phenotypes(path, SAMPLES)
    # numeric ids, which would otherwise be read as two phenotype columns
    path = write_lines(tmp_path / "numeric.txt", [f"{i} {i} {i}.5" for i in range(1, 6)])
    with pytest.raises(ValueError, match="column 1 holds the sample ids"):
        read_phenotypes(path, ["1", "2", "3", "4", "5"])
    path = write_lines(tmp_path / "shuffled.txt", [f"7 {i} {i}.5" for i in (3, 1, 5, 2, 4)])
    with pytest.raises(ValueError, match="column 2 holds the sample ids"):  # in another order
        read_phenotypes(path, ["1", "2", "3", "4", "5"])


def test_empty_missing_and_bad_arguments(tmp_path):
    path = write_lines(tmp_path / "pheno.txt", ["", "  ", "# nothing"])
    with pytest.raises(ValueError, match=r"pheno\.txt holds no data"):
        read_phenotypes(path, SAMPLES)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.txt"))):
        read_phenotypes(tmp_path / "none.txt", SAMPLES)
    with pytest.raises(ValueError, match=r"sample_ids must be unique; 1 repeat: 's1'"):
        read_phenotypes(path, ["s1", "s2", "s1"])
    with pytest.raises(TypeError, match="not a single string"):
        read_phenotypes(path, "s1")


# --------------------------------------------------------------------- read_covariates


def test_gemma_covariate_file(tmp_path):
    path = write_lines(tmp_path / "covar.txt", ["1 0.5 -9", "1 NA 2", "1 -1 3", "1 2 4", "1 0 5"])
    table = read_covariates(path, SAMPLES)
    assert list(table.columns) == ["covar1", "covar2", "covar3"]
    assert table.index.equals(pd.Index(SAMPLES, name="sample"))
    np.testing.assert_array_equal(table["covar1"].to_numpy(), np.ones(5))
    np.testing.assert_array_equal(table["covar2"].to_numpy(), [0.5, np.nan, -1, 2, 0])
    assert table.loc["s1", "covar3"] == -9.0  # a value in GEMMA's -c, not missing


def test_plink_covariate_file(tmp_path):
    path = write_lines(
        tmp_path / "covar.txt",
        ["FID IID age sex", "f s3 40 1", "f s1 -9 0", "f s2 35 NA", "f other 1 1"],
    )
    table = read_covariates(path, SAMPLES)
    assert list(table.columns) == ["age", "sex"]
    expected = [[np.nan, 0], [35, np.nan], [40, 1], [np.nan, np.nan], [np.nan, np.nan]]
    np.testing.assert_array_equal(table.to_numpy(), expected)


def test_categorical_covariate(tmp_path):
    path = write_lines(tmp_path / "covar.txt", ["FID IID age sex", "f s1 40 male"])
    message = (
        r"covar\.txt, line 2, column 4 \(sex\): 'male' is not a number \(covariates must be "
        r"numbers: code a categorical covariate as numbers, or use the Python API with a "
        r"formula and C\(\.\.\.\)\)"
    )
    with pytest.raises(ValueError, match=message):
        read_covariates(path, SAMPLES)
    path = write_lines(tmp_path / "gemma.txt", ["1 40 F", "1 41 M", "1 42 F", "1 43 M", "1 44 F"])
    with pytest.raises(ValueError, match=r"gemma\.txt, line 1, column 3: 'F' .*C\(\.\.\.\)"):
        read_covariates(path, SAMPLES)


def test_gemma_covariate_file_with_the_wrong_number_of_rows(tmp_path):
    path = write_lines(tmp_path / "covar.txt", ["1 2"] * 7)
    message = r"covar\.txt has 7 rows but there are 5 sample ids: .*\(GEMMA's -c\)"
    with pytest.raises(ValueError, match=message):
        read_covariates(path, SAMPLES)


# ------------------------------------------------------------------------ GCTA GRM


def lower_triangle(matrix):
    return np.concatenate([matrix[i, : i + 1] for i in range(matrix.shape[0])])


@pytest.fixture
def kinship_frame():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(6, 40))
    ids = pd.Index([f"ind{i}" for i in range(6)], name="sample")
    return pd.DataFrame(w @ w.T / 40, index=ids, columns=ids.copy())


def test_hand_made_grm_bin(tmp_path):
    matrix = np.array([[1.0, 0.5, -0.25], [0.5, 0.75, 0.125], [-0.25, 0.125, 1.5]])
    np.array([1.0, 0.5, 0.75, -0.25, 0.125, 1.5], dtype="<f4").tofile(tmp_path / "g.grm.bin")
    (tmp_path / "g.grm.id").write_text("F1\ta\nF1\tb\nF2\tc\n")
    grm = read_grm(tmp_path / "g")  # no .grm.N.bin: not needed
    ids = pd.Index(["a", "b", "c"], name="sample")
    assert grm.index.equals(ids) and grm.columns.equals(ids)
    assert (grm.dtypes == np.float64).all()
    np.testing.assert_array_equal(grm.to_numpy(), matrix)
    for name in ("g.grm.bin", "g.grm.id"):  # or the path of one of the files
        assert read_grm(tmp_path / name).equals(grm)


def test_grm_round_trip(tmp_path, kinship_frame):
    prefix = tmp_path / "data.v2"
    assert write_grm(prefix, kinship_frame, n_snps=40) is None
    n = len(kinship_frame)
    for name in ("data.v2.grm.bin", "data.v2.grm.N.bin"):
        assert (tmp_path / name).stat().st_size == n * (n + 1) // 2 * 4
    values = np.fromfile(tmp_path / "data.v2.grm.bin", dtype="<f4")
    expected = lower_triangle(kinship_frame.to_numpy()).astype(np.float32)
    np.testing.assert_array_equal(values, expected)
    counts = np.fromfile(tmp_path / "data.v2.grm.N.bin", dtype="<f4")
    np.testing.assert_array_equal(counts, np.full(n * (n + 1) // 2, 40.0))
    ids = (tmp_path / "data.v2.grm.id").read_text().splitlines()
    assert ids == [f"ind{i}\tind{i}" for i in range(n)]  # FID = IID

    grm = read_grm(prefix)
    assert grm.index.equals(kinship_frame.index) and grm.columns.equals(kinship_frame.columns)
    np.testing.assert_array_equal(grm.to_numpy(), grm.to_numpy().T)
    single = kinship_frame.to_numpy().astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(grm.to_numpy(), single)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "data.v2.grm.N.bin",
        "data.v2.grm.bin",
        "data.v2.grm.id",
    ]  # no temporary files left
    umask = os.umask(0o022)
    os.umask(umask)
    for path in tmp_path.iterdir():  # created as any file is, not private to the writer
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_grm_of_a_fileset_kinship(tmp_path):
    from emlmm import kinship

    rng = np.random.default_rng(5)
    prefix = tmp_path / "study"
    write_plink(prefix, rng.integers(0, 3, size=(7, 30)).astype(float))
    with read_plink(prefix) as plink:
        matrix = kinship(plink, min_maf=0)
    write_grm(tmp_path / "study", matrix, n_snps=30)
    np.testing.assert_allclose(read_grm(tmp_path / "study"), matrix, rtol=1e-6, atol=1e-7)


def test_write_grm_counts_and_family_ids(tmp_path, kinship_frame):
    n = len(kinship_frame)
    counts = np.add.outer(np.arange(n), np.arange(n)) + 100
    fids = pd.Series([f"fam{i}" for i in range(n)], index=kinship_frame.index)[::-1]
    write_grm(tmp_path / "g", kinship_frame, counts, fids=fids)
    np.testing.assert_array_equal(
        np.fromfile(tmp_path / "g.grm.N.bin", dtype="<f4"), lower_triangle(counts)
    )
    lines = (tmp_path / "g.grm.id").read_text().splitlines()
    assert lines == [f"fam{i}\tind{i}" for i in range(n)]  # a Series is matched by id

    write_grm(tmp_path / "h", kinship_frame, fids=[f"F{i}" for i in range(n)])
    assert (tmp_path / "h.grm.id").read_text().splitlines()[1] == "F1\tind1"
    assert not np.fromfile(tmp_path / "h.grm.N.bin", dtype="<f4").any()  # unknown: 0

    pairs = pd.MultiIndex.from_arrays([["A"] * n, kinship_frame.index])
    labelled = pd.DataFrame(kinship_frame.to_numpy(), index=pairs, columns=pairs)
    write_grm(tmp_path / "m", labelled)
    assert (tmp_path / "m.grm.id").read_text().splitlines()[2] == "A\tind2"
    assert read_grm(tmp_path / "m").index.equals(kinship_frame.index)


def test_write_grm_refuses_to_overwrite(tmp_path, kinship_frame):
    write_grm(tmp_path / "g", kinship_frame)
    before = (tmp_path / "g.grm.bin").read_bytes()
    with pytest.raises(FileExistsError, match=r"g\.grm\.bin, .*g\.grm\.N\.bin, .*g\.grm\.id"):
        write_grm(tmp_path / "g", kinship_frame * 2)
    assert (tmp_path / "g.grm.bin").read_bytes() == before
    (tmp_path / "g.grm.bin").unlink()
    (tmp_path / "g.grm.id").unlink()
    with pytest.raises(FileExistsError, match=r"g\.grm\.N\.bin already exists; pass overwrite"):
        write_grm(tmp_path / "g", kinship_frame)
    write_grm(tmp_path / "g", kinship_frame * 2, overwrite=True)
    np.testing.assert_allclose(read_grm(tmp_path / "g"), kinship_frame * 2, rtol=1e-6)


def test_write_grm_accepts_single_precision_asymmetry(tmp_path, kinship_frame):
    values = kinship_frame.to_numpy().copy()
    values[0, 1] *= 1 + 1e-7
    write_grm(tmp_path / "g", pd.DataFrame(values, kinship_frame.index, kinship_frame.columns))
    np.testing.assert_allclose(read_grm(tmp_path / "g"), kinship_frame, rtol=1e-6)


def test_write_grm_errors(tmp_path, kinship_frame):
    prefix = tmp_path / "g"
    values = kinship_frame.to_numpy()
    ids = list(kinship_frame.index)
    with pytest.raises(TypeError, match=r"must be a pandas DataFrame .* not ndarray"):
        write_grm(prefix, values)
    with pytest.raises(ValueError, match="kinship must be square; it is 6 x 5"):
        write_grm(prefix, kinship_frame.iloc[:, :5])
    with pytest.raises(ValueError, match="no individual ids"):
        write_grm(prefix, pd.DataFrame(values))
    with pytest.raises(ValueError, match="same individual ids in the same order"):
        write_grm(prefix, pd.DataFrame(values, index=ids, columns=ids[::-1]))
    asymmetric = values.copy()
    asymmetric[0, 1] += 1e-3
    with pytest.raises(ValueError, match=r"must be symmetric; .* differ by up to 0\.001"):
        write_grm(prefix, pd.DataFrame(asymmetric, index=ids, columns=ids))
    missing = values.copy()
    missing[2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_grm(prefix, pd.DataFrame(missing, index=ids, columns=ids))
    repeated = ["a", "b", "a", "c", "d", "e"]
    with pytest.raises(ValueError, match="ids must be unique; 1 repeat: 'a'"):
        write_grm(prefix, pd.DataFrame(values, index=repeated, columns=repeated))
    spaced = ["a b", "c", "d", "e", "f", "g"]
    with pytest.raises(ValueError, match="cannot be empty or hold whitespace: 'a b'"):
        write_grm(prefix, pd.DataFrame(values, index=spaced, columns=spaced))
    with pytest.raises(
        ValueError, match=r"n_snps must be one number, or a matrix of the kinship's shape \(6, 6\)"
    ):
        write_grm(prefix, kinship_frame, np.ones((5, 5)))
    with pytest.raises(ValueError, match="finite and non-negative"):
        write_grm(prefix, kinship_frame, -1)
    with pytest.raises(ValueError, match="fids has 2 family ids but the kinship has 6"):
        write_grm(prefix, kinship_frame, fids=["f1", "f2"])
    with pytest.raises(ValueError, match="no family id for 5 of the kinship's individuals"):
        write_grm(prefix, kinship_frame, fids=pd.Series(["f"], index=["ind0"]))
    assert not list(tmp_path.iterdir())  # nothing written by a refused call


def test_read_grm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing: .*none\.grm\.bin, .*none\.grm\.id$"):
        read_grm(tmp_path / "none")
    (tmp_path / "g.grm.id").write_text("f a\nf b\nf c\n")
    np.zeros(5, dtype="<f4").tofile(tmp_path / "g.grm.bin")
    message = (
        r"g\.grm\.bin has 20 bytes but .*g\.grm\.id lists 3 individuals, whose lower triangle "
        r"needs 3 \* \(3 \+ 1\) / 2 \* 4 = 24 bytes: the \.grm\.bin is truncated"
    )
    with pytest.raises(ValueError, match=message):
        read_grm(tmp_path / "g")
    np.zeros(6, dtype="<f8").tofile(tmp_path / "g.grm.bin")
    with pytest.raises(ValueError, match=r"has 48 bytes .* \(twice that: 8-byte values"):
        read_grm(tmp_path / "g")
    np.zeros(6, dtype="<f4").tofile(tmp_path / "g.grm.bin")
    (tmp_path / "g.grm.id").write_text("f a\nf b x\nf c\n")
    with pytest.raises(ValueError, match=r"g\.grm\.id, line 2: 3 fields; a \.grm\.id line"):
        read_grm(tmp_path / "g")
    (tmp_path / "g.grm.id").write_text("f a\ng a\nf c\n")
    with pytest.raises(ValueError, match=r"g\.grm\.id: individual ids .* 1 repeat: 'a'"):
        read_grm(tmp_path / "g")
    (tmp_path / "g.grm.id").write_text("\n")
    with pytest.raises(ValueError, match=r"g\.grm\.id lists no individuals"):
        read_grm(tmp_path / "g")


@pytest.mark.parametrize("entries", [1, 7 * 200, 200 * 200])
def test_write_grm_by_bands_writes_the_same_files_without_an_n_by_n_temporary(
    tmp_path, entries, monkeypatch
):
    # write_grm checks and writes by bands of rows; bands of one row, of 7 rows and the
    # whole matrix give the same files and the same refusals, and with small bands no
    # temporary approaches the n x n matrix's size (3.2 GB at n = 20,000, where three
    # of them had made `emlmm kinship` peak at 9.7 GB).
    import importlib
    import tracemalloc

    io = importlib.import_module("emlmm.io")
    rng = np.random.default_rng(2)
    n = 200
    values = rng.normal(size=(n, n))
    values = values + values.T
    ids = [f"i{j}" for j in range(n)]
    frame = pd.DataFrame(values, index=ids, columns=ids)
    monkeypatch.setattr(io, "BAND_ENTRIES", entries)
    tracemalloc.start()
    try:
        write_grm(tmp_path / "g", frame, n_snps=30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if entries < n * n:
        assert peak < values.nbytes // 4
    packed = np.fromfile(tmp_path / "g.grm.bin", dtype="<f4")
    np.testing.assert_array_equal(packed, lower_triangle(values).astype(np.float32))
    counts = np.fromfile(tmp_path / "g.grm.N.bin", dtype="<f4")
    np.testing.assert_array_equal(counts, np.full(n * (n + 1) // 2, 30.0, dtype=np.float32))
    for row, column, change, message in ((135, 2, 1e-3, "must be symmetric"),
                                         (199, 0, np.nan, "NaN or infinite")):  # fmt: skip
        bad = values.copy()
        bad[row, column] = bad[row, column] + change
        with pytest.raises(ValueError, match=message):
            write_grm(tmp_path / "h", pd.DataFrame(bad, index=ids, columns=ids))
