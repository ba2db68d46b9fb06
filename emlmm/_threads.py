"""BLAS threads for small problems.

EM iterations multiply small matrices (``n x p``, or ``n x L`` for a few grouped
levels) many times. Several BLAS threads then cost more in synchronisation than
they save, and on a busy machine much more (a 238-iteration fit took 4.7 s with
OpenBLAS's default threads and 0.27 s with one). Large products (a kinship's
eigendecomposition, the rotation of a chunk of SNPs) keep every thread, except in a
scan on two BLAS threads, where two scanning threads take one each
(:func:`emlmm.gwas._scanned`). Idle OpenBLAS threads sleep soon instead of spinning
(:func:`calm_idle_blas_threads`, run when ``emlmm`` is imported).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache
from typing import Any

from threadpoolctl import ThreadpoolController

#: How long OpenBLAS's idle threads wait for work before they sleep, as a power of two
#: of processor cycles (2**16, about 25 microseconds; OpenBLAS's own default is
#: 2**28, a tenth of a second).
OPENBLAS_THREAD_TIMEOUT = "16"

#: The variables bed-reader takes its thread count from at every read, first found
#: first (its documentation; ``OPENBLAS_NUM_THREADS`` is not among them). Without
#: them it runs a thread per core.
BED_READER_THREADS = ("PST_NUM_THREADS", "NUM_THREADS", "MKL_NUM_THREADS")

#: Below this many columns (of the design and grouped effects together), a fit's
#: products run on one BLAS thread.
SMALL = 512


def calm_idle_blas_threads() -> None:
    """Have OpenBLAS's idle threads sleep after ``2**16`` cycles instead of spinning
    for ``2**28``, if numpy has not loaded OpenBLAS yet and ``OPENBLAS_THREAD_TIMEOUT``
    (or its old name ``GOTO_THREAD_TIMEOUT``) is not set.

    An idle thread that spins takes a core from the rest of the process, and on a
    busy machine from whatever runs there too. numpy and SciPy each load an OpenBLAS,
    whose threads spin after starting and after each call on several threads: with
    another process busy on one of two cores, ``import numpy, scipy.linalg`` took
    0.375 s against 0.258 s with this setting or with ``OPENBLAS_NUM_THREADS=1``
    (medians of 12). A kinship's eigendecomposition on two threads (n = 2,000) is as
    fast as with OpenBLAS's default (0.735 s against 0.723 s, idle); at ``2**4``
    cycles it was 0.82 s, woken too often. ``emlmm`` calls this when imported.
    """
    if "numpy" in sys.modules:
        return
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ or "GOTO_THREAD_TIMEOUT" in os.environ:
        return
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_THREAD_TIMEOUT


@contextmanager
def at_most(threads: int) -> Iterator[None]:
    """At most ``threads`` threads for the work inside (``emlmm gwas --threads``): the
    BLAS and OpenMP pools of every library loaded (threadpoolctl), bed-reader's reads
    of a .bed (:data:`BED_READER_THREADS`), and so a scan's own second thread, which
    runs only where BLAS may run two (:func:`emlmm.gwas._scan_threads`). None gets
    more threads than it had. All are as before on exit.

    Examples
    --------
    >>> from emlmm._threads import at_most, blas_threads
    >>> with at_most(1):
    ...     blas_threads()
    1
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    import scipy.linalg  # noqa: F401  (SciPy's own OpenBLAS, loaded so the limit reaches it)

    controller = ThreadpoolController()  # found afresh: every library loaded by now
    limits = {
        library.filepath: min(threads, int(library.num_threads))
        for library in controller.lib_controllers
    }
    variable = BED_READER_THREADS[0]
    previous = os.environ.get(variable)
    os.environ[variable] = str(min(threads, _bed_reader_threads()))
    try:
        with controller.limit(limits=limits):
            yield
    finally:
        if previous is None:
            del os.environ[variable]
        else:
            os.environ[variable] = previous


def _bed_reader_threads() -> int:
    """The threads bed-reader reads with, as the environment sets them."""
    for variable in BED_READER_THREADS:
        if variable in os.environ:
            try:
                return max(int(os.environ[variable]), 1)
            except ValueError:
                break
    return os.cpu_count() or 1


def one_blas_thread(columns: int, below: int = SMALL) -> AbstractContextManager[Any]:
    """One BLAS thread while a fit with ``columns`` columns runs, if fewer than
    ``below`` (none changed for large ones, or where BLAS runs one already: a scan's
    threads may be in BLAS then, and the limit is left alone while they are)."""
    if columns >= below or blas_threads() <= 1:
        return nullcontext()
    return blas_limited(1)


def blas_limited(threads: int) -> AbstractContextManager[Any]:
    """At most ``threads`` BLAS threads inside the block."""
    return _controller().limit(limits=threads, user_api="blas")


def blas_threads() -> int:
    """The most threads a BLAS library of the process may run now (1 if none is
    loaded)."""
    controllers = _controller().select(user_api="blas").lib_controllers
    return max((int(controller.num_threads) for controller in controllers), default=1)


@cache
def _controller() -> ThreadpoolController:
    """The process's thread pools, found once (finding them takes milliseconds, and a
    scan asks for one thread per chunk)."""
    return ThreadpoolController()
