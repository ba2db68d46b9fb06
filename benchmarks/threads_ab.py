"""`emlmm gwas` at default threads against OPENBLAS_NUM_THREADS=1, idle or busy.

Run by hand (not in CI), after ``gemma_workflow.py --workdir DIR`` has written GEMMA's
example there (mouse.bed/.bim/.fam, covar.txt and emlmm's kinship ek.txt):

    python benchmarks/threads_ab.py --workdir DIR [--repeats 15] [--busy 1]

Issue 15 asks that a run at default settings never be slower than one with
``OPENBLAS_NUM_THREADS=1``. Each round runs, in turn, the same command as
``gemma_workflow.py`` (phenotype 2, the sex covariate, ``--format gemma``):

- ``default``: no thread variable set;
- ``one thread``: ``OPENBLAS_NUM_THREADS=1``;
- ``OpenBLAS's timeout``: ``OPENBLAS_THREAD_TIMEOUT=28``, OpenBLAS's own default, which
  ``import emlmm`` otherwise sets to 16 (idle OpenBLAS threads spin for 2**28 cycles
  instead of 2**16 before they sleep): what default runs were before that.

``--busy K`` starts K processes that keep a core busy each (``while True: pass``) for
the whole measurement, as another user's job would. The report gives each setting's
median wall clock, the medians of the phases the command logs (reading, null model,
scan, total) and of the rest (Python's start, imports, exit); the three tables must
be byte-identical (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "default": {},
    "one thread": {"OPENBLAS_NUM_THREADS": "1"},
    "OpenBLAS's timeout": {"OPENBLAS_THREAD_TIMEOUT": "28"},
}
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")


def logged_phases(log: Path) -> list[float]:
    """The seconds of the log's ``## time (s):`` line: reading, null model, scan, total."""
    line = next(row for row in log.read_text().splitlines() if row.startswith("## time (s):"))
    return [float(part.split()[-1]) for part in line.split(":", 1)[1].split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="gemma_workflow.py's --workdir")
    parser.add_argument("--repeats", type=int, default=15, help="alternated rounds (median)")
    parser.add_argument("--busy", type=int, default=0, help="processes keeping a core busy")
    args = parser.parse_args()
    folder = Path(args.workdir)
    for name in ("mouse.bed", "covar.txt", "ek.txt"):
        if not (folder / name).exists():
            sys.exit(f"{folder / name} is missing: run gemma_workflow.py --workdir {folder}")
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    print(f"{os.cpu_count()} cores; {args.busy} busy process(es); {args.repeats} rounds; "
          f"load {os.getloadavg()}; folder {folder}")  # fmt: skip
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    walls: dict[str, list[float]] = {name: [] for name in SETTINGS}
    phases: dict[str, list[list[float]]] = {name: [] for name in SETTINGS}
    try:
        for _ in range(args.repeats):
            for number, (name, variables) in enumerate(SETTINGS.items()):
                out = f"threads_ab_{number}.txt"
                command = ["emlmm", "gwas", "--bfile", "mouse", "--pheno-col", "2", "--covar",
                           "covar.txt", "--kinship", "ek.txt", "--format", "gemma", "--out", out,
                           "--quiet", "--overwrite"]  # fmt: skip
                start = time.perf_counter()
                subprocess.run(command, cwd=folder, env={**base, **variables}, check=True,
                               capture_output=True)  # fmt: skip
                walls[name].append(time.perf_counter() - start)
                phases[name].append(logged_phases(folder / f"{out}.log"))
    finally:
        for process in busy:
            process.kill()
            process.wait()
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
    same = all(filecmp.cmp(tables[0], other, shallow=False) for other in tables[1:])
    print(f"tables: {'byte-identical' if same else 'DIFFERENT'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
