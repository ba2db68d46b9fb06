"""Reading genotype, phenotype and kinship files.

Two formats are supported:

* PLINK binary filesets (``.bed``/``.bim``/``.fam``), read lazily through
  `bed-reader <https://fastlmm.github.io/bed-reader/>`_ by :func:`emlmm.read_plink`;
* the lab's three headerless whitespace-separated text matrices (genotypes,
  phenotype, kinship), read by :func:`read_lab`.

Every error names the file it is about, and for text files the line.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import DTypeLike, NDArray

from emlmm._data import check_count

__all__ = ["LabMatrices", "PlinkGenotypes", "read_lab", "read_plink"]

_BED_MAGIC = bytes([0x6C, 0x1B, 0x01])
_PLINK_MISSING_PHENOTYPE = -9.0
_MISSING_TOKENS = frozenset({"NA", "na", "NaN", "nan"})


# --------------------------------------------------------------------------- PLINK


def _plink_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    path = Path(prefix)
    if path.suffix == ".bed":
        path = path.with_suffix("")
    # append rather than with_suffix: a prefix such as "data.v2" keeps its dot
    bed, bim, fam = (path.with_name(path.name + ext) for ext in (".bed", ".bim", ".fam"))
    return bed, bim, fam


class PlinkGenotypes:
    """A PLINK binary fileset opened for reading SNP by SNP.

    Opening reads the ``.fam`` and ``.bim`` metadata and checks the size of
    the ``.bed`` file; genotypes are read only by :meth:`read` and
    :meth:`iter_chunks`, so a fileset larger than memory can be scanned in
    chunks of SNPs. Usually created by :func:`emlmm.read_plink`.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path of the fileset without extension, or of its ``.bed`` file.

    Attributes
    ----------
    bed_path, bim_path, fam_path : pathlib.Path
        The three files.
    sample_ids : pandas.Index
        Individual ids (the ``.fam`` IID column), named ``"sample"``.
    snps : pandas.DataFrame
        One row per SNP, indexed by SNP id (named ``"snp"``), with columns
        ``chr`` (categorical, labels as written), ``pos`` (int, base pairs),
        ``a1`` and ``a2`` (categorical alleles; genotypes count copies of
        ``a1``).
    fam : pandas.DataFrame
        The ``.fam`` file: columns ``fid``, ``iid``, ``father``, ``mother``
        (str), ``sex`` (int) and ``pheno`` (str, as written), indexed by IID
        (named ``"sample"``). Use :meth:`phenotype` for numeric phenotypes.

    Raises
    ------
    FileNotFoundError
        If any of the three files is missing (all missing ones are named).
    ValueError
        If the ``.fam`` or ``.bim`` cannot be parsed, IIDs repeat, the
        ``.bed`` is not a SNP-major PLINK file, or its size does not match
        the number of samples and SNPs in the ``.fam`` and ``.bim``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from bed_reader import to_bed
    >>> from emlmm.io import PlinkGenotypes
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     to_bed(f"{tmp}/toy.bed", np.array([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]]),
    ...            properties={"sid": ["rs1", "rs2"], "chromosome": ["1", "2"]})
    ...     with PlinkGenotypes(Path(tmp) / "toy") as plink:
    ...         print(plink.n_samples, plink.n_snps, list(plink.snps.chr))
    ...         for start, stop, block in plink.iter_chunks(1):
    ...             print(start, stop, block[:, 0].tolist())
    3 2 ['1', '2']
    0 1 [0.0, 1.0, 2.0]
    1 2 [2.0, 1.0, 0.0]
    """

    bed_path: Path
    bim_path: Path
    fam_path: Path
    sample_ids: pd.Index
    snps: pd.DataFrame
    fam: pd.DataFrame

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        from bed_reader import open_bed

        self.bed_path, self.bim_path, self.fam_path = _plink_paths(prefix)
        missing = [
            str(p) for p in (self.bed_path, self.bim_path, self.fam_path) if not p.is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"PLINK fileset {str(self.bed_path.with_suffix(''))!r} is incomplete; "
                f"missing: {', '.join(missing)}"
            )
        self._closed = False
        self.snps = self._read_bim()
        # bed-reader's own format check is replaced by the clearer ones below. Given
        # the SNP count, it never parses the .bim, whose metadata _read_bim keeps
        # compactly (bed-reader's arrays take about 0.5 kB per SNP).
        self._bed: Any = open_bed(
            self.bed_path,
            sid_count=len(self.snps),
            fam_location=self.fam_path,
            bim_location=self.bim_path,
            skip_format_check=True,
        )
        self.fam = self._read_fam()
        self.sample_ids = pd.Index(self.fam.index, name="sample")
        self._check_bed_size()
        with open(self.bed_path, "rb") as handle:
            magic = handle.read(3)
        if magic[:2] != _BED_MAGIC[:2]:
            raise ValueError(f"{self.bed_path} is not a PLINK .bed file (bad magic number)")
        if magic[2:] != _BED_MAGIC[2:]:
            raise ValueError(
                f"{self.bed_path} is in individual-major mode; only SNP-major .bed files "
                "are supported (rewrite it with `plink --make-bed`)"
            )

    def _read_fam(self) -> pd.DataFrame:
        bed = self._bed
        try:
            columns = {
                "fid": bed.fid,
                "iid": bed.iid,
                "father": bed.father,
                "mother": bed.mother,
                "sex": bed.sex.astype(np.int64),
                "pheno": bed.pheno,
            }
        except Exception as exc:  # bed-reader raises assorted errors on malformed files
            raise ValueError(f"could not read {self.fam_path}: {exc}") from exc
        fam = pd.DataFrame(columns, index=pd.Index(columns["iid"], name="sample"))
        if not fam.index.is_unique:
            repeated = fam.index[fam.index.duplicated()].unique()
            shown = ", ".join(repr(iid) for iid in repeated[:5])
            raise ValueError(
                f"{self.fam_path}: individual ids (IID, column 2) must be unique; "
                f"{len(repeated)} repeat: {shown}"
            )
        return fam

    def _read_bim(self) -> pd.DataFrame:
        """The .bim's SNP ids, chromosomes, positions and alleles.

        Chromosomes and alleles are categorical: a few distinct values, whatever
        the number of SNPs.
        """
        columns = ["chr", "snp", "cm", "pos", "a1", "a2"]
        text = dict.fromkeys(["chr", "snp", "a1", "a2"], str)
        try:
            bim = pd.read_csv(
                self.bim_path,
                sep=r"\s+",
                header=None,
                names=columns,
                dtype={**text, "cm": float, "pos": np.int64},
                na_filter=False,
            )
        except (ValueError, pd.errors.ParserError) as exc:
            raise ValueError(f"could not read {self.bim_path}: {exc}") from exc
        short = np.nonzero((bim[list(text)] == "").any(axis=1).to_numpy())[0]
        if short.size:
            raise ValueError(
                f"could not read {self.bim_path}: line {short[0] + 1} has fewer than the six "
                "columns of a .bim (chromosome, SNP id, cM, bp position, allele 1, allele 2)"
            )
        for column in ("chr", "a1", "a2"):
            bim[column] = bim[column].astype("category")
        bim = bim.set_index("snp").drop(columns="cm")
        bim.index.name = "snp"
        return bim

    def _check_bed_size(self) -> None:
        n_samples, n_snps = self.shape
        expected = 3 + n_snps * math.ceil(n_samples / 4)
        actual = self.bed_path.stat().st_size
        if actual != expected:
            raise ValueError(
                f"{self.bed_path} has {actual} bytes but {self.fam_path} lists {n_samples} "
                f"samples and {self.bim_path} lists {n_snps} SNPs, which need "
                f"3 + {n_snps} * ceil({n_samples} / 4) = {expected} bytes: the .bed is "
                "truncated or damaged, or the .fam/.bim do not belong to it"
            )

    # ----------------------------------------------------------------- sizes

    @property
    def n_samples(self) -> int:
        """Number of individuals (rows of the ``.fam``)."""
        return len(self.fam)

    @property
    def n_snps(self) -> int:
        """Number of SNPs (rows of the ``.bim``)."""
        return len(self.snps)

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_samples, n_snps)``."""
        return (self.n_samples, self.n_snps)

    # --------------------------------------------------------------- reading

    def read(
        self, start: int = 0, stop: int | None = None, dtype: DTypeLike = np.float64
    ) -> NDArray[np.floating[Any]]:
        """Read the genotypes of SNPs ``start`` to ``stop - 1``.

        Parameters
        ----------
        start, stop : int
            SNP positions (0-based, ``stop`` exclusive, default: to the end).
        dtype : numpy float dtype
            ``np.float64`` (default) or ``np.float32``.

        Returns
        -------
        numpy.ndarray
            ``(n_samples, stop - start)`` counts of allele ``a1`` (0, 1, 2),
            NaN where missing.
        """
        self._check_open()
        stop = self.n_snps if stop is None else stop
        if not 0 <= start <= stop <= self.n_snps:
            raise ValueError(
                f"SNP range [{start}, {stop}) is outside [0, {self.n_snps}) of {self.bed_path}"
            )
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64 (NaN for missing), not {dtype}")
        if stop == start:
            return np.empty((self.n_samples, 0), dtype=dtype)
        return self._bed.read(index=np.s_[:, start:stop], dtype=dtype, order="F")

    def iter_chunks(
        self, chunk_size: int, dtype: DTypeLike = np.float64
    ) -> Iterator[tuple[int, int, NDArray[np.floating[Any]]]]:
        """Iterate over the SNPs in consecutive chunks.

        Parameters
        ----------
        chunk_size : int
            Number of SNPs per chunk (the last one may be smaller).
        dtype : numpy float dtype
            Passed to :meth:`read`.

        Yields
        ------
        start, stop : int
            The chunk's SNP positions (``stop`` exclusive).
        block : numpy.ndarray
            ``read(start, stop)``.
        """
        chunk_size = check_count("chunk_size", chunk_size)
        for start in range(0, self.n_snps, chunk_size):
            stop = min(start + chunk_size, self.n_snps)
            yield start, stop, self.read(start, stop, dtype=dtype)

    def phenotype(self, column: int = 1) -> pd.Series:
        """A phenotype from the ``.fam`` file, numbered as GEMMA's ``-n``.

        Parameters
        ----------
        column : int
            1 (the default) is the sixth ``.fam`` column, the only phenotype
            a standard ``.fam`` file holds.

        Returns
        -------
        pandas.Series
            Float phenotype indexed by sample id, named ``"pheno"``; PLINK's
            missing code -9 and ``NA``/``nan`` become NaN.

        Raises
        ------
        ValueError
            If ``column`` is not 1, or a value is not a number (the error
            names the ``.fam`` line).
        """
        if isinstance(column, bool) or not isinstance(column, (int, np.integer)):
            raise TypeError(f"column must be an integer, not {type(column).__name__}")
        if column != 1:
            raise ValueError(
                f"phenotype column {column} does not exist: {self.fam_path} holds one "
                "phenotype, column 1 (the sixth .fam column); read other phenotypes from a "
                "separate file"
            )
        values = np.empty(self.n_samples)
        for line, token in enumerate(self.fam["pheno"], start=1):
            if token in _MISSING_TOKENS:
                values[line - 1] = np.nan
                continue
            try:
                value = float(token)
            except ValueError:
                raise ValueError(
                    f"{self.fam_path}, line {line}: phenotype {token!r} is not a number "
                    "(use -9 or NA for missing)"
                ) from None
            values[line - 1] = np.nan if value == _PLINK_MISSING_PHENOTYPE else value
        return pd.Series(values, index=self.sample_ids, name="pheno")

    # ----------------------------------------------------------- life cycle

    def close(self) -> None:
        """Release the fileset; later reads raise ``ValueError``."""
        self._bed = None
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"PLINK fileset {self.bed_path} is closed")

    def __enter__(self) -> PlinkGenotypes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return (
            f"PlinkGenotypes({str(self.bed_path.with_suffix(''))!r}, "
            f"n_samples={self.n_samples}, n_snps={self.n_snps}{state})"
        )


