"""Reading genotype, phenotype and kinship files.

The formats supported are:

* PLINK binary filesets (``.bed``/``.bim``/``.fam``), read lazily through
  `bed-reader <https://fastlmm.github.io/bed-reader/>`_ by :func:`emlmm.read_plink`,
  with every phenotype column of the ``.fam`` (GEMMA's ``-n``);
* phenotype and covariate text files, in GEMMA's headerless ``-p``/``-c``
  layout (rows in ``.fam`` order) or PLINK's ``FID IID name ...`` layout (rows
  matched by individual id): :func:`emlmm.read_phenotypes`, :func:`read_covariates`;
* GCTA's binary relatedness matrix (``.grm.bin``/``.grm.N.bin``/``.grm.id``):
  :func:`read_grm`, :func:`write_grm`;
* the lab's three headerless whitespace-separated text matrices (genotypes,
  phenotype, kinship), read by :func:`read_lab`.

Every error names the file it is about, and for text files the line.
"""

from __future__ import annotations

import functools
import math
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, DTypeLike, NDArray

from emlmm._data import _preview, check_count, repeated_labels, row_bands

__all__ = [
    "LabMatrices",
    "PlinkGenotypes",
    "read_covariates",
    "read_grm",
    "read_lab",
    "read_phenotypes",
    "read_plink",
    "write_grm",
]

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
        (str), ``sex`` (int) and ``pheno`` (the sixth column, str, as
        written), indexed by IID (named ``"sample"``). Use :meth:`phenotype`
        and :meth:`phenotypes` for numeric phenotypes, including any columns
        after the sixth.

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
        self._bed: Any = self._open_bed()
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
            repeated = repeated_labels(fam.index)
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

    def phenotypes(self) -> pd.DataFrame:
        """Every phenotype column of the ``.fam`` file (its sixth column onward).

        A standard ``.fam`` file has one phenotype, the sixth column; GEMMA
        reads any further columns as more phenotypes (``-n 2`` is the
        seventh column, and so on). bed-reader reads only six columns, so
        the ``.fam`` is read again here, as text.

        Returns
        -------
        pandas.DataFrame
            Float phenotypes indexed by sample id (named ``"sample"``), one
            column per phenotype named ``"pheno1"``, ``"pheno2"``, ...; PLINK's
            missing code -9 and ``NA``/``nan`` become NaN.

        Raises
        ------
        ValueError
            If a value is not a number (the error names the ``.fam`` line and
            column), the lines have different numbers of columns, or the file
            no longer matches the individuals read when the fileset was opened.

        See Also
        --------
        phenotype : One of these columns, as a Series.
        emlmm.read_phenotypes : Phenotypes from a separate file.

        Examples
        --------
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from bed_reader import to_bed
        >>> from emlmm.io import read_plink
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     prefix = Path(tmp) / "toy"
        ...     to_bed(f"{prefix}.bed", np.zeros((3, 2)), properties={"iid": ["a", "b", "c"]})
        ...     _ = Path(f"{prefix}.fam").write_text(
        ...         "f a 0 0 1 1.5 10 NA\\nf b 0 0 2 -9 20 0.5\\nf c 0 0 1 2.5 30 -1\\n"
        ...     )
        ...     with read_plink(prefix) as plink:
        ...         print(plink.phenotypes())
        ...         print(plink.phenotype(3).tolist())
                pheno1  pheno2  pheno3
        sample
        a          1.5    10.0     NaN
        b          NaN    20.0     0.5
        c          2.5    30.0    -1.0
        [nan, 0.5, -1.0]
        """
        tokens, lines = self._fam_phenotype_tokens()
        values = _to_numbers(
            tokens,
            lambda row, column, token: self._fam_number_error(lines[row], column + 1, token),
            minus_nine_missing=True,
        )
        columns = [f"pheno{j}" for j in range(1, values.shape[1] + 1)]
        return pd.DataFrame(values, index=self.sample_ids.copy(), columns=columns)

    def phenotype(self, column: int = 1) -> pd.Series:
        """A phenotype from the ``.fam`` file, numbered as GEMMA's ``-n``.

        Parameters
        ----------
        column : int
            1 (the default) is the sixth ``.fam`` column, the only phenotype
            a standard ``.fam`` file holds; 2 is the seventh column, and so on.

        Returns
        -------
        pandas.Series
            Float phenotype indexed by sample id, named ``"pheno"`` for
            column 1 and ``"pheno<column>"`` otherwise (as in
            :meth:`phenotypes`); PLINK's missing code -9 and ``NA``/``nan``
            become NaN.

        Raises
        ------
        ValueError
            If the ``.fam`` has no such column (the message says how many it
            has), or a value in this column is not a number (the error names
            the ``.fam`` line).
        """
        if isinstance(column, bool) or not isinstance(column, (int, np.integer)):
            raise TypeError(f"column must be an integer, not {type(column).__name__}")
        tokens, lines = self._fam_phenotype_tokens()
        n_phenotypes = tokens.shape[1]
        if not 1 <= column <= n_phenotypes:
            if n_phenotypes == 1:
                held = "one phenotype (column 6), phenotype 1"
            else:
                held = (
                    f"{n_phenotypes} phenotypes (columns 6 to {5 + n_phenotypes}), "
                    f"phenotypes 1 to {n_phenotypes}"
                )
            raise ValueError(
                f"phenotype column {column} does not exist: {self.fam_path} holds {held} as "
                "GEMMA's -n numbers them; read other phenotypes from a phenotype file "
                "(emlmm gwas --pheno FILE, or emlmm.read_phenotypes)"
            )
        index = int(column) - 1
        values = _to_numbers(
            tokens[:, index : index + 1],
            lambda row, _, token: self._fam_number_error(lines[row], column, token),
            minus_nine_missing=True,
        )
        name = "pheno" if column == 1 else f"pheno{column}"
        return pd.Series(values[:, 0], index=self.sample_ids.copy(), name=name)

    def _fam_phenotype_tokens(self) -> tuple[NDArray[np.object_], list[int]]:
        """The phenotype fields (sixth column onward) of each ``.fam`` line, and the lines."""
        with open(self.fam_path, encoding="utf-8") as handle:
            split = [line.split() for line in handle]
        lines = [number for number, tokens in enumerate(split, start=1) if tokens]
        rows = [tokens for tokens in split if tokens]
        if len(rows) != self.n_samples:
            raise ValueError(
                f"{self.fam_path} now has {len(rows)} individuals, but {self.n_samples} were "
                "read when the fileset was opened; was the file changed? Open it again"
            )
        width = len(rows[0]) if rows else 6
        if any(len(tokens) != width for tokens in rows):
            row = next(i for i, tokens in enumerate(rows) if len(tokens) != width)
            raise ValueError(
                f"{self.fam_path}, line {lines[row]}: {len(rows[row])} columns, but line "
                f"{lines[0]} has {width}; every line of a .fam must have the same number of "
                "columns (six, then one per extra phenotype)"
            )
        iids = self.fam["iid"].tolist()
        if [tokens[1] for tokens in rows] != iids:
            row = next(i for i, tokens in enumerate(rows) if tokens[1] != iids[i])
            raise ValueError(
                f"{self.fam_path}, line {lines[row]}: individual id {rows[row][1]!r} is not "
                f"{iids[row]!r}, read when the fileset was opened; was the file changed? Open "
                "it again"
            )
        return _token_array(rows, width)[:, 5:], lines

    def _fam_number_error(self, line: int, phenotype: int, token: str) -> ValueError:
        return ValueError(
            f"{self.fam_path}, line {line}: phenotype {token!r} is not a number (column "
            f"{5 + phenotype} of the .fam, phenotype {phenotype}); use -9 or NA for missing"
        )

    # ----------------------------------------------------------- life cycle

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a Dask worker, say) as its paths, made absolute here, and its
        metadata: the copy opens the fileset again, so the files must be where the copy
        runs (shared storage)."""
        paths = {name: getattr(self, name).absolute()
                 for name in ("bed_path", "bim_path", "fam_path")}  # fmt: skip
        return {**self.__dict__, **paths, "_bed": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not self._closed:
            self._bed = self._open_bed(iid_count=len(self.sample_ids))

    def _open_bed(self, iid_count: int | None = None) -> Any:
        """bed-reader's reader of the .bed; given the SNP count (and, when known, the
        individuals'), it parses neither the .bim nor the .fam."""
        from bed_reader import open_bed

        return open_bed(
            self.bed_path,
            iid_count=iid_count,
            sid_count=len(self.snps),
            fam_location=self.fam_path,
            bim_location=self.bim_path,
            skip_format_check=True,
        )

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


