"""Command line: ``emlmm lab`` (and ``python -m emlmm lab``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from emlmm import EMLMM, _em


def run_lab(args: argparse.Namespace) -> int:
    """The lab's first half on the bundled data: EM fit of the null model, vs OLS."""
    from emlmm.datasets import load_lab

    data = load_lab()
    print("The QG16 mixed-model lab on emlmm's bundled data")
    print(f"X (genotypes): {data.genotypes.shape[0]} individuals x {data.genotypes.shape[1]} SNPs")
    print(f"Y (phenotype): {data.phenotype.shape[0]} x 1")
    print(f"A (kinship):   {data.kinship.shape[0]} x {data.kinship.shape[1]}")
    print()
    print(
        f"EM fit of the null model y ~ 1 from the lab's start values (sigma2_a = "
        f"{_em.LAB_START_SIGMA2_A:g}, sigma2_e = {_em.LAB_START_SIGMA2_E:g}, beta = 0):"
    )
    frame = data.phenotype.to_frame()
    mixed = EMLMM.from_formula("y ~ 1", data=frame, kinship=data.kinship).fit(
        start_params="lab", method=args.method, disp=True
    )
    ols = smf.ols("y ~ 1", data=frame).fit()
    print()
    print(_comparison(mixed, ols).to_string(float_format=lambda v: f"{v:.4f}"))
    test = mixed.lr_test_ols()
    print(
        f"\nLR test of sigma2_a = 0: statistic = {test.statistic:.4f}, "
        f"p = {test.pvalue:.4g} (50:50 mixture of chi2(0) and chi2(1); "
        f"naive chi2(1) p = {test.pvalue_naive:.4g})\n"
    )
    print(mixed.summary())
    return 0


def _comparison(mixed, ols) -> pd.DataFrame:  # type: ignore[no-untyped-def]
    rows = {
        "Intercept": (mixed.params["Intercept"], ols.params["Intercept"]),
        "std err": (mixed.bse["Intercept"], ols.bse["Intercept"]),
        "sigma2_a": (mixed.sigma2_a, np.nan),
        "sigma2_e": (mixed.sigma2_e, ols.ssr / ols.nobs),
        "log-likelihood": (mixed.llf, ols.llf),
        "iterations": (mixed.n_iter, np.nan),
    }
    return pd.DataFrame(rows, index=["mixed model (EM)", "OLS"]).T


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emlmm", description="Linear mixed models with a kinship matrix, fitted by EM."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    lab = commands.add_parser(
        "lab",
        help="fit the lab's null model by EM on the bundled data and compare it with OLS",
    )
    lab.add_argument(
        "--method",
        choices=["em", "lab"],
        default="em",
        help="'em' runs to the maximum; 'lab' stops by the lab's own rule (default: em)",
    )
    lab.set_defaults(run=run_lab)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
