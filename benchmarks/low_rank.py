"""A low-rank kinship by its factor (emlmm.LowRankKinship) against the same kinship dense.

Run by hand (not in CI):

    python benchmarks/low_rank.py [--n 3000] [--k 300] [--m 12000] [--repeats 3]

The kinship is F F' for F = k standardised SNPs / sqrt(k) (LowRankKinship.from_snps),
so its rank is k < n. Both scans (exact, the default) start from the same inputs, in
memory: the factor, or the dense n x n matrix F F' (to_dense(), made outside the
timing), and each builds its own GenomeScan (checks, eigenbasis, null model) and tests
every SNP. One untimed scan of 50 SNPs with each comes first (the first scan in a
process pays one-time costs, such as imports). Runs alternate; the medians are compared (target: low rank <= 0.25x dense at
n = 3,000, k = 300), and the p-values must agree to 1e-5 in log10.

    python benchmarks/low_rank.py --memory --n 20000 --k 500 --m 2000

scans with the factor alone, at a size where one n x n matrix is 3.2 GB, and prints
the process's peak memory (resident set) beside the inputs' own size: the factor's
eigenbasis is held as Householder reflectors (O(n k)), so neither F F' nor the
n x n eigenvectors are formed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sim import simulate_genotypes

import emlmm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--k", type=int, default=300)
    parser.add_argument("--m", type=int, default=12_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="large n, the factor only")
    args = parser.parse_args()
    if args.memory:
        memory(args.n, args.k, args.m)
        return
    print(
        f"n = {args.n}, k = {args.k}, m = {args.m}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load {os.getloadavg()}"
    )
    rng = np.random.default_rng(11)
    genotypes, _ = simulate_genotypes(args.n, args.k + args.m, rng)
    factor = emlmm.LowRankKinship.from_snps(genotypes[:, : args.k])
    dense = factor.to_dense()
    scanned = genotypes[:, args.k :]
    h = 0.5
    y = np.sqrt(h) * factor.factor @ rng.normal(size=factor.factor.shape[1]) + np.sqrt(
        1 - h
    ) * rng.normal(size=args.n)
    data = pd.DataFrame({"y": y})

    def scan(kinship: object) -> tuple[float, pd.DataFrame]:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = emlmm.gwas("y ~ 1 + snp", data, scanned, kinship)
        return time.perf_counter() - t, table

    # One untimed scan of a few SNPs with each first: the first scan in a process
    # pays one-time costs (imports, finding the thread pools) that neither route should carry.
    for kinship in (factor, dense):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emlmm.gwas("y ~ 1 + snp", data, scanned[:, :50], kinship)
    times: dict[str, list[float]] = {"low rank": [], "dense": []}
    tables: dict[str, pd.DataFrame] = {}
    for _ in range(args.repeats):
        for name, kinship in (("low rank", factor), ("dense", dense)):
            seconds, tables[name] = scan(kinship)
            times[name].append(seconds)
            print(f"  {name:8s}: {seconds:.2f} s (load {os.getloadavg()[0]:.2f})")
    worst = max(
        float(np.max(np.abs(np.log10(tables["low rank"][c]) - np.log10(tables["dense"][c]))))
        for c in ("p_wald", "p_lrt", "p_score")
    )
    low, full = (statistics.median(times[name]) for name in ("low rank", "dense"))
    print(f"medians of {args.repeats}: low rank {low:.2f} s, dense {full:.2f} s")
    print(f"ratio low rank / dense = {low / full:.3f}  (target <= 0.25)")
    print(f"largest |log10 p| difference (Wald, LRT, score): {worst:.1e}  (target <= 1e-5)")


def memory(n: int, k: int, m: int) -> None:
    """One scan with the factor; peak resident memory against the inputs' size."""
    rng = np.random.default_rng(11)
    genotypes, _ = simulate_genotypes(n, k + m, rng)
    factor = emlmm.LowRankKinship.from_snps(genotypes[:, :k])
    scanned = np.ascontiguousarray(genotypes[:, k:])
    del genotypes
    y = factor.factor @ rng.normal(size=factor.factor.shape[1]) + rng.normal(size=n)
    data = pd.DataFrame({"y": y})
    inputs = scanned.nbytes + factor.factor.nbytes
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = emlmm.gwas("y ~ 1 + snp", data, scanned, factor)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"n = {n}, k = {k}, m = {m}: {len(table)} SNPs tested in {seconds:.1f} s")
    print(f"peak resident memory {peak:.2f} GiB (whole process, simulation included); "
          f"inputs (genotypes scanned + factor) {inputs / 2**30:.2f} GiB; one n x n "
          f"matrix would be {n * n * 8 / 2**30:.2f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
