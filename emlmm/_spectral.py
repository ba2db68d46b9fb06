"""The eigendecomposition of a kinship matrix, computed once and shared.

Every likelihood evaluation and EM iteration works on data rotated into the
eigenbasis of the kinship, where ``V = sigma2_a * A + sigma2_e * I`` is diagonal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from emlmm._threads import one_blas_thread

__all__ = ["KinshipSpectrum", "pseudo_inverse_tolerance", "shared_spectra"]

#: Spectra computed inside :func:`shared_spectra`, by the kinship's content.
_shared: dict[tuple[tuple[Any, ...], bytes], KinshipSpectrum] | None = None
#: Inside :func:`shared_spectra`: results already computed from an object (a kinship
#: checked, a kinship decomposed), by the object's id and what was asked; the object
#: is kept with its result, so its id cannot be reused meanwhile.
_by_object: dict[tuple[int, str], tuple[Any, Any]] | None = None


@contextmanager
def shared_spectra() -> Iterator[None]:
    """Within this block, a kinship equal (bit for bit) to one already decomposed
    reuses that eigendecomposition instead of computing it again, and a kinship object
    already checked (:func:`remembered`) is not checked again.

    A scan of several phenotypes builds one null model per phenotype; those analysed
    on the same individuals see the same kinship, which is then checked and
    decomposed once. Hashing a matrix costs ``O(n^2)`` (only for one not seen as an
    object already), against the ``O(n^3)`` it saves; nothing is kept after the block.
    """
    global _shared, _by_object
    outer = (_shared, _by_object)
    if _shared is None:
        _shared, _by_object = {}, {}
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
    contiguous = np.ascontiguousarray(matrix, dtype=np.float64)
    key = ((kind, *contiguous.shape), hashlib.blake2b(contiguous.data, digest_size=32).digest())
    if key not in _shared:
        _shared[key] = compute()
    return _shared[key]


def pseudo_inverse_tolerance(largest_eigenvalue: float) -> float:
    """Eigenvalues at or below this are treated as zero.

    The rule is that of ``MASS::ginv`` used by the lab: ``sqrt(eps)`` times the
    largest singular value. Using the same rule makes a singular kinship behave
    exactly as the lab's generalised inverse does.
    """
    return float(np.sqrt(np.finfo(float).eps) * max(largest_eigenvalue, 0.0))


@dataclass(frozen=True)
class KinshipSpectrum:
    """Eigenvalues and eigenvectors of a symmetric positive semi-definite kinship.

    Attributes
    ----------
    eigenvalues : ndarray of shape (n,)
        Eigenvalues, with those within round-off of zero set to exactly zero.
    eigenvectors : ndarray of shape (n, n)
        Orthonormal eigenvectors, one per column.
    """

    eigenvalues: NDArray[np.float64]
    eigenvectors: NDArray[np.float64]

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
        # O(n) workspace where dsyevd needs 2 n^2 (1.6 GB at n = 10,000). Small
        # matrices use one BLAS thread (several thrash on a busy machine).
        with one_blas_thread(len(kinship)):
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
        """The eigendecomposition of ``F F'`` from its ``n x k`` factor, in ``O(n^2 k)``.

        A complete QR decomposition ``F = Q R`` gives an orthonormal basis of the
        whole space whose first ``k`` columns span ``F``'s; the SVD of the ``k x k``
        ``R`` gives the eigenvectors within that span (``Q[:, :k] U_R``) and the
        eigenvalues (squared singular values); the other columns of ``Q`` span the
        null space. Eigenvalues at or below :func:`pseudo_inverse_tolerance` are zero,
        as in :meth:`from_kinship`, and all are sorted increasing, as ``eigh`` sorts.

        ``Q`` is formed from LAPACK's Householder reflectors in the compact WY form
        ``Q = I - Y T Y'`` (Schreiber & Van Loan 1989), one ``n x k x n`` matrix
        product written straight into the eigenvectors: at n = 3,000, k = 300 about
        0.2 s, where LAPACK's ``dorgqr`` (NumPy's ``qr(mode="complete")``) took 0.75 s.
        """
        return _by_content("factor", factor, lambda: cls._from_factor(factor))

    @classmethod
    def _from_factor(cls, factor: NDArray[np.float64]) -> KinshipSpectrum:
        n = factor.shape[0]
        with one_blas_thread(n):
            (reflected, tau), triangle = scipy.linalg.qr(factor, mode="raw", check_finite=False)
            width = tau.shape[0]  # min(n, k) reflectors
            left, singular, _ = np.linalg.svd(triangle[:width], full_matrices=False)
            vectors, coefficients = _compact_wy(reflected[:, :width], tau)
            values = singular**2
            largest = float(values.max()) if values.size else 0.0
            values = np.where(values <= pseudo_inverse_tolerance(largest), 0.0, values)
            order = np.argsort(values, kind="stable")
            eigenvectors = np.empty((n, n), order="F")
            # The null space (Q's last n - width columns), then the eigenvectors within
            # F's span (Q's first width columns, rotated by R's left singular vectors).
            _q_columns(vectors, coefficients, width, n, out=eigenvectors[:, : n - width])
            span = _q_columns(vectors, coefficients, 0, width)
            np.matmul(span, left[:, order], out=eigenvectors[:, n - width :])
        eigenvalues = np.concatenate([np.zeros(n - width), values[order]])
        return cls(eigenvalues=eigenvalues, eigenvectors=eigenvectors)

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
        return self.eigenvectors.T @ array

    def unrotate(self, array: NDArray[np.float64]) -> NDArray[np.float64]:
        """Map an eigenbasis array back to individuals: ``U array``."""
        return self.eigenvectors @ array


def _compact_wy(
    reflected: NDArray[np.float64], tau: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``Y`` and ``W = Y T`` with ``Q = I - W Y'``, from LAPACK's ``geqrf`` output.

    ``Y`` holds the Householder vectors (unit diagonal, below it ``reflected``'s lower
    part). ``T`` is upper triangular with ``T^-1 = D^-1 + triu(Y'Y, 1)``, ``D =
    diag(tau)`` (Puglisi 1992), so ``T = (I + D triu(Y'Y, 1))^-1 D``: a unit triangular
    solve, which also holds when a reflector is the identity (``tau = 0``).
    """
    width = tau.shape[0]
    diagonal = np.arange(width)
    vectors = np.tril(reflected, -1)
    vectors[diagonal, diagonal] = 1.0
    upper = np.triu(vectors.T @ vectors, 1) * tau[:, None]
    upper[diagonal, diagonal] = 1.0
    coefficients = scipy.linalg.solve_triangular(
        upper, np.diag(tau), unit_diagonal=True, check_finite=False
    )
    return vectors, vectors @ coefficients


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
