"""Generate the bundled ``lab`` stand-in data set (run ``python -m emlmm.datasets._generate_lab``).

The lab's own X/Y/A files are not distributed, so this seeded simulation
(``numpy.random.default_rng(20161028)``, numpy only) writes a realistic
replacement into ``emlmm/datasets/data/``.

Design.  1000 SNPs lie on 5 chromosomes (sizes of human chromosomes 1-5,
1 cM/Mb).  Ancestral allele frequencies are drawn from Uniform(0.05, 0.95)
and the allele that is minor in the ancestral population is counted (0/1/2).
Two subpopulations drift from the ancestral population by the
Balding-Nichols model with Fst = 0.05; as on a genotyping array, SNPs whose
pooled study frequency has MAF < 0.05 are redrawn (nothing is dropped).  The
300 genotyped individuals come from pedigrees within a subpopulation (180
and 120 people): nuclear families with three full sibs, half-sib sets (one
father, two mothers, two children each), first-cousin sets (two sibs, each
with an unrelated spouse and two children) and unrelated singletons.
Founders carry haplotypes drawn from their subpopulation's frequencies;
children inherit by Mendelian transmission with Poisson (Haldane)
crossovers, so linked SNPs co-segregate.  Parents and grandparents are not
genotyped.  Families are kept together but in shuffled order.

Kinship.  ``A = Z Z' / m`` with ``Z_ij = (x_ij - 2 p_j) / sqrt(2 p_j (1 - p_j))``
standardised by the *ancestral* frequencies ``p_j``.  Centring by the
sample's own frequencies would put the all-ones vector in the null space of
``A`` (rank n - 1); with base-population frequencies ``Z`` has full row rank
(m = 1000 > n = 300), so ``A`` is positive definite and well conditioned.
It is written to 10 significant digits, rounded on the upper triangle and
mirrored so that it is exactly symmetric.

Phenotype.  ``y = 10 + g + sum_k b_k (x_k - 2 p_k) + e`` with a polygenic
part ``g = Z w / sqrt(m)``, ``w ~ N(0, 25 I)`` (so ``g ~ N(0, 25 A)``), four
causal SNPs on different chromosomes (MAF >= 0.2, not among the first 16
SNPs, which the R reference scan uses as nulls) with effects set to explain
5%, 5%, 4.5% and 4% of a nominal total variance of 80 (14.8 together), and
noise ``e ~ N(0, 40 I)``: nominal heritability 0.5 including the causal
SNPs, total variance about 80, so the lab's EM start values (70, 10) are
sensible.  With 300 related people these are realistic, modest signals
(mixed-model p-values of about 1e-4 to 1e-2), not genome-wide hits.  The
mean is kept small on purpose: the lab's EM starts from beta = 0 and the
intercept is nearly confounded with the random effect, so it crawls towards
the mean; with a mean of 50 each fit needs about 530 iterations (a 20-SNP
R scan takes about an hour with reference BLAS), with 10 about 120.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEED = 20161028
N_SNPS = 1000
FST = 0.05
MIN_POOLED_MAF = 0.05
#: Chromosome sizes in base pairs (human GRCh38 chromosomes 1-5, rounded).
CHROM_BP = (248_956_422, 242_193_529, 198_295_559, 190_214_555, 181_538_259)
#: Families per subpopulation: (nuclear, half-sib sets, cousin sets, singletons).
DESIGN = ((24, 9, 9, 36), (16, 6, 6, 24))
MEAN = 10.0
TOTAL_VAR = 80.0
POLY_VAR = 25.0
NOISE_VAR = 40.0
CAUSAL_FRACTIONS = (0.05, 0.05, 0.045, 0.04)
N_SCAN_HEAD = 16  # the R reference scan uses the first 16 SNPs; keep causal SNPs out of them
SIG_DIGITS_A = 10

DATA_DIR = Path(__file__).resolve().parent / "data"


def _snp_map(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Chromosome (1-5) and increasing bp position of each SNP."""
    sizes = np.asarray(CHROM_BP, dtype=float)
    counts = np.floor(N_SNPS * sizes / sizes.sum()).astype(int)
    counts[: N_SNPS - counts.sum()] += 1
    chrom = np.repeat(np.arange(1, len(CHROM_BP) + 1), counts)
    pos = np.concatenate(
        [
            np.sort(rng.choice(np.arange(10_000, size - 10_000), size=k, replace=False))
            for size, k in zip(CHROM_BP, counts, strict=True)
        ]
    )
    return chrom, pos


