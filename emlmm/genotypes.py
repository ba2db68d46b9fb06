"""Genotypes of every supported kind behind one interface, read in chunks of SNPs.

A scan (:mod:`emlmm.gwas`), a kinship (:mod:`emlmm.kinship`), a leave-one-chromosome-out
scan and the command line all read genotypes through :class:`Genotypes`, so a pandas
DataFrame, a NumPy array, a dask array and a PLINK fileset (:func:`emlmm.read_plink`, or
anything with the :class:`GenotypeSource` interface) are checked alike, with the same
messages, and read alike: a chunk of adjacent SNPs at a time, never the whole matrix.

* **Individuals.** A DataFrame's index and a fileset's sample ids are matched by label;
  an array's rows are taken in the order of the data's rows.
* **SNPs.** Identified by the DataFrame's column labels, the fileset's SNP ids, or
  ``snp1, snp2, ...`` for an array; chromosome and position come along when known.
* **Values.** Allele counts or dosages in [0, 2], NaN for missing; anything else is
  refused with the SNP, the value and its row named, when its chunk is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln

from emlmm._data import _preview, check_count, repeated_labels

__all__ = [
    "FILTER_REASONS",
    "ColumnSummary",
    "GenotypeSource",
    "Genotypes",
    "SnpFilter",
    "default_chunk_size",
    "hwe_exact_pvalues",
]

Array = NDArray[np.float64]
#: Reads the genotypes of SNPs ``start`` to ``stop - 1``, for every individual.
ColumnReader = Callable[[int, int], ArrayLike]

#: What a SNP table may say of each SNP besides its id: chromosome, position and the
#: alleles (``allele1``, the one counted, and ``allele0``, as in GEMMA's output).
SNP_COLUMNS = ("chr", "pos", "allele1", "allele0")

#: Elements of a chunk (individuals x SNPs) the default chunk size aims at: 32 MB of
#: float64, whatever the number of individuals.
_CHUNK_ELEMENTS = 4_000_000


def default_chunk_size(n_samples: int, n_snps: int | None = None) -> int:
    """SNPs per chunk: about 4 million genotypes, between 64 and 4,096 SNPs; given the
    number of SNPs, also at most a twentieth of them (but 256 or more), so that a
    scan reports its progress often.

    Examples
    --------
    >>> from emlmm.genotypes import default_chunk_size
    >>> default_chunk_size(1_000), default_chunk_size(100), default_chunk_size(200_000)
    (4000, 4096, 64)
    >>> default_chunk_size(1_000, n_snps=12_000), default_chunk_size(1_000, n_snps=1_000)
    (600, 256)
    """
    size = max(64, min(4096, _CHUNK_ELEMENTS // max(n_samples, 1)))
    if n_snps is not None:
        size = min(size, max(256, -(-n_snps // 20)))
    return size


@runtime_checkable
class GenotypeSource(Protocol):
    """What genotypes can be read from besides in-memory matrices.

    :class:`emlmm.io.PlinkGenotypes` is one: sample ids, a table of SNPs indexed by
    SNP id (with ``chr``, ``pos``, ``a1`` and ``a2`` columns when known), and
    ``read(start, stop)`` returning the individuals x SNPs block of SNPs ``start`` to
    ``stop - 1``.
    """

    @property
    def sample_ids(self) -> pd.Index:
        """The individuals' ids, one per row of a block."""
        ...

    @property
    def snps(self) -> pd.DataFrame:
        """One row per SNP, indexed by SNP id; ``chr``, ``pos``, ``a1`` (the allele
        counted) and ``a2`` are used when present."""
        ...

    def read(self, start: int = 0, stop: int | None = None) -> Any:
        """The genotypes of SNPs ``start`` to ``stop - 1``: individuals x SNPs, allele
        counts in [0, 2], NaN for missing."""
        ...


