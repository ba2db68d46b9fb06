"""emlmm against the lab's own R code, run on the bundled data.

The reference values in ``tests/results/`` were produced by ``make_lab_reference.sh``,
which runs ``lab_em.R`` (the lab's EM code with its one fix). The lab omits the
constant -n/2 log(2 pi) from its log-likelihood; emlmm includes it.
"""

from pathlib import Path

import dense
import numpy as np
import pandas as pd
import pytest
from statsmodels.tools.sm_exceptions import ModelWarning

from emlmm import EMLMM, gwas
from emlmm.datasets import load_lab

RESULTS = Path(__file__).parent / "results"


@pytest.fixture(scope="module")
def lab():
    return load_lab()


@pytest.fixture(scope="module")
def r_trace():
    return pd.read_csv(RESULTS / "lab_null_trace.tsv", sep="\t")


def lab_constant(n):
    return n / 2 * np.log(2 * np.pi)


def null_model(lab):
    return EMLMM.from_formula("y ~ 1", data=lab.phenotype.to_frame(), kinship=lab.kinship)


def test_em_from_the_lab_start_retraces_the_labs_log_likelihoods(lab, r_trace):
    result = null_model(lab).fit(start_params="lab", method="em")
    ours = result.llf_history[: len(r_trace)] + lab_constant(result.nobs)
    assert result.n_iter + 1 >= len(r_trace)  # we stop later, never earlier
    np.testing.assert_allclose(ours, r_trace.loglik, rtol=1e-12)


def test_lab_method_stops_where_the_lab_stops_with_its_estimates(lab, r_trace):
    result = null_model(lab).fit(start_params="lab", method="lab")
    assert result.converged
    assert result.n_iter == len(r_trace) - 1
    np.testing.assert_allclose(result.llf_history + lab_constant(result.nobs), r_trace.loglik,
                               rtol=1e-12)
    null_line = (RESULTS / "lab_null.txt").read_text().split()
    r_values = dict(zip(null_line[1::2], map(float, null_line[2::2]), strict=True))
    assert result.sigma2_a == pytest.approx(r_values["s2a"], rel=1e-6)  # R printed 7 digits
    assert result.sigma2_e == pytest.approx(r_values["s2e"], rel=1e-6)
    assert int(r_values["iters"]) == len(r_trace)


def test_converged_fit_agrees_with_the_lab_to_its_stopping_tolerance(lab, r_trace):
    """The lab stops once an iteration gains < 1e-5, which leaves it short of the maximum."""
    result = null_model(lab).fit()
    lab_llf = r_trace.loglik.iloc[-1] - lab_constant(result.nobs)
    assert 0 <= result.llf - lab_llf < 1e-3
    lab_fit = null_model(lab).fit(start_params="lab", method="lab")
    assert result.sigma2_a == pytest.approx(lab_fit.sigma2_a, rel=1e-2)
    assert result.params.iloc[0] == pytest.approx(lab_fit.params.iloc[0], rel=1e-2)


@pytest.fixture(scope="module")
def r_scan():
    snps = (RESULTS / "lab_scan_snps.txt").read_text().split()
    return pd.read_csv(RESULTS / "lab_scan.tsv", sep="\t").assign(snp=snps).set_index("snp")


def test_lab_method_reproduces_every_per_snp_fit_of_the_labs_scan(lab, r_scan):
    frame = lab.phenotype.to_frame()
    for snp, expected in r_scan.iterrows():
        model = EMLMM.from_formula("y ~ 1 + snp", data=frame.assign(snp=lab.genotypes[snp]),
                                   kinship=lab.kinship)
        fit = model.fit(start_params="lab", method="lab")
        np.testing.assert_allclose(
            [*fit.params, fit.sigma2_a, fit.sigma2_e],
            expected[["beta0", "beta1", "s2a", "s2e"]].to_numpy(dtype=float), rtol=1e-9)
        assert fit.n_iter + 1 == expected.iters
        # The lab returns the log-likelihood from before its last update.
        assert fit.llf_history[-2] + lab_constant(fit.nobs) == pytest.approx(expected.logL,
                                                                              rel=1e-12)


