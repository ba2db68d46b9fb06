"""emlmm on the bundled lab data against the lab R code's stored results (run by hand).

Prints the trace agreement with R, plain vs accelerated null fits, and exact and fixed
scan times. Run from the repo root: python benchmarks/bench_lab.py
"""

import time
from pathlib import Path

import numpy as np
import pandas as pd

from emlmm import EMLMM, gwas
from emlmm.datasets import load_lab

lab = load_lab()
Y = lab.phenotype.to_frame()
R = Path("tests/results")
trace = pd.read_csv(R / "lab_null_trace.tsv", sep="\t")
null = EMLMM.from_formula("y ~ 1", data=Y, kinship=lab.kinship)
em = null.fit(start_params="lab", method="em")
c = 300 / 2 * np.log(2 * np.pi)
print(
    "R trace vs ours, max rel diff:",
    np.max(np.abs(em.llf_history[: len(trace)] + c - trace.loglik) / np.abs(trace.loglik)),
)
for method in ["em", "accelerated"]:
    t = time.perf_counter()
    f = null.fit(start_params="lab", method=method)
    dt = time.perf_counter() - t
    print(
        f"null fit from lab start, {method}: {f.n_iter} iterations, {dt * 1000:.1f} ms, llf {f.llf:.9f}"
    )
snps = (R / "lab_scan_snps.txt").read_text().split()
rscan = pd.read_csv(R / "lab_scan.tsv", sep="\t")
t = time.perf_counter()
tab = gwas("y ~ 1 + snp", Y, lab.genotypes, lab.kinship)
dt = time.perf_counter() - t
print(
    f"exact scan, 1000 SNPs, n=300: {dt:.2f} s, mean iterations {tab.n_iter.mean():.1f}, all converged {tab.converged.all()}"
)
print(
    "scan p_lrt vs R, max rel diff:",
    np.max(np.abs(tab.loc[snps, "p_lrt"].values - rscan.p.values) / rscan.p.values),
)
t = time.perf_counter()
tf = gwas("y ~ 1 + snp", Y, lab.genotypes, lab.kinship, method="fixed")
dt = time.perf_counter() - t
print(f"fixed scan, 1000 SNPs, n=300: {dt:.2f} s")