@dataclass(frozen=True)
class Genotypes:
    """Individuals x SNPs genotypes, read and checked a chunk of SNPs at a time.

    Build one with :meth:`from_any`; choose the individuals with :meth:`for_individuals`
    and SNPs with :meth:`select`; read with :meth:`read` or :meth:`chunks`.

    Attributes
    ----------
    snps : pandas.DataFrame
        One row per SNP, in input order, indexed by SNP id (named ``"snp"``; ids may
        repeat), with ``chr``, ``pos``, ``allele1`` (the allele counted) and
        ``allele0`` when known.
    sample_ids : pandas.Index or None
        The individuals' labels; ``None`` for an array, whose rows follow the data's.
    n_samples : int
        Rows of the input.
    rows : ndarray of int or None
        The input rows read, in order (``None``: all of them).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from emlmm.genotypes import Genotypes
    >>> frame = pd.DataFrame({"rs1": [0, 1, 2], "rs2": [2.0, np.nan, 0]}, index=["a", "b", "c"])
    >>> genotypes = Genotypes.from_any(frame).for_individuals(pd.Index(["c", "a"]))
    >>> genotypes.read(0, 2)
    array([[2., 0.],
           [0., 2.]])
    >>> [(start, stop) for start, stop, _ in genotypes.chunks(chunk_size=1)]
    [(0, 1), (1, 2)]
    >>> Genotypes.from_any(frame.assign(rs3=[0, 3, 1])).read(2, 3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: genotypes must lie between 0 and 2 ...: SNP 'rs3' has 1 values outside
    [0, 2], e.g. 3 in row 1 ...
    """

    snps: pd.DataFrame
    sample_ids: pd.Index | None
    n_samples: int
    reader: ColumnReader
    rows: NDArray[np.intp] | None = None

    # ------------------------------------------------------------- building

    @classmethod
    def from_any(cls, genotypes: Any, chromosomes: ArrayLike | None = None) -> Genotypes:
        """Wrap any supported genotype input, checking its type and shape.

        Parameters
        ----------
        genotypes : DataFrame, ndarray, dask array, PlinkGenotypes or Genotypes
            Individuals x SNPs.
        chromosomes : array_like, optional
            One chromosome label per SNP (replacing any the input has).

        Raises
        ------
        TypeError
            For another type, or values that are not numbers.
        ValueError
            For an array that is not 2-D, or ``chromosomes`` of the wrong length.
        """
        if isinstance(genotypes, Genotypes):
            result = genotypes
        elif isinstance(genotypes, pd.DataFrame):
            result = cls._from_frame(genotypes)
        elif isinstance(genotypes, np.ndarray) or _is_dask_array(genotypes):
            result = cls._from_array(genotypes)
        elif isinstance(genotypes, GenotypeSource):
            snps = genotypes.snps.rename(columns={"a1": "allele1", "a2": "allele0"})
            known = [column for column in SNP_COLUMNS if column in snps.columns]
            result = cls(
                snps[known],
                pd.Index(genotypes.sample_ids),
                len(genotypes.sample_ids),
                genotypes.read,
            )
        else:
            raise TypeError(
                "genotypes must be a pandas DataFrame, a numpy array (individuals x SNPs), a "
                "dask array or PLINK genotypes from emlmm.read_plink, not "
                f"{type(genotypes).__name__}"
            )
        if chromosomes is None:
            return result
        labels = np.asarray(chromosomes)
        if labels.shape != (result.n_snps,):
            raise ValueError(
                f"chromosomes must give one label per SNP ({result.n_snps}); got shape "
                f"{labels.shape}"
            )
        return replace(result, snps=result.snps.assign(chr=labels))

    @classmethod
    def _from_frame(cls, frame: pd.DataFrame) -> Genotypes:
        dtypes = frame.dtypes
        numeric = np.array(
            [
                pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
                for dtype in dtypes
            ],
            dtype=bool,
        )
        if not numeric.all():
            bad = list(frame.columns[~numeric])
            raise TypeError(
                f"genotypes must be numeric (0/1/2, NaN for missing); column {bad[0]!r} has "
                f"dtype {dtypes.iloc[int(np.argmin(numeric))]}"
                + (f" (non-numeric columns: {_preview(bad)})" if len(bad) > 1 else "")
            )
        snps = pd.DataFrame(index=pd.Index(frame.columns.astype(str), name="snp"))

        def read(start: int, stop: int) -> Array:
            return frame.iloc[:, start:stop].to_numpy(dtype=np.float64, na_value=np.nan)

        return cls(snps, pd.Index(frame.index), len(frame), read)

    @classmethod
    def _from_array(cls, array: Any) -> Genotypes:
        if array.dtype.kind not in "iuf":
            raise TypeError(
                "genotypes must be a numeric array (a numeric matrix of allele counts, "
                f"individuals x SNPs), not of dtype {array.dtype}"
            )
        if array.ndim != 2:
            raise ValueError(
                f"genotypes must be a 2-D array, individuals x SNPs; it has shape {array.shape}"
            )
        names = pd.Index([f"snp{j + 1}" for j in range(array.shape[1])], name="snp")
        if _is_dask_array(array):

            def read(start: int, stop: int) -> Array:
                return np.asarray(array[:, start:stop].compute(), dtype=np.float64)

        else:

            def read(start: int, stop: int) -> Array:
                return np.array(array[:, start:stop], dtype=np.float64)

        return cls(pd.DataFrame(index=names), None, int(array.shape[0]), read)

    # ------------------------------------------------------------ selecting

    @property
    def n_snps(self) -> int:
        """Number of SNPs."""
        return len(self.snps)

    @property
    def n_rows(self) -> int:
        """Number of individuals read (rows of every chunk)."""
        return self.n_samples if self.rows is None else len(self.rows)

    def for_individuals(self, labels: pd.Index, data_index: pd.Index | None = None) -> Genotypes:
        """The genotypes of the individuals ``labels``, in that order (whichever rows
        were chosen before).

        Labelled genotypes are matched by label; an array's rows stand for the rows of
        ``data_index`` (default: ``labels``), the data the labels were taken from.

        Raises
        ------
        ValueError
            If an individual has no genotypes, or an array has another number of rows.
        """
        labels = pd.Index(labels)
        if self.sample_ids is None:
            data_index = labels if data_index is None else pd.Index(data_index)
            if self.n_samples != len(data_index):
                raise ValueError(
                    f"genotypes must be individuals x SNPs with one row per row of data "
                    f"({len(data_index)}); got shape ({self.n_samples}, {self.n_snps})"
                )
            positions = data_index.get_indexer(labels)
        else:
            positions = _positions(self.sample_ids, labels)
        positions = np.asarray(positions, dtype=np.intp)
        if self.rows is None and np.array_equal(positions, np.arange(self.n_samples)):
            return self  # every row, in order: reading them needs no selection (a copy)
        return replace(self, rows=positions)

    def select(self, indices: NDArray[np.intp]) -> Genotypes:
        """The SNPs at positions ``indices`` (increasing), read in runs of adjacent SNPs."""
        indices = np.asarray(indices, dtype=np.intp)
        source = self.reader

        def read(start: int, stop: int) -> Array:
            wanted = indices[start:stop]
            if wanted.size == 0:
                return np.empty((self.n_samples, 0))
            runs = np.split(wanted, np.nonzero(np.diff(wanted) != 1)[0] + 1)
            return np.concatenate(
                [
                    np.asarray(source(int(run[0]), int(run[-1]) + 1), dtype=np.float64)
                    for run in runs
                ],
                axis=1,
            )

        return replace(self, snps=self.snps.iloc[indices], reader=read)

    def duplicated_ids(self) -> pd.Index:
        """SNP ids that appear more than once (each once)."""
        return repeated_labels(self.snps.index)

    # -------------------------------------------------------------- reading

    def read(self, start: int, stop: int) -> Array:
        """SNPs ``start`` to ``stop - 1`` as float64, individuals in the chosen order.

        Raises
        ------
        ValueError
            If a value lies outside [0, 2] (the SNP, value and row are named).
        """
        return self.read_summarised(start, stop)[0]

    def read_summarised(self, start: int, stop: int) -> tuple[Array, ColumnSummary]:
        """As :meth:`read`, with the block's :class:`ColumnSummary` (which the checks
        computed anyway, and the filters and a scan use again)."""
        block = np.asarray(self.reader(start, stop), dtype=np.float64)
        if block.shape != (self.n_samples, stop - start):
            raise ValueError(
                f"reading SNPs {start} to {stop - 1} gave a block of shape {block.shape}, "
                f"not ({self.n_samples}, {stop - start})"
            )
        if self.rows is not None:
            block = block[self.rows]
        elif not (block.flags.c_contiguous or block.flags.f_contiguous):
            # A column range of an in-memory matrix: one copy makes the summary's
            # column reductions and the scan's products run on contiguous memory
            # (at n = 3,000, 600 SNPs: 3.9 ms with the copy against 7.4 ms without).
            block = np.ascontiguousarray(block)
        summary = ColumnSummary.of(block)
        if summary.lows.min(initial=0.0) < 0.0 or summary.highs.max(initial=2.0) > 2.0:
            self._check_values(block, start)
        return block, summary

    def chunks(
        self, chunk_size: int | None = None, start: int = 0
    ) -> Iterator[tuple[int, int, Array]]:
        """``(first, stop, block)`` for consecutive chunks of SNPs from ``start`` on.

        ``chunk_size`` defaults to :func:`default_chunk_size` of the rows read.
        """
        size = default_chunk_size(self.n_rows) if chunk_size is None else chunk_size
        size = check_count("chunk_size", size)
        for first in range(start, self.n_snps, size):
            stop = min(first + size, self.n_snps)
            yield first, stop, self.read(first, stop)

    def _check_values(self, block: Array, start: int) -> None:
        """Allele counts lie in [0, 2]; NaN marks a missing genotype."""
        with np.errstate(invalid="ignore"):
            outside = (block < 0.0) | (block > 2.0)
        if not outside.any():
            return
        bad_snps = outside.any(axis=0)
        column = int(np.argmax(bad_snps))
        row = int(np.argmax(outside[:, column]))
        input_row = row if self.rows is None else int(self.rows[row])
        more = int(bad_snps.sum()) - 1
        raise ValueError(
            "genotypes must lie between 0 and 2 (allele counts or dosages, NaN for missing): "
            f"SNP {self.snps.index[start + column]!r} has {int(outside[:, column].sum())} "
            f"values outside [0, 2], e.g. {block[row, column]:g} in row {input_row}"
            + (f", and {more} more SNPs of its chunk have such values" if more else "")
            + " (is -9 or 3 used for missing?)"
        )


