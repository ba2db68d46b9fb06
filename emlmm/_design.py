"""The data the likelihood sees: scaled, rotated, and reduced to where it is defined.

Three things happen between the user's arrays and the EM numerics, all here:

1. **Scaling.** The response and every design column are divided by a power of two
   near their largest absolute value. Dividing by a power of two is exact, so a fit
   of ``c * y`` sees bit for bit the data of a fit of ``y`` whenever ``c`` is a power
   of two, and otherwise data that differ only in their last bit: estimates scale
   exactly with the data from 1e-300 to 1e300, and no square ever overflows or
   underflows.
2. **Rotation** into the kinship's eigenbasis (:class:`emlmm._spectral.KinshipSpectrum`),
   where ``V`` is diagonal.
3. **Reduction to the kinship's column space** when the covariates absorb its null
   space. A centered kinship (GEMMA's ``-gk 1``) is singular along the vector of
   ones, and an intercept reaches that direction. There the residual is exactly 0
   for every value of the parameters, so the full Gaussian likelihood keeps a term
   ``-1/2 log sigma2_e`` that grows without bound as ``sigma2_e -> 0``: the full
   likelihood has no maximum, only local ones (GEMMA stops at its cap on the ratio,
   1e5). Those directions carry no information about the variances, so the
   likelihood is taken of the data in the other directions (dimension ``n - n0``
   for a null space of dimension ``n0``). It is bounded, continuous up to the
   boundary ``sigma2_e = 0``, and there equals the density of the data on the
   column space of ``V = sigma2_a A``. The coefficients of the covariate
   combinations that only the null space sees are then fitted exactly from it.
   The restricted likelihood (REML) changes only by a constant, which is added
   back, so REML fits and their log-likelihoods are those of the full data.

The EM numerics work on :attr:`FitData.rotated` with coefficients ``gamma`` for the
columns of its (reduced, scaled) design; :class:`FitData` maps estimates back to the
user's units and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from emlmm._em import Estimate, RotatedData
from emlmm._spectral import KinshipSpectrum

__all__ = ["FitData", "power_of_two_scale"]

Array = NDArray[np.float64]


def power_of_two_scale(values: Array, axis: int | None = None) -> Array:
    """A power of two within a factor 2 of the largest absolute value (1 for zeros)."""
    largest = np.max(np.abs(values), axis=axis) if values.size else np.zeros(())
    _, exponent = np.frexp(np.where(largest > 0, largest, 1.0))
    return np.ldexp(1.0, exponent - 1)


def rank_tolerance(matrix: Array, norm: float) -> float:
    """Singular values at or below this count as zero (NumPy's rule, against ``norm``)."""
    return float(max(matrix.shape, default=1) * np.finfo(float).eps * norm)


@dataclass(frozen=True)
class FitData:
    """Scaled, rotated data of one model, and the maps back to the user's units.

    Attributes
    ----------
    rotated : RotatedData
        What the numerics see: scaled response and design in the kinship's
        eigenbasis, without the absorbed null-space directions (if any).
    kept : ndarray of int
        The eigen-directions (columns of the eigenvectors) in ``rotated``.
    endog_scale, exog_scales : float, ndarray
        The powers of two the response and the design's columns were divided by.
    basis : ndarray of shape (p, q)
        Scaled coefficients of the ``q`` design columns of ``rotated``, in terms of
        the ``p`` original (scaled) columns: the identity unless reduced.
    absorbed_basis, absorbed_solve, null_endog, null_exog : ndarray
        The coefficient directions only the dropped null-space directions see,
        the least-squares solve that fits them there, and the dropped rows.
    reml_constant : float
        What the REML log-likelihood of the full data adds to that of ``rotated``.
    """

    rotated: RotatedData
    kept: NDArray[np.intp]
    endog_scale: float
    exog_scales: Array
    basis: Array
    absorbed_basis: Array
    absorbed_solve: Array
    null_endog: Array
    null_exog: Array
    reml_constant: float

    @classmethod
    def build(
        cls, spectrum: KinshipSpectrum, endog: Array, exog: Array, reduce: bool = True
    ) -> FitData:
        """Scale, rotate and (with ``reduce``, where the covariates absorb the kinship's
        null space) reduce a validated response and full-rank design."""
        endog_scale = float(power_of_two_scale(endog))
        exog_scales = np.atleast_1d(power_of_two_scale(exog, axis=0))
        rotated_endog = spectrum.rotate(endog / endog_scale)
        rotated_exog = spectrum.rotate(exog / exog_scales)
        eigenvalues = spectrum.eigenvalues
        n, p = rotated_exog.shape
        null = eigenvalues == 0.0
        n_null = int(null.sum())
        identity = np.eye(p)
        empty = np.zeros((p, 0))
        every = np.arange(n)
        plain = cls(
            RotatedData.build(rotated_endog, rotated_exog, eigenvalues),
            every, endog_scale, exog_scales, identity, empty, empty.T,
            np.zeros(0), np.zeros((0, p)), 0.0,
        )  # fmt: skip
        if not reduce or n_null == 0:
            return plain
        norm = float(np.linalg.norm(rotated_exog, 2))
        null_exog = rotated_exog[null]
        singular_values = np.linalg.svd(null_exog, compute_uv=False)
        if np.count_nonzero(singular_values > rank_tolerance(rotated_exog, norm)) < n_null:
            return plain  # a null-space direction the covariates miss keeps sigma2_e > 0
        kept = np.nonzero(~null)[0]
        range_exog = rotated_exog[kept]
        _, range_values, right = np.linalg.svd(range_exog, full_matrices=True)
        # A design direction whose part outside the null space is below sqrt(eps) of
        # the design lies in the null space up to the rounding of the kinship's
        # eigenvectors (the rule that set its eigenvalues to zero).
        q = int(np.count_nonzero(range_values > np.sqrt(np.finfo(float).eps) * norm))
        if q == p:
            basis, absorbed_basis = identity, empty
        else:
            basis, absorbed_basis = right[:q].T, right[q:].T
        design = range_exog @ basis if q < p else range_exog
        absorbed = null_exog @ absorbed_basis
        reml_constant = 0.0
        if absorbed_basis.shape[1] == n_null:
            # The full data's REML differs from the reduced data's by -1/2 log|M'M|.
            reml_constant = -0.5 * float(np.linalg.slogdet(absorbed.T @ absorbed)[1])
        return cls(
            RotatedData.build(rotated_endog[kept], design, eigenvalues[kept]),
            kept,
            endog_scale,
            exog_scales,
            basis,
            absorbed_basis,
            np.linalg.pinv(absorbed),
            rotated_endog[null],
            null_exog,
            reml_constant,
        )

    @property
    def reduced(self) -> bool:
        """Whether null-space directions were dropped."""
        return bool(self.null_endog.shape[0])

    @property
    def coefficient_scales(self) -> Array:
        """Original coefficient = scaled coefficient times this (per column)."""
        return self.endog_scale / self.exog_scales

    def _absorbed_map(self) -> Array:
        """``L`` with scaled coefficients = ``L gamma + offset``."""
        if self.absorbed_basis.shape[1] == 0:
            return self.basis
        fitted_there = self.absorbed_solve @ (self.null_exog @ self.basis)
        return self.basis - self.absorbed_basis @ fitted_there

    def coefficients(self, gamma: Array) -> Array:
        """The user's coefficients from the numerics' ``gamma``."""
        scaled = gamma @ self.basis.T
        if self.absorbed_basis.shape[1]:
            leftover = self.null_endog - gamma @ (self.null_exog @ self.basis).T
            scaled = scaled + leftover @ (self.absorbed_basis @ self.absorbed_solve).T
        return scaled * self.coefficient_scales

    def coefficient_covariance(self, cov_gamma: Array, sigma2_e: float) -> Array:
        """Covariance of the scaled coefficients from that of ``gamma``; the user's is
        this times ``outer(coefficient_scales, coefficient_scales)``.

        The coefficients fitted from the null-space directions also carry the noise of
        those directions (variance ``sigma2_e``, in scaled units).
        """
        mapping = self._absorbed_map()
        cov = mapping @ cov_gamma @ mapping.T
        if self.absorbed_basis.shape[1]:
            noise = self.absorbed_basis @ self.absorbed_solve
            cov = cov + sigma2_e * noise @ noise.T
        return cov

    def gamma(self, coefficients: Array) -> Array:
        """The numerics' ``gamma`` for the user's coefficients (least squares)."""
        return (np.asarray(coefficients, float) / self.coefficient_scales) @ self.basis

    def variances_to_user(self, variances: Array, power: int = 1) -> Array:
        """Variances (``power=1``) or their products (``power=2``) in the user's units.

        A response beyond about 1e154 has variances beyond the largest float: they are
        inf then (h2, the tests and the fixed effects' standard errors stay exact).
        """
        scaled = np.asarray(variances, dtype=float)
        with np.errstate(over="ignore"):
            for _ in range(2 * power):
                scaled = scaled * self.endog_scale
        return scaled

    def to_user(self, estimate: Estimate) -> tuple[Array, float, float]:
        """(coefficients, sigma2_a, sigma2_e) in the user's units."""
        return (
            self.coefficients(estimate.beta),
            float(self.variances_to_user(estimate.sigma2_a)),
            float(self.variances_to_user(estimate.sigma2_e)),
        )

    def from_user(self, coefficients: Array, sigma2_a: float, sigma2_e: float) -> Estimate:
        """An estimate in the numerics' units from the user's."""
        return Estimate.of(
            self.gamma(coefficients),
            sigma2_a / self.endog_scale / self.endog_scale,
            sigma2_e / self.endog_scale / self.endog_scale,
        )

    def llf_offset(self, reml: bool) -> float:
        """Add this to a criterion of :attr:`rotated` for the user's log-likelihood."""
        log_scale = float(np.log(self.endog_scale))
        if not reml:
            return -self.rotated.nobs * log_scale
        n_full = self.rotated.nobs + self.null_endog.shape[0]
        p_full = self.basis.shape[0]
        return (
            -(n_full - p_full) * log_scale
            - float(np.log(self.exog_scales).sum())
            + self.reml_constant
        )
