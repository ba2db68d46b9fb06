"""read_plink and read_lab: round trips, metadata, chunks and every error message."""

import re

import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink

from emlmm.io import LabMatrices, PlinkGenotypes, read_lab, read_plink


@pytest.fixture
def genotypes():
    rng = np.random.default_rng(8)
    values = rng.integers(0, 3, size=(9, 11)).astype(float)  # 9 samples: 3 bytes per SNP
    values[rng.random(values.shape) < 0.1] = np.nan
    values[2, :] = np.nan
    return values


@pytest.fixture
def fileset(tmp_path, genotypes):
    prefix = tmp_path / "study"
    write_plink(
        prefix,
        genotypes,
        sample_ids=[f"ind{i}" for i in range(9)],
        snp_ids=[f"rs{100 + j}" for j in range(11)],
        chromosomes=[1] * 6 + ["X"] * 5,
        positions=[10 * j + 5 for j in range(11)],
        phenotypes=[1.5, -9, "NA", 0, -2.25, 3, -9.0, 7, 1e3],
    )
    return prefix


def test_round_trip(fileset, genotypes):
    with read_plink(fileset) as plink:
        assert isinstance(plink, PlinkGenotypes)
        assert plink.shape == (9, 11) and plink.n_samples == 9 and plink.n_snps == 11
        values = plink.read()
    assert values.dtype == np.float64 and values.shape == (9, 11)
    np.testing.assert_array_equal(values, genotypes)  # NaN in the same places
    assert np.isnan(values).sum() > 9


@pytest.mark.parametrize("suffix", ["", ".bed"])
def test_prefix_with_or_without_bed_and_dotted_names(tmp_path, genotypes, suffix):
    write_plink(tmp_path / "data.v2", genotypes)
    with read_plink(str(tmp_path / "data.v2") + suffix) as plink:
        assert plink.bed_path == tmp_path / "data.v2.bed"
        assert plink.fam_path == tmp_path / "data.v2.fam"
        np.testing.assert_array_equal(plink.read(), genotypes)


def test_metadata(fileset):
    with read_plink(fileset) as plink:
        assert list(plink.sample_ids) == [f"ind{i}" for i in range(9)]
        assert plink.sample_ids.name == "sample"
        snps = plink.snps
        assert snps.index.name == "snp"
        assert list(snps.index) == [f"rs{100 + j}" for j in range(11)]
        assert list(snps.columns) == ["chr", "pos", "a1", "a2"]
        assert list(snps["chr"]) == ["1"] * 6 + ["X"] * 5
        assert snps["pos"].dtype == np.int64
        assert list(snps["pos"]) == [10 * j + 5 for j in range(11)]
        assert set(snps["a1"]) == {"A"} and set(snps["a2"]) == {"G"}
        fam = plink.fam
        assert list(fam.columns) == ["fid", "iid", "father", "mother", "sex", "pheno"]
        assert fam.index.equals(plink.sample_ids)
        assert list(fam["fid"]) == [f"f{i}" for i in range(1, 10)]
        assert list(fam["iid"]) == list(plink.sample_ids)
        assert fam.loc["ind1", "pheno"] == "-9"


def test_read_ranges_and_dtype(fileset, genotypes):
    with read_plink(fileset) as plink:
        np.testing.assert_array_equal(plink.read(3, 7), genotypes[:, 3:7])
        np.testing.assert_array_equal(plink.read(stop=2), genotypes[:, :2])
        assert plink.read(4, 4).shape == (9, 0)
        single = plink.read(10, 11, dtype=np.float32)
        assert single.dtype == np.float32
        np.testing.assert_array_equal(single[:, 0], genotypes[:, 10].astype(np.float32))
        with pytest.raises(ValueError, match=r"SNP range \[5, 12\) is outside \[0, 11\)"):
            plink.read(5, 12)
        with pytest.raises(ValueError, match=r"SNP range \[6, 5\)"):
            plink.read(6, 5)
        with pytest.raises(TypeError, match="float32 or float64"):
            plink.read(dtype=np.int8)


