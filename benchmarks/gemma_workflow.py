"""A GEMMA user's first day, on GEMMA's own example, compared with emlmm column by column.

Run by hand (not in CI), with GEMMA 0.98.5 installed (``apt-get install -y gemma``):

    python benchmarks/gemma_workflow.py [--workdir DIR] [--repeats 3]

Data: GEMMA's example mouse_hs1940 (1,940 mice, 12,226 SNPs, six phenotypes in the
.fam), unpacked from /usr/share/doc/gemma/example/ into a temporary folder (or
--workdir, kept). Phenotype 2 (GEMMA's ``-n 2``; 757 mice have it) is analysed.
Phenotype 1 cannot serve as a covariate here: where both are present they are equal.
The covariate is sex, from the .fam's fifth column (1 = male, 2 = female, none
missing), coded 0/1 (1 = female); the GEMMA-format covariate file (``-c``) holds a
column of 1s and that column, rows in .fam order.

Steps (each printed as a block of the report):

1. kinship: ``gemma -gk 1 -n 2`` vs ``emlmm kinship --pheno-col 2``, and ``-gk 2`` vs
   ``--method standardized``;
2. scan with the covariate: ``gemma -k k.cXX.txt -n 2 -c covar.txt -lmm 4`` vs
   ``emlmm gwas --pheno-col 2 --covar covar.txt --kinship ek.txt --format gemma``
   (each tool with its own kinship), timed as the median of --repeats alternated runs;
   and once without the covariate;
3. the SNP set, header, alleles, and every numeric column of the two tables;
4. the two logs (individuals, SNPs, the null model);
5. GEMMA double-centres the kinship over the analysed individuals before its LMM
   (src/gemma.cpp: CenterMatrix(G) before EigenDecomp_Zeroed). That leaves REML
   quantities unchanged but changes the ML ones, pve and the null intercept. The
   script reruns the scan through the Python API (emlmm.gwas) with the double-centred
   kinship and reports how much of the ML difference that removes;
6. for the null model and the three SNPs whose p_lrt still differs most, a dense
   brute-force ML fit (numpy/scipy only: a Cholesky factor of lambda*K + I per lambda,
   beta by GLS, sigma2_e profiled, log(lambda) on a grid then
   scipy.optimize.minimize_scalar, the maximum re-evaluated by
   scipy.stats.multivariate_normal) of three likelihoods: the full one with the
   centred kinship (GEMMA's), that of the n - 1 directions orthogonal to the ones
   (what emlmm maximises when the intercept absorbs a centred kinship's null space),
   and the full one with the kinship as given (the CLI's). It shows which reported
   log-likelihood is at which maximum.

About 80 s on an idle 2-core machine (2 min with other jobs running).

Threads are left at their defaults (OpenBLAS: one per core) unless the caller sets
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS; the report prints them.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# GEMMA and the emlmm CLI run with the caller's thread settings (the defaults unless
# set); this process's own numerics (the API rerun, the dense fits) use one thread,
# since on a loaded 2-core machine OpenBLAS's default threading makes a 757 x 757
# Cholesky factor 7x slower (70 ms instead of 10 ms here).
TOOL_ENV = dict(os.environ)
os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import linalg, optimize, stats  # noqa: E402

import emlmm  # noqa: E402

EXAMPLE = Path("/usr/share/doc/gemma/example")
NUMERIC = ["beta", "se", "logl_H1", "l_remle", "l_mle", "p_wald", "p_lrt", "p_score",
           "af", "n_miss"]  # fmt: skip
PREFIX = "mouse"


# ---------------------------------------------------------------- running tools


def emlmm_command() -> list[str]:
    found = shutil.which("emlmm", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "emlmm"]


def run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=TOOL_ENV)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
            f"{proc.stderr[-2000:]}"
        )
    return seconds


def unpack(folder: Path) -> None:
    for suffix in ("bed", "bim", "fam"):
        with (
            gzip.open(EXAMPLE / f"mouse_hs1940.{suffix}.gz", "rb") as source,
            open(folder / f"{PREFIX}.{suffix}", "wb") as target,
        ):
            shutil.copyfileobj(source, target)


def read_fam(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / f"{PREFIX}.fam", sep=r"\s+", header=None, dtype=str)


def write_covariates(folder: Path, fam: pd.DataFrame) -> pd.Series:
    """GEMMA's -c file: 1s and sex as 0 (male) / 1 (female), NA if unknown."""
    sex = pd.to_numeric(fam[4], errors="coerce")
    coded = sex.map({1: 1.0 - 1.0, 2: 1.0})  # 0 = male, 1 = female, NaN otherwise
    lines = [f"1\t{'NA' if np.isnan(v) else f'{v:g}'}" for v in coded]
    (folder / "covar.txt").write_text("\n".join(lines) + "\n")
    return coded


