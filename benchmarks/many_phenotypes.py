"""Many phenotypes: one joint scan (``phenotypes=[...]``) vs one scan per phenotype.

Run by hand (not in CI):

    OPENBLAS_NUM_THREADS=1 python benchmarks/many_phenotypes.py [--n 3000] [--m 12000] \\
        [--phenotypes 20] [--methods exact fixed] [--repeats 2] [--missing-phenotypes 1]

Data, in memory (``_sim``): n related individuals x m SNPs (float64, no missing
genotypes), the centered kinship ``emlmm.kinship(genotypes)``, and P phenotypes
``y1 ... yP``, each ``simulate_phenotype`` on the simulation's GRM with h2 cycling
through 0.5, 0.2, 0.8, 0.0 (so some are heritable and some not). The last
``--missing-phenotypes`` of them (default 1) each lose ~10 % of their values, on
individuals of their own (a different random set per phenotype); the others are
complete. Each such phenotype forms its own group of individuals, hence its own
eigendecomposition in the joint scan.

For each method (``--methods``, default exact and fixed), alternately for
``--repeats`` rounds:

(a) joint: ``emlmm.gwas("~ 1 + snp", data, G, K, method, phenotypes=[y1, ..., yP])``,
    one call (a null model per phenotype, one eigendecomposition and one rotation of
    each chunk per group of phenotypes with the same individuals);
(b) separate: ``emlmm.gwas(f"{name} ~ 1 + snp", data, G, K, method)`` for each of the
    P phenotypes, one after the other.

Both include building the scan (null models, eigendecompositions). The table gives
the median over the rounds of each, and the ratio joint / separate; targets: exact
<= 0.35, fixed "much less" than 1. Agreement: for each phenotype, the max over SNPs
tested in both (finite p_lrt) of |-log10 p_lrt(joint) - -log10 p_lrt(separate)|;
the largest over phenotypes and rounds is printed per method.

At the defaults, each round and method costs 2 + 20 eigendecompositions of the
3000 x 3000 kinship and 2 + 20 rotations of the 12,000 SNPs (joint + separate), plus
40 scans' per-SNP fits: an estimated 10 minutes per round (both methods) on one core.
Tiny check (seconds): ``python benchmarks/many_phenotypes.py --n 200 --m 500
--phenotypes 3``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from typing import Literal

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sim import grm, simulate_genotypes, simulate_phenotype

import emlmm

H2_CYCLE = (0.5, 0.2, 0.8, 0.0)
TARGETS = {"exact": "<= 0.35", "fixed": "much less than 1"}


def simulate(
    n: int, m: int, n_phenotypes: int, n_missing: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[float]]:
    """(phenotypes y1..yP, genotypes n x m, centered kinship, each phenotype's h2)."""
    rng = np.random.default_rng(seed)
    genotypes, p = simulate_genotypes(n, m, rng)
    simulated = grm(genotypes, p)
    h2s = [H2_CYCLE[j % len(H2_CYCLE)] for j in range(n_phenotypes)]
    data = pd.DataFrame(
        {f"y{j + 1}": simulate_phenotype(simulated, h2, rng) for j, h2 in enumerate(h2s)}
    )
    for j in range(max(n_phenotypes - n_missing, 0), n_phenotypes):
        lost = rng.choice(n, size=max(1, round(0.1 * n)), replace=False)
        data.iloc[lost, j] = np.nan
    return data, genotypes, emlmm.kinship(genotypes), h2s


def timed_gwas(
    formula: str,
    data: pd.DataFrame,
    genotypes: np.ndarray,
    kinship: np.ndarray,
    method: Literal["exact", "fixed"],
    phenotypes: list[str] | None = None,
) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are counted from the table instead
        table = emlmm.gwas(formula, data, genotypes, kinship, method, phenotypes=phenotypes)
    return time.perf_counter() - start, table


def disagreement(joint: pd.DataFrame, separate: dict[str, pd.DataFrame]) -> tuple[float, int]:
    """Max |delta -log10 p_lrt| over phenotypes and SNPs tested in both; SNPs compared."""
    worst, compared = 0.0, 0
    for name, alone in separate.items():
        mine = joint.loc[joint.phenotype == name, "p_lrt"]
        both = pd.concat([mine.rename("joint"), alone.p_lrt.rename("separate")], axis=1,
                         join="inner").dropna()  # fmt: skip
        if not mine.index.is_unique or not alone.index.is_unique:
            raise SystemExit(f"{name}: repeated SNP ids; cannot match rows")
        if len(both) == 0:
            continue
        with np.errstate(divide="ignore"):
            gap = np.abs(np.log10(both.joint.to_numpy()) - np.log10(both.separate.to_numpy()))
        gap = gap[np.isfinite(gap)]  # p = 0 in both gives inf - inf
        worst = max(worst, float(gap.max(initial=0.0)))
        compared += len(both)
    return worst, compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--m", type=int, default=12_000)
    parser.add_argument("--phenotypes", type=int, default=20, help="P, the number of phenotypes")
    parser.add_argument(
        "--missing-phenotypes",
        type=int,
        default=1,
        help="how many of them (the last ones) lose ~10%% of their values, each on its own "
        "individuals",
    )
    parser.add_argument("--methods", nargs="+", choices=["exact", "fixed"],
                        default=["exact", "fixed"])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2, help="alternated rounds (median)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    if not 0 <= args.missing_phenotypes <= args.phenotypes:
        parser.error("--missing-phenotypes must be between 0 and --phenotypes")
    print(
        f"n = {args.n}, m = {args.m}, P = {args.phenotypes} ({args.missing_phenotypes} with "
        f"~10 % missing), methods {args.methods}, repeats {args.repeats}; emlmm "
        f"{emlmm.__version__}; {os.cpu_count()} cores; OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load {os.getloadavg()}"
    )
    started = time.perf_counter()
    data, genotypes, kinship, h2s = simulate(
        args.n, args.m, args.phenotypes, args.missing_phenotypes, args.seed
    )
    names = list(data.columns)
    print(
        f"simulated in {time.perf_counter() - started:.1f} s; phenotypes (h2, individuals): "
        + ", ".join(
            f"{name} ({h2:g}, {int(data[name].notna().sum())})"
            for name, h2 in zip(names, h2s, strict=True)
        )
    )

    times: dict[str, dict[str, list[float]]] = {
        method: {"joint": [], "separate": []} for method in args.methods
    }
    gaps: dict[str, list[float]] = {method: [] for method in args.methods}
    rows: dict[str, str] = {}
    for round_ in range(args.repeats):  # alternated, so load changes hit both alike
        for method in args.methods:
            joint_s, joint = timed_gwas("~ 1 + snp", data, genotypes, kinship, method, names)
            times[method]["joint"].append(joint_s)
            print(f"  round {round_ + 1}, {method}, joint:    {joint_s:7.2f} s "
                  f"({len(joint)} rows) load {os.getloadavg()[0]:.2f}")  # fmt: skip
            separate: dict[str, pd.DataFrame] = {}
            separate_s = 0.0
            for name in names:
                seconds, separate[name] = timed_gwas(
                    f"{name} ~ 1 + snp", data, genotypes, kinship, method
                )
                separate_s += seconds
            times[method]["separate"].append(separate_s)
            gap, compared = disagreement(joint, separate)
            gaps[method].append(gap)
            not_finite = int((~np.isfinite(joint.p_lrt.to_numpy(dtype=float))).sum())
            rows[method] = (
                f"{compared} (phenotype, SNP) pairs; joint rows without a p_lrt: {not_finite}"
            )
            print(f"  round {round_ + 1}, {method}, separate: {separate_s:7.2f} s "
                  f"({sum(len(t) for t in separate.values())} rows over {len(names)} scans) "
                  f"load {os.getloadavg()[0]:.2f}; max |d -log10 p_lrt| {gap:.2e}")  # fmt: skip

    print(f"\nmedian of {args.repeats} round(s), n = {args.n}, m = {args.m}, "
          f"P = {args.phenotypes}:\n")  # fmt: skip
    print("| method | joint (s) | separate (s) | joint / separate | target | "
          "max abs diff -log10 p_lrt |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        joint_s = statistics.median(times[method]["joint"])
        separate_s = statistics.median(times[method]["separate"])
        print(f"| {method} | {joint_s:.2f} | {separate_s:.2f} | **{joint_s / separate_s:.3f}** | "
              f"{TARGETS[method]} | {max(gaps[method]):.2e} |")  # fmt: skip
    print()
    for method in args.methods:
        runs = ", ".join(
            f"{j:.2f}/{s:.2f}"
            for j, s in zip(times[method]["joint"], times[method]["separate"], strict=True)
        )
        print(f"{method}: joint/separate seconds per round {runs}; compared {rows[method]}")
    print(f"total {time.perf_counter() - started:.0f} s; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
