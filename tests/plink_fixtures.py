"""Writing small PLINK binary filesets for tests.

``write_plink`` is the one way tests make ``.bed``/``.bim``/``.fam`` files:
genotypes go in as the numbers :func:`emlmm.io.read_plink` gives back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from bed_reader import to_bed
from numpy.typing import ArrayLike

__all__ = ["write_plink"]


def write_plink(
    prefix: str | os.PathLike[str],
    genotypes: ArrayLike,
    *,
    sample_ids: Sequence[str] | None = None,
    snp_ids: Sequence[str] | None = None,
    chromosomes: Sequence[str | int] | None = None,
    positions: Sequence[int] | None = None,
    phenotypes: Sequence[float | str] | None = None,
) -> Path:
    """Write ``genotypes`` as the PLINK fileset ``prefix``.bed/.bim/.fam.

    Parameters
    ----------
    prefix : str or os.PathLike
        Path without extension.
    genotypes : array_like
        ``n x m`` counts of allele A1 (0, 1, 2), NaN for missing; reading
        the fileset back (bed-reader's default ``count_A1=True``, as
        :func:`emlmm.io.read_plink` does) gives the same numbers.
    sample_ids : sequence of str, optional
        IIDs; default ``"s1"`` ... ``"sn"`` (FIDs are ``"f1"`` ... ``"fn"``).
    snp_ids : sequence of str, optional
        Default ``"rs1"`` ... ``"rsm"``.
    chromosomes : sequence, optional
        Default all ``"1"``.
    positions : sequence of int, optional
        Base-pair positions; default ``1000, 2000, ...``.
    phenotypes : sequence, optional
        Sixth ``.fam`` column, written as given (numbers, -9 or ``"NA"``);
        default -9 (missing) for everyone.

    Returns
    -------
    pathlib.Path
        The ``.bed`` file.
    """
    values = np.array(genotypes, dtype=np.float64, order="C")
    if values.ndim != 2:
        raise ValueError(f"genotypes must be n x m, not of shape {values.shape}")
    observed = values[~np.isnan(values)]
    if not np.isin(observed, (0.0, 1.0, 2.0)).all():
        raise ValueError("genotypes must be 0, 1, 2 or NaN")
    n, m = values.shape
    properties = {
        "fid": [f"f{i}" for i in range(1, n + 1)],
        "iid": list(sample_ids) if sample_ids is not None else [f"s{i}" for i in range(1, n + 1)],
        "pheno": list(phenotypes) if phenotypes is not None else [-9] * n,
        "sid": list(snp_ids) if snp_ids is not None else [f"rs{j}" for j in range(1, m + 1)],
        "chromosome": [str(c) for c in chromosomes] if chromosomes is not None else ["1"] * m,
        "bp_position": (
            list(positions) if positions is not None else [1000 * j for j in range(1, m + 1)]
        ),
        "allele_1": ["A"] * m,
        "allele_2": ["G"] * m,
    }
    bed = Path(f"{os.fspath(prefix)}.bed")
    to_bed(bed, values, properties=properties, count_A1=True)
    return bed
