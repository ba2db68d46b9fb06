"""Genome-wide association scans: the lab's per-SNP fits and tests, at scale.

The null model is fitted once, by EM. Genotypes are then read chunk by chunk and
rotated into the kinship's eigenbasis with one matrix product per chunk. Every SNP
of the chunk is then fitted at once: Newton steps on the variance ratio, from the
null model's estimates, each costing a few vectorised passes over the chunk
(:mod:`emlmm._scan`); batched EM takes over for the rare SNP Newton cannot finish.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import patsy
from numpy.typing import ArrayLike, NDArray
from scipy import stats
from statsmodels.tools.sm_exceptions import ConvergenceWarning

from emlmm import _em, _scan
from emlmm._data import check_choice, check_count, check_formula_inputs, check_positive
from emlmm.kinship import kinship_sum
from emlmm.model import EMLMM

__all__ = ["gwas"]

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


class GenotypeSource(Protocol):
    """What a scan reads genotypes from (``emlmm.io.PlinkGenotypes`` is one)."""

    @property
    def sample_ids(self) -> pd.Index: ...

    @property
    def snps(self) -> pd.DataFrame: ...

    def read(self, start: int = 0, stop: int | None = None) -> NDArray[np.float64]: ...


@dataclass(frozen=True)
class _AlignedGenotypes:
    """Genotype chunks with rows in the order of the analysed individuals."""

    snps: pd.DataFrame
    read_columns: Callable[[int, int], NDArray[np.float64]]
    rows: NDArray[np.intp]

    def for_rows(self, rows: NDArray[np.intp]) -> _AlignedGenotypes:
        """The same SNPs for a subset of these rows (positions into ``self.rows``)."""
        return replace(self, rows=self.rows[rows])

    def columns(self, indices: NDArray[np.intp]) -> _AlignedGenotypes:
        """The SNPs at ``indices`` (increasing), read in runs of adjacent columns."""

        def read(first: int, stop: int) -> NDArray[np.float64]:
            wanted = indices[first:stop]
            runs = np.split(wanted, np.nonzero(np.diff(wanted) != 1)[0] + 1)
            return np.concatenate(
                [self.read_columns(int(run[0]), int(run[-1]) + 1) for run in runs], axis=1
            )

        return replace(self, snps=self.snps.iloc[indices], read_columns=read)

    def chunks(
        self, chunk_size: int, start: int = 0
    ) -> Iterator[tuple[int, int, NDArray[np.float64]]]:
        n_snps = len(self.snps)
        for first in range(start, n_snps, chunk_size):
            stop = min(first + chunk_size, n_snps)
            block = np.asarray(self.read_columns(first, stop), dtype=float)[self.rows]
            yield first, stop, block


def gwas(
    formula: str,
    data: pd.DataFrame,
    genotypes: pd.DataFrame | ArrayLike | GenotypeSource,
    kinship: ArrayLike | pd.DataFrame,
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

    Parameters
    ----------
    formula : str
        A formula with a term ``snp`` standing for each genotype column in turn,
        e.g. ``"y ~ 1 + sex + snp"``; the other terms are covariates.
    data : pandas.DataFrame
        Phenotype and covariates, one row per individual. Rows with missing
        values are left out (with their rows and columns of the kinship).
    genotypes : DataFrame, ndarray or PlinkGenotypes
        Individuals x SNPs, coded 0/1/2 (NaN for missing). A DataFrame is aligned
        to ``data`` by index; an ndarray is taken in ``data``'s row order; PLINK
        genotypes from :func:`emlmm.read_plink` are matched by sample id.
    kinship : array_like or DataFrame or None
        The kinship, as for :class:`emlmm.EMLMM`; ``None`` with ``loco=True``.
    method : {"exact", "fixed"}
        ``"exact"``: for every SNP the variance components are re-estimated by ML
        (as the lab does) for the likelihood-ratio test, and by REML for the Wald
        test, as GEMMA's ``-lmm 4``. ``"fixed"``: the variance components stay at
        the null model's REML estimates (EMMAX, P3D), which is faster.
    chunk_size : int, optional
        SNPs per chunk; memory grows with ``n * chunk_size``. By default chosen
        from the number of individuals.
    maxiter, tol : int, float
        Iteration limit and tolerance per SNP fit. ``tol`` bounds the log-likelihood
        gain still available at convergence, as in :meth:`emlmm.EMLMM.fit`.
    progress : bool or callable
        ``True`` draws a progress bar on standard error; a callable is called as
        ``progress(done, total)`` after each chunk.
    client : dask.distributed.Client, optional
        Test the SNP chunks on a Dask cluster. The null model and the kinship's
        eigendecomposition are computed once, here, and broadcast to the workers;
        chunks are read here and sent out, a few at a time, so memory stays
        bounded. The results are those of the in-process scan. ``genotypes`` may
        also be a dask array, read chunk by chunk.
    loco : bool
        Leave one chromosome out: the SNPs of each chromosome are tested against a
        null model whose kinship (GEMMA's centered kinship, with its default SNP
        filters, over all rows of ``data``) is built from the other chromosomes,
        so a SNP never competes with itself in the random effect. Needs
        chromosome labels: PLINK's, or ``chromosomes``.
    chromosomes : array_like, optional
        One chromosome label per SNP, for genotypes without them (reported as the
        ``chr`` column).

    Returns
    -------
    pandas.DataFrame
        Indexed by SNP id, with ``chr`` and ``pos`` when known, then ``af``
        (frequency of the counted allele), ``n_miss`` (missing genotypes, imputed
        by the SNP's mean), ``beta`` and ``se`` (REML, as GEMMA reports them),
        ``p_wald`` (F(1, n - p) on the REML Wald statistic), ``lrt`` and
        ``p_lrt`` (ML likelihood ratio against the null, chi2(1)), ``p_score``
        (GEMMA's score test at the null ML estimates), ``llf``, ``sigma2_a`` and
        ``sigma2_e`` (the SNP's ML fit), ``n_iter`` (iterations of the SNP's ML
        fit: Newton steps on sigma2_a / sigma2_e, plus EM iterations in the rare
        case EM had to finish it), ``converged`` (ML and REML fits), and ``note``
        saying why a SNP's statistics are NaN (all missing, monomorphic,
        collinear with the covariates).

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
    report = _progress_bar if progress is True else (progress or None)
    tables: list[pd.DataFrame] = []
    # _prepare_scan is called from this frame (not a comprehension or generator), so
    # eval_env=1 is gwas()'s caller on every Python version.
    if loco:
        if kinship is not None:
            raise ValueError(
                "with loco=True the kinships are built from the genotypes, one per left-out "
                "chromosome; pass kinship=None"
            )
        check_formula_inputs(formula, data)
        aligned = _align_genotypes(genotypes, data.index, data.index, chromosomes)
        snp_order = aligned.snps.index
        # One chromosome at a time, so only one eigendecomposition is held in memory.
        for part, part_kinship in _leave_one_chromosome_out(aligned, data.index):
            prepared = _prepare_scan(
                formula, data, part, part_kinship, method, chunk_size, maxiter, tol, eval_env=1
            )
            tables.extend(prepared.run(client, report))
    else:
        prepared = _prepare_scan(
            formula,
            data,
            genotypes,
            kinship,
            method,
            chunk_size,
            maxiter,
            tol,
            eval_env=1,
            chromosomes=chromosomes,
        )
        snp_order = prepared.aligned.snps.index
        tables.extend(prepared.run(client, report))
    if not tables:
        return pd.DataFrame(columns=COLUMNS, index=snp_order)
    result = pd.concat(tables).loc[snp_order]
    warn_failures(result, stacklevel=3)
    return result


def count_failures(table: pd.DataFrame) -> tuple[int, int]:
    """SNPs of a result table whose fit failed, and those whose fit did not converge."""
    failed = int(table.note.str.startswith("failed").sum())
    unconverged = int((~table.converged & (table.note == "")).sum())
    return failed, unconverged


def warn_failures(table: pd.DataFrame, stacklevel: int = 2) -> None:
    """A warning with the count of SNPs whose statistics could not be computed."""
    failed, unconverged = count_failures(table)
    if failed:
        first = table.note[table.note.str.startswith("failed")].iloc[0]
        warnings.warn(
            f"{failed} of {len(table)} SNPs failed and have NaN statistics (see the note "
            f"column; the first: {first})",
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


@dataclass(frozen=True)
class _PreparedScan:
    """A scan whose null model is fitted: chunks of SNPs can now be tested in turn."""

    scanner: _Scanner
    aligned: _AlignedGenotypes
    chunk_size: int

    @property
    def n_snps(self) -> int:
        return len(self.aligned.snps)

    def tables(
        self, start: int = 0, progress: ProgressCallback | None = None
    ) -> Iterator[pd.DataFrame]:
        """One result table per chunk, for the SNPs from index ``start`` on."""
        for first, stop, block in self.aligned.chunks(self.chunk_size, start):
            yield self._labelled(first, stop, self.scanner.scan(block))
            if progress is not None:
                progress(stop, self.n_snps)

    def run(self, client: Any, progress: ProgressCallback | None) -> Iterator[pd.DataFrame]:
        """The chunks' tables, tested here or, given a Dask client, on its workers."""
        if client is None:
            return self.tables(progress=progress)
        return self.distributed_tables(client, progress=progress)

    def distributed_tables(
        self, client: Any, progress: ProgressCallback | None = None
    ) -> Iterator[pd.DataFrame]:
        """As :meth:`tables`, with the chunks tested on the workers of a Dask client."""
        scanner = client.scatter(self.scanner, broadcast=True)
        in_flight = 2 * max(len(client.scheduler_info().get("workers", {})), 1)
        pending: list[tuple[int, int, Any]] = []
        for first, stop, block in self.aligned.chunks(self.chunk_size):
            pending.append((first, stop, client.submit(_scan_block, scanner, block, pure=False)))
            while len(pending) >= in_flight:
                yield self._collect(pending.pop(0), progress)
        while pending:
            yield self._collect(pending.pop(0), progress)

    def _collect(
        self, task: tuple[int, int, Any], progress: ProgressCallback | None
    ) -> pd.DataFrame:
        first, stop, future = task
        table = self._labelled(first, stop, future.result())
        if progress is not None:
            progress(stop, self.n_snps)
        return table

    def _labelled(self, first: int, stop: int, table: pd.DataFrame) -> pd.DataFrame:
        """A chunk's statistics indexed by SNP id, with chr and pos when known."""
        snps = self.aligned.snps
        known = [column for column in ("chr", "pos") if column in snps.columns]
        table.index = snps.index[first:stop]
        return pd.concat([snps.iloc[first:stop][known], table], axis=1)