@dataclass(frozen=True)
class ColumnSummary:
    """Per-SNP summaries of a chunk (individuals x SNPs, NaN for missing), from one
    pass over it: what the value checks, the SNP filters, the imputation and a scan's
    notes all need, computed once per chunk.

    Attributes
    ----------
    n_observed : ndarray of int
        Genotypes observed.
    means : ndarray
        Mean of the observed genotypes (NaN for a SNP with none).
    lows, highs : ndarray
        Smallest and largest observed genotype (inf and -inf for a SNP with none).
    complete : bool
        Whether no genotype of the chunk is missing.

    Examples
    --------
    >>> import numpy as np
    >>> from emlmm.genotypes import ColumnSummary
    >>> block = np.array([[0.0, 2.0], [np.nan, 2.0], [2.0, 2.0]])
    >>> summary = ColumnSummary.of(block)
    >>> summary.n_observed.tolist(), summary.means.tolist(), summary.spread.tolist()
    ([2, 3], [1.0, 2.0], [2.0, 0.0])
    >>> summary.imputed(block)[:, 0].tolist()
    [0.0, 1.0, 2.0]
    """

    n_observed: NDArray[np.intp]
    means: Array
    lows: Array
    highs: Array
    complete: bool

    @classmethod
    def of(cls, block: Array) -> ColumnSummary:
        """Summarise ``block`` (a complete block costs three reductions, no copy: its
        column sums, which a missing genotype would make NaN, show it is complete)."""
        n, k = block.shape
        with np.errstate(invalid="ignore"):
            sums = block.sum(axis=0)
        if not np.isnan(sums).any():  # a missing genotype (NaN) makes its column's sum NaN
            with np.errstate(invalid="ignore", divide="ignore"):
                means = sums / n
            return cls(
                np.full(k, n, dtype=np.intp),
                means,
                block.min(axis=0, initial=np.inf),
                block.max(axis=0, initial=-np.inf),
                True,
            )
        missing = np.isnan(block)
        n_observed = n - missing.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            means = np.where(missing, 0.0, block).sum(axis=0) / n_observed
        return cls(
            n_observed,
            means,
            np.fmin.reduce(block, axis=0, initial=np.inf),
            np.fmax.reduce(block, axis=0, initial=-np.inf),
            False,
        )

    @property
    def spread(self) -> Array:
        """Largest minus smallest observed genotype (-inf for a SNP with none)."""
        return self.highs - self.lows

    def take(self, columns: NDArray[np.bool_] | NDArray[np.intp]) -> ColumnSummary:
        """The summaries of the SNPs ``columns`` (a mask or positions)."""
        return ColumnSummary(
            self.n_observed[columns],
            self.means[columns],
            self.lows[columns],
            self.highs[columns],
            self.complete,
        )

    def imputed(self, block: Array) -> Array:
        """``block`` with each missing genotype replaced by its SNP's mean (0 for a SNP
        with none observed); the block itself when none is missing."""
        if self.complete:
            return block
        fill = np.where(self.n_observed > 0, self.means, 0.0)
        return np.where(np.isnan(block), fill, block)


