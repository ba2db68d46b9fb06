"""Genome-wide association scans: the lab's per-SNP fits and tests, at scale.

A :class:`GenomeScan` is built once: it checks its inputs, fits the null model (the
formula without ``snp``) and eigendecomposes the kinship. It then tests SNPs chunk by
chunk: each chunk of genotypes is rotated into the kinship's eigenbasis with one
matrix product, and every SNP of the chunk is fitted at once: Newton steps on the
variance ratio, from the null model's estimates, each costing a few vectorised passes
over the chunk (:mod:`emlmm._scan`); batched EM takes over for the rare SNP Newton
cannot finish. Chunks are tested here or on the workers of a Dask client, returned
as one table (:meth:`GenomeScan.run`, or :func:`gwas`), or written to a file that an
interrupted scan can resume (:meth:`GenomeScan.write`, :class:`ScanOutput`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import numpy as np
import pandas as pd
import patsy
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from emlmm import _em, _scan
from emlmm._data import (
    _preview,
    capture_namespace,
    check_choice,
    check_count,
    check_flag,
    check_formula_inputs,
    check_positive,
)
from emlmm.genotypes import Genotypes, GenotypeSource, default_chunk_size
from emlmm.kinship import kinship_sum
from emlmm.model import EMLMM, NullFit

__all__ = ["COLUMNS", "GenomeScan", "ScanFileError", "ScanOutput", "ScanSummary", "gwas"]

ScanMethod = Literal["exact", "fixed"]
ProgressCallback = Callable[[int, int], None]
#: Errors that mean a SNP's fit broke down numerically: the SNP gets a note and the
#: scan goes on. Anything else (a bug, bad input) propagates.
NUMERICAL_ERRORS = (np.linalg.LinAlgError, ArithmeticError)

#: Output columns, in order (``chr`` and ``pos`` come first when known).
COLUMNS = [
    "af", "n_miss", "beta", "se", "p_wald", "lrt", "p_lrt", "p_score",
    "llf", "sigma2_a", "sigma2_e", "n_iter", "converged", "note",
]  # fmt: skip
#: How numbers are written to a scan's file (and so what its identity records).
FLOAT_FORMAT = "%.6g"
#: Version of the identity record written beside a scan's table.
IDENTITY_FORMAT = 1


class ScanFileError(ValueError):
    """A scan's output file cannot be used: it is locked by another scan, a link, or
    (to resume) not an earlier, partial run of the same scan."""


@dataclass(frozen=True)
class ScanSummary:
    """What :meth:`GenomeScan.write` did.

    Attributes
    ----------
    path : pathlib.Path
        The table written.
    n_snps : int
        SNPs in the scan (rows of the finished table).
    resumed_from : int
        SNPs already in the file from an earlier run (0 for a new scan).
    failed, unconverged : int
        SNPs written by this run whose fit failed (NaN statistics, see ``note``) or
        did not converge.
    """

    path: Path
    n_snps: int
    resumed_from: int
    failed: int
    unconverged: int


@dataclass(frozen=True)
class _Part:
    """SNPs tested against one null model: all of them, or one chromosome (LOCO)."""

    label: Any
    #: Positions of the part's SNPs in the input, increasing.
    positions: NDArray[np.intp]
    #: Their genotypes (every row of ``data`` for LOCO; the null model picks its own).
    genotypes: Genotypes


class GenomeScan:
    """A genome scan, ready to test SNPs: the lab's per-SNP fits with GEMMA's tests.

    Building a scan checks every input, fits the null model (the formula without its
    ``snp`` term) by ML and REML, and eigendecomposes the kinship, once. The SNPs are
    then tested chunk by chunk, in input order, from any start: :meth:`tables` yields
    each chunk's table, :meth:`run` returns the whole table, and :meth:`write` writes
    it to a file, which an interrupted scan can resume. Chunks are tested in this
    process or, given a Dask client, on its workers, with the same results.

    Parameters
    ----------
    formula : str
        A formula with a term ``snp`` standing for each genotype column in turn,
        e.g. ``"y ~ 1 + sex + snp"``; the other terms are covariates. Names in the
        formula are looked up in ``data``, then in the caller's namespace.
    data : pandas.DataFrame
        Phenotype and covariates, one row per individual. Rows with missing values
        are left out (with their rows and columns of the kinship).
    genotypes : DataFrame, ndarray, dask array or PlinkGenotypes
        Individuals x SNPs, allele counts or dosages in [0, 2], NaN for missing
        (imputed by the SNP's mean). A DataFrame (by index) and PLINK genotypes from
        :func:`emlmm.read_plink` (by sample id) are matched to ``data``'s index; an
        array's rows are taken in ``data``'s row order. Read a chunk at a time
        (:class:`emlmm.genotypes.Genotypes`). SNP ids may repeat: each SNP still gets
        its own row, and a warning names the repeated ids.
    kinship : array_like or DataFrame or None
        The kinship, as for :class:`emlmm.EMLMM`; ``None`` with ``loco=True``.
    method : {"exact", "fixed"}
        ``"exact"``: for every SNP the variance components are re-estimated by ML
        (as the lab does) for the likelihood-ratio test, and by REML for the Wald
        test, as GEMMA's ``-lmm 4``. ``"fixed"``: the variance components stay at
        the null model's REML estimates (EMMAX, P3D), which is faster.
    chunk_size : int, optional
        SNPs per chunk; memory grows with ``n * chunk_size``. By default
        :func:`emlmm.genotypes.default_chunk_size`.
    maxiter, tol : int, float
        Iteration limit and tolerance per SNP fit (and of the null fit). ``tol``
        bounds the log-likelihood gain still available at convergence, as in
        :meth:`emlmm.EMLMM.fit`.
    loco : bool
        Leave one chromosome out: the SNPs of each chromosome are tested against a
        null model whose kinship (GEMMA's centered kinship, with its default SNP
        filters, over all rows of ``data``) is built from the other chromosomes,
        so a SNP never competes with itself in the random effect. Needs chromosome
        labels: PLINK's, or ``chromosomes``. The null models are fitted one
        chromosome at a time, as the scan reaches them, so one eigendecomposition
        is held at a time.
    chromosomes : array_like, optional
        One chromosome label per SNP, for genotypes without them (reported as the
        ``chr`` column).
    eval_env : int or dict
        The namespace the formula's names are looked up in besides ``data``: 0 (the
        default) is the caller's, 1 its caller's, and so on; or the names themselves,
        as for statsmodels' ``from_formula``. It is captured once, when the scan is
        built.

    Attributes
    ----------
    snps : pandas.DataFrame
        The SNPs, in input order, indexed by id, with ``chr`` and ``pos`` when known.
    n_snps : int
        Their number.
    chunk_size : int
        SNPs per chunk.
    null_model : EMLMM or None
        The null model (``None`` with ``loco=True``: there is one per chromosome).

    See Also
    --------
    gwas : Build a scan and run it, in one call.

    Examples
    --------
    >>> from emlmm import GenomeScan
    >>> from emlmm.datasets import load_lab
    >>> lab = load_lab()
    >>> scan = GenomeScan("y ~ 1 + snp", lab.phenotype.to_frame(),
    ...                   lab.genotypes.iloc[:, :60], lab.kinship, chunk_size=25)
    >>> [len(table) for table in scan.tables()]
    [25, 25, 10]
    >>> later = next(scan.tables(start=50))
    >>> later.index[0], len(later)
    ('snp0051', 10)
    >>> table = scan.run()
    >>> table.shape, bool(table.p_lrt.between(0, 1).all())
    ((60, 14), True)

    Writing to a file, which ``resume=True`` continues after an interruption:

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> summary = scan.write(folder / "scan.tsv")
    >>> summary.n_snps, summary.failed
    (60, 0)
    >>> sorted(path.name for path in folder.iterdir())
    ['scan.tsv', 'scan.tsv.scan.json']
    >>> scan.write(folder / "scan.tsv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileExistsError: ... exists; pass overwrite=True (--overwrite) to replace it, or
    resume=True (--resume) to continue an interrupted run of the same scan
    """

    def __init__(
        self,
        formula: str,
        data: pd.DataFrame,
        genotypes: pd.DataFrame | ArrayLike | GenotypeSource | Genotypes,
        kinship: ArrayLike | pd.DataFrame | None,
        method: ScanMethod = "exact",
        *,
        chunk_size: int | None = None,
        maxiter: int = 10_000,
        tol: float = _em.DEFAULT_TOLERANCE,
        loco: bool = False,
        chromosomes: ArrayLike | None = None,
        eval_env: int | dict[str, Any] | patsy.EvalEnvironment = 0,
    ) -> None:
        check_formula_inputs(formula, data)
        check_choice("method", method, ("exact", "fixed"))
        self.formula = formula
        self.method: ScanMethod = method
        self.maxiter = check_count("maxiter", maxiter)
        self.tol = check_positive("tol", tol)
        self.loco = check_flag("loco", loco)
        if chunk_size is not None:
            chunk_size = check_count("chunk_size", chunk_size)
        if isinstance(eval_env, (int, np.integer)) and not isinstance(eval_env, bool):
            eval_env = capture_namespace(check_count("eval_env", eval_env, 0))
        self._eval_env = eval_env
        self._data = data
        self._null_formula = _null_formula(formula)
        source = Genotypes.from_any(genotypes, chromosomes)
        self.snps: pd.DataFrame = source.snps
        self._warn_duplicates(source)
        self.null_model: EMLMM | None
        if self.loco:
            if kinship is not None:
                raise ValueError(
                    "with loco=True the kinships are built from the genotypes, one per "
                    "left-out chromosome; pass kinship=None"
                )
            if "chr" not in source.snps.columns:
                raise ValueError(
                    "loco=True needs chromosome labels: use PLINK genotypes "
                    "(emlmm.read_plink) or pass chromosomes=[...], one per SNP"
                )
            self.null_model = None
            everyone = source.for_individuals(data.index, data.index)
            chromosome = source.snps["chr"].to_numpy()
            self._parts = [
                _Part(label, positions, everyone.select(positions))
                for label in pd.unique(chromosome)
                for positions in [np.nonzero(chromosome == label)[0]]
            ]
            self._loco_genotypes = everyone
            n_rows = len(data.index)
        else:
            self.null_model = self._null_model(kinship)
            used = pd.Index(self.null_model.data.row_labels)
            aligned = source.for_individuals(used, data.index)
            self._parts = [_Part(None, np.arange(source.n_snps), aligned)]
            n_rows = len(used)
        self.chunk_size = chunk_size or default_chunk_size(n_rows)
        self._order = np.concatenate([np.zeros(0, np.intp)] + [p.positions for p in self._parts])
        self._current: tuple[int, _Scanner, Genotypes] | None = None
        self._first_null: EMLMM | None = None  # LOCO: the first chromosome's null model
        if not self.loco:
            self._scanner(0)  # fit the null model now: its errors belong to building

    # ------------------------------------------------------------- null models

    @property
    def n_snps(self) -> int:
        """Number of SNPs."""
        return len(self.snps)

    def _null_model(self, kinship: Any) -> EMLMM:
        return EMLMM.from_formula(
            self._null_formula, data=self._data, kinship=kinship, eval_env=self._eval_env
        )

    def _scanner(self, number: int) -> tuple[_Scanner, Genotypes]:
        """Part ``number``'s scanner and genotypes (for the individuals its null model
        analyses); LOCO keeps only the latest ones."""
        if self._current is not None and self._current[0] == number:
            return self._current[1], self._current[2]
        part = self._parts[number]
        if self.loco:
            model = self._null_model(self._loco_kinship(part))
            used = pd.Index(model.data.row_labels)
            genotypes = part.genotypes.for_individuals(used, self._data.index)
            if self._first_null is None:
                self._first_null = model
        else:
            assert self.null_model is not None
            model, genotypes = self.null_model, part.genotypes
        scanner = _Scanner(model.fit_for_scan(self.maxiter, self.tol), self.method,
                           self.maxiter, self.tol)  # fmt: skip
        self._current = (number, scanner, genotypes)
        return scanner, genotypes

    @cached_property
    def _kinship_sums(self) -> tuple[NDArray[np.float64], int]:
        """LOCO: the kinship's sum of products over all SNPs, and the SNPs it used."""
        genotypes = self._loco_genotypes
        matrix, counts = kinship_sum(genotypes.n_rows, genotypes.chunks())
        return matrix, counts.used

    def _loco_kinship(self, part: _Part) -> pd.DataFrame:
        """The centered kinship of every chromosome but the part's."""
        total, used = self._kinship_sums
        share, counts = kinship_sum(part.genotypes.n_rows, part.genotypes.chunks())
        if used == counts.used:
            raise ValueError(
                f"no SNP outside chromosome {part.label} passes the kinship's filters, so "
                "its leave-one-out kinship cannot be built"
            )
        labels = self._data.index
        return pd.DataFrame((total - share) / (used - counts.used), index=labels,
                            columns=labels)  # fmt: skip

    # ------------------------------------------------------------------ chunks

    @property
    def in_input_order(self) -> bool:
        """Whether chunks come in input order (not so only for LOCO scans of genotypes
        whose chromosomes are interleaved: their chunks come chromosome by chromosome)."""
        return bool(np.all(self._order == np.arange(self.n_snps)))

    def tables(
        self,
        start: int = 0,
        *,
        client: Any = None,
        progress: bool | ProgressCallback = False,
    ) -> Iterator[pd.DataFrame]:
        """Each chunk's result table, for the SNPs from position ``start`` on.

        Parameters
        ----------
        start : int
            The first SNP to test (0-based; chunks are counted from there).
        client : dask.distributed.Client, optional
            Test the chunks on the workers of a Dask cluster. The null model and
            eigendecomposition are sent to each worker once; chunks are read here
            and sent out a few at a time, so memory stays bounded. The results are
            those of the in-process scan.
        progress : bool or callable
            ``True`` draws a progress bar on standard error; a callable is called as
            ``progress(done, total)`` after each chunk.

        Yields
        ------
        pandas.DataFrame
            A chunk's rows, as described in :func:`gwas`.
        """
        start = check_count("start", start, 0)
        report = _progress_bar if progress is True else (progress or None)
        chunks = self._chunks(start)
        results = (
            ((first, stop, scanner.scan(block)) for scanner, first, stop, block in chunks)
            if client is None
            else _distributed(client, chunks)
        )
        for first, stop, table in results:
            yield self._labelled(first, stop, table)
            if report is not None:
                report(stop, self.n_snps)

    def _chunks(self, start: int) -> Iterator[tuple[_Scanner, int, int, NDArray[np.float64]]]:
        """``(scanner, first, stop, block)`` per chunk; positions count in scan order."""
        offset = 0
        for number, part in enumerate(self._parts):
            size = len(part.positions)
            if start < offset + size:
                scanner, genotypes = self._scanner(number)
                for first, stop, block in genotypes.chunks(
                    self.chunk_size, max(start - offset, 0)
                ):
                    yield scanner, offset + first, offset + stop, block
            offset += size

    def _labelled(self, first: int, stop: int, table: pd.DataFrame) -> pd.DataFrame:
        """A chunk's statistics indexed by SNP id, with chr and pos when known."""
        snps = self.snps.iloc[self._order[first:stop]]
        known = [column for column in ("chr", "pos") if column in snps.columns]
        table.index = snps.index
        return pd.concat([snps[known], table], axis=1)

    def run(
        self, *, client: Any = None, progress: bool | ProgressCallback = False
    ) -> pd.DataFrame:
        """Test every SNP: one row per input SNP, in input order.

        A warning gives the count of SNPs whose fit failed or did not converge.
        ``client`` and ``progress`` are as for :meth:`tables`.
        """
        tables = list(self.tables(client=client, progress=progress))
        if not tables:
            known = [column for column in ("chr", "pos") if column in self.snps.columns]
            return pd.DataFrame(columns=[*known, *COLUMNS], index=self.snps.index)
        result = pd.concat(tables)
        if not self.in_input_order:
            result = result.iloc[np.argsort(self._order, kind="stable")]
        warn_failures(result, stacklevel=3)
        return result

    # ------------------------------------------------------------------- files

    @cached_property
    def identity(self) -> dict[str, Any]:
        """What makes this scan this scan: recorded beside a written table, so that
        only the same scan resumes it.

        The emlmm version, formula, method and options, content hashes (SHA-256) of
        the analysed sample ids, phenotype, covariates and kinship, and of the SNP list
        (ids, chromosomes, positions), with its length.
        """
        if self.loco:
            self._scanner(0)
            assert self._first_null is not None
            model = self._first_null
            kinship = "leave one chromosome out: centered, from the genotypes"
        else:
            assert self.null_model is not None
            model = self.null_model
            kinship = _digest(model.kinship)
        from emlmm import __version__

        return {
            "format": IDENTITY_FORMAT,
            "emlmm": __version__,
            "formula": self.formula,
            "method": self.method,
            "options": {"maxiter": self.maxiter, "tol": self.tol, "loco": self.loco},
            "table": {"columns": self.header, "float_format": FLOAT_FORMAT},
            "samples": {"count": int(model.nobs), "ids": _digest(model.data.row_labels)},
            "phenotype": _digest(model.endog),
            "covariates": _digest(model.exog, model.exog_names),
            "kinship": kinship,
            "snps": {"count": self.n_snps, "list": _digest(self.snps.index, *self.snps.T.values)},
        }

    @property
    def header(self) -> list[str]:
        """The written table's columns, the SNP id first."""
        known = [column for column in ("chr", "pos") if column in self.snps.columns]
        return ["snp", *known, *COLUMNS]

    def write(
        self,
        path: str | os.PathLike[str] | ScanOutput,
        *,
        overwrite: bool = False,
        resume: bool = False,
        client: Any = None,
        progress: bool | ProgressCallback = False,
    ) -> ScanSummary:
        """Test every SNP and write the table to ``path``, a chunk at a time.

        The table is tab-separated, one row per SNP in input order (columns as
        :func:`gwas` returns them, the SNP id first). Each chunk is flushed as soon
        as it is done, so an interrupted scan keeps what it finished, and the scan's
        identity (:attr:`identity`) is written beside it to ``path + ".scan.json"``.

        Parameters
        ----------
        path : str, path or ScanOutput
            The table. An existing file is refused unless ``overwrite`` or
            ``resume``; a symbolic link is refused; while a scan writes a table,
            another scan refuses it at once.
        overwrite : bool
            Replace an existing table.
        resume : bool
            Continue an interrupted run: the table must be an earlier, partial run of
            this very scan (same identity, its SNPs the first ones, in order). It is
            checked before anything is changed; a partly written last line is then
            cut off and the remaining SNPs appended, so the finished file is the one
            an uninterrupted run writes. Without a table, the scan starts afresh.
        client, progress
            As for :meth:`tables`.

        Returns
        -------
        ScanSummary
            A warning is also given for SNPs written whose fit failed or did not
            converge.

        Raises
        ------
        FileExistsError
            If the table exists and neither ``overwrite`` nor ``resume`` is given.
        ScanFileError
            If the table is a link, is being written by another scan, or (to resume)
            is not an earlier run of this scan.
        """
        if isinstance(path, ScanOutput):
            return self._write(path, client, progress)
        with ScanOutput(path, overwrite=overwrite, resume=resume) as output:
            return self._write(output, client, progress)

    def _write(
        self, output: ScanOutput, client: Any, progress: bool | ProgressCallback
    ) -> ScanSummary:
        if not self.in_input_order:
            raise ValueError(
                "a LOCO scan of genotypes whose chromosomes are interleaved cannot be written "
                "in input order; sort the SNPs by chromosome (plink --make-bed does), or use "
                "GenomeScan.run()"
            )
        done = output.begin(self.identity, self.header, list(self.snps.index))
        failed = unconverged = 0
        for table in self.tables(start=done, client=client, progress=progress):
            output.append(table)
            chunk_failed, chunk_unconverged = count_failures(table)
            failed, unconverged = failed + chunk_failed, unconverged + chunk_unconverged
        summary = ScanSummary(output.path, self.n_snps, done, failed, unconverged)
        _warn_counts(failed, unconverged, self.n_snps - done, "", stacklevel=4)
        return summary

    def _warn_duplicates(self, genotypes: Genotypes) -> None:
        repeated = genotypes.duplicated_ids()
        if len(repeated):
            warnings.warn(
                f"{len(repeated)} SNP ids appear more than once ({_preview(list(repeated))}); "
                "each SNP is tested and reported in a row of its own, in input order",
                UserWarning,
                stacklevel=3,
            )


