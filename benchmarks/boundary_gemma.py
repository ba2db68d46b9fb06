"""A scan whose null model sits at sigma2_e = 0 with a centered kinship, vs GEMMA -lmm 4.

Run by hand (not in CI), after ``apt-get install -y gemma``:

    python benchmarks/boundary_gemma.py [--seed 1] [--families 75] [--snps 500]

Families of four (each member shares about half its genotypes with a family founder),
a trait with a strong family effect and little noise, and GEMMA's centered kinship
built from 3,000 SNPs (singular along the ones). The ML null model is at the boundary
(GEMMA: pve ~ 0.99997 with lambda at its cap, 1e5). GEMMA reads the same kinship
(-k). Prints the largest and median |log10 p(emlmm) - log10 p(GEMMA)| per test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from plink_fixtures import write_plink  # noqa: E402
from test_numerical_edges import family_study  # noqa: E402

import emlmm  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--families", type=int, default=75)
    parser.add_argument("--snps", type=int, default=500, help="SNPs scanned")
    args = parser.parse_args()
    y, genotypes, kinship = family_study(args.seed, args.families, n_snps=3000)
    scanned = genotypes[:, : args.snps]
    with tempfile.TemporaryDirectory() as folder:
        prefix = Path(folder) / "fam"
        write_plink(prefix, scanned, phenotypes=y)
        np.savetxt(Path(folder) / "K.txt", kinship)
        start = time.perf_counter()
        subprocess.run(
            ["gemma", "-bfile", str(prefix), "-k", "K.txt", "-lmm", "4", "-o", "fam"],
            cwd=folder, check=True, capture_output=True,
        )  # fmt: skip
        gemma_seconds = time.perf_counter() - start
        output = Path(folder) / "output"
        gemma = pd.read_csv(output / "fam.assoc.txt", sep="\t")
        log = (output / "fam.log.txt").read_text()
    start = time.perf_counter()
    table = emlmm.gwas("y ~ 1 + snp", pd.DataFrame({"y": y}), scanned, kinship)
    emlmm_seconds = time.perf_counter() - start
    table = table.iloc[gemma.index.to_numpy() if len(gemma) == len(table) else slice(None)]
    pve = [line for line in log.splitlines() if "pve estimate" in line]
    print(f"n = {len(y)}, SNPs scanned = {len(gemma)}; GEMMA {pve[0].strip('# ')}")
    print(
        f"emlmm: failed {table.note.str.startswith('failed').sum()}, "
        f"sigma2_e = 0 in {(table.sigma2_e == 0).sum()} SNP fits, max n_iter "
        f"{table.n_iter.max()}; {emlmm_seconds:.2f} s (GEMMA {gemma_seconds:.2f} s)"
    )
    for test in ("p_wald", "p_lrt", "p_score"):
        gap = np.abs(np.log10(table[test].to_numpy()) - np.log10(gemma[test].to_numpy()))
        print(f"{test:8s} max |dlog10 p| = {gap.max():.2g}, median {np.median(gap):.2g}")


if __name__ == "__main__":
    main()