# ------------------------------------------------------- phenotype and covariate files


def _token_array(rows: list[list[str]], width: int) -> NDArray[np.object_]:
    """Rows of ``width`` tokens as a 2-d array of str objects (also when there are none)."""
    return np.array(rows, dtype=object).reshape(len(rows), width)


def _to_numbers(
    tokens: NDArray[np.object_],
    error: Callable[[int, int, str], ValueError],
    *,
    minus_nine_missing: bool,
) -> NDArray[np.float64]:
    """A 2-d array of tokens as floats; ``NA``/``nan`` (and -9 if asked) become NaN.

    ``error(row, column, token)`` builds the error for the first token, line by
    line, that is not a number (0-based positions in ``tokens``).
    """
    missing = np.isin(tokens, list(_MISSING_TOKENS))
    try:
        values = np.where(missing, "nan", tokens).astype(np.float64)
    except ValueError:
        for (i, j), token in np.ndenumerate(tokens):
            if missing[i, j]:
                continue
            try:
                float(token)
            except ValueError:
                raise error(i, j, token) from None
        raise  # pragma: no cover - numpy rejected what float() accepts
    if minus_nine_missing:
        values[values == _PLINK_MISSING_PHENOTYPE] = np.nan
    return values


@dataclass(frozen=True)
class _TextTable:
    """A phenotype or covariate file split into fields.

    ``id_field`` is the 0-based field holding the IID (1 under a ``FID IID``
    header, 0 under PLINK 2's ``#IID``) and ``names`` the header's value
    columns; both are None for GEMMA's headerless layout, whose ``#`` comments
    are dropped.
    """

    path: Path
    rows: list[list[str]]
    lines: list[int]
    id_field: int | None
    names: list[str] | None

    @property
    def first_value(self) -> int:
        """0-based field of the first value."""
        return 0 if self.id_field is None else self.id_field + 1


