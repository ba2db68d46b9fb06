"""Command line: ``emlmm lab | gwas | kinship`` (also ``python -m emlmm ...``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf

from emlmm import EMLMM, __version__
from emlmm.model import LAB_START_SIGMA2_A, LAB_START_SIGMA2_E


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
        f"{LAB_START_SIGMA2_A:g}, sigma2_e = {LAB_START_SIGMA2_E:g}, beta = 0):"
    )
    frame = data.phenotype.to_frame()
    mixed = EMLMM.from_formula("y ~ 1", data=frame, kinship=data.kinship).fit(
        start_params="lab", method=args.method, disp=True
    )
    ols = smf.ols("y ~ 1", data=frame).fit()
    print()
    print(_comparison(mixed, ols).to_string(float_format=lambda v: f"{v:.4f}", na_rep="-"))
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
    }
    return pd.DataFrame(rows, index=["mixed model (EM)", "OLS"]).T


def run_gwas(args: argparse.Namespace) -> int:
    """A scan from PLINK files, written as a tab-separated table."""
    from emlmm import GenomeScan, ScanOutput, read_plink

    if args.loco and args.kinship is not None:
        raise SystemExit(
            "emlmm: error: --loco builds one kinship per left-out chromosome from the "
            "genotypes; drop --kinship"
        )
    # The output is opened (checked and locked) first, so a refused output costs nothing.
    with ScanOutput(args.out, overwrite=args.overwrite, resume=args.resume) as output:
        with read_plink(args.bfile) as plink:
            data = plink.phenotype(args.pheno_col).rename("y").to_frame()
            terms = ["1"]
            if args.covar is not None:
                covariates = _read_matrix(args.covar, len(data), "covariate file")
                names = [f"covar{j + 1}" for j in range(covariates.shape[1])]
                data[names] = covariates
                # GEMMA's -c convention: the file holds the whole design, intercept included.
                terms = ["0", *names]
                if not np.any(np.ptp(covariates, axis=0) == 0):
                    print(
                        "note: the covariate file has no constant column, so the model has no "
                        "intercept (as in GEMMA, include a column of 1s for one)",
                        file=sys.stderr,
                    )
            if args.loco:
                kinship = None
            elif args.kinship is not None:
                kinship = _read_matrix(args.kinship, len(data), "kinship file")
            else:
                from emlmm import kinship as relatedness

                print("computing the centered kinship from the genotypes", file=sys.stderr)
                kinship = relatedness(plink, method="centered").to_numpy()
            scan = GenomeScan(
                f"y ~ {' + '.join(terms)} + snp",
                data,
                plink,
                kinship,
                method=args.method,
                chunk_size=args.chunk_size,
                loco=args.loco,
            )
            with _dask_client(args.scheduler) as client:
                summary = scan.write(output, client=client, progress=not args.quiet)
    if summary.resumed_from:
        print(f"resumed after {summary.resumed_from} SNPs already in {args.out}", file=sys.stderr)
    print(f"wrote {summary.n_snps} SNPs to {args.out}", file=sys.stderr)
    if summary.failed:
        print(
            f"error: {summary.failed} SNPs failed and have NaN statistics (see the note column "
            f"of {args.out})",
            file=sys.stderr,
        )
        return 1
    return 0


@contextmanager
def _dask_client(address: str | None) -> Iterator[Any]:
    """A Dask client connected to the scheduler at ``address`` (none without one)."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client
    except ImportError:
        raise SystemExit(
            "emlmm: error: --scheduler needs Dask's distributed package: pip install 'emlmm[dask]'"
        ) from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise SystemExit(
            f"emlmm: error: cannot connect to the Dask scheduler at {address}: {exc}"
        ) from None
    with client:
        yield client


def run_kinship(args: argparse.Namespace) -> int:
    """A relatedness matrix from PLINK files, written as a text matrix."""
    from emlmm.io import read_plink
    from emlmm.kinship import kinship

    with read_plink(args.bfile) as plink:
        matrix = kinship(plink, method=args.method)
    np.savetxt(args.out, matrix.to_numpy(), fmt="%.10g", delimiter="\t")
    print(f"wrote a {matrix.shape[0]} x {matrix.shape[1]} kinship to {args.out}", file=sys.stderr)
    return 0


def _read_matrix(path: str, n_rows: int, what: str) -> np.ndarray:
    """A whitespace-separated numeric matrix with one row per individual, in .fam order."""
    from emlmm.io import read_text_matrix

    try:
        matrix = read_text_matrix(path)
    except ValueError as exc:
        raise SystemExit(f"emlmm: cannot read the {what} {path}: {exc}") from exc
    if matrix.shape[0] != n_rows:
        raise SystemExit(
            f"emlmm: the {what} {path} has {matrix.shape[0]} rows but the .fam file has "
            f"{n_rows} individuals"
        )
    return matrix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emlmm", description="Linear mixed models with a kinship matrix, fitted by EM."
    )
    parser.add_argument("--version", action="version", version=f"emlmm {__version__}")
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

    scan = commands.add_parser("gwas", help="scan the SNPs of PLINK files for association")
    scan.add_argument("--bfile", required=True, help="PLINK prefix (.bed/.bim/.fam)")
    scan.add_argument(
        "--pheno-col",
        type=int,
        default=1,
        help="phenotype column, 1 = the .fam's 6th (GEMMA's -n)",
    )
    scan.add_argument(
        "--covar",
        help="covariates: whitespace text, one row per .fam individual, the whole design "
        "(include a column of 1s for an intercept, as GEMMA's -c)",
    )
    scan.add_argument(
        "--kinship", help="n x n text matrix in .fam order (default: centered, from the genotypes)"
    )
    scan.add_argument(
        "--out",
        required=True,
        help="output table (tab-separated); its scan's identity goes to OUT.scan.json",
    )
    scan.add_argument("--method", choices=["exact", "fixed"], default="exact")
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    scan.add_argument(
        "--chunk-size", type=int, default=None, help="SNPs per chunk (memory grows with it)"
    )
    existing = scan.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run of the same scan: keep the SNPs already in --out "
        "and add the rest",
    )
    existing.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out (refused otherwise)"
    )
    scan.add_argument(
        "--loco",
        action="store_true",
        help="leave one chromosome out: test each chromosome's SNPs with a centered kinship "
        "of the other chromosomes (instead of --kinship)",
    )
    scan.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="test the chunks on a Dask cluster, e.g. tcp://10.0.0.1:8786 (needs emlmm[dask])",
    )
    scan.set_defaults(run=run_gwas)

    relate = commands.add_parser("kinship", help="compute a kinship matrix from PLINK files")
    relate.add_argument("--bfile", required=True, help="PLINK prefix (.bed/.bim/.fam)")
    relate.add_argument("--out", required=True, help="output text matrix")
    relate.add_argument(
        "--method",
        choices=["centered", "standardized"],
        default="centered",
        help="GEMMA's -gk 1 (centered) or -gk 2 (standardized)",
    )
    relate.set_defaults(run=run_kinship)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a user's error ends it with one line and exit status 1."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return int(args.run(args))
        except (ValueError, OSError) as exc:  # a user's error (ScanFileError included)
            raise SystemExit(f"emlmm: error: {_one_line(exc)}") from None


def _one_line(error: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split())


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Warnings, one line each on standard error, as a command-line tool writes them."""
    print(f"emlmm: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
