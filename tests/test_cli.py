"""The command line, end to end, on the bundled data and on PLINK files made here."""

import dense
import numpy as np
import pandas as pd
import pytest
from plink_fixtures import write_plink

from emlmm import gwas, kinship
from emlmm.__main__ import main
from emlmm.io import read_plink


@pytest.fixture(scope="module")
def plink_study(tmp_path_factory):
    rng = np.random.default_rng(4)
    n, m = 90, 40
    freqs = rng.uniform(0.15, 0.5, size=m)
    genotypes = rng.binomial(2, freqs, size=(n, m)).astype(float)
    genotypes[rng.random((n, m)) < 0.01] = np.nan
    related = dense.random_genotype_kinship(rng, n, 200)
    polygenic = np.linalg.cholesky(related + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    age = rng.uniform(20, 60, size=n)
    y = 2 + 0.03 * age + 0.9 * np.nan_to_num(genotypes[:, 6], nan=1.0) + polygenic \
        + rng.normal(size=n)
    y[5] = -9  # missing phenotype
    folder = tmp_path_factory.mktemp("plink")
    prefix = folder / "study"
    write_plink(prefix, genotypes, phenotypes=y, chromosomes=[1] * 20 + [2] * 20)
    np.savetxt(folder / "covar.txt", np.column_stack([np.ones(n), age]))
    return prefix, folder


def test_lab_command_prints_iterations_comparison_and_summary(capsys):
    assert main(["lab"]) == 0
    out = capsys.readouterr().out
    assert "X (genotypes): 300 individuals x 1000 SNPs" in out
    assert "iteration = 1, loglikelihood = " in out
    assert "mixed model (EM)" in out and "OLS" in out
    assert "LR test of sigma2_a = 0" in out
    assert "Linear Mixed Model with Kinship Results" in out


def test_gwas_command_matches_the_python_api(plink_study, capsys):
    prefix, folder = plink_study
    out = folder / "scan.tsv"
    assert main(["gwas", "--bfile", str(prefix), "--out", str(out), "--quiet",
                 "--covar", str(folder / "covar.txt")]) == 0
    table = pd.read_csv(out, sep="\t", index_col="snp")
    with read_plink(prefix) as plink:
        data = plink.phenotype(1).rename("y").to_frame()
        data["age"] = np.loadtxt(folder / "covar.txt")[:, 1]
        expected = gwas("y ~ 1 + age + snp", data, plink, kinship(plink).to_numpy())
    assert list(table.index) == list(expected.index)
    assert table.p_lrt.idxmin() == "rs7"
    np.testing.assert_allclose(table.p_lrt, expected.p_lrt, rtol=1e-5)
    np.testing.assert_allclose(table.beta, expected.beta, rtol=1e-5)
    assert (table.chr.iloc[:20] == 1).all() and (table.chr.iloc[20:] == 2).all()


def test_kinship_command_then_gwas_with_that_kinship(plink_study, capsys):
    prefix, folder = plink_study
    matrix_file = folder / "K.txt"
    assert main(["kinship", "--bfile", str(prefix), "--out", str(matrix_file),
                 "--method", "standardized"]) == 0
    written = np.loadtxt(matrix_file)
    with read_plink(prefix) as plink:
        np.testing.assert_allclose(written, kinship(plink, method="standardized"), rtol=1e-9)
    out = folder / "fixed.tsv"
    assert main(["gwas", "--bfile", str(prefix), "--kinship", str(matrix_file),
                 "--out", str(out), "--method", "fixed"]) == 0
    table = pd.read_csv(out, sep="\t", index_col="snp")
    assert len(table) == 40 and table.p_wald.notna().all()
    assert "40/40 SNPs" in capsys.readouterr().err  # the progress bar


def test_gwas_command_reports_a_kinship_of_the_wrong_size(plink_study, tmp_path):
    prefix, _ = plink_study
    np.savetxt(tmp_path / "K.txt", np.eye(10))
    with pytest.raises(SystemExit, match=r"has 10 rows but the \.fam file has 90 individuals"):
        main(["gwas", "--bfile", str(prefix), "--kinship", str(tmp_path / "K.txt"),
              "--out", str(tmp_path / "x.tsv")])


def test_importing_emlmm_leaves_the_model_layer_for_its_first_use():
    # Reading files and computing kinships (emlmm kinship) need neither statsmodels'
    # model layer nor scipy.stats, which it imports (about half a second); the lazy
    # names resolve as before.
    import subprocess
    import sys

    code = (
        "import sys, emlmm\n"
        "heavy = ['emlmm.model', 'emlmm.results', 'statsmodels.base.model', 'scipy.stats']\n"
        "print(*[name in sys.modules for name in heavy])\n"
        "from emlmm import EMLMM, EMLMMResults, LikelihoodRatioTest\n"
        "print(EMLMM.__module__, EMLMMResults.__module__, emlmm.LikelihoodRatioTest.__name__)\n"
        "print(callable(emlmm.gwas), 'EMLMM' in dir(emlmm))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == [
        "False False False False",
        "emlmm.model emlmm.results LikelihoodRatioTest",
        "True True",
    ]
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        import emlmm

        emlmm.nonsense  # noqa: B018



def test_the_command_exits_with_mains_status_and_complete_files(plink_study, tmp_path):
    # The installed command skips the interpreter's teardown after main() returns: the
    # table, its log and the messages must all be there, and the status main's.
    import subprocess
    import sys

    prefix, folder = plink_study
    out = tmp_path / "scan.tsv"
    command = [sys.executable, "-m", "emlmm", "gwas", "--bfile", str(prefix), "--covar",
               str(folder / "covar.txt"), "--out", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0
    assert done.stderr.splitlines()[-1].startswith("wrote 40 of 40 SNPs to ")
    assert main(["gwas", "--bfile", str(prefix), "--covar", str(folder / "covar.txt"),
                 "--out", str(tmp_path / "in_process.tsv"), "--quiet"]) == 0  # fmt: skip
    assert out.read_text() == (tmp_path / "in_process.tsv").read_text()
    assert "## time (s): " in (tmp_path / "scan.tsv.log").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.startswith("emlmm: error: ")
    assert "exists" in again.stderr


def test_a_covariate_file_wider_than_the_study_is_one_line(plink_study, tmp_path, capsys):
    # A kinship passed as --covar, say: one line, before any fit.
    prefix, _ = plink_study
    np.savetxt(tmp_path / "wide.txt", np.random.default_rng(1).normal(size=(90, 95)))
    with pytest.raises(SystemExit, match=r"wide\.txt has 95 columns for 90 individuals"):
        main(["gwas", "--bfile", str(prefix), "--covar", str(tmp_path / "wide.txt"),
              "--out", str(tmp_path / "x.tsv"), "--quiet"])  # fmt: skip
    assert not (tmp_path / "x.tsv").exists()
