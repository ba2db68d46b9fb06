"""glibc's thresholds held while a Dask worker tests a chunk (emlmm._malloc)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)

# Page faults of 100 allocations of 8 MB, touched and freed, outside and inside the block.
# Mapped afresh, each faults in its 2,048 pages; reused, nearly none. NumPy is told not
# to ask for huge pages (NUMPY_MADVISE_HUGEPAGE=0), which would make the count depend
# on where the kernel maps each array (5 or 500 faults per array seen).
AFRESH = 100 * 1000
PROBE = textwrap.dedent(
    """
    import resource
    import numpy as np
    from emlmm._malloc import held_memory

    def faults():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(100):
            a = np.ones(1 << 20)
            del a
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    outside = faults()
    with held_memory():
        with held_memory():  # nested, as tasks on a worker's threads overlap
            inner = faults()
        held = faults()
    after = faults()
    print(outside, inner, held, after)
    """
)


def probe(environment: dict[str, str]) -> list[int]:
    environment = dict(environment, NUMPY_MADVISE_HUGEPAGE="0")
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, check=True
    )
    return [int(value) for value in out.stdout.split()]


@glibc
def test_dask_trim_threshold_is_held_inside_and_restored_after() -> None:
    environment = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")  # as Dask's nanny sets it
    outside, inner, held, after = probe(environment)
    assert outside > AFRESH  # each 8 MB array mapped and faulted in afresh
    assert inner < outside / 10 and held < outside / 10
    assert after > AFRESH  # Dask's setting is back once the last block ends


@glibc
def test_nothing_changes_without_a_fixed_threshold() -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    outside, inner, held, after = probe(environment)
    # glibc's own dynamic threshold already reuses the memory, inside and outside
    assert max(outside, inner, held, after) < AFRESH / 2
