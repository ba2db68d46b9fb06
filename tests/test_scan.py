"""The scan's per-SNP solver (Newton on the variance ratio) against the dense oracle."""

import dense
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from emlmm import EMLMM, _scan, gwas
from emlmm._spectral import KinshipSpectrum


def rotated_batch(y, covariates, genotypes, kinship):
    spectrum = KinshipSpectrum.from_kinship(kinship)
    u = spectrum.eigenvectors
    snps = np.ascontiguousarray((u.T @ genotypes).T)
    return _scan.SnpBatch(u.T @ covariates, u.T @ y, snps, spectrum.eigenvalues)


@pytest.fixture(scope="module")
def problem():
    """80 related individuals, an intercept and a covariate, 6 SNPs (one causal)."""
    rng = np.random.default_rng(5)
    n, m = 80, 6
    kinship = dense.random_genotype_kinship(rng, n, 200)
    covariates = np.column_stack([np.ones(n), rng.normal(size=n)])
    genotypes = rng.binomial(2, rng.uniform(0.2, 0.5, size=m), size=(n, m)).astype(float)
    polygenic = np.linalg.cholesky(kinship + 1e-9 * np.eye(n)) @ rng.normal(size=n)
    y = covariates @ [2.0, 0.5] + 0.6 * genotypes[:, 1] + 1.5 * polygenic + rng.normal(size=n)
    return y, covariates, genotypes, kinship


def design(problem, j):
    _, covariates, genotypes, _ = problem
    return np.column_stack([covariates, genotypes[:, j]])


@pytest.mark.parametrize("reml", [False, True])
def test_profiled_criterion_is_the_dense_likelihood_at_the_best_beta_and_scale(problem, reml):
    y, covariates, genotypes, kinship = problem
    batch = rotated_batch(y, covariates, genotypes, kinship)
    delta = np.linspace(0.2, 3.0, genotypes.shape[1])
    fit = _scan.profile(batch, delta, reml, derivatives=False)
    values = _scan.criterion(batch, fit, reml)
    sigma2_a, sigma2_e = _scan.variances(batch, fit, reml)
    for j in range(genotypes.shape[1]):
        X = design(problem, j)
        beta, _ = dense.gls(y, X, dense.covariance(kinship, sigma2_a[j], sigma2_e[j]))
        np.testing.assert_allclose(fit.beta[j], beta, rtol=1e-9)

        def dense_value(scale, X=X, j=j):
            s2a, s2e = delta[j] * scale, scale
            if reml:
                return dense.reml_loglike(y, X, kinship, s2a, s2e)
            b, _ = dense.gls(y, X, dense.covariance(kinship, s2a, s2e))
            return dense.loglike(y, X, kinship, b, s2a, s2e)

        assert values[j] == pytest.approx(dense_value(sigma2_e[j]), rel=1e-11)
        # sigma2_e is the maximiser along the ray of fixed ratio.
        assert dense_value(sigma2_e[j] * 1.001) < values[j]
        assert dense_value(sigma2_e[j] / 1.001) < values[j]


@pytest.mark.parametrize("reml", [False, True])
def test_slope_and_curvature_are_the_criterions_derivatives(problem, reml):
    y, covariates, genotypes, kinship = problem
    batch = rotated_batch(y, covariates, genotypes, kinship)
    delta = np.linspace(0.05, 4.0, genotypes.shape[1])
    fit = _scan.profile(batch, delta, reml)
    errors = []
    for h in (1e-3, 1e-4):
        up, down = _scan.profile(batch, delta + h, reml), _scan.profile(batch, delta - h, reml)
        slope = (_scan.criterion(batch, up, reml) - _scan.criterion(batch, down, reml)) / (2 * h)
        np.testing.assert_allclose(fit.slope, slope, rtol=3e-5 if h > 1e-4 else 1e-6)
        errors.append(np.abs((up.slope - down.slope) / (2 * h) - fit.curvature))
    # Central differences err by O(h^2): 100x less for h 10x smaller, if the curvature is right.
    assert np.all(errors[1] < 0.05 * errors[0] + 1e-9)
    np.testing.assert_allclose(errors[1], 0.0, atol=1e-5 * np.abs(fit.curvature).max())


