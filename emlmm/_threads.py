"""BLAS threads for small problems.

EM iterations multiply small matrices (``n x p``, or ``n x L`` for a few grouped
levels) many times. Several BLAS threads then cost more in synchronisation than
they save, and on a busy machine much more (a 238-iteration fit took 4.7 s with
OpenBLAS's default threads and 0.27 s with one). Large products (a kinship's
eigendecomposition, the rotation of a chunk of SNPs) keep every thread, except in a
scan on two BLAS threads, where two scanning threads take one each
(:func:`emlmm.gwas._scanned`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from functools import cache
from typing import Any

from threadpoolctl import ThreadpoolController

#: Below this many columns (of the design and grouped effects together), a fit's
#: products run on one BLAS thread.
SMALL = 512


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
