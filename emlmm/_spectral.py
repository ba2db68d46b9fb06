"""The eigendecomposition of a kinship matrix, computed once and shared.

Every likelihood evaluation and EM iteration works on data rotated into the
eigenbasis of the kinship, where ``V = sigma2_a * A + sigma2_e * I`` is diagonal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["KinshipSpectrum", "pseudo_inverse_tolerance"]


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
        eigenvalues, eigenvectors = np.linalg.eigh(kinship)
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
