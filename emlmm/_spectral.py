"""The eigendecomposition of a kinship matrix, computed once and shared.

Every likelihood evaluation and EM iteration works on data rotated into the
eigenbasis of the kinship, where ``V = sigma2_a * A + sigma2_e * I`` is diagonal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from emlmm._threads import one_blas_thread

#: Kinships with fewer rows are eigendecomposed on one BLAS thread. On an idle 2-core
#: machine (medians of 5): n = 757, 0.098 s on one thread and 0.178 s on two;
#: n = 1,410, 0.674 s and 0.672 s; n = 2,000, 1.19 s and 0.86 s. With another
#: process busy on one core, GEMMA's example (n = 757) spent 0.45-0.51 s in its null
#: model on two threads against 0.16-0.24 s on one.
EIGH_SMALL = 1500

__all__ = ["KinshipSpectrum", "pseudo_inverse_tolerance", "shared_spectra"]

#: Spectra computed inside :func:`shared_spectra`, by the kinship's content.
_shared: dict[tuple[tuple[Any, ...], bytes], KinshipSpectrum] | None = None
#: Inside :func:`shared_spectra`: results already computed from an object (a kinship
#: checked, a kinship decomposed), by the object's id and what was asked; the object
#: is kept with its result, so its id cannot be reused meanwhile.
_by_object: dict[tuple[int, str], tuple[Any, Any]] | None = None


@contextmanager
def shared_spectra(
    known: Iterable[tuple[str, NDArray[np.float64], KinshipSpectrum]] = (),
) -> Iterator[None]:
    """Within this block, a kinship equal (bit for bit) to one already decomposed
    reuses that eigendecomposition instead of computing it again, and a kinship object
    already checked (:func:`remembered`) is not checked again. ``known`` gives spectra
    computed before, as ``(kind, matrix, spectrum)``: kind ``"kinship"`` for a matrix,
    ``"factor"`` for a :meth:`KinshipSpectrum.from_factor` factor.

    A scan of several phenotypes builds one null model per phenotype; those analysed
    on the same individuals see the same kinship, which is then checked and
    decomposed once. Hashing a matrix costs ``O(n^2)`` (only for one not seen as an
    object already), against the ``O(n^3)`` it saves; nothing is kept after the block.
    """
    global _shared, _by_object
    outer = (_shared, _by_object)
    if _shared is None:
        _shared, _by_object = {}, {}
    for kind, matrix, spectrum in known:
        _shared[_content_key(kind, matrix)] = spectrum
    try:
        yield
    finally:
        _shared, _by_object = outer


def remembered(source: Any, what: str, compute: Callable[[], Any]) -> Any:
    """``compute()``, or inside :func:`shared_spectra` its result for the same ``source``
    object and ``what`` when already computed there."""
    if _by_object is None:
        return compute()
    key = (id(source), what)
    if key not in _by_object:
        _by_object[key] = (source, compute())
    return _by_object[key][1]


def _by_content(
    kind: str, matrix: NDArray[np.float64], compute: Callable[[], KinshipSpectrum]
) -> KinshipSpectrum:
    """``compute()``, or inside :func:`shared_spectra` the spectrum already computed
    there from a ``kind`` of matrix equal to ``matrix`` bit for bit."""
    if _shared is None:
        return compute()
    key = _content_key(kind, matrix)
    if key not in _shared:
        _shared[key] = compute()
    return _shared[key]


def _content_key(kind: str, matrix: NDArray[np.float64]) -> tuple[tuple[Any, ...], bytes]:
    """A matrix's kind, shape and content hash."""
    contiguous = np.ascontiguousarray(matrix, dtype=np.float64)
    return (kind, *contiguous.shape), hashlib.blake2b(contiguous.data, digest_size=32).digest()


def pseudo_inverse_tolerance(largest_eigenvalue: float) -> float:
    """Eigenvalues at or below this are treated as zero.

    The rule is that of ``MASS::ginv`` used by the lab: ``sqrt(eps)`` times the
    largest singular value. Using the same rule makes a singular kinship behave
    exactly as the lab's generalised inverse does.
    """
    return float(np.sqrt(np.finfo(float).eps) * max(largest_eigenvalue, 0.0))