def read_plink(prefix: str | os.PathLike[str]) -> PlinkGenotypes:
    """Open a PLINK binary fileset (``.bed``/``.bim``/``.fam``).

    Only the ``.fam`` and ``.bim`` metadata are read now; genotypes are read
    on demand, a chunk of SNPs at a time.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path of the fileset with or without the ``.bed`` extension.

    Returns
    -------
    PlinkGenotypes
        Usable as a context manager.

    Raises
    ------
    FileNotFoundError
        If the ``.bed``, ``.bim`` or ``.fam`` file is missing.
    ValueError
        If the files are malformed or their sizes disagree (the message
        names the file and the counts).

    See Also
    --------
    emlmm.kinship : Relatedness matrix from a fileset, chunk by chunk.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from bed_reader import to_bed
    >>> from emlmm.io import read_plink
    >>> genotypes = np.array([[0, 1, 2], [1, np.nan, 2], [2, 1, 0], [0, 0, 1]])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     prefix = Path(tmp) / "toy"
    ...     to_bed(
    ...         f"{prefix}.bed",
    ...         genotypes,
    ...         properties={"iid": ["a", "b", "c", "d"], "pheno": [1.5, -9, 0.25, 3]},
    ...     )
    ...     with read_plink(prefix) as plink:
    ...         print(plink.shape)
    ...         print(plink.read(1, 3))
    ...         print(plink.phenotype().tolist())
    (4, 3)
    [[ 1.  2.]
     [nan  2.]
     [ 1.  0.]
     [ 0.  1.]]
    [1.5, nan, 0.25, 3.0]
    """
    return PlinkGenotypes(prefix)