@pytest.mark.parametrize("reml", [False, True])
def test_newton_reaches_the_dense_maximum(problem, reml):
    y, covariates, genotypes, kinship = problem
    batch = rotated_batch(y, covariates, genotypes, kinship)
    result = _scan.maximise(batch, start=1.0, reml=reml, tol=1e-12)
    assert result.converged.all()
    assert result.n_iter.max() < 15
    values = _scan.criterion(batch, result.fit, reml)
    sigma2_a, _ = _scan.variances(batch, result.fit, reml)
    for j in (0, 1, 4):
        oracle = dense.maximise(y, design(problem, j), kinship, reml=reml)
        assert values[j] >= oracle.llf - 1e-9
        assert sigma2_a[j] == pytest.approx(oracle.sigma2_a, rel=1e-4)


def test_without_kinship_signal_newton_stops_at_zero_with_the_ols_fit():
    rng = np.random.default_rng(3)
    n = 60
    kinship = dense.random_genotype_kinship(rng, n, 150)
    covariates = np.ones((n, 1))
    genotypes = rng.binomial(2, 0.4, size=(n, 3)).astype(float)
    y = 1.0 + rng.normal(size=n)
    batch = rotated_batch(y, covariates, genotypes, kinship)
    at_zero = _scan.profile(batch, np.zeros(3), reml=False)
    assert (at_zero.slope < 0).all(), "this seed's likelihood falls from sigma2_a = 0"
    result = _scan.maximise(batch, start=2.0, reml=False, tol=1e-12)
    assert result.converged.all()
    np.testing.assert_array_equal(result.fit.delta, 0.0)
    for j in range(3):
        ols = sm.OLS(y, np.column_stack([covariates, genotypes[:, j]])).fit()
        assert _scan.criterion(batch, result.fit, False)[j] == pytest.approx(ols.llf, rel=1e-12)


def test_a_ratio_running_to_infinity_stops_unconverged():
    rng = np.random.default_rng(0)
    n = 40
    kinship = dense.random_genotype_kinship(rng, n, 200)  # full rank
    genotypes = rng.binomial(2, 0.3, size=(n, 3)).astype(float)
    y = 3.0 + np.linalg.cholesky(kinship) @ rng.normal(size=n)  # no residual variance
    batch = rotated_batch(y, np.ones((n, 1)), genotypes, kinship)
    result = _scan.maximise(batch, start=1.0, reml=False, tol=1e-12)
    # For this seed two of the three SNPs have their maximum at sigma2_e = 0.
    assert result.converged.sum() == 1
    assert (result.fit.delta[~result.converged] > _scan.MAX_RATIO / 4).all()
    assert (result.n_iter < _scan.MAX_NEWTON_STEPS).all()


def per_snp_fits(data, genotypes, kinship, formula):
    return {
        snp: EMLMM.from_formula(
            formula, data=data.assign(snp=genotypes[:, j]), kinship=kinship
        ).fit()
        for j, snp in enumerate(["snp1", "snp2", "snp3"])
    }


def test_snps_newton_gives_up_on_are_fitted_by_em(problem, monkeypatch):
    y, covariates, genotypes, kinship = problem
    data = pd.DataFrame({"y": y, "x": covariates[:, 1]})
    monkeypatch.setattr(_scan, "MAX_NEWTON_STEPS", 1)
    table = gwas("y ~ 1 + x + snp", data, genotypes[:, :3], kinship)
    assert table.converged.all()
    assert (table.n_iter > 1).all()  # one Newton step, then EM
    for snp, fit in per_snp_fits(data, genotypes, kinship, "y ~ 1 + x + snp").items():
        assert table.loc[snp, "llf"] == pytest.approx(fit.llf, rel=1e-10)
        assert table.loc[snp, "sigma2_a"] == pytest.approx(fit.sigma2_a, rel=1e-4)


def test_a_null_model_with_no_residual_variance_scans_by_em():
    rng = np.random.default_rng(0)
    n = 40
    kinship = dense.random_genotype_kinship(rng, n, 200)
    genotypes = rng.binomial(2, 0.3, size=(n, 3)).astype(float)
    data = pd.DataFrame({"y": 3.0 + np.linalg.cholesky(kinship) @ rng.normal(size=n)})
    assert EMLMM.from_formula("y ~ 1", data, kinship=kinship).fit().sigma2_e == 0.0
    table = gwas("y ~ 1 + snp", data, genotypes, kinship)
    assert table.converged.all()
    for snp, fit in per_snp_fits(data, genotypes, kinship, "y ~ 1 + snp").items():
        assert table.loc[snp, "llf"] == pytest.approx(fit.llf, rel=1e-10)
        assert table.loc[snp, "sigma2_a"] == pytest.approx(fit.sigma2_a, rel=1e-6)
    for j, snp in enumerate(table.index):
        X = np.column_stack([np.ones(n), genotypes[:, j]])
        oracle = dense.maximise(data.y.to_numpy(), X, kinship, reml=True)
        assert table.loc[snp, "beta"] == pytest.approx(oracle.beta[-1], rel=1e-4)
        assert table.loc[snp, "se"] == pytest.approx(np.sqrt(oracle.cov_beta[-1, -1]), rel=1e-4)


