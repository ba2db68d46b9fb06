"""`emlmm gwas` at default threads against OPENBLAS_NUM_THREADS=1, idle or busy.

Run by hand (not in CI), after ``gemma_workflow.py --workdir DIR`` has written GEMMA's
example there (mouse.bed/.bim/.fam, covar.txt and emlmm's kinship ek.txt):

    python benchmarks/threads_ab.py --workdir DIR [--repeats 15] [--busy 1] \
        [--gwas-args "--bfile P --kinship K"] [--eigh N | --eigh-kinship K]

Issue 15 asks that a run at default settings never be slower than one with
``OPENBLAS_NUM_THREADS=1``. Each round runs, in turn, the same command as
``gemma_workflow.py`` (phenotype 2, the sex covariate, ``--format gemma``), or
``emlmm gwas`` with ``--gwas-args`` (files relative to ``--workdir``):

- ``default``: no thread variable set;
- ``one thread``: ``OPENBLAS_NUM_THREADS=1``;
- ``OpenBLAS's timeout``: ``OPENBLAS_THREAD_TIMEOUT=28``, OpenBLAS's own default, which
  ``import emlmm`` otherwise sets to 16 (idle OpenBLAS threads spin for 2**28 cycles
  instead of 2**16 before they sleep): what default runs were before that;
- ``--threads 1``: emlmm's own option (session 12), which limits BLAS (threadpoolctl)
  and bed-reader's reads to one thread from inside the command.

``--eigh N`` instead times ``scipy.linalg.eigh(driver="evr")`` (as emlmm calls it) of a
rank-500 N x N matrix on one and on two BLAS threads (threadpoolctl), each in a fresh
process, alternated; ``--eigh-kinship FILE`` does the same with a text kinship in
``--workdir`` (``emlmm kinship``'s output, say: a full-rank one).

``--busy K`` starts K processes that keep a core busy each (``while True: pass``) for
the whole measurement, as another user's job would. The report gives each setting's
median wall clock, the medians of the phases the command logs (reading, null model,
scan, total) and of the rest (Python's start, imports, exit), and compares the four
tables: byte-identical, or else (a kinship of 1,500 rows or more is eigendecomposed on
the default's two BLAS threads, which round differently) the largest difference in
-log10 p_lrt, which must stay below 1e-6 (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Each setting's environment variables and extra options.
SETTINGS: dict[str, tuple[dict[str, str], list[str]]] = {
    "default": ({}, []),
    "one thread": ({"OPENBLAS_NUM_THREADS": "1"}, []),
    "OpenBLAS's timeout": ({"OPENBLAS_THREAD_TIMEOUT": "28"}, []),
    "--threads 1": ({}, ["--threads", "1"]),
}
GEMMA_EXAMPLE = "--bfile mouse --pheno-col 2 --covar covar.txt --kinship ek.txt --format gemma"
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")


@contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """``count`` other processes, each keeping a core busy, while the block runs."""
    processes = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)
    ]
    try:
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def logged_phases(log: Path) -> list[float]:
    """The seconds of the log's ``## time (s):`` line: reading, null model, scan, total."""
    line = next(row for row in log.read_text().splitlines() if row.startswith("## time (s):"))
    return [float(part.split()[-1]) for part in line.split(":", 1)[1].split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="gemma_workflow.py's --workdir")
    parser.add_argument("--repeats", type=int, default=15, help="alternated rounds (median)")
    parser.add_argument("--busy", type=int, default=0, help="processes keeping a core busy")
    parser.add_argument("--gwas-args", default=GEMMA_EXAMPLE, help="emlmm gwas's inputs")
    parser.add_argument("--eigh", type=int, default=0, help="time eigh of N x N instead")
    parser.add_argument(
        "--eigh-kinship", help="time eigh of this text kinship (in --workdir) instead"
    )
    args = parser.parse_args()
    folder = Path(args.workdir)
    if args.eigh or args.eigh_kinship:
        time_eigh(eigh_matrix(folder, args.eigh, args.eigh_kinship), args.busy, args.repeats)
        return
    if args.gwas_args == GEMMA_EXAMPLE:
        for name in ("mouse.bed", "covar.txt", "ek.txt"):
            if not (folder / name).exists():
                sys.exit(f"{folder / name} is missing: run gemma_workflow.py --workdir {folder}")
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    print(f"emlmm gwas {args.gwas_args}; {os.cpu_count()} cores; {args.busy} busy process(es); {args.repeats} rounds; "
          f"load {os.getloadavg()}; folder {folder}")  # fmt: skip
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    phases: dict[str, list[list[float]]] = {name: [] for name in SETTINGS}
    with busy_cores(args.busy):
        for _ in range(args.repeats):
            for number, (name, (variables, options)) in enumerate(SETTINGS.items()):
                out = f"threads_ab_{number}.txt"
                command = ["emlmm", "gwas", *shlex.split(args.gwas_args), *options, "--out",
                           out, "--quiet", "--overwrite"]  # fmt: skip
                start = time.perf_counter()
                subprocess.run(command, cwd=folder, env={**base, **variables}, check=True,
                               capture_output=True)  # fmt: skip
                walls[name].append(time.perf_counter() - start)
                phases[name].append(logged_phases(folder / f"{out}.log"))
    print("\n| setting | median (s) | reading, null model, scan, total (log medians) "
          "| rest (s) | runs (s) |\n|---|---|---|---|---|")  # fmt: skip
    for name in SETTINGS:
        columns = list(zip(*phases[name], strict=True))
        logged = ", ".join(f"{statistics.median(column):.2f}" for column in columns)
        rest = statistics.median(w - p[-1] for w, p in zip(walls[name], phases[name], strict=True))
        runs = ", ".join(f"{w:.2f}" for w in walls[name])
        print(
            f"| {name} | {statistics.median(walls[name]):.2f} | {logged} | {rest:.2f} | {runs} |"
        )
    ratio = statistics.median(walls["default"]) / statistics.median(walls["one thread"])
    print(f"\ndefault / one thread: **{ratio:.2f}** (target <= 1: "
          f"{'met' if ratio <= 1 else 'not met'})")  # fmt: skip
    tables = [folder / f"threads_ab_{number}.txt" for number in range(len(SETTINGS))]
    if all(filecmp.cmp(tables[0], other, shallow=False) for other in tables[1:]):
        print("tables: byte-identical")
        return
    gap = max(largest_log10_gap(tables[0], other) for other in tables[1:])
    print(f"tables: not byte-identical; largest |difference| in -log10 p_lrt {gap:.1e} "
          f"({'rounding' if gap < 1e-6 else 'MISMATCH'})")  # fmt: skip
    if not gap < 1e-6:
        sys.exit(1)


