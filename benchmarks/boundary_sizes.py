"""Scans whose null model sits at sigma2_e = 0 (centered kinship), at the sizes of
issue 16, and the same data with more noise (an interior null) for comparison.

Run by hand:  python benchmarks/boundary_sizes.py
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_numerical_edges import family_study

from emlmm import gwas


def scan(
    y: np.ndarray, genotypes: np.ndarray, kinship: np.ndarray
) -> tuple[pd.DataFrame, float, int]:
    data = pd.DataFrame({"y": y})
    gwas("y ~ 1 + snp", data, genotypes[:, :200], kinship)  # warm-up
    best, n_warnings = np.inf, 0
    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            table = gwas("y ~ 1 + snp", data, genotypes, kinship)
            best = min(best, time.perf_counter() - start)
        n_warnings = max(n_warnings, len(caught))
    return table, best, n_warnings


for seed, n_snps, noise in [(1, 3000, 0.3), (2, 3000, 0.3), (3, 20000, 0.3), (3, 20000, 3.0)]:
    y, genotypes, kinship = family_study(seed, 75, n_snps=n_snps, noise=noise)
    table, seconds, n_warnings = scan(y, genotypes, kinship)
    statistics = table[["p_wald", "p_lrt", "p_score"]].to_numpy()
    print(
        f"seed {seed}, n = {len(y)}, m = {n_snps}, noise {noise}: best of 3 {seconds:.2f} s; "
        f"all finite {np.isfinite(statistics).all()}, "
        f"failed {table.note.str.startswith('failed').sum()}, "
        f"sigma2_e = 0 in {(table.sigma2_e == 0).sum()}, max n_iter {table.n_iter.max()}, "
        f"warnings {n_warnings}"
    )
