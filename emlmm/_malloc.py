"""glibc's memory thresholds while a Dask worker tests a chunk.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that they hand
freed memory back to the operating system. Setting it also fixes glibc's mmap
threshold at 128 KiB (it otherwise grows to the sizes a program frees), so every
temporary of a scan's batches (a few MB each) is mapped afresh and faulted in page by
page: on 1,500 individuals x 40,000 SNPs, 4.2 million page faults and a scan 2.3x
slower (15.8 s instead of 7.8 s on one thread, half of it system time). While a task
runs, :func:`held_memory` lets glibc keep what it frees; at the end it puts the
thresholds back and trims the heap, so the worker still returns its memory between
tasks.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

#: mallopt's parameter numbers (glibc ``malloc.h``).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's mmap threshold when dynamic adjustment is off (``DEFAULT_MMAP_THRESHOLD_MIN``).
DEFAULT_MMAP_THRESHOLD = 128 * 1024
#: While held: freed memory is kept up to this much...
HELD_TRIM = 1 << 30
#: ... and blocks up to this size come from the heap (glibc's largest mmap threshold on
#: 64-bit systems; a chunk of 2,000 SNPs rotated for 1,500 individuals is 24 MB).
HELD_MMAP = 32 << 20

_lock = threading.Lock()
_holders = 0


@contextmanager
def held_memory() -> Iterator[None]:
    """glibc keeps freed memory for reuse inside the block, if the process was started
    with a fixed trim threshold (``MALLOC_TRIM_THRESHOLD_``, as Dask's workers are);
    otherwise nothing changes. Blocks may overlap (a worker with several threads)."""
    global _holders
    settings = _fixed_thresholds()
    libc = _glibc() if settings is not None else None
    if libc is None or settings is None:
        yield
        return
    with _lock:
        _holders += 1
        if _holders == 1:
            libc.mallopt(M_TRIM_THRESHOLD, HELD_TRIM)
            libc.mallopt(M_MMAP_THRESHOLD, HELD_MMAP)
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                trim, mmap = settings
                libc.mallopt(M_TRIM_THRESHOLD, trim)
                libc.mallopt(M_MMAP_THRESHOLD, mmap)
                libc.malloc_trim(0)


def _fixed_thresholds() -> tuple[int, int] | None:
    """The trim and mmap thresholds the environment fixed, or None if it left them to
    glibc (then they adapt to the program, and nothing needs holding)."""
    trim = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if trim is None:
        return None
    try:
        mmap = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", DEFAULT_MMAP_THRESHOLD))
        return int(trim), mmap
    except ValueError:
        return None


@cache
def _glibc() -> Any:
    """The C library's ``mallopt`` and ``malloc_trim``, if it is glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