# ----------------------------------------------------------------- lab text files


@dataclass(frozen=True)
class LabMatrices:
    """The lab's genotype, phenotype and kinship matrices, labelled as R would.

    Attributes
    ----------
    genotypes : pandas.DataFrame
        ``n x m`` genotypes; index ``"1"`` ... ``"n"`` (named ``"sample"``),
        columns ``"V1"`` ... ``"Vm"`` (named ``"snp"``).
    phenotype : pandas.Series
        The phenotype, named ``"y"``, with the same index.
    kinship : pandas.DataFrame
        ``n x n`` kinship labelled by sample on both axes.

    Examples
    --------
    >>> from emlmm.datasets import lab_files
    >>> from emlmm.io import read_lab
    >>> paths = lab_files()
    >>> matrices = read_lab(paths["X"], paths["Y"], paths["A"])
    >>> type(matrices).__name__, matrices.kinship.shape
    ('LabMatrices', (300, 300))
    """

    genotypes: pd.DataFrame
    phenotype: pd.Series
    kinship: pd.DataFrame


def read_text_matrix(path: str | os.PathLike[str]) -> NDArray[np.float64]:
    """Parse a headerless whitespace-separated numeric matrix like R's ``read.table``.

    Blank lines and ``#`` comments are skipped and ``NA`` is missing, as in
    ``read.table``; ragged rows and non-numeric tokens are errors that name
    the file and the (1-based) line. Used for the lab's files and the command
    line's kinship and covariate files.
    """
    # pandas' C parser reads a plain rectangular matrix (a large kinship) several
    # times faster; anything it rejects or pads with NaN (comments, missing values,
    # ragged or non-numeric lines) is read line by line, which names the problem.
    try:
        values = pd.read_csv(path, sep=r"\s+", header=None, dtype=float).to_numpy()
    except ValueError:  # pandas' ParserError and EmptyDataError are ValueErrors
        values = None
    if values is not None and values.size and not np.isnan(values).any():
        return values
    return _read_matrix_lines(Path(path))


