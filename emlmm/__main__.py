"""Command line: ``emlmm lab | gwas | kinship`` (also ``python -m emlmm ...``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
    from emlmm.gwas import _prepare_scan, _progress_bar, count_failures
    from emlmm.io import read_plink

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
        if args.kinship is not None:
            kinship = _read_matrix(args.kinship, len(data), "kinship file")
        else:
            from emlmm.kinship import kinship as relatedness

            print("computing the centered kinship from the genotypes", file=sys.stderr)
            kinship = relatedness(plink, method="centered").to_numpy()
        prepared = _prepare_scan(
            f"y ~ {' + '.join(terms)} + snp",
            data,
            plink,
            kinship,
            method=args.method,
            chunk_size=args.chunk_size,
        )
        done = _completed_rows(args.out, prepared.aligned.snps.index) if args.resume else 0
        if done:
            print(f"resuming after {done} SNPs already in {args.out}", file=sys.stderr)
        progress = None if args.quiet else _progress_bar
        failed = unconverged = 0
        # Each chunk is written and flushed as soon as it is done, so an interrupted
        # scan keeps what it finished and --resume carries on from there.
        with open(args.out, "a" if done else "w", encoding="utf-8") as handle:
            for number, table in enumerate(prepared.tables(start=done, progress=progress)):
                table.to_csv(
                    handle,
                    sep="\t",
                    index_label="snp",
                    float_format="%.6g",
                    header=done == 0 and number == 0,
                )
                handle.flush()
                chunk_failed, chunk_unconverged = count_failures(table)
                failed, unconverged = failed + chunk_failed, unconverged + chunk_unconverged
    print(f"wrote {prepared.n_snps} SNPs to {args.out}", file=sys.stderr)
    if unconverged:
        print(
            f"warning: {unconverged} SNPs did not converge (see the converged column)",
            file=sys.stderr,
        )
    if failed:
        print(
            f"error: {failed} SNPs failed and have NaN statistics (see the note column "
            f"of {args.out})",
            file=sys.stderr,
        )
        return 1
    return 0


def _completed_rows(path: str, snp_ids: pd.Index) -> int:
    """How many SNPs an earlier run of the same scan finished in ``path``.

    A partly written last line (the run was killed while writing) is cut off. The
    SNPs found must be the first SNPs of the scan, in order, or resuming would mix
    two different scans.
    """
    target = Path(path)
    if not target.exists() or target.stat().st_size == 0:
        return 0
    text = target.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    if len(complete) < len(text):
        target.write_text(complete, encoding="utf-8")
    lines = complete.splitlines()
    found = [line.split("\t", 1)[0] for line in lines[1:]]
    if not lines or lines[0].split("\t", 1)[0] != "snp" or found != list(snp_ids[: len(found)]):
        raise SystemExit(
            f"emlmm: cannot resume: {path} is not an earlier, partial run of this scan "
            "(its SNPs are not the fileset's first SNPs in order); remove it or choose "
            "another --out"
        )
    return len(found)


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
    scan.add_argument("--out", required=True, help="output table (tab-separated)")
    scan.add_argument("--method", choices=["exact", "fixed"], default="exact")
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    scan.add_argument(
        "--chunk-size", type=int, default=None, help="SNPs per chunk (memory grows with it)"
    )
    scan.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted scan: keep the SNPs already in --out and add the rest",
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
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