def _distributed(
    client: Any, chunks: Iterator[tuple[_Scanner, int, int, NDArray[np.float64]]]
) -> Iterator[tuple[int, int, pd.DataFrame]]:
    """Chunks tested on a Dask client's workers, a few in flight, in order."""
    in_flight = 2 * max(len(client.scheduler_info().get("workers", {})), 1)
    scattered: tuple[_Scanner, Any] | None = None
    pending: list[tuple[int, int, Any]] = []
    for scanner, first, stop, block in chunks:
        if scattered is None or scattered[0] is not scanner:
            scattered = (scanner, client.scatter(scanner, broadcast=True))
        pending.append((first, stop, client.submit(_scan_block, scattered[1], block, pure=False)))
        while len(pending) >= in_flight:
            first, stop, future = pending.pop(0)
            yield first, stop, future.result()
    for first, stop, future in pending:
        yield first, stop, future.result()


def _digest(*parts: Any) -> str:
    """SHA-256 of arrays and label lists, in a form independent of memory layout."""
    digest = hashlib.sha256()
    for part in parts:
        values = np.asarray(part)
        if values.dtype.kind in "biuf":
            digest.update(np.ascontiguousarray(values, dtype=np.float64).tobytes())
        else:
            digest.update("\x1f".join(map(str, values.ravel())).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()


class ScanOutput:
    """A scan's table file, opened safely: locked, never through a link, never
    overwritten or resumed by another scan.

    Opening (the constructor) refuses an existing table unless ``overwrite`` or
    ``resume`` is given, refuses symbolic links, and takes an exclusive lock on the
    table, so a second scan on the same file refuses at once; the lock goes with the
    process, however it ends. :meth:`begin` then records the scan's identity and
    header (or, to resume, checks them, and only then cuts off a partly written last
    line), and :meth:`append` adds chunks. Used as a context manager; a table this
    object created but never began is removed on exit.

    Parameters
    ----------
    path : str or path
        The table. Its identity record is ``path + ".scan.json"``.
    overwrite, resume : bool
        As for :meth:`GenomeScan.write`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from emlmm import ScanOutput
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "scan.tsv"
    >>> with ScanOutput(path) as output:
    ...     ScanOutput(path, overwrite=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    emlmm.gwas.ScanFileError: another emlmm scan is writing .../scan.tsv; wait for it to
    finish, or choose another output
    """

    def __init__(
        self, path: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.identity_path = self.path.with_name(self.path.name + ".scan.json")
        overwrite, resume = check_flag("overwrite", overwrite), check_flag("resume", resume)
        if overwrite and resume:
            raise ValueError("overwrite and resume exclude each other: choose one")
        self.resume = resume
        for target in (self.path, self.identity_path):
            if target.is_symlink():
                raise ScanFileError(
                    f"{target} is a symbolic link; emlmm does not write through links: name "
                    "the file itself, or another output"
                )
        exists = self.path.exists()
        if exists and not self.path.is_file():
            raise ScanFileError(f"{self.path} exists and is not a regular file")
        if (exists or self.identity_path.exists()) and not (overwrite or resume):
            found = self.path if exists else self.identity_path
            raise FileExistsError(
                f"{found} exists; pass overwrite=True (--overwrite) to replace it, or "
                "resume=True (--resume) to continue an interrupted run of the same scan"
            )
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        descriptor = os.open(self.path, flags, 0o666)
        try:
            _lock(descriptor, self.path)
        except BaseException:
            os.close(descriptor)
            raise
        self._created = not exists
        self._begun = False
        self._file: IO[str] = open(descriptor, "r+", encoding="utf-8", newline="")

    def begin(self, identity: dict[str, Any], header: list[str], snp_ids: list[str]) -> int:
        """Start (or, resuming, check and continue) the table; SNPs already done.

        Nothing is changed before the existing table and its identity are found to
        be an earlier run of this scan.
        """
        self._begun = True
        self._file.seek(0)
        text = self._file.read() if self.resume else ""
        if self.resume and text:
            done, keep = self._check_earlier_run(text, identity, header, snp_ids)
            self._file.seek(0)
            self._file.truncate(len(text[:keep].encode("utf-8")))
            self._file.seek(0, os.SEEK_END)
            return done
        # A new table: empty it first, so that a run killed before its identity is
        # written leaves an empty table (which --resume starts afresh), never an old
        # table beside a new identity.
        self._file.truncate(0)
        self._file.flush()
        _write_atomically(self.identity_path, json.dumps(identity, indent=1) + "\n")
        self._file.write("\t".join(header) + "\n")
        self._file.flush()
        return 0

    def _check_earlier_run(
        self, text: str, identity: dict[str, Any], header: list[str], snp_ids: list[str]
    ) -> tuple[int, int]:
        """Rows of an earlier run of this scan in ``text``, and the length to keep."""
        refuse = f"cannot resume {self.path}"
        try:
            recorded = json.loads(self.identity_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ScanFileError(
                f"{refuse}: it has no identity record {self.identity_path.name}, so it is not "
                "a scan emlmm wrote (or its record was removed); remove it or choose another "
                "output"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScanFileError(
                f"{refuse}: its identity record {self.identity_path} is unreadable ({exc})"
            ) from None
        differences = _differences(recorded, identity)
        if differences:
            raise ScanFileError(
                f"{refuse}: it was written by another scan ({'; '.join(differences[:4])}); "
                "remove it, choose another output, or pass --overwrite"
            )
        complete = text[: text.rfind("\n") + 1]
        lines = complete.splitlines()
        found = [line.split("\t", 1)[0] for line in lines[1:]]
        if not lines or lines[0].split("\t") != header or found != snp_ids[: len(found)]:
            raise ScanFileError(
                f"{refuse}: its rows are not this scan's first SNPs in order (was it "
                "edited?); remove it or pass --overwrite"
            )
        return len(found), len(complete)

    def append(self, table: pd.DataFrame) -> None:
        """Write a chunk's rows and flush them to the operating system."""
        table.to_csv(self._file, sep="\t", header=False, float_format=FLOAT_FORMAT)
        self._file.flush()

    def close(self) -> None:
        """Release the lock (and remove a table created here but never begun)."""
        if self._file.closed:
            return
        if self._created and not self._begun:
            self.path.unlink(missing_ok=True)
        self._file.close()

    def __enter__(self) -> ScanOutput:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _lock(descriptor: int, path: Path) -> None:
    """An exclusive lock on an open file, refused at once if another process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX: no locking
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ScanFileError(
            f"another emlmm scan is writing {path}; wait for it to finish, or choose "
            "another output"
        ) from None


def _write_atomically(path: Path, text: str) -> None:
    """Write a file whole or not at all (a temporary file, then renamed over it)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with open(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _differences(recorded: Any, current: dict[str, Any], prefix: str = "") -> list[str]:
    """Where two identity records differ, as ``key: recorded -> current``."""
    if not isinstance(recorded, dict):
        return [f"{prefix or 'record'}: not a scan identity"]
    found: list[str] = []
    for key in current:
        name = f"{prefix}{key}"
        old, new = recorded.get(key), current[key]
        if isinstance(new, dict):
            found.extend(_differences(old if old is not None else {}, new, f"{name}."))
        elif old != new:
            shown = [value[:12] + "..." if isinstance(value, str) and len(value) == 64 else value
                     for value in (old, new)]  # fmt: skip
            found.append(f"{name}: {shown[0]!r} there, {shown[1]!r} here")
    return found


def gwas(
    formula: str,
    data: pd.DataFrame,
    genotypes: pd.DataFrame | ArrayLike | GenotypeSource,
    kinship: ArrayLike | pd.DataFrame | None,
    method: ScanMethod = "exact",
    *,
    chunk_size: int | None = None,
    maxiter: int = 10_000,
    tol: float = _em.DEFAULT_TOLERANCE,
    progress: bool | ProgressCallback = False,
    client: Any = None,
    loco: bool = False,
    chromosomes: ArrayLike | None = None,
) -> pd.DataFrame:
    """Scan SNPs one at a time, as the lab does, with GEMMA's three tests.

    A shortcut for ``GenomeScan(...).run(...)``: see :class:`GenomeScan` for the
    parameters, for chunk-by-chunk results and for writing to a file.

    Parameters
    ----------
    formula, data, genotypes, kinship, method, chunk_size, maxiter, tol, loco, chromosomes
        As for :class:`GenomeScan`.
    progress, client
        As for :meth:`GenomeScan.tables`.

    Returns
    -------
    pandas.DataFrame
        One row per input SNP, in input order, indexed by SNP id, with ``chr`` and
        ``pos`` when known, then ``af`` (frequency of the counted allele),
        ``n_miss`` (missing genotypes, imputed by the SNP's mean), ``beta`` and
        ``se`` (REML, as GEMMA reports them), ``p_wald`` (F(1, n - p) on the REML
        Wald statistic), ``lrt`` and ``p_lrt`` (ML likelihood ratio against the
        null, chi2(1)), ``p_score`` (GEMMA's score test at the null ML estimates),
        ``llf``, ``sigma2_a`` and ``sigma2_e`` (the SNP's ML fit), ``n_iter``
        (iterations of the SNP's ML fit: Newton steps on sigma2_a / sigma2_e, plus
        EM iterations in the rare case EM had to finish it), ``converged`` (ML and
        REML fits), and ``note`` saying why a SNP's statistics are NaN (all
        missing, monomorphic, collinear with the covariates, or ``failed: ...``
        when its fit broke down numerically; a warning counts those).

    Examples
    --------
    >>> from emlmm import gwas
    >>> from emlmm.datasets import load_lab
    >>> lab = load_lab()
    >>> table = gwas("y ~ 1 + snp", lab.phenotype.to_frame(), lab.genotypes.iloc[:, :50],
    ...              lab.kinship)
    >>> table.shape
    (50, 14)
    >>> bool((table.p_lrt.between(0, 1)).all())
    True
    """
    scan = GenomeScan(
        formula,
        data,
        genotypes,
        kinship,
        method,
        chunk_size=chunk_size,
        maxiter=maxiter,
        tol=tol,
        loco=loco,
        chromosomes=chromosomes,
        eval_env=capture_namespace(),
    )
    return scan.run(client=client, progress=progress)


def count_failures(table: pd.DataFrame) -> tuple[int, int]:
    """SNPs of a result table whose fit failed, and those whose fit did not converge."""
    failed = int(table.note.str.startswith("failed").sum())
    unconverged = int((~table.converged & (table.note == "")).sum())
    return failed, unconverged


def warn_failures(table: pd.DataFrame, stacklevel: int = 2) -> None:
    """A warning with the count of SNPs whose statistics could not be computed."""
    failed, unconverged = count_failures(table)
    first = table.note[table.note.str.startswith("failed")].iloc[0] if failed else ""
    _warn_counts(failed, unconverged, len(table), f"; the first: {first}", stacklevel + 1)


def _warn_counts(failed: int, unconverged: int, total: int, first: str, stacklevel: int) -> None:
    if failed:
        warnings.warn(
            f"{failed} of {total} SNPs failed and have NaN statistics (see the note "
            f"column{first})",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )
    if unconverged:
        warnings.warn(
            f"EM did not converge for {unconverged} SNPs (see the converged column); "
            "raise maxiter",
            ConvergenceWarning,
            stacklevel=stacklevel,
        )


def _null_formula(formula: str) -> str:
    """The formula without its ``snp`` term, after checking that term is there alone."""
    description = patsy.ModelDesc.from_formula(formula)
    involving = [t for t in description.rhs_termlist if "snp" in t.name().split(":")]
    if not involving:
        raise ValueError(
            f"the formula {formula!r} has no 'snp' term; write e.g. 'y ~ 1 + covariate + snp', "
            "where snp stands for each genotype column in turn"
        )
    if any(term.name() != "snp" for term in involving):
        raise ValueError(
            "the 'snp' term must appear on its own (interactions with snp are not supported): "
            f"found {', '.join(term.name() for term in involving)}"
        )
    rest = [t for t in description.rhs_termlist if t.name() != "snp"]
    return patsy.ModelDesc(description.lhs_termlist, rest).describe()


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} SNPs")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


class _Scanner:
    """Per-chunk statistics given the null model, fitted once.

    Each SNP's ML and REML fits are Newton iterations on the variance ratio
    (:mod:`emlmm._scan`), warm-started from the null model's EM estimates; a SNP
    Newton leaves unconverged (a boundary with sigma2_e = 0, say) is fitted by
    batched EM (:func:`emlmm._em.fit_em`) instead.
    """

    #: SNPs solved together: their ``k x n`` work arrays then stay in cache.
    BLOCK_ELEMENTS = 1 << 19

    def __init__(self, null: NullFit, method: ScanMethod, maxiter: int, tol: float) -> None:
        self.method, self.maxiter, self.tol = method, maxiter, tol
        # Everything below is in the units of the null model's numerics: scaled, and
        # reduced to the kinship's column space where the covariates absorb its null
        # space. Statistics are mapped back to the user's units in _statistics.
        self.fit_data = null.data
        self.eigenvectors = null.eigenvectors
        self.null_data = null.data.rotated
        self.null_ml = null.ml
        self.null_llf = float(_em.log_likelihood(self.null_data, self.null_ml))
        self.null_reml = null.reml
        self.score_test = _ScoreTest.at(self.null_data, self.null_ml)
        reml = self.null_reml
        self.null_reml_variances = _em.marginal_variances(
            self.null_data, reml.sigma2_a, reml.sigma2_e
        )
        null_fixed = _em.Estimate.of(
            _em.gls(self.null_data, self.null_reml_variances)[0], reml.sigma2_a, reml.sigma2_e
        )
        self.null_fixed_llf = float(_em.log_likelihood(self.null_data, null_fixed))

    def scan(self, block: NDArray[np.float64]) -> pd.DataFrame:
        n_miss = np.isnan(block).sum(axis=0)
        observed = block.shape[0] - n_miss
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.nansum(block, axis=0) / observed
        table = pd.DataFrame(np.nan, index=range(block.shape[1]), columns=COLUMNS)
        table["af"], table["n_miss"] = means / 2.0, n_miss
        table["n_iter"], table["converged"], table["note"] = 0, False, ""
        imputed = np.where(np.isnan(block), np.where(observed > 0, means, 0.0), block)
        # (U'G)', one row per SNP: per-SNP sums then run along contiguous memory.
        rotated = imputed.T @ self.eigenvectors
        notes = self._notes(block, observed, rotated)
        table["note"] = notes
        good = np.nonzero(notes == "")[0]
        step = max(1, self.BLOCK_ELEMENTS // max(rotated.shape[1], 1))
        groups: list[tuple[NDArray[np.intp], dict[str, NDArray[Any]]]] = []
        for first in range(0, good.size, step):
            rows = good[first : first + step]
            try:
                groups.append((rows, self._statistics(rotated[rows])))
            except NUMERICAL_ERRORS:
                # Something failed for the block as a whole: redo it SNP by SNP, so
                # that a failure stays in the row of the SNP that caused it.
                for j in rows:
                    try:
                        groups.append((np.array([j]), self._statistics(rotated[[j]])))
                    except NUMERICAL_ERRORS as exc:
                        table.loc[j, "note"] = f"failed: {type(exc).__name__}: {exc}"
        columns: dict[str, NDArray[Any]] = {}
        for rows, statistics in groups:
            for column, values in statistics.items():
                if column not in columns:
                    columns[column] = table[column].to_numpy(copy=True)
                columns[column][rows] = values
        for column, values in columns.items():
            table[column] = values
        return table.astype({"n_miss": int, "n_iter": int, "converged": bool})

    def _notes(
        self, block: NDArray[np.float64], observed: NDArray[np.intp], rotated: NDArray[np.float64]
    ) -> NDArray[np.str_]:
        with np.errstate(invalid="ignore"):
            spread = np.nanmax(block, axis=0, initial=-np.inf) - np.nanmin(
                block, axis=0, initial=np.inf
            )
        collinear = self._collinear(rotated)
        return np.select(
            [observed == 0, spread == 0, collinear],
            ["all genotypes missing", "monomorphic", "collinear with the covariates"],
            "",
        )

    def _collinear(self, rotated: NDArray[np.float64]) -> NDArray[np.bool_]:
        """Which SNPs (rows of ``rotated``) lie in the covariates' column space.

        The residual's squared norm is first taken as a difference of squares,
        cheaply; only SNPs where that is too small to trust get the residual itself.
        """
        covariates = self.null_data.exog
        coefficients = rotated @ self.null_data.exog_pinv.T
        sizes = np.einsum("kn,kn->k", rotated, rotated)
        fitted = np.einsum("ki,ij,kj->k", coefficients, covariates.T @ covariates, coefficients)
        collinear = np.zeros(rotated.shape[0], dtype=bool)
        close = np.nonzero(sizes - fitted <= 1e-6 * sizes)[0]
        if close.size:
            resid = rotated[close] - coefficients[close] @ covariates.T
            collinear[close] = np.linalg.norm(resid, axis=1) <= 1e-8 * np.maximum(
                np.sqrt(sizes[close]), 1e-300
            )
        return collinear

    def _statistics(self, rotated: NDArray[np.float64]) -> dict[str, NDArray[Any]]:
        """Statistics for SNPs given as rows of ``rotated`` (``k x n``, rotated)."""
        null = self.null_data
        batch = _scan.SnpBatch(null.exog, null.endog, rotated, null.eigenvalues)
        k, n, p = rotated.shape[0], batch.nobs, batch.k_exog
        result: dict[str, NDArray[Any]] = {"p_score": self.score_test.pvalues(rotated)}
        if self.method == "fixed":
            sigma2_a, sigma2_e = float(self.null_reml.sigma2_a), float(self.null_reml.sigma2_e)
            batch, ratio = _scan.parametrise(batch, sigma2_a, sigma2_e)
            fit = _scan.profile(batch, np.full(k, ratio), reml=True, derivatives=False)
            # V = scale H, with the scale sigma2_e (sigma2_a for the inverse ratio).
            scale = sigma2_a if batch.inverse else sigma2_e
            beta, cov_beta = fit.beta, scale * fit.cov_unscaled
            # r' V^-1 r = rss / scale, as rss weights by H^-1 = scale V^-1.
            llf = -0.5 * (
                n * _em.LOG_2PI + np.log(self.null_reml_variances).sum() + fit.rss / scale
            )
            lrt = 2.0 * (llf - self.null_fixed_llf)
            result.update(
                sigma2_a=np.full(k, sigma2_a),
                sigma2_e=np.full(k, sigma2_e),
                n_iter=np.zeros(k, int),
                converged=np.ones(k, bool),
            )
        else:
            ml = self._fit(batch, self.null_ml, reml=False)
            reml = self._fit(batch, self.null_reml, reml=True)
            llf = ml.llf
            lrt = 2.0 * (llf - self.null_llf)
            beta, cov_beta = reml.beta, reml.cov_beta
            result.update(
                sigma2_a=ml.sigma2_a,
                sigma2_e=ml.sigma2_e,
                n_iter=ml.n_iter,
                converged=ml.converged & reml.converged,
            )
        lrt = np.maximum(lrt, 0.0)
        se = np.sqrt(cov_beta[:, -1, -1])
        wald = (beta[:, -1] / se) ** 2
        fit_data = self.fit_data
        result.update(
            beta=fit_data.endog_scale * beta[:, -1],
            se=fit_data.endog_scale * se,
            p_wald=stats.f.sf(wald, 1, n - p),
            llf=llf + fit_data.llf_offset(reml=False),
            lrt=lrt,
            p_lrt=stats.chi2.sf(lrt, 1),
            sigma2_a=fit_data.variances_to_user(result["sigma2_a"]),
            sigma2_e=fit_data.variances_to_user(result["sigma2_e"]),
        )
        return result

    def _fit(self, batch: _scan.SnpBatch, null: _em.Estimate, reml: bool) -> _SnpFits:
        """Every SNP's ML (REML) fit: Newton on the ratio (with GEMMA's grid as a check
        for a better maximum), EM where Newton gave up."""
        batch, start = _scan.parametrise(batch, float(null.sigma2_a), float(null.sigma2_e))
        k = batch.snps.shape[0]
        newton = _scan.maximise_globally(
            batch, start, reml, self.tol, maxiter=min(self.maxiter, _scan.MAX_NEWTON_STEPS)
        )
        sigma2_a, sigma2_e = _scan.variances(batch, newton.fit, reml)
        fits = _SnpFits(
            newton.fit.beta,
            _scan.profiled_scale(batch, newton.fit, reml)[:, None, None] * newton.fit.cov_unscaled,
            sigma2_a,
            sigma2_e,
            np.full(k, np.nan) if reml else _scan.criterion(batch, newton.fit, reml),
            newton.n_iter,
            newton.converged,
        )
        left = np.nonzero(~newton.converged)[0]
        budget = self.maxiter - _scan.MAX_NEWTON_STEPS
        if left.size == 0 or budget <= 0:
            return fits
        em = self._fit_em(batch.take(left), null, reml, budget)
        # EM's iterations come on top of the Newton steps these SNPs already took.
        em = replace(em, n_iter=em.n_iter + fits.n_iter[left])
        return _em.replace_rows(fits, left, em)

    def _fit_em(
        self, batch: _scan.SnpBatch, null: _em.Estimate, reml: bool, maxiter: int
    ) -> _SnpFits:
        """Batched EM from the null model's estimates."""
        k, n = batch.snps.shape
        exog = self.null_data.exog
        designs = np.concatenate(
            [np.broadcast_to(exog, (k, n, exog.shape[1])), batch.snps[:, :, None]], axis=2
        )
        data = _em.RotatedData.build(batch.endog, designs, batch.eigenvalues)
        variances = _em.marginal_variances(data, null.sigma2_a, null.sigma2_e)
        start = _em.Estimate(
            _em.gls(data, np.broadcast_to(variances, (k, n)))[0],
            np.full(k, null.sigma2_a),
            np.full(k, null.sigma2_e),
        )
        trace = _em.fit_em(data, start, reml=reml, maxiter=maxiter, tol=self.tol, accelerate=True)
        estimate = trace.estimate
        beta, cov_beta, _ = _em.gls(
            data, _em.marginal_variances(data, estimate.sigma2_a, estimate.sigma2_e)
        )
        return _SnpFits(
            beta,
            cov_beta,
            estimate.sigma2_a,
            estimate.sigma2_e,
            np.full(k, np.nan) if reml else _em.log_likelihood(data, estimate),
            trace.n_iter,
            trace.converged,
        )


@dataclass(frozen=True)
class _ScoreTest:
    """GEMMA's score test (``-lmm 3``) at the null model's ML variance components.

    The null model's pieces are the same for every SNP, so they are computed once.
    """

    #: ``[X, r] / v``: the covariates and the null GLS residual, weighted by V^-1.
    weighted_columns: NDArray[np.float64]
    inverse_variances: NDArray[np.float64]
    cov_beta: NDArray[np.float64]
    rss: float
    df_resid: int

    @classmethod
    def at(cls, null: _em.RotatedData, estimate: _em.Estimate) -> _ScoreTest:
        variances = _em.marginal_variances(null, estimate.sigma2_a, estimate.sigma2_e)
        _, cov_beta, resid = _em.gls(null, variances)
        return cls(
            np.column_stack([null.exog, resid]) / variances[:, None],
            1.0 / variances,
            cov_beta,
            float(resid @ (resid / variances)),
            null.nobs - null.k_exog - 1,
        )

    def pvalues(self, rotated: NDArray[np.float64]) -> NDArray[np.float64]:
        """P-values for the SNPs given as rows of ``rotated``."""
        projected = rotated @ self.weighted_columns
        cross, p_xy = projected[:, :-1], projected[:, -1]
        p_xx = (rotated * rotated) @ self.inverse_variances - np.einsum(
            "ki,ki->k", cross, cross @ self.cov_beta
        )
        statistic = len(self.inverse_variances) * p_xy**2 / (self.rss * p_xx)
        return stats.f.sf(statistic, 1, self.df_resid)


@dataclass(frozen=True)
class _SnpFits:
    """Each SNP's fit: beta and its covariance, the variances, and (ML fits only; the
    scan reports no REML criterion) the log-likelihood."""

    beta: NDArray[np.float64]
    cov_beta: NDArray[np.float64]
    sigma2_a: NDArray[np.float64]
    sigma2_e: NDArray[np.float64]
    llf: NDArray[np.float64]
    n_iter: NDArray[np.intp]
    converged: NDArray[np.bool_]


def _scan_block(scanner: _Scanner, block: NDArray[np.float64]) -> pd.DataFrame:
    """One chunk's statistics (a module-level function, so Dask can ship it)."""
    return scanner.scan(block)
