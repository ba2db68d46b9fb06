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

from emlmm._data import _preview, check_count

__all__ = ["GenotypeSource", "Genotypes", "default_chunk_size"]

Array = NDArray[np.float64]
#: Reads the genotypes of SNPs ``start`` to ``stop - 1``, for every individual.
ColumnReader = Callable[[int, int], ArrayLike]

#: Elements of a chunk (individuals x SNPs) the default chunk size aims at: 32 MB of
#: float64, whatever the number of individuals.
_CHUNK_ELEMENTS = 4_000_000


def default_chunk_size(n_samples: int) -> int:
    """SNPs per chunk: about 4 million genotypes, between 64 and 4,096 SNPs.

    Examples
    --------
    >>> from emlmm.genotypes import default_chunk_size
    >>> default_chunk_size(1_000), default_chunk_size(100), default_chunk_size(200_000)
    (4000, 4096, 64)
    """
    return max(64, min(4096, _CHUNK_ELEMENTS // max(n_samples, 1)))


@runtime_checkable
class GenotypeSource(Protocol):
    """What genotypes can be read from besides in-memory matrices.

    :class:`emlmm.io.PlinkGenotypes` is one: sample ids, a table of SNPs indexed by
    SNP id (with ``chr`` and ``pos`` columns when known), and ``read(start, stop)``
    returning the individuals x SNPs block of SNPs ``start`` to ``stop - 1``.
    """

    @property
    def sample_ids(self) -> pd.Index: ...

    @property
    def snps(self) -> pd.DataFrame: ...

    def read(self, start: int = 0, stop: int | None = None) -> Any: ...


@dataclass(frozen=True)
class Genotypes:
    """Individuals x SNPs genotypes, read and checked a chunk of SNPs at a time.

    Build one with :meth:`from_any`; choose the individuals with :meth:`for_individuals`
    and SNPs with :meth:`select`; read with :meth:`read` or :meth:`chunks`.

    Attributes
    ----------
    snps : pandas.DataFrame
        One row per SNP, in input order, indexed by SNP id (named ``"snp"``; ids may
        repeat), with ``chr`` and ``pos`` when known.
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
            snps = genotypes.snps
            known = [column for column in ("chr", "pos") if column in snps.columns]
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
        return replace(self, rows=np.asarray(positions, dtype=np.intp))

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
        index = self.snps.index
        return pd.Index(index[index.duplicated()].unique())

    # -------------------------------------------------------------- reading

    def read(self, start: int, stop: int) -> Array:
        """SNPs ``start`` to ``stop - 1`` as float64, individuals in the chosen order.

        Raises
        ------
        ValueError
            If a value lies outside [0, 2] (the SNP, value and row are named).
        """
        block = np.asarray(self.reader(start, stop), dtype=np.float64)
        if block.shape != (self.n_samples, stop - start):
            raise ValueError(
                f"reading SNPs {start} to {stop - 1} gave a block of shape {block.shape}, "
                f"not ({self.n_samples}, {stop - start})"
            )
        if self.rows is not None:
            block = block[self.rows]
        self._check_values(block, start)
        return block

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