def _read_matrix_lines(path: Path) -> NDArray[np.float64]:
    """:func:`read_text_matrix`, token by token."""
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            tokens = line.split("#", 1)[0].split()
            if tokens:
                rows.append(tokens)
                line_numbers.append(number)
    if not rows:
        raise ValueError(f"{path} holds no data")
    width = len(rows[0])
    for tokens, number in zip(rows, line_numbers, strict=True):
        if len(tokens) != width:
            raise ValueError(
                f"{path}, line {number}: {len(tokens)} values, but line {line_numbers[0]} "
                f"has {width}; every row must have the same number of values"
            )
    flat = ["nan" if token in _MISSING_TOKENS else token for tokens in rows for token in tokens]
    try:
        values = np.array(flat, dtype=np.float64)
    except ValueError:
        for tokens, number in zip(rows, line_numbers, strict=True):
            for position, token in enumerate(tokens, start=1):
                if token in _MISSING_TOKENS:
                    continue
                try:
                    float(token)
                except ValueError:
                    raise ValueError(
                        f"{path}, line {number}, value {position}: {token!r} is not a number"
                    ) from None
        raise  # pragma: no cover - numpy rejected what float() accepts
    return values.reshape(len(rows), width)


def read_lab(
    x: str | os.PathLike[str], y: str | os.PathLike[str], a: str | os.PathLike[str]
) -> LabMatrices:
    """Read the lab's genotype (X), phenotype (Y) and kinship (A) text files.

    Each file is a headerless, whitespace-separated numeric matrix, as R's
    ``read.table`` reads by default (blank lines and ``#`` comments are
    skipped, ``NA`` is missing). Samples are labelled ``"1"`` ... ``"n"``
    and SNPs ``"V1"`` ... ``"Vm"``, the row and column names R gives them.

    Parameters
    ----------
    x : str or os.PathLike
        Genotypes, ``n`` rows (individuals) by ``m`` columns (SNPs).
    y : str or os.PathLike
        Phenotype, ``n`` rows of one value.
    a : str or os.PathLike
        Kinship, ``n`` by ``n``, rows and columns in the order of X and Y.

    Returns
    -------
    LabMatrices

    Raises
    ------
    FileNotFoundError
        If a file does not exist.
    ValueError
        If a file is malformed (the message names the file and line), Y has
        more than one column, A is not square, or the row counts disagree.

    See Also
    --------
    emlmm.datasets.load_lab : The bundled lab data with real sample and SNP ids.

    Examples
    --------
    >>> from emlmm.datasets import lab_files
    >>> from emlmm.io import read_lab
    >>> paths = lab_files()
    >>> lab = read_lab(paths["X"], paths["Y"], paths["A"])
    >>> lab.genotypes.shape, lab.phenotype.shape, lab.kinship.shape
    ((300, 1000), (300,), (300, 300))
    >>> lab.genotypes.iloc[:2, :3]
    snp      V1   V2   V3
    sample
    1       1.0  0.0  0.0
    2       2.0  0.0  1.0
    """
    paths = {"X": Path(x), "Y": Path(y), "A": Path(a)}
    matrices = {name: read_text_matrix(path) for name, path in paths.items()}
    genotypes, phenotype, kinship = matrices["X"], matrices["Y"], matrices["A"]
    if phenotype.shape[1] != 1:
        raise ValueError(
            f"{paths['Y']} must hold one phenotype value per line; it has "
            f"{phenotype.shape[1]} columns"
        )
    if kinship.shape[0] != kinship.shape[1]:
        raise ValueError(
            f"{paths['A']} must be a square kinship matrix; it is "
            f"{kinship.shape[0]} x {kinship.shape[1]}"
        )
    rows = {name: matrix.shape[0] for name, matrix in matrices.items()}
    if len(set(rows.values())) != 1:
        sizes = ", ".join(f"{name} ({paths[name]}) has {rows[name]}" for name in rows)
        raise ValueError(f"X, Y and A must have one row per individual, but {sizes} rows")
    samples = pd.Index([str(i) for i in range(1, rows["X"] + 1)], name="sample")
    snps = pd.Index([f"V{j}" for j in range(1, genotypes.shape[1] + 1)], name="snp")
    return LabMatrices(
        genotypes=pd.DataFrame(genotypes, index=samples, columns=snps),
        phenotype=pd.Series(phenotype[:, 0], index=samples, name="y"),
        kinship=pd.DataFrame(kinship, index=samples, columns=samples),
    )