def test_iter_chunks(fileset, genotypes):
    with read_plink(fileset) as plink:
        chunks = list(plink.iter_chunks(4))
        assert [(start, stop) for start, stop, _ in chunks] == [(0, 4), (4, 8), (8, 11)]
        for start, stop, block in chunks:
            np.testing.assert_array_equal(block, genotypes[:, start:stop])
        assert len(list(plink.iter_chunks(100))) == 1
        with pytest.raises(ValueError, match="chunk_size must be at least 1"):
            list(plink.iter_chunks(0))


def test_phenotype_follows_gemma(fileset):
    with read_plink(fileset) as plink:
        pheno = plink.phenotype()
        assert pheno.equals(plink.phenotype(1))
    assert pheno.name == "pheno" and pheno.dtype == np.float64
    assert pheno.index.equals(pd.Index([f"ind{i}" for i in range(9)], name="sample"))
    expected = [1.5, np.nan, np.nan, 0.0, -2.25, 3.0, np.nan, 7.0, 1000.0]
    np.testing.assert_array_equal(pheno.to_numpy(), expected)


@pytest.mark.parametrize("column", [0, 2, 7])
def test_phenotype_column_that_does_not_exist(fileset, column):
    with read_plink(fileset) as plink:
        with pytest.raises(ValueError, match=rf"phenotype column {column} does not exist: .*fam"):
            plink.phenotype(column)


def test_non_numeric_phenotype_names_the_line(tmp_path, genotypes):
    phenotypes = ["1", "2", "1", "case", "2", "1", "1", "2", "1"]
    write_plink(tmp_path / "cc", genotypes, phenotypes=phenotypes)
    with read_plink(tmp_path / "cc") as plink:
        with pytest.raises(ValueError, match=r"cc\.fam, line 4: phenotype 'case' is not a number"):
            plink.phenotype()


def test_context_manager_and_close(fileset):
    with read_plink(fileset) as plink:
        pass
    with pytest.raises(ValueError, match="is closed"):
        plink.read()
    assert "closed" in repr(plink)
    other = read_plink(fileset)
    assert "n_samples=9, n_snps=11" in repr(other)
    other.close()
    with pytest.raises(ValueError, match="is closed"):
        next(other.iter_chunks(2))


@pytest.mark.parametrize("extension", ["bed", "bim", "fam"])
def test_missing_file_is_named(fileset, extension):
    missing = fileset.with_name(f"study.{extension}")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=rf"incomplete; missing: .*study\.{extension}$"):
        read_plink(fileset)


def test_missing_fileset_names_all_three(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.bed, .*nothing\.bim, .*nothing\.fam"):
        read_plink(tmp_path / "nothing")


def test_truncated_bed(fileset):
    bed = fileset.with_name("study.bed")
    bed.write_bytes(bed.read_bytes()[:-2])
    message = (
        r"study\.bed has 34 bytes but .*study\.fam lists 9 samples and "
        r".*study\.bim lists 11 SNPs, which need 3 \+ 11 \* ceil\(9 / 4\) = 36 bytes"
    )
    with pytest.raises(ValueError, match=message):
        read_plink(fileset)


def test_bim_with_an_extra_snp(fileset):
    bim = fileset.with_name("study.bim")
    lines = bim.read_text().splitlines(keepends=True)
    bim.write_text("".join([*lines, lines[-1].replace("rs110", "rs111")]))
    with pytest.raises(
        ValueError, match=r"has 36 bytes .* lists 12 SNPs.* = 39 bytes: the \.bed is truncated"
    ):
        read_plink(fileset)


def test_fam_with_fewer_samples(fileset):
    fam = fileset.with_name("study.fam")
    fam.write_text("".join(fam.read_text().splitlines(keepends=True)[:8]))  # 2 bytes per SNP
    with pytest.raises(ValueError, match=r"study\.fam lists 8 samples .* = 25 bytes"):
        read_plink(fileset)


def test_bad_magic_and_individual_major(fileset):
    bed = fileset.with_name("study.bed")
    content = bed.read_bytes()
    bed.write_bytes(b"\x00\x00\x01" + content[3:])
    with pytest.raises(ValueError, match=r"study\.bed is not a PLINK \.bed file"):
        read_plink(fileset)
    bed.write_bytes(content[:2] + b"\x00" + content[3:])
    with pytest.raises(ValueError, match="individual-major mode"):
        read_plink(fileset)


def test_malformed_fam(fileset):
    fam = fileset.with_name("study.fam")
    lines = fam.read_text().splitlines(keepends=True)
    lines[3] = "f4 ind3 0 0 1\n"  # five columns
    fam.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"could not read .*study\.fam"):
        read_plink(fileset)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 rs103 0 35 A\n", r"study\.bim: line 4 has fewer than the six columns"),
        ("1 rs103 0 35 A G extra\n", r"could not read .*study\.bim"),
        ("1 rs103 0 3.5e1x A G\n", r"could not read .*study\.bim"),
    ],
    ids=["five columns", "seven columns", "position not an integer"],
)
def test_malformed_bim(fileset, line, message):
    bim = fileset.with_name("study.bim")
    lines = bim.read_text().splitlines(keepends=True)
    lines[3] = line
    bim.write_text("".join(lines))
    with pytest.raises(ValueError, match=message):
        read_plink(fileset)