def _header_id_field(tokens: Sequence[str]) -> int | None:
    """Where the IID is under a PLINK header line (``[#]FID IID ...`` or ``[#]IID ...``)."""
    first = tokens[0].upper()
    if first in ("FID", "#FID") and len(tokens) > 1 and tokens[1].upper() == "IID":
        return 1
    if first in ("IID", "#IID"):
        return 0
    return None


def _read_text_table(path: Path) -> _TextTable:
    with open(path, encoding="utf-8") as handle:
        text = handle.read().splitlines()
    first = next((number for number, line in enumerate(text) if line.split()), None)
    if first is None:
        raise ValueError(f"{path} holds no data")
    id_field = _header_id_field(text[first].split())
    names = None if id_field is None else text[first].split()[id_field + 1 :]
    rows: list[list[str]] = []
    lines: list[int] = []
    start = first if id_field is None else first + 1
    for number, line in enumerate(text[start:], start=start + 1):
        tokens = (line.split("#", 1)[0] if id_field is None else line).split()
        if tokens:
            rows.append(tokens)
            lines.append(number)
    if names is None:
        if not rows:
            raise ValueError(f"{path} holds no data")
        width = len(rows[0])
        for tokens, number in zip(rows, lines, strict=True):
            if len(tokens) != width:
                raise ValueError(
                    f"{path}, line {number}: {len(tokens)} values, but line {lines[0]} has "
                    f"{width}; every row must have the same number of values"
                )
        return _TextTable(path, rows, lines, None, None)
    assert id_field is not None
    header = f"{path}, line {first + 1} (the header)"
    if not names:
        raise ValueError(f"{header} names no columns after the individual ids")
    repeated = repeated_labels(names)
    if len(repeated):
        raise ValueError(f"{header}: column names must be unique; repeated: {_preview(repeated)}")
    width = id_field + 1 + len(names)
    for tokens, number in zip(rows, lines, strict=True):
        if len(tokens) != width:
            raise ValueError(
                f"{path}, line {number}: {len(tokens)} fields, but the header (line "
                f"{first + 1}) has {width}; every row must have one field per header column"
            )
    return _TextTable(path, rows, lines, id_field, names)


def _sample_index(sample_ids: Sequence[str] | pd.Index) -> tuple[pd.Index, list[str]]:
    """``sample_ids`` as the result's index, and as the strings matched against files."""
    if isinstance(sample_ids, (str, bytes)):
        raise TypeError("sample_ids must be a sequence of individual ids, not a single string")
    index = pd.Index(sample_ids, name="sample")
    keys = [str(label) for label in index]
    repeated = repeated_labels(keys)
    if len(repeated):
        raise ValueError(
            f"sample_ids must be unique; {len(repeated)} repeat: {_preview(repeated)}"
        )
    return index, keys