EIGH = """
import time, numpy as np, scipy.linalg
from threadpoolctl import threadpool_limits
matrix = np.load({saved!r})
with threadpool_limits({threads}, user_api="blas"):
    start = time.perf_counter()
    scipy.linalg.eigh(matrix, driver="evr", check_finite=False)
    print(time.perf_counter() - start)
"""


def eigh_matrix(folder: Path, n: int, kinship: str | None) -> Path:
    """The matrix to decompose, saved once as ``threads_ab_kinship.npy`` in ``folder``
    for the timed processes to load: the text kinship ``kinship`` (in ``folder``), or
    else a rank-500 ``n x n`` matrix."""
    import numpy as np

    if kinship:
        matrix = np.loadtxt(folder / kinship)
    else:
        factor = np.random.default_rng(0).standard_normal((n, 500))
        matrix = factor @ factor.T / 500
    saved = folder / "threads_ab_kinship.npy"
    np.save(saved, matrix)
    return saved


def time_eigh(saved: Path, busy: int, repeats: int) -> None:
    """Medians of ``repeats`` eigendecompositions of the matrix in ``saved`` (.npy) on
    one and two BLAS threads, each in a fresh process."""
    import numpy as np

    n = np.load(saved, mmap_mode="r").shape[0]
    print(f"eigh of {n} x {n}, {saved}; {busy} busy process(es); {repeats} rounds")
    seconds: dict[int, list[float]] = {1: [], 2: []}
    with busy_cores(busy):
        for _ in range(repeats):
            for threads in seconds:
                code = EIGH.format(threads=threads, saved=str(saved))
                done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True)  # fmt: skip
                seconds[threads].append(float(done.stdout))
    for threads, values in seconds.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{threads} BLAS thread(s): median {statistics.median(values):.3f} s ({runs})")


def largest_log10_gap(table: Path, other: Path) -> float:
    """max |log10 p_lrt - log10 p_lrt'| over the SNPs of two tables (inf if their SNPs or
    missing p-values differ)."""
    import numpy as np
    import pandas as pd

    a, b = (pd.read_csv(path, sep="\t", usecols=["p_lrt"]).p_lrt for path in (table, other))
    if len(a) != len(b) or not (a.isna() == b.isna()).all():
        return float("inf")
    gaps = np.abs(np.log10(a.to_numpy(float)) - np.log10(b.to_numpy(float)))
    return float(np.max(np.nan_to_num(gaps, nan=0.0), initial=0.0))


if __name__ == "__main__":
    main()
