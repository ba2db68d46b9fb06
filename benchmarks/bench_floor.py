"""How close is a scan to its floor: eigendecomposition of K + the one product U'G?

Run by hand (not in CI):

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_floor.py [--n 2000] [--m 10000] [--profile]

Genotypes (n x m, float64, no missing) and the centered kinship are in memory.
The floor is numpy.linalg.eigh(K) + U.T @ G, the two O(n^3) / O(n^2 m) steps a scan
cannot avoid; the scans are emlmm.gwas("y ~ 1 + snp", ..., method="exact"/"fixed")
from the same arrays (which also eigendecompose K and rotate G themselves).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import warnings

import numpy as np
import pandas as pd
import scipy.linalg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sim import grm, simulate_genotypes, simulate_phenotype

import emlmm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--m", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="cProfile the exact scan once")
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="gwas chunk_size (default: emlmm's)"
    )
    args = parser.parse_args()
    print(
        f"n = {args.n}, m = {args.m}, chunk_size = {args.chunk_size}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load {os.getloadavg()}"
    )
    rng = np.random.default_rng(7)
    genotypes, p = simulate_genotypes(args.n, args.m, rng)
    y = simulate_phenotype(grm(genotypes, p), 0.5, rng)
    kinship = emlmm.kinship(genotypes)
    data = pd.DataFrame({"y": y})

    def floor() -> float:
        # The eigensolver emlmm uses (LAPACK dsyevr), so that the ratio is about the rest.
        t = time.perf_counter()
        _, u = scipy.linalg.eigh(kinship, driver="evr", check_finite=False)
        u.T @ genotypes
        return time.perf_counter() - t

    def scan(method: str) -> float:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emlmm.gwas(
                "y ~ 1 + snp", data, genotypes, kinship, method=method, chunk_size=args.chunk_size
            )
        return time.perf_counter() - t

    times: dict[str, list[float]] = {"floor": [], "exact": [], "fixed": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit all alike
        for name in times:
            times[name].append(floor() if name == "floor" else scan(name))
            print(f"  {name:5s}: {times[name][-1]:.2f} s (load {os.getloadavg()[0]:.2f})")
    best = {name: min(values) for name, values in times.items()}
    t = time.perf_counter()
    scipy.linalg.eigh(kinship, driver="evr", check_finite=False)
    eig = time.perf_counter() - t
    print(
        f"best of {args.repeats}: floor {best['floor']:.2f} s (eigh alone {eig:.2f} s), "
        f"exact {best['exact']:.2f} s, fixed {best['fixed']:.2f} s"
    )
    print(f"ratio exact / floor = {best['exact'] / best['floor']:.2f}  (target <= 1.3)")
    print(f"ratio fixed / floor = {best['fixed'] / best['floor']:.2f}  (target <= 1.1)")
    print(f"load {os.getloadavg()}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        scan("exact")
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