class KinshipSpectrum:
    """Eigenvalues and eigenvectors of a symmetric positive semi-definite kinship.

    Attributes
    ----------
    eigenvalues : ndarray of shape (n,)
        Eigenvalues, sorted increasing, with those within round-off of zero set to
        exactly zero.
    eigenvectors : ndarray of shape (n, n)
        Orthonormal eigenvectors, one per column. A spectrum from a factor
        (:meth:`from_factor`) holds them implicitly, in ``O(n k)`` memory, and forms
        this ``n x n`` matrix only when it is asked for; :meth:`rotate`,
        :meth:`unrotate` and :meth:`columns`, which fits and scans use, never form it.
    """

    def __init__(
        self,
        eigenvalues: NDArray[np.float64],
        eigenvectors: NDArray[np.float64] | None = None,
        *,
        reflectors: _Reflectors | None = None,
    ) -> None:
        if (eigenvectors is None) == (reflectors is None):
            raise TypeError("give the eigenvectors or their reflectors, not both or neither")
        self.eigenvalues = eigenvalues
        self._eigenvectors = eigenvectors
        self._reflectors = reflectors

    @property
    def eigenvectors(self) -> NDArray[np.float64]:
        """The ``n x n`` eigenvectors (formed on first use from a factor's reflectors)."""
        if self._eigenvectors is None:
            assert self._reflectors is not None
            self._eigenvectors = self._reflectors.matrix()
        return self._eigenvectors

    @property
    def implicit(self) -> bool:
        """Whether the eigenvectors are held implicitly (not formed yet)."""
        return self._eigenvectors is None

    def without_eigenvectors(self) -> KinshipSpectrum:
        """The eigenvalues alone (what a results object keeps after ``remove_data``)."""
        return KinshipSpectrum(self.eigenvalues, np.empty((0, 0)))

    @classmethod
    def from_kinship(cls, kinship: NDArray[np.float64]) -> KinshipSpectrum:
        """Eigendecompose a validated kinship matrix.

        Raises
        ------
        ValueError
            If the kinship has an eigenvalue that is negative beyond round-off.
        """
        spectrum: KinshipSpectrum = remembered(
            kinship,
            "spectrum",
            lambda: _by_content("kinship", kinship, lambda: cls._decompose(kinship)),
        )
        return spectrum

    @classmethod
    def _decompose(cls, kinship: NDArray[np.float64]) -> KinshipSpectrum:
        # LAPACK's dsyevr (as GEMMA uses): as fast as NumPy's dsyevd here, and it needs
        # O(n) workspace where dsyevd needs 2 n^2 (1.6 GB at n = 10,000). Below
        # EIGH_SMALL rows it runs on one BLAS thread: as fast or faster on an idle
        # 2-core machine, and two thrash on a busy one.
        with one_blas_thread(len(kinship), below=EIGH_SMALL):
            eigenvalues, eigenvectors = scipy.linalg.eigh(
                kinship, driver="evr", check_finite=False
            )
        largest = float(np.max(np.abs(eigenvalues))) if eigenvalues.size else 0.0
        tolerance = pseudo_inverse_tolerance(largest)
        smallest = float(eigenvalues.min()) if eigenvalues.size else 0.0
        if smallest < -tolerance:
            raise ValueError(
                "kinship is not positive semi-definite: its smallest eigenvalue is "
                f"{smallest:.6g} (largest {largest:.6g}), beyond round-off. A kinship "
                "must be a covariance matrix; if it was computed from genotypes with "
                "missing values, recompute it or project it onto the PSD cone."
            )
        eigenvalues = np.where(np.abs(eigenvalues) <= tolerance, 0.0, eigenvalues)
        return cls(eigenvalues=eigenvalues, eigenvectors=eigenvectors)

    @classmethod
    def from_factor(cls, factor: NDArray[np.float64]) -> KinshipSpectrum:
        """The eigendecomposition of ``F F'`` from its ``n x k`` factor, in ``O(n k^2)``
        time and ``O(n k)`` memory.

        A QR decomposition ``F = Q R`` (Householder reflectors, ``Q`` complete but never
        formed) gives an orthonormal basis of the whole space whose first ``k`` columns
        span ``F``'s; the SVD of the ``k x k`` ``R`` gives the eigenvectors within that
        span (``Q[:, :k] U_R``) and the eigenvalues (squared singular values); the other
        columns of ``Q`` span the null space. Eigenvalues at or below
        :func:`pseudo_inverse_tolerance` are zero, as in :meth:`from_kinship`, and all
        are sorted increasing, as ``eigh`` sorts.

        ``Q`` is held in the compact WY form ``Q = I - Y T Y'`` (Schreiber & Van Loan
        1989), so rotating ``c`` columns costs ``O(n k c)``; the ``n x n`` eigenvectors
        are formed (one ``n x k x n`` product) only if something asks for them.
        """
        return _by_content("factor", factor, lambda: cls._from_factor(factor))

    @classmethod
    def _from_factor(cls, factor: NDArray[np.float64]) -> KinshipSpectrum:
        n = factor.shape[0]
        # One BLAS thread below a few hundred columns, where the products are narrow:
        # at n = 3,000, k = 300 the whole decomposition took 77 ms on one thread and
        # 93 ms on two (medians of 9, alternated).
        width = min(factor.shape)  # reflectors
        with one_blas_thread(width):
            vectors, coefficients, triangle = _compact_wy(factor)
            left, singular, _ = np.linalg.svd(triangle, full_matrices=False)
        values = singular**2
        largest = float(values.max()) if values.size else 0.0
        values = np.where(values <= pseudo_inverse_tolerance(largest), 0.0, values)
        order = np.argsort(values, kind="stable")
        eigenvalues = np.concatenate([np.zeros(n - width), values[order]])
        reflectors = _Reflectors(vectors, coefficients, np.ascontiguousarray(left[:, order]))
        return cls(eigenvalues, reflectors=reflectors)

    @property
    def n(self) -> int:
        """Number of individuals."""
        return int(self.eigenvalues.shape[0])

    @property
    def rank(self) -> int:
        """Number of eigenvalues that are not zero."""
        return int(np.count_nonzero(self.eigenvalues))

    @property
    def mean_diagonal(self) -> float:
        """Mean of the kinship's diagonal (its trace over n), the scale used for h2."""
        return float(self.eigenvalues.mean())

    def rotate(self, array: NDArray[np.float64]) -> NDArray[np.float64]:
        """Express ``array`` (rows are individuals) in the eigenbasis: ``U' array``."""
        if self._reflectors is not None and self.implicit:
            return self._reflectors.rotate(array)
        return self.eigenvectors.T @ array

    def unrotate(self, array: NDArray[np.float64]) -> NDArray[np.float64]:
        """Map an eigenbasis array back to individuals: ``U array``."""
        if self._reflectors is not None and self.implicit:
            return self._reflectors.unrotate(array)
        return self.eigenvectors @ array

    def columns(self, index: slice) -> NDArray[np.float64]:
        """Eigenvectors ``index`` (a slice of columns: a view of formed eigenvectors;
        from a factor's reflectors, only these columns are formed)."""
        if self._reflectors is not None and self.implicit:
            wanted = np.arange(self.n)[index]
            offset = self.n - self._reflectors.width
            if wanted.size and index.step in (None, 1) and wanted[0] >= offset:
                return self._reflectors.span_columns(wanted[0] - offset, wanted[-1] + 1 - offset)
            selector = np.zeros((self.n, wanted.size))
            selector[wanted, np.arange(wanted.size)] = 1.0
            return self._reflectors.unrotate(selector)
        return self.eigenvectors[:, index]

    def nonzero_columns(self, kept: slice) -> NDArray[np.float64]:
        """The eigenvectors of the directions ``kept`` whose eigenvalue is not zero:
        those come after the zeros (eigenvalues are sorted), so this is a range of
        columns (a view of formed eigenvectors, else only these columns formed)."""
        first, stop, _ = kept.indices(self.n)
        zeros = int(np.count_nonzero(self.eigenvalues[first:stop] == 0.0))
        return self.columns(slice(first + zeros, stop))