def read_matrix(path: Path) -> np.ndarray:
    return pd.read_csv(path, sep="\t", header=None, dtype=float).to_numpy()


# ---------------------------------------------------------------- comparing tables


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| / |b| where b != 0 (NaN elsewhere)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, np.abs(a - b) / np.abs(b), np.nan)


def compare_tables(gemma_path: Path, emlmm_path: Path, label: str) -> pd.DataFrame:
    g_header = gemma_path.read_text().split("\n", 1)[0]
    e_header = emlmm_path.read_text().split("\n", 1)[0]
    g = pd.read_csv(gemma_path, sep="\t", dtype={"chr": str, "rs": str})
    e = pd.read_csv(emlmm_path, sep="\t", dtype={"chr": str, "rs": str})
    same_set = set(g.rs) == set(e.rs)
    print(f"\n{label}: SNPs tested GEMMA {len(g)}, emlmm {len(e)}; sets identical: "
          f"{same_set}; same order: {list(g.rs) == list(e.rs)}; ids unique: "
          f"{g.rs.is_unique and e.rs.is_unique}; header identical: {g_header == e_header}")  # fmt: skip
    g, e = g.set_index("rs"), e.set_index("rs").loc[g.rs]
    for cols in (["chr", "ps"], ["allele1", "allele0"]):
        same = (g[cols].astype(str) == e[cols].astype(str)).all(axis=1)
        print(f"  {'/'.join(cols)} identical: {int(same.sum())} of {len(g)}")
    rows = {}
    for col in NUMERIC:
        a, b = e[col].to_numpy(float), g[col].to_numpy(float)
        rel = relative(a, b)
        has_rel = bool(np.any(np.isfinite(rel)))
        rows[col] = {
            "max abs diff": np.abs(a - b).max(),
            "max rel diff": np.nanmax(rel) if has_rel else np.nan,
            "median rel diff": np.nanmedian(rel) if has_rel else np.nan,
            "SNP at max rel": e.index[np.nanargmax(rel)]
            if has_rel and np.nanmax(rel) > 0
            else "-",
        }
    beta_gap = np.abs(e.beta.to_numpy() - g.beta.to_numpy()) / g.se.to_numpy()
    rows["beta"]["max abs diff / se"] = beta_gap.max()
    table = pd.DataFrame(rows).T
    print(table.to_string(float_format=lambda v: f"{v:.2e}", na_rep="-"))
    return table


# ---------------------------------------------------------------- logs


def gemma_log(path: Path) -> dict[str, list[float]]:
    """GEMMA's ``## name = numbers [unit]`` lines, as lists of numbers."""
    values = {}
    for line in path.read_text().splitlines():
        match = re.match(r"## (.+?)\s*=\s*(.+)$", line)
        if match:
            numbers = re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?=\s|$)",
                                 match.group(2))  # fmt: skip
            if numbers:
                values[match.group(1).strip()] = [float(v) for v in numbers]
    return values


