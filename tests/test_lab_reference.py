"""emlmm against the lab's own R code, run on the bundled data.

The reference values in ``tests/results/`` were produced by ``make_lab_reference.sh``,
which runs ``lab_em.R`` (the lab's EM code with its one fix). The lab omits the
constant -n/2 log(2 pi) from its log-likelihood; emlmm includes it.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emlmm import EMLMM
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
    result = null_model(lab).fit(start_params="lab")
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
    r_values = dict(zip(null_line[1::2], map(float, null_line[2::2])))
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