@dataclass(frozen=True)
class _Reflectors:
    """The eigenvectors of ``F F'`` held implicitly, in ``O(n k)`` memory.

    ``Q = I - W Y'`` (:func:`_compact_wy`) is the complete orthogonal factor of
    ``F = Q R``; the eigenvectors are ``U = [Q[:, w:], Q[:, :w] L]``: the null space
    (Q's last ``n - w`` columns) first, then F's span rotated by ``L``, the left
    singular vectors of ``R`` in the order of increasing eigenvalues. ``U' A`` and
    ``U B`` then cost ``O(n w c)`` for ``c`` columns, where the formed ``U`` costs
    ``O(n^2 w)`` to make and ``n^2`` to hold.
    """

    vectors: NDArray[np.float64]
    coefficients: NDArray[np.float64]
    rotation: NDArray[np.float64]

    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        return int(self.vectors.shape[1])

    def rotate(self, array: NDArray[np.float64]) -> NDArray[np.float64]:
        """``U' array``."""
        w = self.width
        reflected = array - self.vectors @ (self.coefficients.T @ array)  # Q' A
        return np.concatenate([reflected[w:], self.rotation.T @ reflected[:w]])

    def unrotate(self, array: NDArray[np.float64]) -> NDArray[np.float64]:
        """``U array``."""
        n, w = self.n, self.width
        coordinates = np.concatenate([self.rotation @ array[n - w :], array[: n - w]])
        result: NDArray[np.float64] = coordinates - self.coefficients @ (
            self.vectors.T @ coordinates
        )  # Q C
        return result

    def span_columns(self, first: int, stop: int) -> NDArray[np.float64]:
        """The eigenvectors in ``F``'s span, ``first`` to ``stop - 1`` of them: ``Q[:, :w]
        L[:, first:stop]``, with ``Q[:, :w] = E - W Y[:w]'`` (``E`` the first ``w``
        columns of the identity, ``Y`` lower trapezoidal): ``O(n w c)`` for ``c``
        columns, half of :meth:`unrotate`'s products on the zero rows it would add."""
        left = self.rotation[:, first:stop]
        columns = self.coefficients @ -(self.vectors[: self.width].T @ left)
        columns[: self.width] += left
        return columns

    def matrix(self) -> NDArray[np.float64]:
        """The formed ``n x n`` eigenvectors."""
        n, w = self.n, self.width
        with one_blas_thread(n):
            eigenvectors = np.empty((n, n), order="F")
            _q_columns(self.vectors, self.coefficients, w, n, out=eigenvectors[:, : n - w])
            span = _q_columns(self.vectors, self.coefficients, 0, w)
            np.matmul(span, self.rotation, out=eigenvectors[:, n - w :])
        return eigenvectors


