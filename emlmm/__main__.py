"""Command line: ``emlmm lab | gwas | kinship`` (also ``python -m emlmm ...``)."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from emlmm import __version__
from emlmm._threads import at_most

#: The lab's own file names (QG16 Lab 11), looked for in the current folder.
LAB_FILE_NAMES = {
    "x": "QG16_Lab11_EM_X.txt",
    "y": "QG16_Lab11_EM_Y.txt",
    "a": "QG16_Lab11_EM_A.txt",
}


def _lab_inputs(args: argparse.Namespace) -> tuple[Any, str]:
    """The lab's matrices: the files named, else the lab's file names in the current
    folder, else emlmm's bundled copy of the lab's data."""
    from emlmm.datasets import lab_files
    from emlmm.io import read_lab

    given = {key: getattr(args, key) for key in LAB_FILE_NAMES}
    present = [name for name in LAB_FILE_NAMES.values() if Path(name).exists()]
    if not any(given.values()) and 0 < len(present) < len(LAB_FILE_NAMES):
        raise ValueError(
            f"found {', '.join(present)} here but not all three of the lab's files "
            f"({', '.join(LAB_FILE_NAMES.values())}); name them with --x, --y and --a"
        )
    if not any(given.values()) and not present:
        bundled = lab_files()
        paths = {"x": bundled["X"], "y": bundled["Y"], "a": bundled["A"]}
        where = "emlmm's bundled copy of the lab's data"
    else:
        paths = {key: Path(given[key] or LAB_FILE_NAMES[key]) for key in LAB_FILE_NAMES}
        where = ", ".join(str(path) for path in paths.values())
    return read_lab(paths["x"], paths["y"], paths["a"]), where


def run_lab(args: argparse.Namespace) -> int:
    """The lab's first half: EM fit of the null model on the lab's files, vs OLS."""
    from emlmm.model import EMLMM, LAB_START_SIGMA2_A, LAB_START_SIGMA2_E

    data, where = _lab_inputs(args)
    print(f"The QG16 mixed-model lab on {where}")
    print(f"X (genotypes): {data.genotypes.shape[0]} individuals x {data.genotypes.shape[1]} SNPs")
    print(f"Y (phenotype): {data.phenotype.shape[0]} x 1")
    missing = int(data.phenotype.isna().sum())
    if missing:
        print(
            f"note: {missing} individuals have no phenotype (NA) and are left out, with their "
            "rows and columns of A (the lab's R code would stop with an error)"
        )
    print(f"A (kinship):   {data.kinship.shape[0]} x {data.kinship.shape[1]}")
    print()
    print(
        f"EM fit of the null model y ~ 1 from the lab's start values (sigma2_a = "
        f"{LAB_START_SIGMA2_A:g}, sigma2_e = {LAB_START_SIGMA2_E:g}, beta = 0):"
    )
    if args.method == "lab":
        print(
            "(each line is the lab's log_L, which leaves out the constant -n/2 log(2 pi) of "
            "the log-likelihood llf below; line 1 is the start values, as log_L[1] in R)"
        )
    frame = data.phenotype.rename("y").to_frame()
    mixed = EMLMM.from_formula("y ~ 1", data=frame, kinship=data.kinship).fit(
        start_params="lab", method=args.method, disp=True
    )
    import statsmodels.formula.api as smf  # the lab's comparison only (the scan never needs it)

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
    """A scan from PLINK files (GEMMA's ``-bfile`` workflow), written as a table and a log."""
    from emlmm import GenomeScan, ScanOutput, read_plink
    from emlmm.genotypes import SnpFilter

    started = time.perf_counter()
    if args.loco and args.kinship is not None:
        raise SystemExit(
            "emlmm: error: --loco builds one kinship per left-out chromosome from the "
            "genotypes; drop --kinship"
        )
    snp_filter = SnpFilter(args.maf, args.miss, args.hwe)  # checked before any work
    # The output is opened (checked and locked) first, so a refused output costs nothing;
    # then every input is read and checked before the heavy work (kinship, null model).
    with ScanOutput(args.out, overwrite=args.overwrite, resume=args.resume) as output:
        with read_plink(args.bfile) as plink, _dask_client(args.scheduler) as client:
            data, phenotypes, terms, notes = _phenotype_and_covariates(args, plink, args.pheno_col)
            covariates = data.drop(columns=phenotypes).notna().all(axis=1)
            phenotyped = data[phenotypes].notna().any(axis=1)
            analysed = data.index[covariates & phenotyped]
            if len(analysed) == 0:
                raise ValueError(
                    "no individual has both a phenotype and every covariate: nothing to analyse"
                )
            no_phenotype = int((~phenotyped).sum())
            no_covariate = int((phenotyped & ~covariates).sum())
            notes.append(
                f"dropped: {no_phenotype} without a phenotype, {no_covariate} more without "
                "every covariate"
            )
            kinship = _kinship_for(args, plink, data.index, analysed)
            timings = {"reading inputs and kinship": time.perf_counter() - started}
            several = phenotypes != ["y"]
            scan = GenomeScan(
                f"{'' if several else 'y '}~ {' + '.join(terms)} + snp",
                data,
                plink,
                kinship,
                method=args.method,
                chunk_size=args.chunk_size,
                loco=args.loco,
                min_maf=snp_filter.min_maf,
                max_missing=snp_filter.max_missing,
                hwe=snp_filter.hwe,
                phenotypes=phenotypes if several else None,
            )
            timings["null model"] = time.perf_counter() - started - sum(timings.values())
            summary = scan.write(
                output, client=client, progress=not args.quiet, format=args.format
            )
            timings["scan"] = time.perf_counter() - started - sum(timings.values())
            timings["total"] = time.perf_counter() - started
            log = scan.report(notes=notes, timings=timings, command=args.command_line)
            output.write_log(log)
    counts = summary.snp_counts
    if summary.resumed_from:
        print(f"resumed after {summary.resumed_from} SNPs already in {args.out}", file=sys.stderr)
    print(
        f"wrote {counts['analysed']} of {counts['total']} SNPs to {args.out} (log: "
        f"{output.log_path})",
        file=sys.stderr,
    )
    if summary.failed:
        print(
            f"error: {summary.failed} SNPs failed and have NaN statistics (see the note column "
            f"of {args.out})",
            file=sys.stderr,
        )
        return 1
    return 0


def _phenotype_and_covariates(
    args: argparse.Namespace, plink: Any, columns: int | Sequence[str]
) -> tuple[pd.DataFrame, list[str], list[str], list[str]]:
    """The phenotypes and covariates as columns of one frame indexed by sample id, the
    phenotypes' names there (``["y"]`` for one phenotype), the formula's covariate
    terms, and notes for the log.

    ``columns`` numbers phenotypes as GEMMA's ``-n`` (from 1), in the .fam or
    ``--pheno``: one number, several, or ``all``.
    """
    from emlmm.io import read_covariates, read_phenotypes

    notes: list[str] = []
    if args.pheno is None:
        source, available = str(plink.fam_path), None
    else:
        source = str(args.pheno)
        available = read_phenotypes(args.pheno, plink.sample_ids)
    if isinstance(columns, int):
        columns = [str(columns)]
    if list(columns) == ["all"]:
        if available is None:
            available = plink.phenotypes()
        numbers = list(range(1, available.shape[1] + 1))
    else:
        numbers = []
        for column in columns:
            try:
                numbers.append(int(column))
            except ValueError:
                raise ValueError(
                    f"--pheno-col takes phenotype numbers (from 1, GEMMA's -n) or 'all', not "
                    f"{column!r}"
                ) from None
        for number in numbers:
            if number < 1:
                raise ValueError(f"--pheno-col counts from 1 (GEMMA's -n), not {number}")
        if len(set(numbers)) < len(numbers):
            raise ValueError(f"--pheno-col names a phenotype twice: {' '.join(columns)}")
    picked: list[pd.Series] = []
    for number in numbers:
        if available is None:
            picked.append(plink.phenotype(number).rename(f"pheno{number}"))
            continue
        if not 1 <= number <= available.shape[1]:
            raise ValueError(
                f"phenotype column {number} does not exist: {args.pheno} holds "
                f"{available.shape[1]} phenotype(s) ({', '.join(map(str, available.columns))})"
            )
        picked.append(available.iloc[:, number - 1])
    if len(picked) == 1:
        names = ["y"]
        what = "" if args.pheno is None else f"{picked[0].name!r}, "
        notes.append(f"phenotype: {what}column {numbers[0]} of {source}")
    else:
        names = [str(series.name) for series in picked]
        if len(set(names)) < len(names):
            names = [f"pheno{number}" for number in numbers]
        notes.append(
            f"phenotypes: {', '.join(names)} (columns {', '.join(map(str, numbers))} of "
            f"{source}), each scanned on its own (univariate, not GEMMA's multivariate -n)"
        )
    data = pd.DataFrame(
        {name: series.to_numpy(dtype=float) for name, series in zip(names, picked, strict=True)},
        index=plink.sample_ids,
    )
    if getattr(args, "covar", None) is None:
        return data, names, ["1"], notes
    covariates = read_covariates(args.covar, plink.sample_ids)
    if covariates.shape[1] + 2 > covariates.shape[0]:
        raise ValueError(
            f"the covariate file {args.covar} has {covariates.shape[1]} columns for "
            f"{covariates.shape[0]} individuals: a model needs more individuals than "
            "covariates and variance components (is it the right file?)"
        )
    # The file's own names where they can stand in a formula, else c1, c2, ...
    taken = {"y", "snp", *names}
    covariate_names = [
        str(name) if str(name).isidentifier() and str(name) not in taken else f"c{j + 1}"
        for j, name in enumerate(covariates.columns)
    ]
    if len(set(covariate_names) | taken) < len(covariate_names) + len(taken):
        covariate_names = [f"covariate{j + 1}" for j in range(len(covariate_names))]
    data[covariate_names] = covariates.to_numpy(dtype=float)
    constant = [name for name in covariate_names if data[name].nunique() == 1]
    notes.append(f"covariates: {', '.join(map(str, covariates.columns))} from {args.covar}")
    if constant:
        # GEMMA's -c convention: the file holds the whole design, intercept included.
        return data, names, ["0", *covariate_names], notes
    print(
        "note: the covariate file has no constant column, so an intercept is added "
        "(as GEMMA does)",
        file=sys.stderr,
    )
    notes.append("covariates: no constant column, so an intercept was added (as GEMMA does)")
    return data, names, ["1", *covariate_names], notes


def _kinship_for(
    args: argparse.Namespace, plink: Any, samples: pd.Index, analysed: pd.Index
) -> Any:
    """The kinship: none for LOCO, read from a file, or GEMMA's centered kinship."""
    if args.loco:
        return None
    if args.kinship is not None:
        return _read_kinship(args.kinship, samples)
    from emlmm import kinship as relatedness

    print("computing the centered kinship from the genotypes", file=sys.stderr)
    # As GEMMA's -gk 1: its SNPs are chosen on the individuals analysed.
    return relatedness(plink, method="centered", filter_individuals=analysed)


def _read_kinship(path: str, samples: pd.Index) -> Any:
    """A kinship file: GCTA's binary GRM (``PREFIX.grm.bin``, matched by id) or a text
    matrix in .fam order (GEMMA's ``-k``)."""
    from emlmm.io import read_grm

    if (
        path.endswith((".grm.bin", ".grm.id", ".grm.N.bin", ".grm"))
        or Path(f"{path}.grm.bin").exists()
    ):
        return read_grm(path)
    matrix = _read_matrix(path, len(samples), "kinship file")
    if matrix.shape[1] != matrix.shape[0]:
        raise ValueError(
            f"kinship must be a square matrix: the kinship file {path} has shape {matrix.shape}"
        )
    return pd.DataFrame(matrix, index=samples, columns=samples)


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
    """A relatedness matrix from PLINK files (GEMMA's ``-gk``), as text or GCTA's GRM."""
    from emlmm.io import read_plink, write_grm
    from emlmm.kinship import kinship

    out = Path(args.out)
    targets = (
        [Path(f"{args.out}{suffix}") for suffix in (".grm.bin", ".grm.N.bin", ".grm.id")]
        if args.format == "grm"
        else [out]
    )
    for target in targets:
        if target.is_symlink():
            raise ValueError(f"{target} is a symbolic link; emlmm does not write through links")
        if target.exists() and not args.overwrite:
            raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
    with read_plink(args.bfile) as plink:
        analysed = None
        if args.pheno_col is not None or args.pheno is not None:
            args.pheno_col = 1 if args.pheno_col is None else args.pheno_col
            data, _, _, _ = _phenotype_and_covariates(args, plink, args.pheno_col)
            analysed = data.index[data.notna().all(axis=1)]
        matrix = kinship(
            plink,
            method=args.method,
            min_maf=args.maf,
            max_missing=args.miss,
            filter_individuals=analysed,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "grm":
        write_grm(args.out, matrix, overwrite=args.overwrite)
    else:
        np.savetxt(out, matrix.to_numpy(), fmt="%.10g", delimiter="\t")
    print(
        f"wrote a {matrix.shape[0]} x {matrix.shape[1]} kinship to "
        f"{args.out + '.grm.bin' if args.format == 'grm' else args.out}",
        file=sys.stderr,
    )
    return 0


def _read_matrix(path: str, n_rows: int, what: str) -> np.ndarray:
    """A whitespace-separated numeric matrix with one row per individual, in .fam order."""
    from emlmm.io import read_text_matrix

    try:
        matrix = read_text_matrix(path)
    except ValueError as exc:
        raise ValueError(f"cannot read the {what} {path}: {exc}") from exc
    if matrix.shape[0] != n_rows:
        raise ValueError(
            f"the {what} {path} has {matrix.shape[0]} rows but the .fam file has "
            f"{n_rows} individuals"
        )
    return matrix


def _positive_int(text: str) -> int:
    """An option's whole number of at least 1 (argparse reports the error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_threads_option(command: argparse.ArgumentParser) -> None:
    """``--threads N``, applied by :func:`main` around the command."""
    command.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="use at most N threads (BLAS, the .bed reader, a scan's second thread), as PLINK's "
        "--threads; default: every core. --threads 1 suits a machine busy with other work",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emlmm", description="Linear mixed models with a kinship matrix, fitted by EM."
    )
    parser.add_argument("--version", action="version", version=f"emlmm {__version__}")
    parser.set_defaults(threads=None)  # --threads: gwas and kinship only
    commands = parser.add_subparsers(dest="command", required=True)
    lab = commands.add_parser(
        "lab",
        help="fit the lab's null model by EM on the bundled data and compare it with OLS",
    )
    for key, name in LAB_FILE_NAMES.items():
        lab.add_argument(
            f"--{key}",
            metavar="FILE",
            help=f"the lab's {key.upper()} matrix (default: {name} in this folder if the three "
            "files are there, else emlmm's bundled copy)",
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
        "--pheno",
        metavar="FILE",
        help="phenotypes: GEMMA's -p (one column per phenotype, rows in .fam order, NA or -9 "
        "missing) or PLINK's (a header 'FID IID name ...', rows matched by id); default: the "
        ".fam's",
    )
    scan.add_argument(
        "--pheno-col",
        nargs="+",
        default=["1"],
        metavar="N",
        help="which phenotype, as GEMMA's -n: the Nth of --pheno, or of the .fam (column 5 + N). "
        "Several numbers, or 'all', scan each phenotype on its own (univariate scans, not "
        "GEMMA's multivariate -n 1 2) into one table with a phenotype column, sharing the "
        "eigendecomposition and each chunk's rotation",
    )
    scan.add_argument(
        "--covar",
        metavar="FILE",
        help="covariates: GEMMA's -c (rows in .fam order, the whole design; a column of 1s "
        "is the intercept, added if absent) or PLINK's (a header 'FID IID name ...', matched by "
        "id); an intercept is added when no column is constant",
    )
    scan.add_argument(
        "--kinship",
        metavar="FILE",
        help="the kinship: an n x n text matrix in .fam order (GEMMA's -k) or GCTA's binary "
        "GRM (PREFIX.grm.bin, matched by id); default: GEMMA's centered kinship (-gk 1) from "
        "the genotypes, its SNPs chosen on the individuals analysed",
    )
    scan.add_argument(
        "--maf",
        type=float,
        default=0.01,
        help="leave out SNPs whose allele frequency is below MAF or above 1 - MAF (GEMMA's "
        "-maf; default 0.01, 0 keeps all)",
    )
    scan.add_argument(
        "--miss",
        type=float,
        default=0.05,
        help="leave out SNPs with a larger fraction of missing genotypes (GEMMA's -miss; "
        "default 0.05, 1 keeps all)",
    )
    scan.add_argument(
        "--hwe",
        type=float,
        default=None,
        help="leave out SNPs with a Hardy-Weinberg exact test p-value below HWE (GEMMA's -hwe; "
        "default: no test)",
    )
    scan.add_argument(
        "--format",
        choices=["emlmm", "gemma"],
        default="emlmm",
        help="output columns: emlmm's, or GEMMA's -lmm 4 assoc.txt (read unchanged by GEMMA "
        "tools)",
    )
    scan.add_argument(
        "--out",
        required=True,
        help="output table (tab-separated); the scan's identity goes to OUT.scan.json and its "
        "log to OUT.log",
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
    _add_threads_option(scan)
    scan.set_defaults(run=run_gwas)

    relate = commands.add_parser("kinship", help="compute a kinship matrix from PLINK files")
    relate.add_argument("--bfile", required=True, help="PLINK prefix (.bed/.bim/.fam)")
    relate.add_argument(
        "--out",
        required=True,
        help="output: a text matrix in .fam order (GEMMA's cXX.txt), or with --format grm "
        "GCTA's binary GRM OUT.grm.bin, OUT.grm.N.bin, OUT.grm.id",
    )
    relate.add_argument(
        "--pheno", metavar="FILE", help="phenotype file, as for gwas (to choose the SNPs)"
    )
    relate.add_argument(
        "--pheno-col",
        type=int,
        default=None,
        metavar="N",
        help="choose the SNPs on the individuals with phenotype N, as GEMMA's -gk with -n "
        "(default: on all individuals)",
    )
    relate.add_argument("--format", choices=["text", "grm"], default="text", help="output format")
    relate.add_argument(
        "--covar",
        metavar="FILE",
        help="covariate file, as for gwas: individuals missing a covariate are not analysed "
        "(with --pheno-col, the SNPs are chosen on the others)",
    )
    relate.add_argument(
        "--maf", type=float, default=0.01, help="GEMMA's -maf for the kinship's SNPs (0.01)"
    )
    relate.add_argument(
        "--miss", type=float, default=0.05, help="GEMMA's -miss for the kinship's SNPs (0.05)"
    )
    relate.add_argument("--overwrite", action="store_true", help="replace existing output")
    relate.add_argument(
        "--method",
        choices=["centered", "standardized"],
        default="centered",
        help="GEMMA's -gk 1 (centered) or -gk 2 (standardized)",
    )
    _add_threads_option(relate)
    relate.set_defaults(run=run_kinship)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a user's error ends it with one line and exit status 1."""
    args = build_parser().parse_args(argv)
    args.command_line = ["emlmm", *(sys.argv[1:] if argv is None else argv)]
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            with nullcontext() if args.threads is None else at_most(args.threads):
                return int(args.run(args))
        except BrokenPipeError:  # output piped into `head`, say: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
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


def run() -> NoReturn:
    """The ``emlmm`` command: :func:`main`, then, once it has finished, an exit without
    the interpreter's teardown. Every file it wrote is closed by then and the standard
    streams are flushed here, so the teardown would only free memory and unload
    modules: 0.2-0.25 s with numpy, SciPy, pandas and statsmodels loaded, a tenth of
    a scan of GEMMA's example. Errors exit the usual way."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # a reader that stopped early: nothing more to say
        code = code or 1
    os._exit(code)


if __name__ == "__main__":
    run()