def _read_sample_table(
    path: str | os.PathLike[str],
    sample_ids: Sequence[str] | pd.Index,
    *,
    what: str,
    prefix: str,
    gemma_flag: str,
    minus_nine_missing: tuple[bool, bool],
    number_hint: str,
) -> pd.DataFrame:
    """What :func:`emlmm.read_phenotypes` and :func:`read_covariates` share.

    ``minus_nine_missing`` says whether -9 is missing without a header and with one.
    """
    index, keys = _sample_index(sample_ids)
    table = _read_text_table(Path(path))
    start = table.first_value
    keyed = table.id_field is not None
    if not table.rows:
        raise ValueError(f"{table.path} has a header but no individuals")
    width = len(table.rows[0])

    if not keyed and len(table.rows) == len(keys):
        # A PLINK file whose header was left off would otherwise be read as numbers.
        for field in (0, 1):
            if field + 1 < width and {row[field] for row in table.rows} == set(keys):
                raise ValueError(
                    f"{table.path}: column {field + 1} holds the sample ids, so this looks like "
                    f"a PLINK {what} file without its header line; add one ('FID IID name ...' "
                    "or '#IID name ...') so that rows are matched by id"
                )

    def error(row: int, column: int, token: str) -> ValueError:
        line = table.lines[row]
        field = start + column + 1
        named = f" ({table.names[column]})" if table.names is not None else ""
        hint = number_hint
        if not keyed and row == 0:
            hint += (
                f"; if line {line} is a header, it must begin with FID IID (or #IID), and the "
                "rows with the ids"
            )
        return ValueError(
            f"{table.path}, line {line}, column {field}{named}: {token!r} is not a number{hint}"
        )

    values = _to_numbers(
        _token_array(table.rows, width)[:, start:],
        error,
        minus_nine_missing=minus_nine_missing[keyed],
    )

    if not keyed:
        if len(table.rows) != len(keys):
            raise ValueError(
                f"{table.path} has {len(table.rows)} rows but there are {len(keys)} sample "
                f"ids: without a header, a {what} file holds one row per individual, in .fam "
                f"order (GEMMA's {gemma_flag}); to match rows by individual id instead, begin "
                "the file with a header line 'FID IID name ...' and each row with its ids"
            )
        columns = [f"{prefix}{j}" for j in range(1, values.shape[1] + 1)]
        return pd.DataFrame(values, index=index, columns=columns)

    assert table.id_field is not None and table.names is not None
    id_field = table.id_field
    ids = pd.Index([row[id_field] for row in table.rows])
    if ids.has_duplicates:
        repeated = repeated_labels(ids)
        shown = ", ".join(
            f"{iid!r} (lines {', '.join(str(table.lines[i]) for i in np.flatnonzero(ids == iid))})"
            for iid in repeated[:5]
        )
        raise ValueError(
            f"{table.path}: individual ids (IID, column {id_field + 1}) must be unique; "
            f"{len(repeated)} repeat: {shown}"
        )
    position = ids.get_indexer(keys)
    found = position >= 0
    if not found.any():
        raise ValueError(
            f"none of the {len(ids)} individuals in {table.path} is among the {len(keys)} "
            f"sample ids: the file has {_preview(ids)}, the samples are {_preview(keys)} "
            f"(rows are matched by individual id, IID, column {id_field + 1})"
        )
    matched = np.full((len(keys), values.shape[1]), np.nan)
    matched[found] = values[position[found]]
    return pd.DataFrame(matched, index=index, columns=list(table.names))


def read_phenotypes(
    path: str | os.PathLike[str], sample_ids: Sequence[str] | pd.Index
) -> pd.DataFrame:
    """Read a phenotype file in GEMMA's ``-p`` or PLINK's ``--pheno`` format.

    The format is told by the first line:

    * GEMMA (no header): whitespace-separated numbers, one column per
      phenotype and one row per individual, in the order of ``sample_ids``
      (the ``.fam`` order). Columns are named ``"pheno1"``, ``"pheno2"``, ...
      Blank lines and ``#`` comments are skipped.
    * PLINK (a header line beginning ``FID IID``, any case, or PLINK 2's
      ``#FID IID`` or ``#IID``, then the phenotype names): each row begins
      with the family and individual ids and is matched to ``sample_ids`` by
      the individual id (IID); the FID is not used. Individuals of
      ``sample_ids`` absent from the file get NaN, and rows of individuals
      not in ``sample_ids`` are ignored. Columns keep the header's names.

    In both, ``NA`` (or ``na``, ``NaN``, ``nan``) and -9 are missing (NaN).

    Parameters
    ----------
    path : str or os.PathLike
        The phenotype file.
    sample_ids : sequence of str or pandas.Index
        The individuals, e.g. ``PlinkGenotypes.sample_ids``; the ids are
        compared as strings.

    Returns
    -------
    pandas.DataFrame
        Float phenotypes indexed by ``sample_ids`` (named ``"sample"``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a value is not a number (the message names the line and column),
        the rows have different lengths, a headerless file has more or fewer
        rows than ``sample_ids`` (both numbers are given), or, with a header,
        an individual id repeats or none of them is in ``sample_ids``.

    See Also
    --------
    emlmm.io.PlinkGenotypes.phenotypes : The phenotypes of the ``.fam`` file.
    read_covariates : The same layouts, for covariates.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from emlmm.io import read_phenotypes
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     gemma = Path(tmp) / "gemma.txt"
    ...     _ = gemma.write_text("1.5 10\\nNA 20\\n2.5 -9\\n")
    ...     plink = Path(tmp) / "plink.txt"
    ...     _ = plink.write_text("FID IID height bmi\\nf c 180 NA\\nf a 165 22.5\\n")
    ...     print(read_phenotypes(gemma, ["a", "b", "c"]))
    ...     print(read_phenotypes(plink, ["a", "b", "c"]))
            pheno1  pheno2
    sample
    a          1.5    10.0
    b          NaN    20.0
    c          2.5     NaN
            height   bmi
    sample
    a        165.0  22.5
    b          NaN   NaN
    c        180.0   NaN
    """
    return _read_sample_table(
        path,
        sample_ids,
        what="phenotype",
        prefix="pheno",
        gemma_flag="-p",
        minus_nine_missing=(True, True),
        number_hint=" (use NA or -9 for missing)",
    )


