#!/usr/bin/env bash
# Regenerate the R reference values in tests/results/ from the lab's EM code.
#
# Run from the repository root:   bash tests/results/make_lab_reference.sh
# Needs: Rscript with MASS (Debian: apt-get install r-base-core r-cran-mass)
#        and python3 with numpy (PYTHON overrides the interpreter).
# Takes about 15 minutes (R's EM, reference BLAS); see the timings it prints.
#
# a) Lab data (bundled emlmm/datasets/data/lab_{X,Y,A}.txt), scan restricted
#    to 20 SNP columns so that R finishes in minutes: the 4 causal SNPs plus
#    the first 16 SNPs of the file, in file order.  lab_em.R numbers the
#    scanned SNPs 1..20; lab_scan_snps.txt gives their ids in that order.
#    Writes lab_scan_snps.txt, lab_null_trace.tsv, lab_scan.tsv (from
#    lab_em.R) and lab_null.txt (the "null: ..." line lab_em.R prints).
# b) A small singular case: n = 40, A = Z Z' / 25 with Z a 40 x 25 genotype
#    matrix standardised by known (ancestral) allele frequencies, so A has
#    rank 25 but A 1 != 0; y with signal; 3 SNP columns.  Writes
#    singular_{X,Y,A}.txt (A with 17 significant digits, exactly symmetric),
#    singular_null_trace.tsv, singular_scan.tsv and singular_null.txt.
#
# lab_em.R is the lab's code (QG16 lab 10/11) with its one bug fix; keep it
# unchanged.  Note that its returned log_L is the one *before* the last EM
# update (log_L[iter - 1]) while beta, s2a, s2e are after it, "iters" counts
# the start value as iteration 1, and its log-likelihood omits -n/2 log(2 pi).
set -euo pipefail

PYTHON=${PYTHON:-python3}
RES=tests/results
DATA=emlmm/datasets/data
if [[ ! -f $RES/lab_em.R || ! -f $DATA/lab_X.txt ]]; then
    echo "run from the repository root" >&2
    exit 1
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- a) lab data
"$PYTHON" - "$DATA" "$RES" "$TMP" <<'EOF'
import sys
from pathlib import Path

import numpy as np

data, res, tmp = map(Path, sys.argv[1:])
snps, causal = [], []
with open(data / "lab_snps.tsv") as fh:
    assert fh.readline().split() == ["snp", "chr", "pos", "causal"]
    for j, line in enumerate(fh):
        snp, _, _, is_causal = line.split()
        snps.append(snp)
        if is_causal == "1":
            causal.append(j)
cols = sorted(set(range(16)) | set(causal))
assert len(causal) == 4 and len(cols) == 20, (causal, cols)
x = np.loadtxt(data / "lab_X.txt", dtype=np.int64)
np.savetxt(tmp / "lab_X_scan.txt", x[:, cols], fmt="%d", delimiter=" ")
(res / "lab_scan_snps.txt").write_text("".join(snps[j] + "\n" for j in cols))
print("scan SNPs:", " ".join(snps[j] for j in cols))
EOF

start=$(date +%s)
Rscript $RES/lab_em.R "$TMP/lab_X_scan.txt" $DATA/lab_Y.txt $DATA/lab_A.txt $RES/lab \
    | tee "$TMP/lab.out"
grep '^null:' "$TMP/lab.out" > $RES/lab_null.txt
echo "lab: Rscript took $(($(date +%s) - start)) s"

# ----------------------------------------------------------- b) singular case
"$PYTHON" - "$RES" <<'EOF'
import sys
from pathlib import Path

import numpy as np

res = Path(sys.argv[1])
rng = np.random.default_rng(20160428)
n, m = 40, 25
p = rng.uniform(0.1, 0.9, size=m)  # known (ancestral) allele frequencies
g = rng.binomial(2, p, size=(n, m))
z = (g - 2 * p) / np.sqrt(2 * p * (1 - p))
a = z @ z.T / m
iu = np.triu_indices(n)
a.T[iu] = a[iu]  # exactly symmetric: mirror the upper triangle
x = rng.binomial(2, rng.uniform(0.2, 0.5, size=3), size=(n, 3))
u = z @ rng.normal(0.0, np.sqrt(30.0), size=m) / np.sqrt(m)  # u ~ N(0, 30 A)
y = 5.0 + 3.0 * (x[:, 0] - x[:, 0].mean()) + u + rng.normal(0.0, np.sqrt(20.0), size=n)

np.savetxt(res / "singular_X.txt", x, fmt="%d", delimiter=" ")
np.savetxt(res / "singular_Y.txt", y[:, None], fmt="%.10g")
np.savetxt(res / "singular_A.txt", a, fmt="%.17g", delimiter=" ")

a_file = np.loadtxt(res / "singular_A.txt")
assert np.array_equal(a_file, a) and np.array_equal(a_file, a_file.T)
ev, vec = np.linalg.eigh(a_file)
null = vec[:, ev < 1e-10 * ev[-1]]
ones = np.ones(n) / np.sqrt(n)
print(f"singular A: rank {np.sum(ev >= 1e-10 * ev[-1])} of {n}, "
      f"|A 1| / |1| = {np.linalg.norm(a_file @ ones):.3g}, "
      f"share of 1 in the null space = {np.linalg.norm(null.T @ ones) ** 2:.3f}")
assert null.shape[1] == n - m and np.linalg.norm(a_file @ ones) > 0.1
EOF

start=$(date +%s)
Rscript $RES/lab_em.R $RES/singular_X.txt $RES/singular_Y.txt $RES/singular_A.txt \
    $RES/singular | tee "$TMP/singular.out"
grep '^null:' "$TMP/singular.out" > $RES/singular_null.txt
echo "singular: Rscript took $(($(date +%s) - start)) s"