def _is_dask_array(value: Any) -> bool:
    return hasattr(value, "dask") and hasattr(value, "compute") and hasattr(value, "ndim")


def _positions(available: pd.Index, wanted: pd.Index) -> NDArray[np.intp]:
    positions = pd.Index(available).get_indexer(wanted)
    if (positions < 0).any():
        missing = wanted[positions < 0]
        raise ValueError(
            f"{len(missing)} individuals in the data have no row in the genotypes: "
            f"{_preview(list(missing))}"
        )
    return np.asarray(positions, dtype=np.intp)


# ------------------------------------------------------------------ SNP filters

#: Why a SNP is left out of a scan, in the order GEMMA checks (``ReadFile_bed``).
FILTER_REASONS = ("missing", "maf", "monomorphic", "hwe")


@dataclass(frozen=True)
class SnpFilter:
    """GEMMA's SNP filters, on the genotypes of the individuals analysed.

    A SNP is left out when, in this order (GEMMA's ``ReadFile_bed``), its fraction of
    missing genotypes exceeds ``max_missing`` (GEMMA's ``-miss``); the frequency of
    its counted allele (``af``) is below ``min_maf`` or above ``1 - min_maf``
    (``-maf``); it is monomorphic (one genotype value; GEMMA also drops a SNP whose
    every call is heterozygous); or, with ``hwe``, its exact Hardy-Weinberg test
    (Wigginton et al. 2005, GEMMA's ``CalcHWE``, on genotypes rounded to 0/1/2) has a
    p-value below ``hwe`` (``-hwe``). ``min_maf=0`` and ``max_missing=1`` keep every
    SNP, monomorphic ones included.

    Examples
    --------
    >>> import numpy as np
    >>> from emlmm.genotypes import SnpFilter
    >>> block = np.array([[0, 1, 1, 0], [1, 1, np.nan, 0], [2, 1, 0, 0], [1, 1, 1, 0]])
    >>> SnpFilter().reasons(block).tolist()
    ['', 'monomorphic', 'missing', 'maf']
    >>> SnpFilter(min_maf=0, max_missing=1).reasons(block).tolist()
    ['', '', '', '']
    """

    min_maf: float = 0.01
    max_missing: float = 0.05
    hwe: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_maf <= 0.5:
            raise ValueError(f"min_maf must be between 0 and 0.5, not {self.min_maf}")
        if not 0.0 <= self.max_missing <= 1.0:
            raise ValueError(f"max_missing must be between 0 and 1, not {self.max_missing}")
        if self.hwe is not None and not 0.0 < self.hwe <= 1.0:
            raise ValueError(f"hwe must be a p-value threshold in (0, 1], not {self.hwe}")

    @property
    def active(self) -> bool:
        """Whether any SNP can be left out."""
        return self.min_maf > 0 or self.max_missing < 1 or self.hwe is not None

    def reasons(self, block: Array, summary: ColumnSummary | None = None) -> NDArray[np.str_]:
        """Why each SNP (column of ``block``) is left out; ``""`` for those kept.

        ``summary``, the block's :class:`ColumnSummary`, saves computing it again.
        """
        n = block.shape[0]
        summary = ColumnSummary.of(block) if summary is None else summary
        af, spread = summary.means / 2.0, summary.spread
        missing = (n - summary.n_observed) > self.max_missing * n
        with np.errstate(invalid="ignore"):
            rare = (af < self.min_maf) | (af > 1.0 - self.min_maf)
        monomorphic = (spread <= 0) & (self.min_maf > 0)
        poor_hwe = np.zeros(block.shape[1], dtype=bool)
        if self.hwe is not None:
            calls = np.rint(block)
            counts = [(calls == value).sum(axis=0) for value in (0.0, 1.0, 2.0)]
            poor_hwe = hwe_exact_pvalues(counts[0], counts[1], counts[2]) < self.hwe
        return np.select([missing, rare, monomorphic, poor_hwe], list(FILTER_REASONS), "").astype(
            np.str_
        )