def read_covariates(
    path: str | os.PathLike[str], sample_ids: Sequence[str] | pd.Index
) -> pd.DataFrame:
    """Read a covariate file in GEMMA's ``-c`` or PLINK's ``--covar`` format.

    The format is told by the first line:

    * GEMMA (no header): whitespace-separated numbers, one column per
      covariate and one row per individual, in the order of ``sample_ids``
      (the ``.fam`` order). As in GEMMA the file is the whole fixed-effect
      design: include a column of 1s for an intercept. Columns are named
      ``"covar1"``, ``"covar2"``, ... Only ``NA`` (or ``na``, ``NaN``,
      ``nan``) is missing; -9 is a value. Blank lines and ``#`` comments are
      skipped.
    * PLINK (a header line beginning ``FID IID``, any case, or PLINK 2's
      ``#FID IID`` or ``#IID``, then the covariate names): rows are matched
      to ``sample_ids`` by individual id (IID), as in
      :func:`emlmm.read_phenotypes`; individuals absent from the file get NaN.
      As in PLINK, both ``NA`` and -9 are missing. Columns keep the
      header's names.

    Covariates must be numbers: code a categorical covariate as numbers
    (indicator columns), or use the Python API with a formula and ``C(...)``.

    Parameters
    ----------
    path : str or os.PathLike
        The covariate file.
    sample_ids : sequence of str or pandas.Index
        The individuals, e.g. ``PlinkGenotypes.sample_ids``; the ids are
        compared as strings.

    Returns
    -------
    pandas.DataFrame
        Float covariates indexed by ``sample_ids`` (named ``"sample"``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        As :func:`emlmm.read_phenotypes`; a value that is not a number (such as a
        category name) is reported with its line and column.

    See Also
    --------
    read_phenotypes : The same layouts, for phenotypes.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from emlmm.io import read_covariates
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     gemma = Path(tmp) / "covariates.txt"
    ...     _ = gemma.write_text("1 0.5\\n1 -9\\n1 NA\\n")
    ...     print(read_covariates(gemma, ["a", "b", "c"]))
            covar1  covar2
    sample
    a          1.0     0.5
    b          1.0    -9.0
    c          1.0     NaN
    """
    return _read_sample_table(
        path,
        sample_ids,
        what="covariate",
        prefix="covar",
        gemma_flag="-c",
        minus_nine_missing=(False, True),
        number_hint=(
            " (covariates must be numbers: code a categorical covariate as numbers, or use "
            "the Python API with a formula and C(...))"
        ),
    )


# ------------------------------------------------------------------ GCTA GRM files

_GRM_EXTENSIONS = (".grm.bin", ".grm.N.bin", ".grm.id")
_GRM_DTYPE = np.dtype("<f4")


def _grm_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    path = Path(prefix)
    for extension in _GRM_EXTENSIONS:
        if path.name.endswith(extension):
            path = path.with_name(path.name[: -len(extension)])
            break
    # append rather than with_suffix: a prefix such as "data.v2" keeps its dot
    values, counts, ids = (path.with_name(path.name + ext) for ext in _GRM_EXTENSIONS)
    return values, counts, ids


def _read_grm_ids(path: Path) -> pd.Index:
    iids: list[str] = []
    lines: list[int] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2:
                raise ValueError(
                    f"{path}, line {number}: {len(tokens)} fields; a .grm.id line holds two, "
                    "the family id (FID) and the individual id (IID)"
                )
            iids.append(tokens[1])
            lines.append(number)
    if not iids:
        raise ValueError(f"{path} lists no individuals")
    index = pd.Index(iids, name="sample")
    if index.has_duplicates:
        repeated = repeated_labels(index)
        raise ValueError(
            f"{path}: individual ids (IID, column 2) must be unique to label the matrix; "
            f"{len(repeated)} repeat: {_preview(repeated)}"
        )
    return index


