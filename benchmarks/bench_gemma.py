"""emlmm.gwas vs GEMMA 0.98 (-lmm 2, -lmm 4) on the same simulated PLINK data.

Run by hand (not in CI), after ``apt-get install -y gemma``:

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_gemma.py [--n 1500] [--m 10000]

Writes to --workdir (default /tmp/bench/gemma): P.bed/.bim/.fam (no missing
genotypes, every SNP with MAF > 0.05, so GEMMA's default filters keep all SNPs),
K.txt (emlmm.kinship(plink), centered, as GEMMA's -gk 1) and GEMMA's output/.
Times: GEMMA is timed around subprocess.run (it reads the .bed and K.txt and
eigendecomposes K itself); emlmm.gwas is timed from the opened PLINK fileset and
the in-memory kinship, and the emlmm CLI (which also reads K.txt) end to end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _sim import grm, simulate_genotypes, simulate_phenotype  # noqa: E402
from plink_fixtures import write_plink  # noqa: E402

import emlmm  # noqa: E402


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def simulate(workdir: Path, n: int, m: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    genotypes, p = simulate_genotypes(n, m, rng)
    y = simulate_phenotype(grm(genotypes, p), 0.5, rng)
    causal = rng.choice(m, size=20, replace=False)  # some real signals
    y = y + genotypes[:, causal] @ rng.normal(0, 1.5, size=20)
    prefix = workdir / "P"
    write_plink(prefix, genotypes, phenotypes=[f"{v:.10g}" for v in y])
    return prefix


def run_gemma(workdir: Path, lmm: int, out: str) -> tuple[float, pd.DataFrame]:
    cmd = ["gemma", "-bfile", "P", "-k", "K.txt", "-lmm", str(lmm), "-o", out]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    table = pd.read_csv(workdir / "output" / f"{out}.assoc.txt", sep="\t").set_index("rs")
    print(f"  {' '.join(cmd)}: {seconds:.2f} s ({len(table)} SNPs) load {load()}")
    return seconds, table


def agreement(name: str, ours: pd.Series, theirs: pd.Series) -> None:
    joined = pd.concat([ours.rename("a"), theirs.rename("b")], axis=1, join="inner").dropna()
    rel = (joined.a - joined.b).abs() / joined.b
    log_diff = (np.log10(joined.a) - np.log10(joined.b)).abs()
    small = joined.b < 1e-3
    print(
        f"  {name:34s}: {len(joined)} SNPs, max rel diff {rel.max():.2e} (median "
        f"{rel.median():.2e}), max |d -log10 p| {log_diff.max():.2e}; min p {joined.b.min():.2e}"
        f"; {int(small.sum())} SNPs with p < 1e-3, max rel diff there "
        f"{rel[small].max() if small.any() else float('nan'):.2e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--m", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--workdir", default="/tmp/bench/gemma")
    parser.add_argument("--skip-cli", action="store_true")
    args = parser.parse_args()
    if shutil.which("gemma") is None:
        raise SystemExit("gemma is not installed (apt-get install -y gemma); skipping")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"n = {args.n}, m = {args.m}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, load {os.getloadavg()}"
    )

    t = time.perf_counter()
    prefix = simulate(workdir, args.n, args.m, args.seed)
    plink = emlmm.read_plink(prefix)
    kin = emlmm.kinship(plink)
    np.savetxt(workdir / "K.txt", kin.to_numpy(), fmt="%.15g", delimiter="\t")
    print(f"simulated + wrote PLINK and K.txt in {time.perf_counter() - t:.1f} s")

    print("GEMMA:")
    gemma2_s, gemma2 = run_gemma(workdir, 2, "lmm2")
    gemma4_s, gemma4 = run_gemma(workdir, 4, "lmm4")

    print("emlmm (API: emlmm.gwas('y ~ 1 + snp', pheno, plink, kinship DataFrame)):")
    pheno = plink.phenotype().rename("y").to_frame()
    ours = {}
    for method in ("exact", "fixed"):
        t = time.perf_counter()
        ours[method] = emlmm.gwas("y ~ 1 + snp", pheno, plink, kin, method=method)
        seconds = time.perf_counter() - t
        ours[method + "_s"] = seconds
        res = ours[method]
        print(
            f"  gwas method={method}: {seconds:.2f} s ({len(res)} SNPs, max n_iter "
            f"{int(res.n_iter.max())}, not converged {int((~res.converged).sum())}) load {load()}"
        )

    cli = {}
    if not args.skip_cli:
        for method in ("exact", "fixed"):
            cmd = [
                "emlmm",
                "gwas",
                "--bfile",
                "P",
                "--kinship",
                "K.txt",
                "--out",
                f"emlmm_{method}.tsv",
                "--method",
                method,
                "--quiet",
            ]
            t = time.perf_counter()
            subprocess.run(cmd, cwd=workdir, check=True, capture_output=True)
            cli[method] = time.perf_counter() - t
            print(f"  CLI {' '.join(cmd)}: {cli[method]:.2f} s load {load()}")

    print("Speed ratios (GEMMA time / emlmm time; > 1 means emlmm is faster):")
    for method in ("exact", "fixed"):
        for label, g in (("-lmm 2", gemma2_s), ("-lmm 4", gemma4_s)):
            line = f"  GEMMA {label} / emlmm {method:5s}: API {g / ours[method + '_s']:6.2f}x"
            if method in cli:
                line += f", CLI {g / cli[method]:6.2f}x"
            print(line)

    print("p-value agreement (joined on SNP id; relative difference |ours - GEMMA| / GEMMA):")
    exact, fixed = ours["exact"], ours["fixed"]
    agreement("exact p_lrt  vs -lmm 2 p_lrt", exact.p_lrt, gemma2.p_lrt)
    agreement("exact p_lrt  vs -lmm 4 p_lrt", exact.p_lrt, gemma4.p_lrt)
    agreement("exact p_wald vs -lmm 4 p_wald", exact.p_wald, gemma4.p_wald)
    agreement("exact p_score vs -lmm 4 p_score", exact.p_score, gemma4.p_score)
    agreement("fixed p_wald vs -lmm 4 p_wald (EMMAX)", fixed.p_wald, gemma4.p_wald)
    agreement("fixed p_score vs -lmm 4 p_score", fixed.p_score, gemma4.p_score)
    beta = pd.concat([exact.beta, gemma4.beta], axis=1, join="inner").dropna()
    print(
        f"  |beta| max rel diff (sign ignored; allele coding may differ): "
        f"{((beta.iloc[:, 0].abs() - beta.iloc[:, 1].abs()).abs() / beta.iloc[:, 1].abs()).max():.2e}"
    )
    print(f"SNPs: emlmm {len(exact)}, GEMMA {len(gemma2)}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