def test_snp_metadata_is_compact_and_keeps_labels_as_written(tmp_path, genotypes):
    prefix = write_plink(tmp_path / "coded", genotypes, chromosomes=["01"] * 6 + ["X"] * 5)
    with read_plink(prefix) as plink:
        snps = plink.snps
        assert list(snps["chr"].unique()) == ["01", "X"]  # not the number 1
        assert all(isinstance(value, str) for value in snps["a1"])
        for column in ("chr", "a1", "a2"):
            assert isinstance(snps[column].dtype, pd.CategoricalDtype)


def test_repeated_sample_ids(tmp_path, genotypes):
    ids = [f"ind{i}" for i in range(8)] + ["ind3"]
    write_plink(tmp_path / "dup", genotypes, sample_ids=ids)
    with pytest.raises(ValueError, match=r"dup\.fam: individual ids .* unique; 1 repeat: 'ind3'"):
        read_plink(tmp_path / "dup")


# ------------------------------------------------------------------------- read_lab


def write_matrix(path, rows):
    path.write_text("".join(" ".join(str(v) for v in row) + "\n" for row in rows))
    return path


@pytest.fixture
def lab_dir(tmp_path):
    rng = np.random.default_rng(1)
    x = write_matrix(tmp_path / "X.txt", rng.integers(0, 3, size=(5, 4)))
    y = write_matrix(tmp_path / "Y.txt", rng.normal(size=(5, 1)).round(4))
    a = write_matrix(tmp_path / "A.txt", np.eye(5))
    return x, y, a


def test_read_lab_bundled_files():
    datasets = pytest.importorskip("emlmm.datasets")
    paths = datasets.lab_files()
    lab = read_lab(paths["X"], paths["Y"], paths["A"])
    assert isinstance(lab, LabMatrices)
    assert lab.genotypes.shape == (300, 1000)
    assert lab.phenotype.shape == (300,)
    assert lab.kinship.shape == (300, 300)
    np.testing.assert_array_equal(lab.genotypes.to_numpy(), np.loadtxt(paths["X"]))
    np.testing.assert_array_equal(lab.phenotype.to_numpy(), np.loadtxt(paths["Y"]))
    np.testing.assert_array_equal(lab.kinship.to_numpy(), np.loadtxt(paths["A"]))


def test_read_lab_labels_like_r(lab_dir):
    lab = read_lab(*lab_dir)
    samples = [str(i) for i in range(1, 6)]
    assert list(lab.genotypes.index) == samples
    assert list(lab.genotypes.columns) == ["V1", "V2", "V3", "V4"]
    assert lab.phenotype.name == "y" and list(lab.phenotype.index) == samples
    assert list(lab.kinship.index) == samples and list(lab.kinship.columns) == samples
    with pytest.raises(AttributeError):
        lab.phenotype = None  # frozen