def read_grm(prefix: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a relatedness matrix in GCTA's binary format (``gcta64 --make-grm``).

    GCTA writes three files: ``prefix.grm.bin``, the lower triangle of the
    matrix with its diagonal, row by row (row ``i`` holds entries ``(i, 0)``
    to ``(i, i)``), as little-endian 4-byte floats; ``prefix.grm.N.bin``, the
    number of SNPs used for each entry, in the same layout; and
    ``prefix.grm.id``, the family and individual id of each row, tab-separated,
    without a header. The ``.grm.N.bin`` is not needed here and may be absent.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path of the files without extension, or of one of them.

    Returns
    -------
    pandas.DataFrame
        The full symmetric ``n x n`` matrix (float64), labelled on both axes
        by the individual ids (IID, named ``"sample"``).

    Raises
    ------
    FileNotFoundError
        If the ``.grm.bin`` or ``.grm.id`` file is missing (both are named).
    ValueError
        If the ``.grm.id`` is malformed or repeats an individual id, or the
        size of the ``.grm.bin`` is not that of ``n (n + 1) / 2`` floats for
        the ``n`` individuals listed (the message gives both sizes).

    See Also
    --------
    write_grm : Write a matrix in this format.
    emlmm.kinship : Relatedness matrix from genotypes.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from emlmm.io import read_grm
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     prefix = Path(tmp) / "toy"
    ...     _ = Path(f"{prefix}.grm.id").write_text("f1\\ta\\nf2\\tb\\n")
    ...     np.array([1.0, 0.25, 0.75], dtype="<f4").tofile(f"{prefix}.grm.bin")
    ...     print(read_grm(prefix))
    sample     a     b
    sample
    a       1.00  0.25
    b       0.25  0.75
    """
    values_path, _, ids_path = _grm_paths(prefix)
    missing = [str(p) for p in (values_path, ids_path) if not p.is_file()]
    if missing:
        stem = str(values_path)[: -len(".grm.bin")]
        raise FileNotFoundError(f"GCTA GRM {stem!r} is incomplete; missing: {', '.join(missing)}")
    ids = _read_grm_ids(ids_path)
    n = len(ids)
    expected = n * (n + 1) // 2 * _GRM_DTYPE.itemsize
    actual = values_path.stat().st_size
    if actual != expected:
        doubled = (
            " (twice that: 8-byte values are not GCTA's format, which stores 4-byte floats)"
            if actual == 2 * expected
            else ""
        )
        raise ValueError(
            f"{values_path} has {actual} bytes but {ids_path} lists {n} individuals, whose "
            f"lower triangle needs {n} * ({n} + 1) / 2 * 4 = {expected} bytes{doubled}: the "
            ".grm.bin is truncated or damaged, or the .grm.id does not belong to it"
        )
    matrix = np.empty((n, n))
    with open(values_path, "rb") as handle:
        for i in range(n):
            row = np.fromfile(handle, dtype=_GRM_DTYPE, count=i + 1)
            matrix[i, : i + 1] = row
            matrix[:i, i] = row[:i]
    return pd.DataFrame(matrix, index=ids, columns=ids.copy(), copy=False)


def _grm_fids(
    labels: pd.Index, fids: Sequence[str] | pd.Series | None
) -> tuple[list[str], list[str]]:
    """The FID and IID written for each row of the kinship."""
    if isinstance(labels, pd.MultiIndex):
        if labels.nlevels != 2:
            raise ValueError(
                f"kinship's labels have {labels.nlevels} levels; label it by individual id, or "
                "by (family id, individual id)"
            )
        if fids is not None:
            raise ValueError(
                "kinship is labelled by (family id, individual id) already; do not pass fids"
            )
        pairs = [(str(fid), str(iid)) for fid, iid in labels]
        return [fid for fid, _ in pairs], [iid for _, iid in pairs]
    iids = [str(label) for label in labels]
    if fids is None:
        return iids, iids
    if isinstance(fids, (str, bytes)):
        raise TypeError("fids must be a sequence of family ids, one per individual, not a string")
    if isinstance(fids, pd.Series):
        absent = labels.difference(fids.index)
        if len(absent):
            raise ValueError(
                f"fids has no family id for {len(absent)} of the kinship's individuals: "
                f"{_preview(absent)}"
            )
        fids = list(fids.loc[labels])
    family = [str(fid) for fid in fids]
    if len(family) != len(iids):
        raise ValueError(
            f"fids has {len(family)} family ids but the kinship has {len(iids)} individuals"
        )
    return family, iids


def _check_grm_ids(fids: Sequence[str], iids: Sequence[str]) -> None:
    if len(set(iids)) != len(iids):
        repeated = repeated_labels(iids)
        raise ValueError(
            f"kinship's individual ids must be unique; {len(repeated)} repeat: "
            f"{_preview(repeated)}"
        )
    for kind, ids in (("individual", iids), ("family", fids)):
        bad = [label for label in ids if not label or len(label.split()) != 1]
        if bad:
            raise ValueError(
                f"{kind} ids written to a .grm.id cannot be empty or hold whitespace: "
                f"{_preview(bad)}"
            )


def _grm_counts(
    n_snps: int | ArrayLike | None, kinship: pd.DataFrame
) -> NDArray[np.float64] | float:
    """The SNP counts to write: one number for every entry, or an n x n matrix."""
    n = kinship.shape[0]
    if n_snps is None:
        return 0.0
    if isinstance(n_snps, bool):
        raise TypeError("n_snps must be a number of SNPs or an n x n matrix of them, not a bool")
    if isinstance(n_snps, pd.DataFrame):
        if not (n_snps.index.equals(kinship.index) and n_snps.columns.equals(kinship.columns)):
            raise ValueError("n_snps must be labelled as the kinship, in the same order")
    counts = np.asarray(n_snps, dtype=np.float64)
    if counts.ndim == 0:
        if not np.isfinite(counts) or counts < 0:
            raise ValueError("n_snps must be finite and non-negative")
        return float(counts)
    if counts.shape != (n, n):
        raise ValueError(
            f"n_snps must be one number, or a matrix of the kinship's shape ({n}, {n}), not of "
            f"shape {counts.shape}"
        )
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("n_snps must be finite and non-negative")
    if not np.array_equal(counts, counts.T):
        raise ValueError("n_snps must be symmetric, as the kinship")
    return counts


def write_grm(
    prefix: str | os.PathLike[str],
    kinship: pd.DataFrame,
    n_snps: int | ArrayLike | None = None,
    *,
    fids: Sequence[str] | pd.Series | None = None,
    overwrite: bool = False,
) -> None:
    """Write a relatedness matrix in GCTA's binary format (``--grm prefix``).

    Writes ``prefix.grm.bin`` (the lower triangle with the diagonal, row by
    row, as little-endian 4-byte floats), ``prefix.grm.N.bin`` (the number
    of SNPs behind each entry, in the same layout) and ``prefix.grm.id``
    (``FID<TAB>IID`` per individual, no header), as :func:`read_grm` and
    ``gcta64 --grm`` read them. Values are rounded to single precision.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path of the files without extension.
    kinship : pandas.DataFrame
        Square, symmetric matrix labelled by individual id on both axes, in
        the same order (as :func:`emlmm.kinship` and :func:`read_grm` return
        it); or labelled by a (family id, individual id) MultiIndex.
    n_snps : int or array_like, optional
        The SNP count written to ``.grm.N.bin``: one number for every entry,
        or an ``n x n`` symmetric matrix of them. Default 0, for unknown;
        GCTA uses the counts only when it combines matrices (such as
        ``--mgrm`` merges, which weight each matrix by them), so give the
        number of SNPs the kinship was computed from if it will be merged.
    fids : sequence of str or pandas.Series, optional
        Family ids, one per row (a Series is matched by individual id).
        Default: each individual's id, as PLINK's ``--no-fid`` does.
    overwrite : bool
        Replace existing files; by default, if any of the three exists,
        nothing is written.

    Raises
    ------
    TypeError
        If ``kinship`` is not a DataFrame.
    FileExistsError
        If a file exists and ``overwrite`` is False (each is named).
    ValueError
        If ``kinship`` is not square, not symmetric (beyond single-precision
        round-off), not finite, not labelled alike on both axes or without
        labels, or its ids repeat, are empty or hold whitespace; or if
        ``n_snps`` or ``fids`` do not fit it.

    See Also
    --------
    read_grm : Read it back.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import pandas as pd
    >>> from emlmm.io import read_grm, write_grm
    >>> ids = pd.Index(["a", "b", "c"], name="sample")
    >>> matrix = pd.DataFrame(
    ...     [[1.0, 0.5, 0.0], [0.5, 1.0, 0.1], [0.0, 0.1, 1.0]], index=ids, columns=ids
    ... )
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_grm(Path(tmp) / "toy", matrix, n_snps=1000)
    ...     print(sorted(path.name for path in Path(tmp).iterdir()))
    ...     print(Path(tmp, "toy.grm.id").read_text().splitlines())
    ...     print(read_grm(Path(tmp) / "toy").round(6))
    ['toy.grm.N.bin', 'toy.grm.bin', 'toy.grm.id']
    ['a\\ta', 'b\\tb', 'c\\tc']
    sample    a    b    c
    sample
    a       1.0  0.5  0.0
    b       0.5  1.0  0.1
    c       0.0  0.1  1.0
    """
    if not isinstance(kinship, pd.DataFrame):
        raise TypeError(
            "kinship must be a pandas DataFrame labelled by individual id on both axes (the "
            f"ids go to the .grm.id file), not {type(kinship).__name__}"
        )
    n_rows, n_columns = kinship.shape
    if n_rows != n_columns:
        raise ValueError(f"kinship must be square; it is {n_rows} x {n_columns}")
    if isinstance(kinship.index, pd.RangeIndex):
        raise ValueError(
            "kinship has no individual ids (its index is the default 0 ... n-1); label it, "
            "e.g. pd.DataFrame(matrix, index=ids, columns=ids)"
        )
    if not kinship.index.equals(kinship.columns):
        raise ValueError(
            "kinship's rows and columns must carry the same individual ids in the same order"
        )
    family, iids = _grm_fids(kinship.index, fids)
    _check_grm_ids(family, iids)
    try:
        values = kinship.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"kinship must be numeric: {exc}") from None
    largest, asymmetry = 0.0, 0.0
    for _, band, mirror in row_bands(values, BAND_ENTRIES):  # no n x n temporary
        if not np.isfinite(band).all():
            raise ValueError("kinship holds NaN or infinite values; a .grm.bin cannot mark them")
        largest = max(largest, float(np.abs(band).max(initial=0.0)))
        asymmetry = max(asymmetry, float(np.abs(band - mirror).max(initial=0.0)))
    tolerance = 4 * float(np.finfo(np.float32).eps) * largest
    if asymmetry > tolerance:
        raise ValueError(
            f"kinship must be symmetric; entries (i, j) and (j, i) differ by up to "
            f"{asymmetry:.3g}, more than single-precision round-off ({tolerance:.3g})"
        )
    counts = _grm_counts(n_snps, kinship)
    paths = _grm_paths(prefix)
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass "
            "overwrite=True to replace the GRM"
        )
    ids_text = "".join(f"{fid}\t{iid}\n" for fid, iid in zip(family, iids, strict=True))
    # The kinship's lower triangle from (K + K') / 2, and the SNP counts'.
    n = values.shape[0]
    _replace_file(paths[0], functools.partial(_write_lower_triangle, matrix=values, n=n))
    _replace_file(paths[1], functools.partial(_write_lower_triangle, matrix=counts, n=n))
    _replace_file(paths[2], lambda handle: handle.write(ids_text.encode("utf-8")))


#: Entries of a band of rows that write_grm checks and writes at a time.
BAND_ENTRIES = 1 << 22


def _write_lower_triangle(handle: Any, matrix: NDArray[np.float64] | float, n: int) -> None:
    """The lower triangle of ``(matrix + matrix') / 2``, or of an ``n x n`` matrix whose
    every entry is the number ``matrix``, row by row in single precision."""
    if not isinstance(matrix, np.ndarray):
        row = np.full(n, matrix, dtype=_GRM_DTYPE)
        for i in range(n):
            handle.write(row[: i + 1].tobytes())
        return
    for first, band, mirror in row_bands(matrix, BAND_ENTRIES):
        symmetric = (band + mirror) / 2.0
        for offset, values in enumerate(symmetric):
            handle.write(values[: first + offset + 1].astype(_GRM_DTYPE).tobytes())


def _replace_file(path: Path, write: Callable[[Any], object]) -> None:
    """Write ``path`` through a temporary file, so that it is never left half written."""
    # Not tempfile.mkstemp, whose files are private (mode 0600) whatever the umask.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    try:
        with open(temporary, "xb") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
    # A file of tab-separated values (GEMMA's and emlmm's kinships) is first read with
    # the tab as the separator, 1.4-1.7x faster than any whitespace; the same numbers.
    for separator in _separators(Path(path)):
        try:
            values = pd.read_csv(path, sep=separator, header=None, dtype=float).to_numpy()
        except ValueError:  # pandas' ParserError and EmptyDataError are ValueErrors
            continue
        if values.size and not np.isnan(values).any():
            return values
    return _read_matrix_lines(Path(path))


def _separators(path: Path) -> list[str]:
    """The separators to try on a text matrix: the tab first where its first line
    separates values by tabs alone, then any whitespace."""
    with open(path, "rb") as handle:
        first = handle.readline().strip()
    tab_only = b"\t" in first and not any(space in first for space in (b" ", b"\r", b"\f", b"\v"))
    return ["\t", r"\s+"] if tab_only else [r"\s+"]


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