@pytest.mark.parametrize("reml", [False, True])
def test_grid_criterion_is_the_criterion_at_each_ratio(problem, reml):
    y, covariates, genotypes, kinship = problem
    batch = rotated_batch(y, covariates, genotypes, kinship)
    grid = _scan.grid_criterion(batch, reml)
    assert grid.shape == (genotypes.shape[1], len(_scan.GRID))
    for g, delta in enumerate(_scan.GRID):
        fit = _scan.profile(batch, np.full(genotypes.shape[1], delta), reml, derivatives=False)
        np.testing.assert_allclose(grid[:, g], _scan.criterion(batch, fit, reml), rtol=1e-12)


def two_maxima(seed):
    """Small data whose profiled ML likelihood has two maxima in the ratio."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(8, 30))
    kinship = dense.random_genotype_kinship(rng, n, int(rng.integers(3, 40))) + 1e-6 * np.eye(n)
    genotypes = rng.binomial(2, 0.4, size=(n, 1)).astype(float)
    noise = rng.normal(size=n) * rng.choice([0.1, 1, 10])
    y = noise + rng.normal() * (np.linalg.cholesky(kinship) @ rng.normal(size=n))
    return y, genotypes, kinship


@pytest.mark.parametrize(
    ("seed", "start", "local", "best"),
    [(529, 1e-3, "boundary", "interior"), (367, 3.0, "interior", "boundary")],
)
def test_the_grid_finds_a_better_maximum_than_newtons(seed, start, local, best):
    y, genotypes, kinship = two_maxima(seed)
    X = np.column_stack([np.ones(len(y)), genotypes[:, 0]])
    batch = rotated_batch(y, X[:, :1], genotypes, kinship)
    near = _scan.maximise(batch, start, reml=False, tol=1e-12)
    found = _scan.maximise_globally(batch, start, reml=False, tol=1e-12)
    assert near.converged.all() and found.converged.all()
    assert (near.fit.delta[0] == 0.0) == (local == "boundary")
    assert (found.fit.delta[0] == 0.0) == (best == "boundary")
    value = _scan.criterion(batch, found.fit, False)[0]
    assert value > _scan.criterion(batch, near.fit, False)[0] + 0.5
    # The dense oracle, from a start near the global maximum, agrees.
    sigma2_a, sigma2_e = _scan.variances(batch, found.fit, False)
    oracle = dense.maximise(y, X, kinship, start=(max(sigma2_a[0], 1e-8), sigma2_e[0]))
    assert value >= oracle.llf - 1e-7
    if best == "boundary":
        assert value == pytest.approx(sm.OLS(y, X).fit().llf, rel=1e-12)


def test_newton_lands_exactly_on_a_boundary_maximum():
    y, genotypes, kinship = two_maxima(529)
    batch = rotated_batch(y, np.ones((len(y), 1)), genotypes, kinship)
    result = _scan.maximise(batch, 1e-3, reml=False, tol=1e-12)
    assert result.converged.all() and result.n_iter[0] < 10
    assert result.fit.delta[0] == 0.0


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("centre", [0.0, 0.05, 1.3, 40.0])
def test_the_power_series_give_the_direct_sums(problem, inverse, centre):
    y, covariates, genotypes, kinship = problem
    batch = _scan.replace(rotated_batch(y, covariates, genotypes, kinship), inverse=inverse)
    expanded = batch.expanded(centre)
    expansion = expanded.expansion
    assert expansion is not None and expansion.inverse == inverse
    # Ratios spread over the series' reach, and beyond it (those are summed directly).
    reach = _scan.SERIES_REACH / expansion.reach
    delta = np.maximum(centre + reach * np.array([-0.99, -0.5, 0.0, 0.3, 0.99, 3.0]), 0.0)
    near = expansion.near(delta)
    assert near[:5].all() and not near[5]
    series, direct = _scan.moments(expanded, delta), _scan._direct_moments(batch, delta)
    for name in ("m1", "m2", "m3", "trace_1", "trace_2"):
        got, want = getattr(series, name), getattr(direct, name)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())
    np.testing.assert_allclose(
        _scan.log_det_h(expanded, delta), _scan._direct_log_det_h(batch, delta), rtol=1e-14,
        atol=1e-13,
    )
    fast = _scan.profile(expanded, delta, reml=True, derivatives=False)
    slow = _scan.profile(batch, delta, reml=True, derivatives=False)
    np.testing.assert_allclose(fast.beta, slow.beta, rtol=1e-12)
    np.testing.assert_allclose(fast.rss, slow.rss, rtol=1e-13)
    # A subset keeps its own SNPs' series.
    rows = np.array([4, 1])
    np.testing.assert_allclose(
        _scan.moments(expanded.take(rows), delta[rows]).m2, direct.m2[rows], rtol=1e-13
    )


@pytest.mark.parametrize("h2", [0.4, 0.995])
def test_a_scan_with_the_series_is_the_scan_with_direct_sums(monkeypatch, h2):
    # Families with a centred kinship, a covariate, missing genotypes; h2 = 0.995 puts
    # the null model past the switch to the inverse ratio.
    rng = np.random.default_rng(int(h2 * 1000))
    n, m = 240, 150
    founders = rng.binomial(2, rng.uniform(0.1, 0.5, 400), size=(n // 4, 400)).astype(float)
    family = np.repeat(np.arange(n // 4), 4)
    pool = np.clip(founders[family] + rng.integers(-1, 2, size=(n, 400)), 0, 2)
    genotypes = pool[:, :m].copy()
    genotypes[rng.random(genotypes.shape) < 0.02] = np.nan
    standardised = (pool - pool.mean(0)) / pool.std(0).clip(1e-9)
    kinship = standardised @ standardised.T / pool.shape[1]
    polygenic = np.linalg.cholesky(kinship + 1e-6 * np.eye(n)) @ rng.normal(size=n)
    x = rng.normal(size=n)
    y = 0.5 * x + np.sqrt(h2) * polygenic + np.sqrt(1 - h2) * rng.normal(size=n)
    y = y + 0.3 * np.nan_to_num(genotypes[:, 7], nan=1.0)
    data = pd.DataFrame({"y": y, "x": x})
    fast = gwas("y ~ 1 + x + snp", data, genotypes, kinship)
    monkeypatch.setattr(_scan.SnpBatch, "expanded", lambda batch, centre: batch)
    slow = gwas("y ~ 1 + x + snp", data, genotypes, kinship)
    assert fast.converged.all() and slow.converged.all()
    for column in ("beta", "se", "llf", "sigma2_a", "sigma2_e"):
        np.testing.assert_allclose(fast[column], slow[column], rtol=1e-10, err_msg=column)
    np.testing.assert_allclose(np.log10(fast.p_lrt), np.log10(slow.p_lrt), rtol=1e-9)


def test_no_series_where_its_powers_would_overflow(problem):
    y, covariates, genotypes, kinship = problem
    batch = rotated_batch(y, covariates, genotypes, kinship)
    tiny = _scan.replace(batch, eigenvalues=np.r_[1e-9, batch.eigenvalues[1:]], inverse=True)
    assert tiny.expanded(0.0) is tiny  # max(d w0) = 1e9: the sums over individuals serve
    assert tiny.expanded(1.0).expansion is not None


@pytest.mark.parametrize("q", [1, 2, 3, 4, 5])
def test_small_symmetric_inverses_are_lapacks(q):
    # Gram matrices of a design and a SNP, as the scan's GLS makes them, with two
    # leading axes; in the second row a SNP nearly in the covariates' span.
    rng = np.random.default_rng(q)
    z = rng.normal(size=(3, 40, 30, q))
    if q > 1:
        z[1, :, :, -1] = z[1, :, :, 0] + 1e-5 * rng.normal(size=(40, 30))
    a = np.einsum("...ni,...nj->...ij", z, z) * rng.uniform(0.1, 1e3, size=(3, 40, 1, 1))
    inverse, log_det = _scan._symmetric_inverse(a)
    want = np.linalg.inv(a)
    scale = np.abs(want).max(axis=(-1, -2), keepdims=True)
    error = np.abs(inverse - want) / scale
    assert error[[0, 2]].max() < 1e-13
    assert error[1].max() < (1e-13 if q == 1 else 1e-5)  # condition ~1e10: cond x eps
    if q <= 3:
        assert np.array_equal(inverse, np.swapaxes(inverse, -1, -2))
    want_log_det = np.linalg.slogdet(a)[1]
    np.testing.assert_allclose(log_det[[0, 2]], want_log_det[[0, 2]], rtol=0, atol=1e-11)
    np.testing.assert_allclose(log_det[1], want_log_det[1], rtol=0, atol=1e-4)
    singular = a.copy()
    singular[2, 7] = 0.0
    with pytest.raises(np.linalg.LinAlgError, match="Singular"):
        _scan._symmetric_inverse(singular)