def test_read_lab_skips_blank_lines_and_comments_and_reads_na(lab_dir):
    x, y, a = lab_dir
    y.write_text("# phenotype\n1.5\n\n2 # second\nNA\n4\n5e-1\n")
    lab = read_lab(x, y, a)
    np.testing.assert_array_equal(lab.phenotype.to_numpy(), [1.5, 2.0, np.nan, 4.0, 0.5])


def test_read_lab_ragged_row(lab_dir):
    x, y, a = lab_dir
    lines = x.read_text().splitlines(keepends=True)
    lines[2] = "0 1 2\n"
    x.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"X\.txt, line 3: 3 values, but line 1 has 4"):
        read_lab(x, y, a)


def test_read_lab_non_numeric_token(lab_dir):
    x, y, a = lab_dir
    lines = a.read_text().splitlines(keepends=True)
    lines[3] = "0 0 0 1,0 0\n"
    a.write_text("".join(lines))
    with pytest.raises(ValueError, match=r"A\.txt, line 4, value 4: '1,0' is not a number"):
        read_lab(x, y, a)


def test_read_lab_mismatched_sizes(lab_dir):
    x, y, a = lab_dir
    y.write_text("".join(y.read_text().splitlines(keepends=True)[:4]))
    message = (
        r"one row per individual, but X \(.*X\.txt\) has 5, Y \(.*Y\.txt\) has 4, "
        r"A \(.*A\.txt\) has 5 rows"
    )
    with pytest.raises(ValueError, match=message):
        read_lab(x, y, a)


def test_read_lab_shapes_of_y_and_a(lab_dir):
    x, y, a = lab_dir
    write_matrix(y, np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"Y\.txt must hold one phenotype value per line"):
        read_lab(x, y, a)
    write_matrix(y, np.ones((5, 1)))
    write_matrix(a, np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"A\.txt must be a square kinship matrix; it is 5 x 4"):
        read_lab(x, y, a)


def test_read_lab_empty_and_missing_files(lab_dir, tmp_path):
    x, y, a = lab_dir
    y.write_text("\n  \n")
    with pytest.raises(ValueError, match=r"Y\.txt holds no data"):
        read_lab(x, y, a)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "none.txt"))):
        read_lab(x, tmp_path / "none.txt", a)


def test_write_plink_rejects_non_genotypes(tmp_path):
    with pytest.raises(ValueError, match="0, 1, 2 or NaN"):
        write_plink(tmp_path / "bad", [[0.5, 1.0]])


@pytest.mark.parametrize(
    "text",
    [
        "1\t2.5\t-3e-2\n4\t5\t6\n",  # tabs: read with the tab as the separator
        "1\t2.5\t-3e-2\r\n4\t5\t6\r\n",  # Windows line ends
        "1\t2.5\t-3e-2\n4 5\t6\n",  # a space further down: any whitespace
        "1\t2.5\t-3e-2\t\n4\t5\t6\t\n",  # trailing tabs
        "\t1\t2.5\t-3e-2\n4\t5\t6\n",  # a leading tab
        "1\t2.5\t-3e-2\n# a comment\n4\t5\t6\n",
        "1 2.5 -3e-2\n4\t5\t6\n",
    ],
)
def test_text_matrices_read_the_same_whatever_the_whitespace(tmp_path, text):
    from emlmm.io import read_text_matrix

    path = tmp_path / "K.txt"
    path.write_bytes(text.encode())
    np.testing.assert_array_equal(read_text_matrix(path), [[1.0, 2.5, -3e-2], [4.0, 5.0, 6.0]])


def test_a_tab_separated_matrix_still_names_its_problems(tmp_path):
    from emlmm.io import read_text_matrix

    path = tmp_path / "K.txt"
    path.write_text("1\t2\t3\n4\t5\n")
    with pytest.raises(ValueError, match=r"K\.txt, line 2: 2 values, but line 1 has 3"):
        read_text_matrix(path)
    path.write_text("1\t2\t3\n4\tfive\t6\n")
    with pytest.raises(ValueError, match=r"K\.txt, line 2, value 2: 'five' is not a number"):
        read_text_matrix(path)
    path.write_text("1\t2\t3\n4\tNA\t6\n")
    assert np.isnan(read_text_matrix(path)[1, 1])