def _prepare_scan(
    formula: str,
    data: pd.DataFrame,
    genotypes: Any,
    kinship: Any,
    method: ScanMethod = "exact",
    chunk_size: int | None = None,
    maxiter: int = 10_000,
    tol: float = _em.DEFAULT_TOLERANCE,
    *,
    eval_env: int = 0,
    chromosomes: ArrayLike | None = None,
) -> _PreparedScan:
    """Check the inputs, fit the null model and line up the genotypes.

    ``eval_env`` counts frames from this function's caller, as in ``from_formula``.
    """
    check_formula_inputs(formula, data)
    check_choice("method", method, ("exact", "fixed"))
    maxiter = check_count("maxiter", maxiter)
    tol = check_positive("tol", tol)
    if chunk_size is not None:
        chunk_size = check_count("chunk_size", chunk_size)
    null = EMLMM.from_formula(
        _null_formula(formula), data=data, kinship=kinship, eval_env=eval_env + 1
    )
    used_rows = pd.Index(null.data.row_labels)
    if isinstance(genotypes, _AlignedGenotypes):  # a chromosome's part of a LOCO scan
        aligned = genotypes.for_rows(data.index.get_indexer(used_rows))
    else:
        aligned = _align_genotypes(genotypes, data.index, used_rows, chromosomes)
    scanner = _Scanner(null, method, maxiter, tol)
    chunk_size = chunk_size or max(64, min(4096, 4_000_000 // max(len(used_rows), 1)))
    return _PreparedScan(scanner, aligned, chunk_size)


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


def _align_genotypes(
    genotypes: Any, data_index: pd.Index, used_rows: pd.Index, chromosomes: Any = None
) -> _AlignedGenotypes:
    """Genotypes read in the order of ``used_rows``, with chromosome labels if given."""
    aligned = _align_genotype_rows(genotypes, data_index, used_rows)
    if chromosomes is None:
        return aligned
    labels = np.asarray(chromosomes)
    if labels.shape != (len(aligned.snps),):
        raise ValueError(
            f"chromosomes must give one label per SNP ({len(aligned.snps)}); got shape "
            f"{labels.shape}"
        )
    return replace(aligned, snps=aligned.snps.assign(chr=labels))


def _leave_one_chromosome_out(
    aligned: _AlignedGenotypes, labels: pd.Index
) -> Iterator[tuple[_AlignedGenotypes, pd.DataFrame]]:
    """Each chromosome's SNPs with the kinship of all the other chromosomes.

    One pass over all SNPs gives the kinship's sum of products and SNP count; one pass
    over each chromosome gives its share, which is subtracted.
    """
    if "chr" not in aligned.snps.columns:
        raise ValueError(
            "loco=True needs chromosome labels: use PLINK genotypes (emlmm.read_plink) or "
            "pass chromosomes=[...], one per SNP"
        )
    n_samples = len(aligned.rows)
    chunk_size = max(64, min(4096, 4_000_000 // max(n_samples, 1)))
    chromosome = aligned.snps["chr"].to_numpy()

    def sums(part: _AlignedGenotypes) -> tuple[NDArray[np.float64], int]:
        matrix, counts = kinship_sum(
            n_samples, part.chunks(chunk_size), lambda j: repr(part.snps.index[j])
        )
        return matrix, counts.used

    total, used = sums(aligned)
    for label in pd.unique(chromosome):
        part = aligned.columns(np.nonzero(chromosome == label)[0])
        share, share_used = sums(part)
        if used == share_used:
            raise ValueError(
                f"no SNP outside chromosome {label} passes the kinship's filters, so its "
                "leave-one-out kinship cannot be built"
            )
        yield (
            part,
            pd.DataFrame((total - share) / (used - share_used), index=labels, columns=labels),
        )


def _align_genotype_rows(
    genotypes: Any, data_index: pd.Index, used_rows: pd.Index
) -> _AlignedGenotypes:
    if isinstance(genotypes, pd.DataFrame):
        positions = _positions(genotypes.index, used_rows, "genotypes")
        non_numeric = [
            c for c in genotypes.columns if not pd.api.types.is_numeric_dtype(genotypes[c])
        ]
        if non_numeric:
            raise TypeError(
                f"genotypes must be numeric (0/1/2, NaN for missing); column(s) "
                f"{', '.join(map(repr, non_numeric[:5]))} are {genotypes[non_numeric[0]].dtype}"
            )
        values = _check_genotype_values(genotypes.to_numpy(dtype=float), genotypes.columns)
        snps = pd.DataFrame(index=pd.Index(genotypes.columns.astype(str), name="snp"))
        return _AlignedGenotypes(snps, lambda a, b: values[:, a:b], positions)
    if hasattr(genotypes, "dask") and getattr(genotypes, "ndim", 0) == 2:
        if genotypes.shape[0] != len(data_index):
            raise ValueError(
                f"genotypes must be individuals x SNPs with one row per row of data "
                f"({len(data_index)}); got shape {genotypes.shape}"
            )
        names = pd.Index([f"snp{j + 1}" for j in range(genotypes.shape[1])], name="snp")
        return _AlignedGenotypes(
            pd.DataFrame(index=names),
            lambda a, b: _check_genotype_values(
                np.asarray(genotypes[:, a:b].compute(), dtype=float), names[a:b]
            ),
            data_index.get_indexer(used_rows),
        )
    if hasattr(genotypes, "read") and hasattr(genotypes, "sample_ids"):
        positions = _positions(genotypes.sample_ids, used_rows, "PLINK samples")
        snps = genotypes.snps[[c for c in ("chr", "pos") if c in genotypes.snps.columns]]
        return _AlignedGenotypes(snps, genotypes.read, positions)
    try:
        values = np.asarray(genotypes, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"genotypes must be a numeric matrix, a DataFrame or PLINK genotypes from "
            f"emlmm.read_plink, not {type(genotypes).__name__} ({exc})"
        ) from exc
    if values.ndim != 2 or values.shape[0] != len(data_index):
        raise ValueError(
            f"genotypes must be individuals x SNPs with one row per row of data "
            f"({len(data_index)}); got shape {values.shape}"
        )
    names = pd.Index([f"snp{j + 1}" for j in range(values.shape[1])], name="snp")
    values = _check_genotype_values(values, names)
    return _AlignedGenotypes(
        pd.DataFrame(index=names), lambda a, b: values[:, a:b], data_index.get_indexer(used_rows)
    )


def _check_genotype_values(values: NDArray[np.float64], names: pd.Index) -> NDArray[np.float64]:
    """Genotypes count alleles: 0 to 2, NaN for missing."""
    outside = (values < 0) | (values > 2) | np.isinf(values)
    if outside.any():
        rows, cols = np.nonzero(outside)
        raise ValueError(
            f"genotypes must lie between 0 and 2 (allele counts; NaN for missing): SNP "
            f"{names[cols[0]]!r} has {values[rows[0], cols[0]]:g} in row {rows[0]}, and "
            f"{outside.any(axis=0).sum()} SNPs have such values (is -9 or 3 used for missing?)"
        )
    return values


def _positions(available: pd.Index, wanted: pd.Index, what: str) -> NDArray[np.intp]:
    positions = pd.Index(available).get_indexer(wanted)
    if (positions < 0).any():
        missing = wanted[positions < 0]
        raise ValueError(
            f"{len(missing)} individuals in the data have no row in the {what}: "
            f"{', '.join(map(repr, missing[:5]))}{' ...' if len(missing) > 5 else ''}"
        )
    return positions


class _Scanner:
    """Per-chunk statistics given the null model, fitted once.

    Each SNP's ML and REML fits are Newton iterations on the variance ratio
    (:mod:`emlmm._scan`), warm-started from the null model's EM estimates; a SNP
    Newton leaves unconverged (a boundary with sigma2_e = 0, say) is fitted by
    batched EM (:func:`emlmm._em.fit_em`) instead.
    """

    #: SNPs solved together: their ``k x n`` work arrays then stay in cache.
    BLOCK_ELEMENTS = 1 << 19

    def __init__(self, null: EMLMM, method: ScanMethod, maxiter: int, tol: float) -> None:
        self.method, self.maxiter, self.tol = method, maxiter, tol
        # Everything below is in the units of the null model's numerics: scaled, and
        # reduced to the kinship's column space where the covariates absorb its null
        # space. Statistics are mapped back to the user's units in _statistics.
        self.fit_data = fit_data = null._fit_data
        self.spectrum = null.spectrum
        self.eigenvectors = null.spectrum.eigenvectors[:, fit_data.kept]  # a view
        self.null_data = fit_data.rotated
        self.null_ml = null.fit()._results._estimate
        self.null_llf = float(_em.log_likelihood(self.null_data, self.null_ml))
        self.null_reml = null.fit(reml=True)._results._estimate
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


def _progress_bar(done: int, total: int) -> None:
    width = 40
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} SNPs")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