def emlmm_log(path: Path) -> tuple[dict[str, int], pd.DataFrame]:
    text = path.read_text()
    counts = {
        "individuals": int(re.search(r"individuals: \d+ in total, (\d+) analysed", text)[1]),
        "snps": int(re.search(r"SNPs: \d+ in total, (\d+) analysed", text)[1]),
    }
    lines = text.splitlines()
    start = lines.index("## null model (all):")
    header = lines[start + 1].split()[1:]
    rows = {}
    for line in lines[start + 2 : start + 4]:
        tokens = line.split()[1:]
        rows[tokens[0]] = [float(v) for v in tokens[1:]]
    return counts, pd.DataFrame(rows, index=header).T


# ---------------------------------------------------------------- dense ML


def read_bed_snp(folder: Path, position: int, n: int) -> np.ndarray:
    """Genotypes of one SNP straight from the .bed bytes (counts of the .bim's A1)."""
    width = (n + 3) // 4
    with open(folder / f"{PREFIX}.bed", "rb") as handle:
        handle.seek(3 + position * width)
        raw = np.frombuffer(handle.read(width), dtype=np.uint8)
    codes = ((raw[:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3).ravel()[:n]
    return np.array([2.0, np.nan, 1.0, 0.0])[codes]


class DenseML:
    """y ~ N(X b, s2a K + s2e I), brute force: a dense Cholesky factor per lambda."""

    def __init__(self, y: np.ndarray, X: np.ndarray, K: np.ndarray) -> None:
        self.y, self.X, self.K, self.n = y, X, K, len(y)

    @classmethod
    def without_ones(cls, y: np.ndarray, X: np.ndarray, K: np.ndarray) -> DenseML:
        """The data in the n - 1 directions orthogonal to the ones vector (X's first
        column, which is dropped): what emlmm fits when a centred kinship's null space
        (the ones) is absorbed by the intercept."""
        Q = linalg.null_space(np.ones((1, len(y))))
        return cls(Q.T @ y, Q.T @ X[:, 1:], Q.T @ K @ Q)

    def _pieces(self, lam: float) -> tuple[float, np.ndarray, float, float, float]:
        H = lam * self.K + np.eye(self.n)
        factor = linalg.cho_factor(H, lower=True)
        HiX = linalg.cho_solve(factor, self.X)
        XtHiX = self.X.T @ HiX
        beta = np.linalg.solve(XtHiX, HiX.T @ self.y)
        resid = self.y - self.X @ beta
        quadratic = float(resid @ linalg.cho_solve(factor, resid))
        logdet_h = 2.0 * float(np.log(np.diag(factor[0])).sum())
        return logdet_h, beta, quadratic, float(np.linalg.slogdet(XtHiX)[1]), lam

    def profile(self, log_lambda: float) -> tuple[float, np.ndarray, float]:
        """Max over beta and s2e of the full log-likelihood at lambda = s2a / s2e."""
        logdet_h, beta, quadratic, _, _ = self._pieces(float(np.exp(log_lambda)))
        s2e = quadratic / self.n
        return -0.5 * self.n * (np.log(2 * np.pi * s2e) + 1.0) - 0.5 * logdet_h, beta, s2e

    def reml(self, lam: float) -> float:
        """The REML criterion profiled over s2e, up to a constant."""
        logdet_h, _, quadratic, logdet_xhx, _ = self._pieces(lam)
        df = self.n - self.X.shape[1]
        return -0.5 * (logdet_h + logdet_xhx + df * np.log(quadratic))

    def maximise(self) -> dict[str, float]:
        """Grid of log(lambda) over GEMMA's range [1e-5, 1e5], then Brent on the best cell."""
        grid = np.linspace(np.log(1e-5), np.log(1e5), 41)
        values = [self.profile(t)[0] for t in grid]
        best = int(np.argmax(values))
        low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        found = optimize.minimize_scalar(lambda t: -self.profile(t)[0], bounds=(low, high),
                                         method="bounded", options={"xatol": 1e-10})  # fmt: skip
        t = found.x if -found.fun >= values[best] else grid[best]
        llf, beta, s2e = self.profile(t)
        lam = float(np.exp(t))
        # The same point through scipy's multivariate normal, V built explicitly.
        V = s2e * (lam * self.K + np.eye(self.n))
        direct = stats.multivariate_normal(self.X @ beta, V).logpdf(self.y)
        return {"llf": llf, "lambda": lam, "direct": float(direct),
                "at_edge": best in (0, len(grid) - 1)}  # fmt: skip

    def at(self, lam: float) -> float:
        return self.profile(np.log(lam))[0]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated timed scans")
    args = parser.parse_args()
    if args.workdir:
        folder = Path(args.workdir)
        folder.mkdir(parents=True, exist_ok=True)
        report(folder, args.repeats)
    else:
        with tempfile.TemporaryDirectory(prefix="gemma_workflow_") as name:
            report(Path(name), args.repeats)


def report(folder: Path, repeats: int) -> None:
    started = time.perf_counter()
    emlmm_cli = emlmm_command()
    gemma_version = subprocess.run(["gemma", "-v"], capture_output=True, text=True).stdout
    gemma_version = next((line for line in gemma_version.splitlines() if "GEMMA" in line), "?")
    threads = {k: TOOL_ENV.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    print(f"{gemma_version.strip()}; emlmm {emlmm.__version__}; {os.cpu_count()} cores; "
          f"GEMMA's and the CLI's threads {threads} (unset = OpenBLAS default, one per "
          f"core; the API rerun and the dense fits: 1); load "
          f"{os.getloadavg()[0]:.2f}; folder {folder}")  # fmt: skip

    unpack(folder)
    fam = read_fam(folder)
    sex = write_covariates(folder, fam)
    print(f"data: {len(fam)} mice, {(folder / f'{PREFIX}.bim').read_text().count(chr(10))} SNPs; "
          f"phenotype 2 present for {int(pd.to_numeric(fam[6], errors='coerce').notna().sum())}; "
          f"covariate: sex from the .fam (0 = male, 1 = female), "
          f"{int((sex == 0).sum())} male, {int((sex == 1).sum())} female, "
          f"{int(sex.isna().sum())} unknown")  # fmt: skip

    def header(title: str) -> None:
        print(f"\n== {title} ==  [t = {time.perf_counter() - started:.0f} s]")

    # ---- 1. kinship
    header("1. kinship (SNPs chosen on the 757 mice with phenotype 2)")
    kinships = {}
    for gk, method, stem, suffix in (
        (1, "centered", "k", "cXX"),
        (2, "standardized", "ks", "sXX"),
    ):
        t_g = run(["gemma", "-bfile", PREFIX, "-gk", str(gk), "-n", "2", "-o", stem], folder)
        t_e = run([*emlmm_cli, "kinship", "--bfile", PREFIX, "--pheno-col", "2", "--method",
                   method, "--out", f"e{stem}.txt", "--overwrite"], folder)  # fmt: skip
        G = read_matrix(folder / "output" / f"{stem}.{suffix}.txt")
        E = read_matrix(folder / f"e{stem}.txt")
        kinships[method] = (G, E)
        print(f"gemma -gk {gk} -n 2 ({t_g:.1f} s) vs emlmm kinship --method {method} "
              f"({t_e:.1f} s): shape {G.shape} / {E.shape}, max |K| {np.abs(G).max():.3g}, "
              f"max abs diff {np.abs(G - E).max():.2e}, max rel diff (|K| > 1e-3) "
              f"{np.nanmax(relative(E, G)[np.abs(G) > 1e-3]):.2e}")  # fmt: skip

    # ---- 2. scans
    header(f"2. scan: median of {repeats} alternated runs, wall clock")
    gemma_cmd = ["gemma", "-bfile", PREFIX, "-k", "output/k.cXX.txt", "-n", "2", "-c",
                 "covar.txt", "-lmm", "4", "-o", "a"]  # fmt: skip
    emlmm_cmd = [*emlmm_cli, "gwas", "--bfile", PREFIX, "--pheno-col", "2", "--covar",
                 "covar.txt", "--kinship", "ek.txt", "--format", "gemma", "--out", "e.txt",
                 "--quiet", "--overwrite"]  # fmt: skip
    # GEMMA's -lmm 2 (the likelihood-ratio test alone, GEMMA's fastest exact scan) too:
    # the target is emlmm's whole CLI run (every test) <= 0.35x its time.
    lmm2_cmd = [*gemma_cmd[:-3], "2", "-o", "a2"]
    times: dict[str, list[float]] = {"gemma": [], "emlmm": [], "gemma -lmm 2": []}
    for _ in range(repeats):
        times["gemma -lmm 2"].append(run(lmm2_cmd, folder))
        times["gemma"].append(run(gemma_cmd, folder))
        times["emlmm"].append(run(emlmm_cmd, folder))
    g_med, e_med = statistics.median(times["gemma"]), statistics.median(times["emlmm"])
    g2_med = statistics.median(times["gemma -lmm 2"])
    print(f"{' '.join(lmm2_cmd)}\n  {', '.join(f'{t:.2f}' for t in times['gemma -lmm 2'])} s "
          f"-> median {g2_med:.2f} s; emlmm / GEMMA -lmm 2 = {e_med / g2_med:.2f} "
          "(target <= 0.35)")  # fmt: skip
    print(f"{' '.join(gemma_cmd)}\n  {', '.join(f'{t:.2f}' for t in times['gemma'])} s -> "
          f"median {g_med:.2f} s")  # fmt: skip
    print(f"emlmm {' '.join(emlmm_cmd[len(emlmm_cli):])}\n  "
          f"{', '.join(f'{t:.2f}' for t in times['emlmm'])} s -> median {e_med:.2f} s "
          f"(GEMMA / emlmm = {g_med / e_med:.2f}); load {os.getloadavg()[0]:.2f}")  # fmt: skip
    own_log = re.search(r"## time \(s\): (.+)", (folder / "e.txt.log").read_text())
    gemma_minutes = gemma_log(folder / "output" / "a.log.txt")["total computation time"][0]
    print(f"  last runs' own accounts: GEMMA's log, total computation time "
          f"{60 * gemma_minutes:.2f} s; emlmm's log, {own_log[1] if own_log else '?'}")  # fmt: skip
    t_g0 = run([*gemma_cmd[:7], "-lmm", "4", "-o", "a0"], folder)
    t_e0 = run([*emlmm_cli, "gwas", "--bfile", PREFIX, "--pheno-col", "2", "--kinship", "ek.txt",
                "--format", "gemma", "--out", "e0.txt", "--quiet", "--overwrite"], folder)  # fmt: skip
    print(f"without covariates (one run each): GEMMA {t_g0:.2f} s, emlmm {t_e0:.2f} s")

    # ---- 3. tables
    header("3. the tables, emlmm vs GEMMA (relative diff = |emlmm - GEMMA| / |GEMMA|)")
    compare_tables(folder / "output" / "a.assoc.txt", folder / "e.txt", "with sex")
    compare_tables(folder / "output" / "a0.assoc.txt", folder / "e0.txt", "no covariates")

    # ---- 4. logs
    header("4. the logs (with sex): GEMMA output/a.log.txt vs emlmm e.txt.log")
    gl = gemma_log(folder / "output" / "a.log.txt")
    counts, null = emlmm_log(folder / "e.txt.log")
    reml, ml = null.loc["REML"], null.loc["ML"]
    n = counts["individuals"]
    keep = pd.to_numeric(fam[6], errors="coerce").notna().to_numpy() & sex.notna().to_numpy()
    W = np.column_stack([np.ones(int(keep.sum())), sex.to_numpy()[keep]])
    half_logdet_ww = 0.5 * np.linalg.slogdet(W.T @ W)[1]
    K_used = kinships["centered"][1][np.ix_(keep, keep)]
    P = np.eye(len(K_used)) - 1.0 / len(K_used)
    K_centred = P @ K_used @ P
    # The covariate file's two columns, as the log names them (covar1, covar2 for a file
    # without a header; c1, c2 where a name cannot stand in a formula).
    first, second = (name[5:-1] for name in reml.index if name.startswith("beta["))
    rows = [
        ("individuals analysed", gl["number of analyzed individuals"][0], n, ""),
        ("SNPs analysed", gl["number of analyzed SNPs/var"][0], counts["snps"], ""),
        ("vg (REML)", gl["vg estimate in the null model"][0], reml["sigma2_a"], ""),
        ("ve (REML)", gl["ve estimate in the null model"][0], reml["sigma2_e"], ""),
        ("pve", gl["pve estimate in the null model"][0], reml["pve"],
         "emlmm: mean diagonal of the uncentred K"),
        ("se(pve)", gl["se(pve) in the null model"][0], reml["se_pve"], ""),
        ("beta[1] (REML)", gl["beta estimate in the null model"][0],
         reml[f"beta[{first}]"], "intercept: changes with centring"),
        ("beta[sex] (REML)", gl["beta estimate in the null model"][1],
         reml[f"beta[{second}]"], ""),
        ("se(beta[1])", gl["se(beta)"][0], reml[f"se[{first}]"], ""),
        ("se(beta[sex])", gl["se(beta)"][1], reml[f"se[{second}]"], ""),
        ("REML log-lik", gl["REMLE log-likelihood in the null model"][0], reml["llf"],
         f"GEMMA adds 0.5 log|W'W| = {half_logdet_ww:.4f}: emlmm + that = "
         f"{reml['llf'] + half_logdet_ww:.6g}"),
        ("ML log-lik", gl["MLE log-likelihood in the null model"][0], ml["llf"],
         "changes with centring"),
    ]  # fmt: skip
    lam = reml["sigma2_a"] / reml["sigma2_e"]
    tr_c = np.trace(K_centred) / len(K_centred)
    rows.append(("pve: emlmm's lambda, tr(centred K)/n", gl["pve estimate in the null model"][0],
                 tr_c * lam / (tr_c * lam + 1), f"tr/n: centred {tr_c:.6f}, uncentred "
                 f"{np.trace(K_used) / len(K_used):.6f}"))  # fmt: skip
    log_table = pd.DataFrame(rows, columns=["quantity", "GEMMA", "emlmm", "note"]).set_index(
        "quantity"
    )
    log_table["rel diff"] = relative(
        log_table.emlmm.to_numpy(float), log_table.GEMMA.to_numpy(float)
    )
    with pd.option_context("display.max_colwidth", 80, "display.width", 200):
        print(log_table[["GEMMA", "emlmm", "rel diff", "note"]].to_string(
            float_format=lambda v: f"{v:.6g}"))  # fmt: skip

    # ---- 5. centred kinship through the API
    header("5. emlmm.gwas (API) with the kinship double-centred over the 757 analysed")
    gem = pd.read_csv(folder / "output" / "a.assoc.txt", sep="\t", dtype={"rs": str}).set_index(
        "rs"
    )
    cli = pd.read_csv(folder / "e.txt", sep="\t", dtype={"rs": str}).set_index("rs").loc[gem.index]
    with emlmm.read_plink(folder / PREFIX) as plink:
        ids = plink.sample_ids[keep]
        data = pd.DataFrame({"y": plink.phenotype(2).to_numpy()[keep], "sex": W[:, 1]}, index=ids)
        kin = pd.DataFrame(K_centred, index=ids, columns=ids)
        t0 = time.perf_counter()
        api = emlmm.gwas("y ~ 1 + sex + snp", data, plink, kin).loc[gem.index]
        t_api = time.perf_counter() - t0
        null_c = emlmm.GenomeScan("y ~ 1 + sex + snp", data, plink, kin).null_estimates["all"]
        snp_index = plink.snps.index
    print(f"({t_api:.1f} s) null model, centred: REML vg {null_c.loc['REML', 'sigma2_a']:.6g}, ve "
          f"{null_c.loc['REML', 'sigma2_e']:.6g}, pve {null_c.loc['REML', 'pve']:.6g} (GEMMA "
          f"{gl['pve estimate in the null model'][0]:g}), se(pve) {null_c.loc['REML', 'se_pve']:.6g} "
          f"(GEMMA {gl['se(pve) in the null model'][0]:g}), beta[1] "
          f"{null_c.loc['REML', 'beta[Intercept]']:.6g} (GEMMA "
          f"{gl['beta estimate in the null model'][0]:g}), se "
          f"{null_c.loc['REML', 'se[Intercept]']:.6g} (GEMMA {gl['se(beta)'][0]:g}); ML log-lik "
          f"{null_c.loc['ML', 'llf']:.6f} (GEMMA {gl['MLE log-likelihood in the null model'][0]:g})")  # fmt: skip
    api = api.assign(logl_H1=api.llf, l_mle=api.sigma2_a / api.sigma2_e)
    rows = {}
    for col in ("p_lrt", "p_score", "l_mle", "logl_H1", "p_wald", "beta", "se"):
        before = relative(cli[col].to_numpy(float), gem[col].to_numpy(float))
        after = relative(api[col].to_numpy(float), gem[col].to_numpy(float))
        rows[col] = {"CLI (uncentred) max rel": np.nanmax(before),
                     "median": np.nanmedian(before), "API centred max rel": np.nanmax(after),
                     "median ": np.nanmedian(after),
                     "max removed": 1 - np.nanmax(after) / np.nanmax(before)}  # fmt: skip
    print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.2e}"))
    lrt_gap = pd.Series(relative(api.p_lrt.to_numpy(float), gem.p_lrt.to_numpy(float)), gem.index)
    h1_gap = api.logl_H1 - gem.logl_H1
    print(f"logl_H1, emlmm centred - GEMMA: min {h1_gap.min():.2e}, median {h1_gap.median():.2e}, "
          f"max {h1_gap.max():.2e}; SNPs where emlmm's is higher by > 1e-4: "
          f"{int((h1_gap > 1e-4).sum())}, GEMMA's higher by > 1e-4: {int((h1_gap < -1e-4).sum())}")  # fmt: skip

    # ---- 6. dense brute-force ML
    y = data.y.to_numpy()
    lam_reml = null_c.loc["REML", "sigma2_a"] / null_c.loc["REML", "sigma2_e"]
    dense_reml = DenseML(y, W, K_centred)
    h = 1e-3 * lam_reml
    curvature = (dense_reml.reml(lam_reml + h) - 2 * dense_reml.reml(lam_reml)
                 + dense_reml.reml(lam_reml - h)) / h**2  # fmt: skip
    se_gemma_formula = tr_c / (tr_c * lam_reml + 1) ** 2 * np.sqrt(-1.0 / curvature)
    print(f"se(pve): GEMMA's formula (observed curvature of the profiled REML in lambda, dense, "
          f"trace of the centred K) gives {se_gemma_formula:.6g}, GEMMA logs "
          f"{gl['se(pve) in the null model'][0]:g}; emlmm's (expected information of (vg, ve), "
          f"delta method), centred K: {null_c.loc['REML', 'se_pve']:.6g}")  # fmt: skip

    header(
        "6. dense ML fits (numpy/scipy): the null model and the 3 SNPs with the largest "
        "remaining p_lrt difference"
    )
    print("full = the Gaussian likelihood of all n = 757 observations; 'n - 1 dirs' = of the "
          "756 directions orthogonal to the ones vector (what emlmm maximises when the "
          "intercept absorbs a centred kinship's null space); lambda searched over [1e-5, 1e5]")  # fmt: skip
    full_null = DenseML(y, W, K_centred)
    null_fits = {
        "full": full_null.maximise(),
        "n - 1 dirs": DenseML.without_ones(y, W, K_centred).maximise(),
        "uncentred K": DenseML(y, W, K_used).maximise(),
    }
    print(f"null: full, centred K: dense local max {null_fits['full']['llf']:.6f} at lambda "
          f"{null_fits['full']['lambda']:.6g} (scipy MVN there {null_fits['full']['direct']:.6f}); "
          f"GEMMA {gl['MLE log-likelihood in the null model'][0]:g}\n"
          f"      n - 1 dirs, centred K: dense max {null_fits['n - 1 dirs']['llf']:.6f} at lambda "
          f"{null_fits['n - 1 dirs']['lambda']:.6g}; emlmm API (centred) "
          f"{null_c.loc['ML', 'llf']:.6f} at lambda "
          f"{null_c.loc['ML', 'sigma2_a'] / null_c.loc['ML', 'sigma2_e']:.6g}\n"
          f"      full, uncentred K: dense max {null_fits['uncentred K']['llf']:.6f} at lambda "
          f"{null_fits['uncentred K']['lambda']:.6g}; emlmm CLI log {ml['llf']:g} at lambda "
          f"{ml['lambda']:g}")  # fmt: skip
    far = {lam: full_null.at(lam) for lam in (1e5, 1e8, 1e11, 1e14)}
    crossing = 14 + 2 * (null_fits["full"]["llf"] - far[1e14]) / np.log(10)
    print("      full likelihood, centred K, beyond GEMMA's cap: "
          + ", ".join(f"{v:.2f} at {k:.0e}" for k, v in far.items())
          + "; it has no maximum (as lambda -> inf it rises by 1/2 log lambda: the ones "
          f"direction's residual is 0), but passes the local max only near lambda ~ "
          f"1e{crossing:.0f}")  # fmt: skip
    out = {}
    for rs in lrt_gap.sort_values(ascending=False).index[:3]:
        x = read_bed_snp(folder, snp_index.get_loc(rs), len(fam))[keep]
        x = np.where(np.isnan(x), np.nanmean(x), x)  # GEMMA: the analysed mice's mean
        X = np.column_stack([W, x])
        full = DenseML(y, X, K_centred)
        fits = {"full": full.maximise(), "n - 1 dirs": DenseML.without_ones(y, X, K_centred).maximise(),
                "uncentred K": DenseML(y, X, K_used).maximise()}  # fmt: skip
        lrt = {k: stats.chi2.sf(2 * (fits[k]["llf"] - null_fits[k]["llf"]), 1) for k in fits}
        out[rs] = {
            "GEMMA p_lrt": gem.at[rs, "p_lrt"],
            "emlmm API (centred) p_lrt": api.at[rs, "p_lrt"],
            "emlmm CLI (uncentred) p_lrt": cli.at[rs, "p_lrt"],
            "GEMMA logl_H1": gem.at[rs, "logl_H1"],
            "dense full local max": fits["full"]["llf"],
            "  scipy MVN at that point": fits["full"]["direct"],
            "  full at GEMMA's l_mle": full.at(gem.at[rs, "l_mle"]),
            "  full at emlmm's l_mle": full.at(api.at[rs, "l_mle"]),
            "emlmm API (centred) llf": api.at[rs, "llf"],
            "dense max, n - 1 dirs": fits["n - 1 dirs"]["llf"],
            "emlmm CLI (uncentred) logl_H1": cli.at[rs, "logl_H1"],
            "dense max, uncentred K": fits["uncentred K"]["llf"],
            "GEMMA l_mle": gem.at[rs, "l_mle"],
            "dense full lambda": fits["full"]["lambda"],
            "emlmm API l_mle": api.at[rs, "l_mle"],
            "dense n - 1 dirs lambda": fits["n - 1 dirs"]["lambda"],
            "dense p_lrt, full": lrt["full"],
            "dense p_lrt, n - 1 dirs": lrt["n - 1 dirs"],
            "dense p_lrt, uncentred K": lrt["uncentred K"],
        }
    with pd.option_context("display.width", 200):
        print(pd.DataFrame(out).to_string(
            float_format=lambda v: f"{v:.6f}" if abs(v) > 1 else f"{v:.7g}"))  # fmt: skip
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