def test_scan_p_values_agree_with_the_lab_to_its_stopping_tolerance(lab, r_scan, r_trace):
    """Each lab fit stops within about 1e-3 of its maximum, so its LR statistics can be
    off by a few 1e-3; the scan's statistics are those of converged fits."""
    table = gwas("y ~ 1 + snp", lab.phenotype.to_frame(), lab.genotypes[r_scan.index],
                 lab.kinship)
    r_null_llf = r_trace.loglik.iloc[-2]  # the lab's log_L[iter - 1]
    r_lrt = 2 * (r_scan.logL - r_null_llf)
    np.testing.assert_allclose(table.lrt, r_lrt, atol=2e-3)
    np.testing.assert_allclose(table.p_lrt, r_scan.p, rtol=1e-4)


def test_singular_kinship_lab_method_is_the_labs_and_em_is_maximum_likelihood():
    """With a singular kinship the lab's ginv-based EM is not an EM: its log-likelihood
    falls and it stops far from the maximum. method='lab' reproduces that (with a
    warning); method='em' maximises the likelihood."""
    y = np.loadtxt(RESULTS / "singular_Y.txt")
    kinship = np.loadtxt(RESULTS / "singular_A.txt")
    trace = pd.read_csv(RESULTS / "singular_null_trace.tsv", sep="\t")
    model = EMLMM(y, np.ones((len(y), 1)), kinship)
    with pytest.warns(ModelWarning, match="singular"):
        lab_fit = model.fit(start_params="lab", method="lab")
    np.testing.assert_allclose(lab_fit.llf_history + lab_constant(len(y)), trace.loglik,
                               rtol=1e-10)
    null_line = (RESULTS / "singular_null.txt").read_text().split()
    r_values = dict(zip(null_line[1::2], map(float, null_line[2::2]), strict=True))
    assert lab_fit.sigma2_a == pytest.approx(r_values["s2a"], rel=1e-6)
    ml_fit = model.fit()
    oracle = dense.maximise(y, np.ones((len(y), 1)), kinship, start=(10.0, 10.0))
    assert ml_fit.llf == pytest.approx(oracle.llf, rel=1e-10)
    assert ml_fit.llf > lab_fit.llf_history.max() + 1.0


def test_the_lab_command_prints_the_r_trace_line_by_line(r_trace, capsys, tmp_path,
                                                          monkeypatch):
    """`emlmm lab --method lab` prints R's log_L, numbered as R's vector, to 1e-6."""
    from emlmm.__main__ import main
    from emlmm.datasets import lab_files

    assert main(["lab", "--method", "lab"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines()
               if line.startswith("iteration = ")]
    numbers = [int(line.split(",")[0].split("= ")[1]) for line in printed]
    values = np.array([float(line.split("loglikelihood = ")[1]) for line in printed])
    assert numbers == list(r_trace.iteration)
    np.testing.assert_allclose(values, r_trace.loglik, rtol=0, atol=1e-6)
    assert all(len(line.split(".")[-1]) >= 6 for line in printed)
    # A student's own files, under the lab's names, in the current folder.
    for key, path in lab_files().items():
        (tmp_path / f"QG16_Lab11_EM_{key}.txt").write_text(path.read_text())
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "--method", "lab"]) == 0
    out = capsys.readouterr().out
    assert "on QG16_Lab11_EM_X.txt, QG16_Lab11_EM_Y.txt, QG16_Lab11_EM_A.txt" in out
    assert printed[-1] in out
    assert main(["lab", "--x", "QG16_Lab11_EM_X.txt", "--y", "QG16_Lab11_EM_Y.txt", "--a",
                 "QG16_Lab11_EM_A.txt"]) == 0
    with pytest.raises(SystemExit, match=r"emlmm: error: .*nowhere\.txt"):
        main(["lab", "--x", "nowhere.txt"])