def hwe_exact_pvalues(
    n_hom1: ArrayLike, n_het: ArrayLike, n_hom2: ArrayLike
) -> NDArray[np.float64]:
    """Exact Hardy-Weinberg test p-values (Wigginton, Cutler and Abecasis 2005).

    The p-value sums the probabilities, given the allele counts, of every number of
    heterozygotes no more probable than the one observed, as GEMMA's ``CalcHWE`` and
    PLINK's ``--hardy`` do. Probabilities are computed from log-factorials.

    Examples
    --------
    >>> from emlmm.genotypes import hwe_exact_pvalues
    >>> hwe_exact_pvalues([25, 50, 0], [50, 0, 0], [25, 50, 0]).round(6).tolist()
    [1.0, 0.0, 1.0]
    """
    hom1, het, hom2 = (
        np.atleast_1d(np.asarray(v, dtype=np.int64)) for v in (n_hom1, n_het, n_hom2)
    )
    pvalues = np.ones(hom1.shape, dtype=np.float64)
    for index in np.ndindex(hom1.shape):
        pvalues[index] = _hwe_exact(int(hom1[index]), int(het[index]), int(hom2[index]))
    return pvalues


def _hwe_exact(hom1: int, het: int, hom2: int) -> float:
    n = hom1 + het + hom2
    if n == 0:
        return 1.0
    rare = 2 * min(hom1, hom2) + het
    hets = np.arange(rare % 2, rare + 1, 2, dtype=np.float64)
    rare_homs = (rare - hets) / 2.0
    common_homs = n - hets - rare_homs
    log_p = hets * np.log(2.0) - (
        gammaln(hets + 1) + gammaln(rare_homs + 1) + gammaln(common_homs + 1)
    )
    log_p -= log_p.max()
    probabilities = np.exp(log_p)
    probabilities /= probabilities.sum()
    observed = probabilities[int(np.searchsorted(hets, het))]
    # Ties within rounding count as "no more probable" (PLINK's tolerance).
    return float(min(1.0, probabilities[probabilities <= observed * (1 + 1e-7)].sum()))
