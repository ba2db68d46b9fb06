"""Simulated related individuals for the benchmarks (benchmark-only code).

Individuals come in sibships (4 full sibs per family, parents not observed) drawn
from 3 subpopulations (Balding-Nichols, Fst = 0.05), so the kinship has both family
and population structure. Genotypes are 0/1/2 with no missing values and every SNP
has ancestral allele frequency in [0.1, 0.9] (sample MAF > 0.05 is enforced by
resampling rare SNPs).
"""

from __future__ import annotations

import numpy as np

TOTAL_VARIANCE = 80.0  # the lab's phenotype has variance ~78; start values 70/10 fit it


def simulate_genotypes(
    n: int,
    m: int,
    rng: np.random.Generator,
    sib: int = 4,
    n_pops: int = 3,
    fst: float = 0.05,
    min_maf: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """``n x m`` genotypes (float64 0/1/2) and the ancestral allele frequencies."""
    p = rng.uniform(0.1, 0.9, size=m)
    a, b = p * (1 - fst) / fst, (1 - p) * (1 - fst) / fst
    pop_p = rng.beta(a, b, size=(n_pops, m))
    n_fam = -(-n // sib)
    pop = rng.integers(0, n_pops, size=n_fam)
    pf = pop_p[pop]  # n_fam x m
    parents = [rng.random((n_fam, m, 2)) < pf[:, :, None] for _ in range(2)]  # haplotypes
    kids = []
    for _ in range(sib):
        h = [
            np.take_along_axis(par, rng.integers(0, 2, size=(n_fam, m, 1)), axis=2)[:, :, 0]
            for par in parents
        ]
        kids.append(h[0].astype(np.int8) + h[1].astype(np.int8))
    genotypes = np.stack(kids, axis=1).reshape(n_fam * sib, m)[:n].astype(np.float64)
    maf = genotypes.mean(axis=0) / 2
    maf = np.minimum(maf, 1 - maf)
    bad = maf <= min_maf
    if bad.any():  # replace rare SNPs by unrelated draws at p = 0.5
        genotypes[:, bad] = rng.binomial(2, 0.5, size=(n, int(bad.sum())))
        p[bad] = 0.5
    return genotypes, p


def grm(genotypes: np.ndarray, p: np.ndarray) -> np.ndarray:
    """VanRaden kinship standardised by the *ancestral* frequencies: full rank when m > n."""
    w = (genotypes - 2 * p) / np.sqrt(2 * p * (1 - p))
    return w @ w.T / genotypes.shape[1]


def simulate_phenotype(
    kinship: np.ndarray,
    h2: float,
    rng: np.random.Generator,
    mean: float = 10.0,
    total: float = TOTAL_VARIANCE,
) -> np.ndarray:
    """y = mean + a + e, a ~ N(0, h2 * total / mean(diag K) * K), e ~ N(0, (1-h2) total I)."""
    n = kinship.shape[0]
    s, u = np.linalg.eigh(kinship)
    s = np.clip(s, 0, None)
    sigma2_a = h2 * total / np.mean(np.diag(kinship))
    a = u @ (np.sqrt(sigma2_a * s) * rng.standard_normal(n))
    e = np.sqrt((1 - h2) * total) * rng.standard_normal(n)
    return mean + a + e


def related_data(n: int, h2: float, seed: int = 1, m: int | None = None):
    """(y, kinship) for n related individuals; m defaults to max(3000, 3n) SNPs."""
    rng = np.random.default_rng(seed)
    genotypes, p = simulate_genotypes(n, m or max(3000, 3 * n), rng)
    kinship = grm(genotypes, p)
    return simulate_phenotype(kinship, h2, rng), kinship
