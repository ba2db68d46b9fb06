r"""Relatedness (kinship) matrices from genotypes, as GEMMA's ``-gk`` computes them.

GEMMA (Zhou and Stephens 2012; user manual section "Estimate Relatedness
Matrix from Genotypes", source ``src/gemma_io.cpp``: ``PlinkKin``,
``BimbamKin``, ``ReadFile_bed``) defines, for the ``p`` SNPs it uses,

.. math::

    G_c = \frac{1}{p} \sum_i (x_i - \bar x_i 1)(x_i - \bar x_i 1)^T, \qquad
    G_s = \frac{1}{p} \sum_i \frac{1}{v_i} (x_i - \bar x_i 1)(x_i - \bar x_i 1)^T,

where a SNP's missing genotypes are first replaced by the mean
:math:`\bar x_i` of its observed ones and :math:`v_i` is the variance of
the mean-imputed genotypes with divisor ``n`` (not ``n - 1``). The SNPs used
are those passing GEMMA's default filters, computed over all individuals:
polymorphic, missing rate at most 5% (``-miss 0.05``), and allele frequency
within [1%, 99%] (``-maf 0.01``); ``p`` counts only these SNPs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from emlmm._data import check_count, repeated_labels, row_bands
from emlmm.genotypes import ColumnSummary, Genotypes
from emlmm.io import PlinkGenotypes

__all__ = ["LowRankKinship", "kinship"]

Method = Literal["centered", "standardized"]
_METHODS = ("centered", "standardized")


class _SnpCounts:
    """How many SNPs were used and why the others were left out."""

    def __init__(self) -> None:
        self.used = 0
        self.monomorphic = 0
        self.missing = 0
        self.rare = 0

    def describe(self) -> str:
        total = self.used + self.monomorphic + self.missing + self.rare
        return (
            f"of {total} SNPs, {self.monomorphic} are monomorphic (or entirely missing), "
            f"{self.missing} have too many missing genotypes and {self.rare} too low an "
            "allele frequency"
        )


def _centered_block(
    block: NDArray[np.float64],
    method: Method,
    min_maf: float,
    max_missing: float,
    counts: _SnpCounts,
    filter_rows: NDArray[np.intp] | None = None,
) -> NDArray[np.float64]:
    """Mean-impute, filter, center (and scale) one chunk of SNPs, as GEMMA's ``PlinkKin``.

    The filters look at the rows ``filter_rows`` (default: all); imputation,
    centering and scaling at all rows, as GEMMA's.
    """
    n = block.shape[0]
    everyone = ColumnSummary.of(block)
    seen = everyone if filter_rows is None else ColumnSummary.of(block[filter_rows])
    n_seen = n if filter_rows is None else len(filter_rows)
    allele_frequency = seen.means / 2.0  # NaN for a SNP with none observed
    polymorphic = seen.highs > seen.lows
    too_missing = (n_seen - seen.n_observed) / n_seen > max_missing
    with np.errstate(invalid="ignore"):
        too_rare = (allele_frequency < min_maf) | (allele_frequency > 1.0 - min_maf)
    keep = polymorphic & ~too_missing & ~too_rare
    counts.monomorphic += int((~polymorphic).sum())
    counts.missing += int((polymorphic & too_missing).sum())
    counts.rare += int((polymorphic & ~too_missing & too_rare).sum())
    counts.used += int(keep.sum())

    kept = everyone.take(keep)  # polymorphic: each has observed genotypes
    centered = kept.imputed(block[:, keep]) - kept.means
    if method == "standardized":
        variance = (centered**2).sum(axis=0) / n
        centered /= np.sqrt(variance)
    return centered


def kinship_sum(
    n_samples: int,
    blocks: Iterator[tuple[int, int, NDArray[np.float64]]],
    method: Method = "centered",
    min_maf: float = 0.01,
    max_missing: float = 0.05,
    filter_rows: NDArray[np.intp] | None = None,
) -> tuple[NDArray[np.float64], _SnpCounts]:
    """``W W'`` summed over the SNPs of ``blocks`` that pass the filters, and the counts.

    The kinship is this sum over ``counts.used``; sums over disjoint sets of SNPs add
    up, which is what leave-one-chromosome-out kinships are made of.
    """
    counts = _SnpCounts()
    matrix = np.zeros((n_samples, n_samples))
    for _start, _stop, block in blocks:
        centered = _centered_block(block, method, min_maf, max_missing, counts, filter_rows)
        if centered.shape[1]:
            _add_products(matrix, centered)
    _mirror_lower(matrix)
    return matrix, counts


#: Rows of the kinship updated by one matrix product in :func:`_add_products`.
PRODUCT_BAND = 512


def _add_products(matrix: NDArray[np.float64], columns: NDArray[np.float64]) -> None:
    """``matrix += columns @ columns.T`` in its lower triangle only, in place, by bands
    of :data:`PRODUCT_BAND` rows: about half the work of the full product.

    Each band is one general matrix product (``dgemm``), never BLAS's symmetric
    rank-k update: OpenBLAS's threaded ``dsyrk`` (0.3.30 in SciPy's wheels, 0.3.31 in
    NumPy's, which ``A @ A.T`` calls) crashed the process with a segmentation fault
    at n = 20,000 (k = 500 columns, two threads), where ``dgemm`` of the same sizes
    does not (NumPy issue 19685 is the same fault at larger sizes).
    """
    n = len(matrix)
    for first in range(0, n, PRODUCT_BAND):
        stop = min(first + PRODUCT_BAND, n)
        # A row band against the rows up to its end: never the same operand twice
        # (which NumPy would hand to dsyrk), except a single band (n <= PRODUCT_BAND).
        matrix[first:stop, :stop] += columns[first:stop] @ columns[:stop].T


def outer_products(columns: NDArray[np.float64]) -> NDArray[np.float64]:
    """``columns @ columns.T`` (``n x n``, symmetric), without ``dsyrk``
    (:func:`_add_products`)."""
    matrix = np.zeros((len(columns), len(columns)))
    _add_products(matrix, np.asarray(columns, dtype=np.float64))
    _mirror_lower(matrix)
    return matrix


def _mirror_lower(matrix: NDArray[np.float64]) -> None:
    """Copy the lower triangle onto the upper one, in place, by blocks of rows."""
    for first, band, mirror in row_bands(matrix, 1 << 22):
        upper = band[:, first:]  # the band's rows, right of the diagonal
        below = mirror[:, first:]  # the same entries, read below it
        np.copyto(upper, below, where=np.triu(np.ones(upper.shape, dtype=bool), 1))


@overload
def kinship(
    genotypes: NDArray[Any],
    method: Method = ...,
    chunk_size: int | None = ...,
    *,
    min_maf: float = ...,
    max_missing: float = ...,
    filter_individuals: ArrayLike | None = ...,
) -> NDArray[np.float64]: ...
@overload
def kinship(
    genotypes: pd.DataFrame | PlinkGenotypes,
    method: Method = ...,
    chunk_size: int | None = ...,
    *,
    min_maf: float = ...,
    max_missing: float = ...,
    filter_individuals: ArrayLike | None = ...,
) -> pd.DataFrame: ...
def kinship(
    genotypes: pd.DataFrame | NDArray[Any] | PlinkGenotypes,
    method: Method = "centered",
    chunk_size: int | None = None,
    *,
    min_maf: float = 0.01,
    max_missing: float = 0.05,
    filter_individuals: ArrayLike | None = None,
) -> pd.DataFrame | NDArray[np.float64]:
    """Genomic relatedness matrix, as GEMMA's ``-gk 1`` (centered) or ``-gk 2`` (standardized).

    Each SNP's missing genotypes are replaced by the mean of its observed
    ones; the SNP is then centered (``"centered"``) or centered and divided
    by its standard deviation with divisor ``n`` (``"standardized"``), and
    ``K = W W' / p`` over the ``p`` SNPs that pass the filters. The matrix
    is accumulated over chunks of ``chunk_size`` SNPs, so memory is
    ``O(n^2 + n * chunk_size)`` and a PLINK fileset is never read whole.

    Parameters
    ----------
    genotypes : pandas.DataFrame, numpy.ndarray, dask array or PlinkGenotypes
        Individuals x SNPs, allele counts or dosages in [0, 2], NaN for
        missing; or a fileset opened by :func:`emlmm.read_plink`. Read and
        checked as everywhere in emlmm (:class:`emlmm.genotypes.Genotypes`).
    method : {"centered", "standardized"}
        GEMMA's ``-gk 1`` or ``-gk 2``.
    chunk_size : int, optional
        SNPs processed at a time (default:
        :func:`emlmm.genotypes.default_chunk_size`).
    min_maf : float
        Leave out SNPs whose observed allele frequency is below ``min_maf``
        or above ``1 - min_maf`` (GEMMA's ``-maf``, default 0.01; 0 keeps
        all polymorphic SNPs).
    max_missing : float
        Leave out SNPs with a larger fraction of missing genotypes (GEMMA's
        ``-miss``, default 0.05; 1 keeps them all). Monomorphic SNPs are
        always left out, as in GEMMA.
    filter_individuals : array_like, optional
        The individuals the filters are computed on (labels, or row positions
        for an array): GEMMA uses those analysed, with a phenotype (``-n``).
        By default all. The kinship itself is over all individuals.

    Returns
    -------
    pandas.DataFrame or numpy.ndarray
        The ``n x n`` symmetric matrix: a DataFrame labelled on both axes by
        the DataFrame's index or the fileset's sample ids, an array for an
        array.

    Raises
    ------
    TypeError
        If ``genotypes`` is of another type or not numeric.
    ValueError
        If a genotype lies outside [0, 2] (the SNP is named), ``method`` or
        a filter is invalid, or no SNP passes the filters.

    See Also
    --------
    emlmm.read_plink : Open a PLINK fileset to pass here.

    Notes
    -----
    Checked against GEMMA 0.98's ``PlinkKin``/``BimbamKin`` and its manual.
    GEMMA writes the same matrix to ``prefix.cXX.txt`` (``-gk 1``) or
    ``prefix.sXX.txt`` (``-gk 2``) up to round-off.

    Examples
    --------
    >>> import numpy as np
    >>> from emlmm.kinship import kinship
    >>> genotypes = np.array([[0, 1, 2], [1, 1, 0], [2, 0, np.nan], [1, 0, 0]])
    >>> kinship(genotypes, min_maf=0, max_missing=1).round(3)
    array([[ 1.009, -0.213, -0.417, -0.38 ],
           [-0.213,  0.231, -0.083,  0.065],
           [-0.417, -0.083,  0.417,  0.083],
           [-0.38 ,  0.065,  0.083,  0.231]])
    >>> kinship(genotypes, "standardized", min_maf=0, max_missing=1).round(3)
    array([[ 1.889, -0.111, -1.   , -0.778],
           [-0.111,  0.556, -0.333, -0.111],
           [-1.   , -0.333,  1.   ,  0.333],
           [-0.778, -0.111,  0.333,  0.556]])
    """
    if method not in _METHODS:
        raise ValueError(f"method must be 'centered' or 'standardized', not {method!r}")
    if chunk_size is not None:
        chunk_size = check_count("chunk_size", chunk_size)
    if not 0.0 <= min_maf <= 0.5:
        raise ValueError(f"min_maf must be between 0 and 0.5, not {min_maf}")
    if not 0.0 <= max_missing <= 1.0:
        raise ValueError(f"max_missing must be between 0 and 1, not {max_missing}")

    source = Genotypes.from_any(genotypes)
    filter_rows = None
    if filter_individuals is not None:
        wanted = pd.Index(np.asarray(filter_individuals))
        if source.sample_ids is None:
            filter_rows = source.for_individuals(wanted, pd.RangeIndex(source.n_samples)).rows
        else:
            filter_rows = source.for_individuals(wanted).rows
    matrix, counts = kinship_sum(
        source.n_samples, source.chunks(chunk_size), method, min_maf, max_missing, filter_rows
    )
    if counts.used == 0:
        raise ValueError(
            f"no SNP is left to compute the kinship from: {counts.describe()} "
            f"(min_maf={min_maf}, max_missing={max_missing})"
        )
    matrix /= counts.used  # exactly symmetric: one triangle was computed, then mirrored

    if source.sample_ids is None:
        return matrix
    labels = source.sample_ids
    return pd.DataFrame(matrix, index=labels, columns=labels.copy(), copy=False)


class LowRankKinship:
    r"""A kinship given by a factor: ``K = F F'``, with ``F`` an ``n x k`` matrix.

    FaST-LMM's low-rank case: a kinship built from ``k < n`` SNPs (standardised and
    divided by :math:`\sqrt{k}`, :meth:`from_snps`) has rank at most ``k``. Passed
    wherever a kinship is (:class:`emlmm.EMLMM`, :class:`emlmm.GenomeScan`,
    :func:`emlmm.gwas`), it is never eigendecomposed as an ``n x n`` matrix:

    * the model's eigenbasis comes from a QR decomposition of ``F`` and an SVD of its
      ``k x k`` triangle, ``O(n k^2)`` instead of ``O(n^3)``, and is held in
      ``O(n k)`` memory (Householder reflectors): no ``n x n`` matrix, neither
      ``F F'`` nor its eigenvectors, is formed by a fit, its BLUPs or a scan (they are
      formed only if asked for, as ``model.kinship`` or ``model.spectrum.eigenvectors``);
    * a scan rotates each SNP by the ``k`` (or fewer) eigenvectors with a non-zero
      eigenvalue, ``O(n k)`` instead of ``O(n^2)``, and fits it on ``k + p + 2``
      numbers instead of ``n``: the ``n - k`` directions where the kinship is zero
      enter through the covariates', the response's and the SNP's projections on
      them, which is exact (the likelihood sees those directions only through these
      inner products).

    The answers are those of the dense kinship ``F F'`` (:meth:`to_dense`), to
    rounding. With several variance components the dense matrix is used.

    Parameters
    ----------
    factor : array_like or pandas.DataFrame
        ``n x k``, finite. A DataFrame's index labels the individuals, matched to the
        data's as a labelled kinship is.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from emlmm import EMLMM, LowRankKinship
    >>> rng = np.random.default_rng(1)
    >>> snps = rng.binomial(2, 0.3, size=(300, 40)).astype(float)
    >>> low = LowRankKinship.from_snps(snps)
    >>> low.shape, low.rank
    ((300, 300), 40)
    >>> y = snps[:, :10].sum(axis=1) + rng.normal(size=300)
    >>> data = pd.DataFrame({"y": y})
    >>> fast = EMLMM.from_formula("y ~ 1", data, kinship=low).fit()
    >>> dense = EMLMM.from_formula("y ~ 1", data, kinship=low.to_dense()).fit()
    >>> bool(np.isclose(fast.llf, dense.llf, rtol=1e-10)), f"{fast.h2:.4f}"
    (True, '0.8150')
    """

    def __init__(self, factor: ArrayLike | pd.DataFrame) -> None:
        self.ids: pd.Index | None = None
        if isinstance(factor, pd.DataFrame):
            self.ids = pd.Index(factor.index)
            if not self.ids.is_unique:
                repeated = repeated_labels(self.ids)
                raise ValueError(f"LowRankKinship labels are not unique: {list(repeated)[:5]}")
            factor = factor.to_numpy()
        try:
            array = np.array(factor, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"a LowRankKinship factor must be a numeric n x k matrix, not "
                f"{type(factor).__name__}"
            ) from exc
        if array.ndim != 2 or array.shape[1] == 0:
            raise ValueError(
                f"a LowRankKinship factor must be an n x k matrix with k >= 1; it has shape "
                f"{array.shape}"
            )
        if not np.isfinite(array).all():
            row = int(np.nonzero(~np.isfinite(array).all(axis=1))[0][0])
            raise ValueError(
                f"a LowRankKinship factor must be finite; row {row} has NaN or inf (impute "
                "missing genotypes first, or use LowRankKinship.from_snps)"
            )
        self.factor = array

    @classmethod
    def from_snps(cls, genotypes: ArrayLike | pd.DataFrame) -> LowRankKinship:
        """``F = W / sqrt(k)`` for ``k`` SNPs standardised as :func:`kinship`'s
        ``"standardized"`` (mean-imputed, centred, divided by their standard deviation
        with divisor ``n``), so that ``F F'`` is GEMMA's ``-gk 2`` kinship of those
        SNPs (monomorphic SNPs are left out)."""
        ids = genotypes.index if isinstance(genotypes, pd.DataFrame) else None
        values = np.array(genotypes, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"genotypes must be individuals x SNPs; got shape {values.shape}")
        means = np.nanmean(values, axis=0)
        centred = np.where(np.isnan(values), 0.0, values - means)
        spread = np.sqrt((centred**2).mean(axis=0))
        used = spread > 0
        if not used.any():
            raise ValueError("every SNP is monomorphic: no factor to build")
        factor = centred[:, used] / spread[used] / np.sqrt(used.sum())
        return cls(factor if ids is None else pd.DataFrame(factor, index=ids))

    @property
    def shape(self) -> tuple[int, int]:
        """``(n, n)``, as the dense kinship's."""
        n = int(self.factor.shape[0])
        return n, n

    @property
    def rank(self) -> int:
        """Columns of the factor that add a dimension (NumPy's rank rule)."""
        return int(np.linalg.matrix_rank(self.factor))

    def to_dense(self) -> NDArray[np.float64] | pd.DataFrame:
        """``F F'``: a DataFrame when the factor is labelled."""
        matrix = outer_products(self.factor)
        if self.ids is None:
            return matrix
        return pd.DataFrame(matrix, index=self.ids, columns=self.ids.copy())

    def rows(self, labels: pd.Index) -> LowRankKinship:
        """The factor's rows of the individuals ``labels`` (a labelled factor only)."""
        if self.ids is None:
            return self
        missing = pd.Index(labels).difference(self.ids, sort=False)
        if len(missing):
            raise ValueError(
                f"{len(missing)} of the {len(labels)} individuals in the data have no row in "
                f"the kinship's factor: {list(missing)[:5]}. Its labels look like "
                f"{list(self.ids[:5])}."
            )
        return LowRankKinship(
            pd.DataFrame(self.factor[self.ids.get_indexer(labels)], index=labels)
        )

    def __repr__(self) -> str:
        n, k = self.factor.shape
        return f"LowRankKinship(n={n}, k={k})"
