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


#: A design direction with a smaller part (relative to the design) outside the
#: kinship's null space is absorbed by the null space (see FitData.build).
ABSORBED_PART = 1e-4


def _reaches_every_direction(null_exog: Array, norm: float) -> bool:
    """Whether the design's rows in the null space have full row rank (NumPy's rank
    rule, against ``norm``, the size of the whole design)."""
    values = np.linalg.svd(null_exog, compute_uv=False)
    tolerance = max(null_exog.shape) * np.finfo(float).eps * norm
    return int(np.count_nonzero(values > tolerance)) == null_exog.shape[0]


@dataclass(frozen=True)
class FitData:
    """Scaled, rotated data of one model, and the maps back to the user's units.

    Attributes
    ----------
    rotated : RotatedData
        What the numerics see: scaled response and design in the kinship's
        eigenbasis, without the absorbed null-space directions (if any).
    kept : slice
        The eigen-directions (columns of the eigenvectors) in ``rotated``. The
        eigenvalues are sorted, so the dropped zeros are the first ones and this is
        a slice: selecting the eigenvectors never copies them.
    endog_scale, exog_scales : float, ndarray
        The powers of two the response and the design's columns were divided by.
    basis : ndarray of shape (p, q)
        The ``q`` design columns of ``rotated`` as combinations of the ``p`` scaled
        columns (orthonormal; the identity unless reduced).
    mapping, offset : ndarray of shape (p, q), (p,)
        Scaled coefficients = ``mapping @ gamma + offset``: the combinations only the
        dropped directions see are fitted exactly there.
    noise : ndarray of shape (p, n_dropped)
        How the dropped directions' noise (variance sigma2_e) enters the coefficients.
    n_dropped : int
        Number of dropped null-space directions.
    reml_constant : float
        What the REML log-likelihood of the full data adds to that of ``rotated``.
    """

    rotated: RotatedData
    kept: slice
    endog_scale: float
    exog_scales: Array
    basis: Array
    mapping: Array
    offset: Array
    noise: Array
    n_dropped: int
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
        p = rotated_exog.shape[1]
        n_null = int(np.count_nonzero(eigenvalues == 0.0))
        # eigh sorts the eigenvalues and they are >= 0, so the zeros come first.
        assert np.all(eigenvalues[n_null:] > 0.0)
        norm = float(np.linalg.norm(rotated_exog, 2))
        if not (reduce and n_null and _reaches_every_direction(rotated_exog[:n_null], norm)):
            identity = np.eye(p)
            return cls(
                RotatedData.build(rotated_endog, rotated_exog, eigenvalues),
                slice(0, None), endog_scale, exog_scales, identity, identity,
                np.zeros(p), np.zeros((p, 0)), 0, 0.0,
            )  # fmt: skip
        null_exog, range_exog = rotated_exog[:n_null], rotated_exog[n_null:]
        _, range_values, right = np.linalg.svd(range_exog, full_matrices=False)
        # A design direction whose part outside the null space is below
        # ABSORBED_PART of the design lies in the null space up to the rounding of the
        # kinship's eigenvectors: a kinship stored in single precision (GCTA's
        # .grm.bin) leaves parts of about 1e-7 / (its smallest non-zero eigenvalue),
        # 3e-8 of the design for GEMMA's centred kinship of 2,000 unrelated people,
        # and an intercept fitted from that part alone came out at -8e5 +- 2e6 instead
        # of the mean. What such a part could add is (1e-4)^2 = 1e-8 of what the null
        # space holds, so the direction is taken as absorbed.
        q = int(np.count_nonzero(range_values > ABSORBED_PART * norm))
        if q == p:  # every coefficient is seen outside the null space
            basis, absorbed_basis = np.eye(p), np.zeros((p, 0))
        else:
            basis, absorbed_basis = right[:q].T, right[q:].T
        # The absorbed coefficients t solve null_exog (basis gamma + absorbed_basis t)
        # = null_endog, in the least-squares sense.
        absorbed = null_exog @ absorbed_basis
        noise = absorbed_basis @ np.linalg.pinv(absorbed)
        reml_constant = 0.0
        if q + n_null == p:
            # The full data's REML differs from the reduced data's by -1/2 log|M'M|.
            reml_constant = -0.5 * float(np.linalg.slogdet(absorbed.T @ absorbed)[1])
        return cls(
            RotatedData.build(rotated_endog[n_null:], range_exog @ basis, eigenvalues[n_null:]),
            slice(n_null, None),
            endog_scale,
            exog_scales,
            basis,
            basis - noise @ null_exog @ basis,
            noise @ rotated_endog[:n_null],
            noise,
            n_null,
            reml_constant,
        )

    @property
    def reduced(self) -> bool:
        """Whether null-space directions were dropped."""
        return self.n_dropped > 0

    @property
    def coefficient_scales(self) -> Array:
        """Original coefficient = scaled coefficient times this (per column)."""
        return self.endog_scale / self.exog_scales

    def coefficients(self, gamma: Array) -> Array:
        """The user's coefficients from the numerics' ``gamma``."""
        return (gamma @ self.mapping.T + self.offset) * self.coefficient_scales

    def coefficient_covariance(self, cov_gamma: Array, sigma2_e: float) -> Array:
        """Covariance of the scaled coefficients from that of ``gamma``; the user's is
        this times ``outer(coefficient_scales, coefficient_scales)``.

        The coefficients fitted from the null-space directions also carry the noise of
        those directions (variance ``sigma2_e``, in scaled units).
        """
        return self.mapping @ cov_gamma @ self.mapping.T + sigma2_e * self.noise @ self.noise.T

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
        n_full = self.rotated.nobs + self.n_dropped
        p_full = self.basis.shape[0]
        return (
            -(n_full - p_full) * log_scale
            - float(np.log(self.exog_scales).sum())
            + self.reml_constant
        )
