"""10,000 individuals x 500,000 SNPs: time and peak memory of each step, from PLINK files.

Run by hand (not in CI); at the defaults it takes hours and writes about 1.3 GB of
.bed and 0.4 GB of GRM (.grm.bin and .grm.N.bin):

    python benchmarks/big_scan.py [--n 10000] [--m 500000] [--folder /tmp/emlmm_big] \\
        [--steps write kinship floor scan] [--rewrite] [--quiet]

Each step runs as a child process, timed (wall clock) and measured by ``os.wait4``:
peak resident set size (``ru_maxrss``, KiB on Linux, of the child and anything it
waited for) and CPU seconds (user + system). Children inherit the environment, so
``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` apply to all of them; the report prints
them and the load average.

Steps (``--steps``, default all four, in this order; the files go to ``--folder``,
prefix ``big``):

(a) ``write``: a simulated fileset ``big.bed/.bim/.fam``, n x m, written chunk by chunk
    (this script's own .bed encoder, first checked against ``bed_reader.to_bed`` on a
    small case: ``bed_reader.open_bed(...).read()`` gives the same genotypes from both
    files), so the matrix is never whole in memory. Unrelated individuals; each SNP's
    A1 frequency uniform in [0.05, 0.5], genotypes Binomial(2, p) (Hardy-Weinberg),
    ~1 % missing at random. Phenotype (the .fam's 6th column): y = 10 + the sum of
    N(0, 1) effects of 100 random causal SNPs (true genotypes, scaled so that they
    explain ``--h2``, default 0.5, of the variance 80) + noise; the causal SNPs are
    listed in ``big.causal.txt``. The .bim spreads the SNPs evenly over chromosomes
    1-22, positions increasing (1,000 bp apart). Skipped when the files exist with
    these n and m (sizes and line counts checked), unless ``--rewrite``.
(b) ``kinship``: GEMMA's centered kinship as GCTA's binary GRM ``big_K.grm.bin``, from
    every ``--kinship-every``-th SNP (default 10: 50,000 SNPs, as a thinned SNP set for
    the GRM is usual), with ``emlmm.kinship`` and ``emlmm.write_grm``; with
    ``--kinship-every 1`` it is ``python -m emlmm kinship --bfile big --out big_K
    --format grm`` over all SNPs (~2 n^2 m flops: about 18 min on both cores). Skipped
    when the GRM exists for these n individuals and is newer than the .bed.
(c) ``floor``: what any scan must do, in this script: read the GRM
    (``emlmm.io.read_grm``), eigendecompose it (``scipy.linalg.eigh``, LAPACK's dsyevr,
    as emlmm does), then ``U.T @ G`` in chunks (``emlmm.read_plink(...).read(start,
    stop)``, NaN imputed by the SNP mean, chunks of
    ``emlmm.genotypes.default_chunk_size(n, m)`` SNPs, as the scan's) over the first
    ``--floor-snps`` SNPs (default: all); with fewer, the reading and products are
    scaled to m (the products are linear in m), and the report says so. eigh and the
    products are timed separately from the reading.
(d) ``scan``: ``python -m emlmm gwas --bfile big --kinship big_K.grm.bin --out
    big.scan.tsv --overwrite`` at the default settings (exact); ``--quiet`` is added
    only with this script's ``--quiet``. The CLI's own timings (from ``big.scan.tsv.log``)
    and the causal SNPs found at p_lrt < 5e-8 are reported.

Expected costs at the defaults: the kinship's sum of products and the floor's U'G
are each ~2 n^2 m = 1e14 flops (about 45 min each at the ~36 GFLOP/s one core of the
2-core test machine gives a large dgemm), eigh(K) ~3 min; so with
``OPENBLAS_NUM_THREADS=1`` the scan cannot beat 30 min, and with OpenBLAS's default
threads it needs both cores free. Writing takes about 2 min.

The report is a markdown table (step, seconds, CPU seconds, peak RSS) and the ratios
scan / floor, with the targets: scan < 30 min, peak RSS < 4 GB (GB = 10^9 bytes).

Tiny end-to-end check (about 20 s): ``python benchmarks/big_scan.py --n 300 --m 3000
--folder /tmp/emlmm_big_test``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

STEPS = ("write", "kinship", "floor", "scan")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
BED_MAGIC = bytes([0x6C, 0x1B, 0x01])
#: .bed 2-bit code by count of A1 (0, 1, 2) and 3 for missing: 0b11 = homozygous A2,
#: 0b10 = heterozygous, 0b00 = homozygous A1, 0b01 = missing.
CODES = np.array([0b11, 0b10, 0b00, 0b01], dtype=np.uint8)
MISSING = 3
TOTAL_VARIANCE = 80.0
N_CAUSAL = 100
TARGET_SECONDS = 30 * 60
TARGET_GB = 4.0


# ---------------------------------------------------------------- .bed encoding


def encode_bed(counts: np.ndarray) -> bytes:
    """SNP-major .bed bytes of ``counts`` (SNPs x individuals, uint8: A1 counts 0/1/2,
    ``MISSING`` = 3): ``ceil(n / 4)`` bytes per SNP, individual i in bits 2(i % 4) and
    2(i % 4) + 1 of byte i // 4 (lowest bits first), padding bits 0."""
    k, n = counts.shape
    width = -(-n // 4)
    codes = np.zeros((k, 4 * width), dtype=np.uint8)
    codes[:, :n] = CODES[counts]
    quads = codes.reshape(k, width, 4)
    packed = quads[:, :, 0] | (quads[:, :, 1] << 2) | (quads[:, :, 2] << 4) | (quads[:, :, 3] << 6)
    return packed.astype(np.uint8).tobytes()


def check_encoder(folder: Path) -> str:
    """Our bytes vs bed_reader.to_bed's, both read back by bed_reader (n not a multiple
    of 4, missing genotypes); raises on a difference."""
    from bed_reader import open_bed, to_bed

    rng = np.random.default_rng(0)
    n, m = 13, 11
    counts = rng.integers(0, 3, size=(m, n)).astype(np.uint8)
    counts[rng.random((m, n)) < 0.1] = MISSING
    counts[0, :] = [*range(3), MISSING] * 3 + [MISSING]  # every code; missing in the last byte
    expected = np.where(counts == MISSING, np.nan, counts).astype(np.float64).T  # n x m
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        theirs, ours = Path(tmp, "theirs.bed"), Path(tmp, "ours.bed")
        to_bed(theirs, expected, count_A1=True)
        ours.write_bytes(BED_MAGIC + encode_bed(counts))
        for suffix in (".fam", ".bim"):
            ours.with_suffix(suffix).write_bytes(theirs.with_suffix(suffix).read_bytes())
        read_theirs = open_bed(theirs).read(dtype="float64")
        read_ours = open_bed(ours).read(dtype="float64")
        same_bytes = theirs.read_bytes() == ours.read_bytes()
    for name, values in (("bed_reader.to_bed", read_theirs), ("encode_bed", read_ours)):
        if not np.array_equal(values, expected, equal_nan=True):
            raise SystemExit(f"encoder check failed: {name}'s file reads back differently")
    return (
        f"encoder check OK: {n} x {m} with {int((counts == MISSING).sum())} missing, read back "
        f"by bed_reader equal from both files (bytes identical: {same_bytes})"
    )


# ---------------------------------------------------------------- children


def child_write(args: argparse.Namespace) -> dict[str, Any]:
    """Step (a): the fileset, written to temporary names, then renamed."""
    folder, n, m = Path(args.folder), args.n, args.m
    print(check_encoder(folder), flush=True)
    prefix = folder / "big"
    rng = np.random.default_rng(args.seed)
    causal = np.sort(rng.choice(m, size=min(N_CAUSAL, m), replace=False))
    effects = rng.standard_normal(len(causal))
    genetic = np.zeros(n)
    chromosome = 1 + np.arange(m, dtype=np.int64) * 22 // m
    first_of = {c: int(np.searchsorted(chromosome, c)) for c in range(1, 23)}
    chunk = max(1, 20_000_000 // n)  # about 20 million genotypes: ~100 MB of work arrays
    missing_total = 0
    started = time.perf_counter()
    tmp = {suffix: prefix.with_name(f"big{suffix}.tmp") for suffix in (".bed", ".bim", ".fam")}
    with open(tmp[".bed"], "wb") as bed, open(tmp[".bim"], "w") as bim:
        bed.write(BED_MAGIC)
        for start in range(0, m, chunk):
            stop = min(start + chunk, m)
            k = stop - start
            p = rng.uniform(0.05, 0.5, size=k)
            u = rng.random((k, n), dtype=np.float32)
            at_least_one = (1.0 - (1.0 - p) ** 2).astype(np.float32)[:, None]
            two = (p**2).astype(np.float32)[:, None]
            counts = (u < at_least_one).view(np.uint8) + (u < two).view(np.uint8)
            del u
            here = (causal >= start) & (causal < stop)
            if here.any():
                genetic += effects[here] @ counts[causal[here] - start].astype(np.float64)
            n_missing = int(rng.binomial(k * n, 0.01))
            counts.reshape(-1)[rng.integers(0, k * n, size=n_missing)] = MISSING
            missing_total += n_missing
            bed.write(encode_bed(counts))
            bim.write(
                "".join(
                    f"{c}\trs{j + 1}\t0\t{1000 * (j - first_of[c] + 1)}\tA\tG\n"
                    for j, c in zip(
                        range(start, stop), chromosome[start:stop].tolist(), strict=True
                    )
                )
            )
            if start // chunk % 50 == 0:
                print(f"  wrote SNPs {start}-{stop - 1} of {m} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
    spread = genetic.std()
    scaled = (genetic - genetic.mean()) / (spread if spread > 0 else 1.0)
    y = (
        10.0
        + np.sqrt(args.h2 * TOTAL_VARIANCE) * scaled
        + np.sqrt((1 - args.h2) * TOTAL_VARIANCE) * rng.standard_normal(n)
    )
    with open(tmp[".fam"], "w") as fam:
        fam.writelines(f"f{i + 1}\ts{i + 1}\t0\t0\t0\t{y[i]:.10g}\n" for i in range(n))
    np.savetxt(prefix.with_name("big.causal.txt"), causal + 1, fmt="rs%d")
    for suffix, path in tmp.items():
        os.replace(path, prefix.with_name(f"big{suffix}"))
    return {
        "missing": missing_total / (n * m),
        "chunk": chunk,
        "causal": len(causal),
        "seconds_inside": time.perf_counter() - started,
    }


def child_floor(args: argparse.Namespace) -> dict[str, Any]:
    """Step (c): read the GRM, eigh, then U'G chunk by chunk over the .bed."""
    import emlmm
    from emlmm.genotypes import default_chunk_size

    prefix = Path(args.folder) / "big"
    times: dict[str, float] = {}
    t = time.perf_counter()
    kinship = emlmm.read_grm(f"{prefix}_K").to_numpy()
    times["read GRM"] = time.perf_counter() - t
    t = time.perf_counter()
    _, vectors = scipy.linalg.eigh(kinship, driver="evr", check_finite=False)
    times["eigh"] = time.perf_counter() - t
    del kinship
    read = product = 0.0
    with emlmm.read_plink(prefix) as plink:
        n, m = plink.shape
        chunk = default_chunk_size(n, m)
        measured = min(args.floor_snps or m, m)
        for start in range(0, measured, chunk):
            t = time.perf_counter()
            block = plink.read(start, min(start + chunk, measured))
            missing = np.isnan(block)
            if missing.any():
                with np.errstate(invalid="ignore"):
                    means = np.nanmean(block, axis=0)
                block[missing] = np.take(means, np.nonzero(missing)[1])
            t2 = time.perf_counter()
            vectors.T @ block
            product += time.perf_counter() - t2
            read += t2 - t
    scale = m / measured
    times["read .bed + impute"] = read * scale
    times["U'G products"] = product * scale
    return {"times": times, "chunk": chunk, "measured_snps": measured}


def child_kinship(args: argparse.Namespace) -> dict[str, Any]:
    """Step (b) from every ``--kinship-every``-th SNP: emlmm.kinship, then write_grm."""
    import emlmm
    from emlmm.genotypes import Genotypes

    prefix = Path(args.folder) / "big"
    with emlmm.read_plink(prefix) as plink:
        thinned = Genotypes.from_any(plink).select(np.arange(0, plink.n_snps, args.kinship_every))
        t = time.perf_counter()
        matrix = emlmm.kinship(thinned)
        seconds = time.perf_counter() - t
    emlmm.write_grm(f"{prefix}_K", matrix, n_snps=thinned.n_snps, overwrite=True)
    return {"snps": thinned.n_snps, "seconds": seconds}


# ---------------------------------------------------------------- the parent


@dataclass
class Measured:
    seconds: float
    cpu: float
    peak_kib: int
    status: int

    @property
    def peak_gb(self) -> float:
        return self.peak_kib * 1024 / 1e9


def run_measured(command: list[str]) -> Measured:
    """Run ``command``, its output going to ours; wall time and its rusage (os.wait4)."""
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss,
                    process.returncode)  # fmt: skip


def count_lines(path: Path) -> int:
    lines = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            lines += block.count(b"\n")
    return lines


def fileset_matches(prefix: Path, n: int, m: int) -> bool:
    paths = [prefix.with_name(f"big{suffix}") for suffix in (".bed", ".bim", ".fam")]
    if not all(path.is_file() for path in paths):
        return False
    return (
        paths[0].stat().st_size == 3 + m * math.ceil(n / 4)
        and count_lines(paths[1]) == m
        and count_lines(paths[2]) == n
    )


def grm_matches(prefix: Path, n: int) -> bool:
    values, ids = Path(f"{prefix}_K.grm.bin"), Path(f"{prefix}_K.grm.id")
    bed = prefix.with_name("big.bed")
    return (
        values.is_file()
        and ids.is_file()
        and values.stat().st_size == n * (n + 1) // 2 * 4
        and count_lines(ids) == n
        and values.stat().st_mtime >= bed.stat().st_mtime
    )


def this_script(args: argparse.Namespace, step: str, result: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", step, "--result",
            str(result), "--n", str(args.n), "--m", str(args.m), "--folder", args.folder,
            "--seed", str(args.seed), "--h2", str(args.h2), "--kinship-every",
            str(args.kinship_every), "--floor-snps", str(args.floor_snps)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--m", type=int, default=500_000)
    parser.add_argument("--folder", default="/tmp/emlmm_big")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument(
        "--rewrite", action="store_true", help="write the fileset even if it exists"
    )
    parser.add_argument("--quiet", action="store_true", help="pass --quiet to emlmm gwas")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--h2", type=float, default=0.5, help="variance explained by the causal SNPs"
    )
    parser.add_argument(
        "--kinship-every", type=int, default=10, help="the GRM from every k-th SNP"
    )
    parser.add_argument(
        "--floor-snps", type=int, default=0, help="U'G over this many SNPs, scaled to m"
    )
    parser.add_argument("--child", choices=["write", "floor", "kinship"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        children = {"write": child_write, "floor": child_floor, "kinship": child_kinship}
        result = children[args.child](args)
        Path(args.result).write_text(json.dumps(result))
        return

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "big"
    threads = {k: os.environ.get(k, "unset") for k in THREAD_VARIABLES}
    print(f"n = {args.n}, m = {args.m}, steps {args.steps}, folder {folder}; {os.cpu_count()} "
          f"cores; threads {threads}; load {os.getloadavg()}", flush=True)  # fmt: skip
    measured: dict[str, Measured] = {}
    notes: dict[str, str] = {}
    floor_times: dict[str, float] = {}
    started = time.perf_counter()

    def step(name: str, command: list[str], result: Path | None = None) -> dict[str, Any]:
        run = run_measured(command)
        if run.status != 0:
            raise SystemExit(f"step {name} failed (exit status {run.status})")
        measured[name] = run
        print(f"-> {name}: {run.seconds:.1f} s, CPU {run.cpu:.1f} s, peak RSS "
              f"{run.peak_gb:.3f} GB; load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
        if result is None:
            return {}
        found = json.loads(result.read_text())
        result.unlink()
        return found

    result_path = folder / ".big_scan_result.json"
    emlmm_cli = [sys.executable, "-m", "emlmm"]
    if "write" in args.steps:
        if not args.rewrite and fileset_matches(prefix, args.n, args.m):
            notes["write"] = "skipped: the fileset exists with these n and m (--rewrite to redo)"
            print(f"write: {notes['write']}")
        else:
            found = step("write", this_script(args, "write", result_path), result_path)
            notes["write"] = (f"{found['missing']:.2%} missing, {found['causal']} causal SNPs, "
                              f"chunks of {found['chunk']} SNPs")  # fmt: skip
    if not fileset_matches(prefix, args.n, args.m):
        raise SystemExit(
            f"no {args.n} x {args.m} fileset {prefix}.bed/.bim/.fam: run --steps write"
        )
    if "kinship" in args.steps:
        if grm_matches(prefix, args.n):
            notes["kinship"] = "skipped: the GRM exists, newer than the .bed"
            print(f"kinship: {notes['kinship']}")
        else:
            if args.kinship_every == 1:
                stale = Path(f"{prefix}_K.grm.bin").exists() or Path(f"{prefix}_K.grm.id").exists()
                command = [*emlmm_cli, "kinship", "--bfile", str(prefix), "--out", f"{prefix}_K",
                           "--format", "grm", *(["--overwrite"] if stale else [])]  # fmt: skip
                step("kinship", command)
                notes["kinship"] = f"all {args.m} SNPs"
            else:
                found = step("kinship", this_script(args, "kinship", result_path), result_path)
                notes["kinship"] = (f"every {args.kinship_every}th SNP: {found['snps']} SNPs "
                                    f"(products {found['seconds']:.1f} s)")  # fmt: skip
    if {"floor", "scan"} & set(args.steps) and not grm_matches(prefix, args.n):
        raise SystemExit(f"no up-to-date GRM {prefix}_K.grm.bin: run --steps kinship")
    if "floor" in args.steps:
        found = step("floor", this_script(args, "floor", result_path), result_path)
        floor_times = found["times"]
        notes["floor"] = ", ".join(f"{k} {v:.1f} s" for k, v in floor_times.items()) + (
            f" (chunks of {found['chunk']} SNPs"
            + (f"; .bed reading and U'G measured on the first {found['measured_snps']} SNPs "
               f"and scaled to {args.m}" if found["measured_snps"] < args.m else "") + ")"
        )  # fmt: skip
    out = prefix.with_name("big.scan.tsv")
    if "scan" in args.steps:
        command = [*emlmm_cli, "gwas", "--bfile", str(prefix), "--kinship",
                   f"{prefix}_K.grm.bin", "--out", str(out), "--overwrite",
                   *(["--quiet"] if args.quiet else [])]  # fmt: skip
        step("scan", command)
        log = Path(f"{out}.log")
        own = re.search(r"## time \(s\): (.+)", log.read_text()) if log.exists() else None
        notes["scan"] = f"its log: {own[1] if own else '?'}; {signals(out, prefix)}"

    print(f"\nn = {args.n}, m = {args.m}; threads {threads}; total {time.perf_counter() - started:.0f} s; "
          f"load {os.getloadavg()}\n")  # fmt: skip
    print("| step | seconds | CPU seconds | peak RSS (GB) | notes |")
    print("|---|---|---|---|---|")
    for name in STEPS:
        if name in measured:
            run = measured[name]
            print(f"| {name} | {run.seconds:.1f} | {run.cpu:.1f} | {run.peak_gb:.3f} "
                  f"({run.peak_kib} KiB) | {notes.get(name, '')} |")  # fmt: skip
        elif name in notes:
            print(f"| {name} | - | - | - | {notes[name]} |")
    if floor_times:
        core = floor_times["eigh"] + floor_times["U'G products"]
        print(f"\nfloor, eigh + U'G products: {core:.1f} s; whole floor step (start-up, reading "
              f"the GRM and the .bed): {measured['floor'].seconds:.1f} s")  # fmt: skip
    if "scan" in measured:
        scan = measured["scan"]
        if floor_times:
            print(f"ratio scan / floor (eigh + products): **{scan.seconds / core:.2f}**; "
                  f"scan / whole floor step: {scan.seconds / measured['floor'].seconds:.2f}; "
                  f"peak RSS scan / floor: {scan.peak_kib / measured['floor'].peak_kib:.2f}")  # fmt: skip
        print(f"target scan < 30 min: {scan.seconds / 60:.1f} min, "
              f"{'met' if scan.seconds < TARGET_SECONDS else 'not met'}")  # fmt: skip
        print(f"target peak RSS < {TARGET_GB:g} GB: {scan.peak_gb:.2f} GB, "
              f"{'met' if scan.peak_gb < TARGET_GB else 'not met'}")  # fmt: skip


def signals(table_path: Path, prefix: Path) -> str:
    """How many causal SNPs the scan finds at p_lrt < 5e-8, and how many others."""
    import pandas as pd

    causal_path = prefix.with_name("big.causal.txt")
    if not causal_path.exists():
        return "causal SNPs unknown"
    causal = set(causal_path.read_text().split())
    table = pd.read_csv(table_path, sep="\t", usecols=["snp", "p_lrt"])
    hits = set(table.snp[table.p_lrt < 5e-8])
    return (
        f"{len(table)} SNPs tested; p_lrt < 5e-8: {len(hits & causal)} of {len(causal)} causal, "
        f"{len(hits - causal)} others"
    )


if __name__ == "__main__":
    main()