def _compact_wy(
    factor: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``Y``, ``W = Y T`` and ``R`` of ``F = Q R`` with ``Q = I - W Y'``.

    LAPACK's ``dgeqrt`` with one block (of all ``w = min(n, k)`` columns) gives the
    Householder vectors ``Y`` (unit diagonal, below it its output's lower part), the
    upper triangular ``T`` of the compact WY form (Schreiber & Van Loan 1989) and
    ``R`` (its output's upper triangle): half the time of ``geqrf`` and forming ``T``
    from ``Y'Y`` (n = 3,000, k = 300), the same ``Y`` and ``W`` to 2e-16.
    """
    width = min(factor.shape)
    reflected, upper, info = scipy.linalg.lapack.dgeqrt(width, factor)
    if info != 0:  # pragma: no cover - LAPACK rejects only invalid arguments
        raise np.linalg.LinAlgError(f"LAPACK dgeqrt failed (info = {info})")
    vectors = np.tril(reflected[:, :width], -1)
    diagonal = np.arange(width)
    vectors[diagonal, diagonal] = 1.0
    return vectors, vectors @ upper, np.triu(reflected[:width])


def _q_columns(
    vectors: NDArray[np.float64],
    coefficients: NDArray[np.float64],
    first: int,
    stop: int,
    out: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Columns ``first`` to ``stop - 1`` of ``Q = I - W Y'`` (:func:`_compact_wy`)."""
    columns = np.matmul(coefficients, vectors[first:stop].T, out=out)
    np.negative(columns, out=columns)
    columns[np.arange(first, stop), np.arange(stop - first)] += 1.0
    return columns