class _Meiosis:
    """Transmit one haplotype from a parent, with Haldane crossovers (1 cM/Mb)."""

    def __init__(self, rng: np.random.Generator, chrom: np.ndarray, pos: np.ndarray) -> None:
        self.rng = rng
        self.blocks = [
            (np.flatnonzero(chrom == c), pos[chrom == c], size)
            for c, size in enumerate(CHROM_BP, start=1)
        ]

    def __call__(self, parent: np.ndarray) -> np.ndarray:
        gamete = np.empty(parent.shape[1], dtype=parent.dtype)
        for idx, p, size in self.blocks:
            n_cross = self.rng.poisson(size / 1e8)  # 1 Morgan per 100 Mb
            breaks = np.sort(self.rng.uniform(0, size, size=n_cross))
            strand = (self.rng.integers(2) + np.searchsorted(breaks, p)) % 2
            gamete[idx] = parent[strand, idx]
        return gamete


def _frequencies(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ancestral minor-allele frequencies and Balding-Nichols subpopulation frequencies.

    SNPs are ascertained as on a genotyping array: a SNP whose pooled study
    frequency has MAF below ``MIN_POOLED_MAF`` is redrawn (ancestral and
    subpopulation frequencies together).
    """
    # genotyped people per subpopulation: 3 per nuclear family, 4 per half-sib or cousin set
    sizes = np.array(
        [3 * nuc + 4 * half + 4 * cous + single for nuc, half, cous, single in DESIGN]
    )
    weights = sizes / sizes.sum()
    p_anc = np.empty(N_SNPS)
    p_pop = np.empty((len(DESIGN), N_SNPS))
    todo = np.arange(N_SNPS)
    while todo.size:
        q = rng.uniform(0.05, 0.95, size=todo.size)
        p_anc[todo] = np.minimum(q, 1 - q)  # count the ancestral minor allele
        a = p_anc[todo] * (1 - FST) / FST
        b = (1 - p_anc[todo]) * (1 - FST) / FST
        p_pop[:, todo] = rng.beta(a, b, size=(len(DESIGN), todo.size))
        pooled = weights @ p_pop[:, todo]
        todo = todo[np.minimum(pooled, 1 - pooled) < MIN_POOLED_MAF]
    return p_anc, p_pop


def _genotypes(
    rng: np.random.Generator, chrom: np.ndarray, pos: np.ndarray, p_pop: np.ndarray
) -> np.ndarray:
    """Simulate the pedigrees and return the n x m genotype matrix (file order)."""
    m = p_pop.shape[1]
    meiosis = _Meiosis(rng, chrom, pos)

    def founder(k: int) -> np.ndarray:
        return (rng.random((2, m)) < p_pop[k]).astype(np.int8)

    def child(father: np.ndarray, mother: np.ndarray) -> np.ndarray:
        return np.stack([meiosis(father), meiosis(mother)])

    units: list[list[np.ndarray]] = []  # genotyped members of each family, as haplotype pairs
    for k, (n_nuclear, n_half, n_cousin, n_single) in enumerate(DESIGN):
        for _ in range(n_nuclear):
            f, mo = founder(k), founder(k)
            units.append([child(f, mo) for _ in range(3)])
        for _ in range(n_half):
            f, m1, m2 = founder(k), founder(k), founder(k)
            units.append([child(f, m1), child(f, m1), child(f, m2), child(f, m2)])
        for _ in range(n_cousin):
            gf, gm = founder(k), founder(k)
            members = []
            for _ in range(2):
                parent, spouse = child(gf, gm), founder(k)
                members += [child(parent, spouse), child(parent, spouse)]
            units.append(members)
        units += [[founder(k)] for _ in range(n_single)]
    order = rng.permutation(len(units))
    return np.array([h.sum(axis=0) for i in order for h in units[i]], dtype=np.int64)


def _round_symmetric(a: np.ndarray, digits: int) -> np.ndarray:
    """Round the upper triangle to ``digits`` significant digits and mirror it."""
    iu = np.triu_indices_from(a)
    vals = np.array([float(f"{v:.{digits}g}") for v in a[iu]])
    out = np.empty_like(a)
    out[iu] = vals
    out.T[iu] = vals
    return out


def _eig_summary(a: np.ndarray) -> tuple[float, float]:
    ev = np.linalg.eigvalsh(a)
    return float(ev[0]), float(ev[-1] / ev[0])


def generate(out_dir: Path = DATA_DIR) -> dict[str, object]:
    """Simulate the data set, write the files into ``out_dir`` and return a summary."""
    rng = np.random.default_rng(SEED)
    chrom, pos = _snp_map(rng)
    p_anc, p_pop = _frequencies(rng)
    x = _genotypes(rng, chrom, pos, p_pop)
    n: int
    m: int
    n, m = x.shape
    if np.any(x.min(axis=0) == x.max(axis=0)):
        raise RuntimeError("monomorphic SNP in the sample; change the design")

    z = (x - 2 * p_anc) / np.sqrt(2 * p_anc * (1 - p_anc))
    kin = z @ z.T / m
    kin_r = _round_symmetric(kin, SIG_DIGITS_A)
    min_ev, cond = _eig_summary(kin_r)
    if not (min_ev > 1e-3 and cond < 1e6):
        raise RuntimeError(f"kinship not well conditioned: min eig {min_ev}, cond {cond}")

    # Phenotype: polygenic part with covariance POLY_VAR * A, 4 causal SNPs, noise.
    g = z @ rng.normal(0.0, np.sqrt(POLY_VAR), size=m) / np.sqrt(m)
    maf = np.minimum(x.mean(axis=0) / 2, 1 - x.mean(axis=0) / 2)
    causal: list[int] = []
    for c in rng.permutation(np.arange(1, len(CHROM_BP) + 1))[: len(CAUSAL_FRACTIONS)]:
        ok = np.flatnonzero((chrom == c) & (maf >= 0.2) & (np.arange(m) >= N_SCAN_HEAD))
        causal.append(int(rng.choice(ok)))
    causal.sort()
    signs = rng.choice([-1.0, 1.0], size=len(causal))
    effects = signs * np.sqrt(np.array(CAUSAL_FRACTIONS) * TOTAL_VAR / x[:, causal].var(axis=0))
    qtl = (x[:, causal] - 2 * p_anc[causal]) @ effects
    e = rng.normal(0.0, np.sqrt(NOISE_VAR), size=n)
    y = MEAN + g + qtl + e

    samples = [f"ind{i + 1:03d}" for i in range(n)]
    snps = [f"snp{j + 1:04d}" for j in range(m)]
    is_causal = np.zeros(m, dtype=int)
    is_causal[causal] = 1

    out_dir.mkdir(parents=True, exist_ok=True)
    np.savetxt(out_dir / "lab_X.txt", x, fmt="%d", delimiter=" ")
    np.savetxt(out_dir / "lab_Y.txt", y[:, None], fmt="%.6f")
    np.savetxt(out_dir / "lab_A.txt", kin_r, fmt=f"%.{SIG_DIGITS_A}g", delimiter=" ")
    (out_dir / "lab_samples.txt").write_text("".join(s + "\n" for s in samples))
    with open(out_dir / "lab_snps.tsv", "w") as fh:
        fh.write("snp\tchr\tpos\tcausal\n")
        for row in zip(snps, chrom, pos, is_causal, strict=True):
            fh.write("\t".join(map(str, row)) + "\n")

    # Re-read what was written and check it.
    a_file = np.loadtxt(out_dir / "lab_A.txt")
    if not (np.array_equal(a_file, a_file.T) and np.array_equal(a_file, kin_r)):
        raise RuntimeError("lab_A.txt does not round-trip exactly symmetric")
    min_ev_file, cond_file = _eig_summary(a_file)

    return {
        "n": n,
        "m": m,
        "min_eig_A_unrounded": _eig_summary(kin)[0],
        "min_eig_A": min_ev_file,
        "cond_A": cond_file,
        "mean_diag_A": float(np.diag(a_file).mean()),
        "var_g": float(g.var()),
        "var_qtl": float(qtl.var()),
        "var_e": float(e.var()),
        "var_y": float(y.var()),
        "mean_y": float(y.mean()),
        "h2_nominal": (POLY_VAR + TOTAL_VAR * sum(CAUSAL_FRACTIONS))
        / (POLY_VAR + TOTAL_VAR * sum(CAUSAL_FRACTIONS) + NOISE_VAR),
        "h2_realised": float((g + qtl).var() / y.var()),
        "causal": [snps[j] for j in causal],
        "causal_chr": [int(chrom[j]) for j in causal],
        "causal_maf": [round(float(maf[j]), 3) for j in causal],
        "causal_effect": [round(float(b), 4) for b in effects],
        "causal_r2": [round(float(np.corrcoef(x[:, j], y)[0, 1] ** 2), 4) for j in causal],
        "sample_maf_range": (float(maf.min()), float(maf.max())),
    }


if __name__ == "__main__":
    for key, value in generate().items():
        print(f"{key}: {value}")
