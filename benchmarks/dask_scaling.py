"""A scan on a local Dask cluster of 1 and 2 worker processes vs the same scan in-process.

Run by hand (not in CI), with Dask installed (``pip install 'emlmm[dask]'``):

    OPENBLAS_NUM_THREADS=1 python benchmarks/dask_scaling.py [--n 1500] [--m 40000] \\
        [--repeats 3] [--workdir DIR] [--chunk-size K]

Data: a PLINK fileset of n x m simulated related genotypes (``_sim``, no missing, MAF
> 0.05), written with ``bed_reader.to_bed`` into a temporary folder (or ``--workdir``,
kept), with a phenotype (h2 = 0.5 on the GRM of the first 10,000 SNPs) in the .fam;
the kinship is ``emlmm.kinship(plink)`` (centered), in memory.

The scan ``GenomeScan("y ~ 1 + snp", data, plink, kinship)`` (exact) is built once,
from ``emlmm.read_plink(prefix)`` kept open, and reused for every timed run:

- in-process: ``scan.run()`` (on two cores, a helper thread rotates each chunk while
  the scanning thread fits the one before, one BLAS thread each; otherwise the
  rotation with the caller's BLAS threads);
- W workers: ``scan.run(client=client)`` on ``distributed.LocalCluster(n_workers=W,
  threads_per_worker=1, processes=True, dashboard_address=None)`` for W = 1 and 2.
  The scanner and the fileset's path are scattered at each run (that is timed); the
  workers reopen the fileset and read their own chunks.

Only one cluster is alive at a time, as when a user scans on a cluster: each round
starts the 1-worker cluster, times its run, closes it, then does the same with 2
workers. Start-up, the workers' first ``import emlmm.gwas`` (about 3 s: statsmodels)
and shut-down are not timed. (Until session 12 both clusters were kept for all rounds;
the idle one's scheduler and nanny, which live in the client process, added about
0.1 s to the client's CPU per 2-worker run, 0.56 s against 0.45 s, medians of 5; the
wall clock moved by less than the noise, 3.94 s against 3.89 s.) Runs alternate
(in-process, 1 worker, 2 workers) for ``--repeats`` rounds;
the table gives each median, the speed-up from 1 to 2 workers and the ratio 2 workers
/ in-process (target: <= 1, i.e. 2 workers at least as fast as in-process). Every
cluster run's p_lrt must equal the first in-process run's (rtol 1e-6), SNP for SNP;
the script exits with status 1 otherwise. The workers' BLAS thread settings (Dask's
nanny sets them to 1 by default) are printed.

Before the rounds, one thread's scan in this process is split into reading, rotating
and fitting (the rotation's rate in GFLOP/s: on one core it runs near the core's peak,
so two workers have nothing to win over two threads in one process but the cluster's
own costs).

Tiny check (about 30 s, mostly cluster start-up): ``python benchmarks/dask_scaling.py
--n 200 --m 2000 --repeats 1``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sim import grm, simulate_genotypes, simulate_phenotype

import emlmm

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RTOL = 1e-6


def write_fileset(prefix: Path, n: int, m: int, seed: int) -> None:
    """n x m genotypes (simulated 10,000 SNPs at a time, kept as int8) and a phenotype."""
    from bed_reader import to_bed

    rng = np.random.default_rng(seed)
    blocks = []
    y = None
    for start in range(0, m, 10_000):
        block, p = simulate_genotypes(n, min(10_000, m - start), rng)
        if y is None:
            y = simulate_phenotype(grm(block, p), 0.5, rng)
        blocks.append(block.astype(np.int8))
    assert y is not None
    genotypes = np.concatenate(blocks, axis=1)
    chromosome = 1 + np.arange(m) * 22 // m
    to_bed(
        f"{prefix}.bed",
        genotypes,
        properties={
            "iid": [f"s{i + 1}" for i in range(n)],
            "pheno": [f"{v:.10g}" for v in y],
            "sid": [f"rs{j + 1}" for j in range(m)],
            "chromosome": [str(c) for c in chromosome],
            "bp_position": 1000 * (1 + np.arange(m)),
        },
        num_threads=1,
    )


def timed(run: Callable[[], pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # failures are counted from the table instead
        table = run()
    return time.perf_counter() - start, table


@contextmanager
def local_cluster(workers: int, announce: bool) -> Iterator[Any]:
    """A client of a new LocalCluster of ``workers`` single-threaded worker processes,
    with ``emlmm.gwas`` imported on them; closed on exit (none of this is timed)."""
    import distributed

    t = time.perf_counter()
    with warnings.catch_warnings():  # "Port 8787 is already in use"
        warnings.filterwarnings("ignore", "Port .* is already in use")
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(workers)
        client.run(importlib.import_module, "emlmm.gwas")
        if announce:
            seen = client.run(lambda: {k: os.environ.get(k, "unset") for k in THREAD_VARIABLES})
            print(f"cluster of {workers} started in {time.perf_counter() - t:.1f} s "
                  f"(not timed); workers' threads: {next(iter(seen.values()))}")  # fmt: skip
        yield client
    finally:
        client.close()
        cluster.close()


def phases(scan: emlmm.GenomeScan) -> None:
    """Print where one thread's scan spends its time, chunk by chunk in this process:
    reading and filtering, rotating (``U'G``), fitting (emlmm's internals)."""
    from threadpoolctl import threadpool_limits

    from emlmm.gwas import _read_filtered

    scanner, genotypes = scan._scanner(0)
    seconds = {"reading": 0.0, "rotating": 0.0, "fitting": 0.0}
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for first in range(0, scan.n_snps, scan.chunk_size):
            stop = min(first + scan.chunk_size, scan.n_snps)
            t = time.perf_counter()
            _, block, summary = _read_filtered(genotypes, scan.snp_filter, first, stop)
            read = time.perf_counter()
            rotation = scanner.rotation_of(block, summary)
            rotation.results()
            rotated = time.perf_counter()
            scanner.scan_rotation(rotation)
            seconds["reading"] += read - t
            seconds["rotating"] += rotated - read
            seconds["fitting"] += time.perf_counter() - rotated
    n, width = scanner.rotation.shape
    rate = 2.0 * n * width * scan.n_snps / seconds["rotating"] / 1e9
    print("one thread, in this process: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
          + f" (the rotation at {rate:.0f} GFLOP/s)")  # fmt: skip


def largest_relative_gap(table: pd.DataFrame, reference: pd.DataFrame) -> float:
    """max |p - p_ref| / |p_ref| over the rows (inf if the rows differ)."""
    if not table.index.equals(reference.index):
        return float("inf")
    a, b = table.p_lrt.to_numpy(dtype=float), reference.p_lrt.to_numpy(dtype=float)
    same_nan = np.isnan(a) == np.isnan(b)
    if not same_nan.all():
        return float("inf")
    finite = ~np.isnan(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(a[finite] - b[finite]) / np.abs(b[finite])
    rel = np.where(np.abs(a[finite] - b[finite]) == 0, 0.0, rel)  # 0 / 0
    return float(rel.max(initial=0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500)
    parser.add_argument("--m", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds (median)")
    parser.add_argument("--chunk-size", type=int, default=None, help="default: emlmm's")
    parser.add_argument("--workdir", help="keep the fileset here (default: a temporary folder)")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.workdir:
        folder = Path(args.workdir)
        folder.mkdir(parents=True, exist_ok=True)
        report(folder, args)
    else:
        with tempfile.TemporaryDirectory(prefix="dask_scaling_") as name:
            report(Path(name), args)


def report(folder: Path, args: argparse.Namespace) -> None:
    import distributed

    logging.getLogger("distributed").setLevel(logging.WARNING)  # no INFO lines per worker
    threads = {k: os.environ.get(k, "unset") for k in THREAD_VARIABLES}
    print(f"n = {args.n}, m = {args.m}, repeats {args.repeats}; emlmm {emlmm.__version__}, "
          f"distributed {distributed.__version__}; {os.cpu_count()} cores; this process's "
          f"threads {threads}; load {os.getloadavg()}; folder {folder}")  # fmt: skip
    started = time.perf_counter()
    prefix = folder / "P"
    write_fileset(prefix, args.n, args.m, args.seed)
    print(f"wrote {prefix}.bed/.bim/.fam in {time.perf_counter() - started:.1f} s")

    failures: list[str] = []
    with emlmm.read_plink(prefix) as plink:
        t = time.perf_counter()
        kinship = emlmm.kinship(plink)
        data = plink.phenotype(1).rename("y").to_frame()
        print(f"kinship {kinship.shape} in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        scan = emlmm.GenomeScan("y ~ 1 + snp", data, plink, kinship, chunk_size=args.chunk_size)
        print(f"scan built (null model, eigendecomposition) in {time.perf_counter() - t:.1f} s; "
              f"{scan.n_snps} SNPs in chunks of {scan.chunk_size} "
              f"({-(-scan.n_snps // scan.chunk_size)} chunks)")  # fmt: skip

        phases(scan)
        workers = {"in-process": 0, "1 worker": 1, "2 workers": 2}  # 0: no cluster
        runs: dict[str, list[float]] = {name: [] for name in workers}
        reference: pd.DataFrame | None = None
        for round_ in range(args.repeats):  # alternated, so load changes hit all alike
            for name in runs:
                if not workers[name]:
                    seconds, table = timed(scan.run)
                else:
                    with local_cluster(workers[name], announce=round_ == 0) as client:
                        seconds, table = timed(lambda: scan.run(client=client))
                runs[name].append(seconds)
                if reference is None:
                    reference = table
                    note = f"reference: {len(table)} SNPs"
                else:
                    gap = largest_relative_gap(table, reference)
                    ok = gap <= RTOL
                    note = f"p_lrt max rel diff vs in-process {gap:.1e} ({'OK' if ok else 'MISMATCH'})"
                    if not ok:
                        failures.append(f"round {round_ + 1}, {name}: {gap:.2e}")
                print(f"  round {round_ + 1}, {name:10s}: {seconds:7.2f} s; {note}; "
                      f"load {os.getloadavg()[0]:.2f}")  # fmt: skip

    median = {name: statistics.median(values) for name, values in runs.items()}
    print(f"\nmedian of {args.repeats} round(s), n = {args.n}, m = {args.m}, exact:\n")
    print("| run | median (s) | runs (s) |")
    print("|---|---|---|")
    for name, values in runs.items():
        print(f"| {name} | {median[name]:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    speedup = median["1 worker"] / median["2 workers"]
    ratio = median["2 workers"] / median["in-process"]
    print(f"\nspeed-up 1 -> 2 workers: {speedup:.2f}x")
    print(f"ratio 2 workers / in-process: **{ratio:.2f}** (target <= 1: "
          f"{'met' if ratio <= 1 else 'not met'})")  # fmt: skip
    print(
        f"results: {'equal to the in-process ones (rtol 1e-6)' if not failures else 'MISMATCH: ' + '; '.join(failures)}"
    )
    print(f"total {time.perf_counter() - started:.0f} s; load {os.getloadavg()}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
