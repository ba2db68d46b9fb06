"""Input handling: every validation error, missing data, labelled kinships."""

import numpy as np
import pandas as pd
import pytest

from emlmm import EMLMM


@pytest.fixture
def small():
    rng = np.random.default_rng(2)
    n = 30
    groups = np.repeat(np.arange(10), 3)
    kinship = (groups[:, None] == groups[None, :]) + 0.1 * np.eye(n)
    ids = [f"s{i:02d}" for i in range(n)]
    df = pd.DataFrame({"x": rng.normal(size=n), "z": rng.normal(size=n)}, index=ids)
    df["y"] = df.x + rng.normal(size=10)[groups] + rng.normal(size=n)
    return df, pd.DataFrame(kinship, index=ids, columns=ids)


def fit_params(result):
    return np.r_[np.asarray(result.params), result.sigma2_a, result.sigma2_e]


def test_size_mismatch_names_both_sizes(small):
    df, kinship = small
    with pytest.raises(ValueError, match=r"kinship is 29 x 29 but the data have 30 obs"):
        EMLMM.from_formula("y ~ x", data=df, kinship=kinship.to_numpy()[1:, 1:])


def test_kinship_must_be_square(small):
    df, kinship = small
    with pytest.raises(ValueError, match=r"square matrix; it has shape \(30, 29\)"):
        EMLMM.from_formula("y ~ x", data=df, kinship=kinship.to_numpy()[:, 1:])
    with pytest.raises(ValueError, match="square matrix"):
        EMLMM.from_formula("y ~ x", data=df, kinship=np.ones(30))


def test_kinship_must_be_finite(small):
    df, kinship = small
    bad = kinship.to_numpy().copy()
    bad[3, 4] = bad[4, 3] = np.nan
    with pytest.raises(ValueError, match=r"2 non-finite entries .* row 3, column 4"):
        EMLMM.from_formula("y ~ x", data=df, kinship=bad)


def test_kinship_must_be_symmetric(small):
    df, kinship = small
    bad = kinship.to_numpy().copy()
    bad[0, 5] = 0.3
    with pytest.raises(ValueError, match=r"not symmetric: entry \[0, 5\] = 0.3 but \[5, 0\] = 0"):
        EMLMM.from_formula("y ~ x", data=df, kinship=bad)


def test_kinship_asymmetry_within_round_off_is_accepted(small):
    df, kinship = small
    nudged = kinship.to_numpy().copy()
    nudged[0, 1] += 1e-12
    result = EMLMM.from_formula("y ~ x", data=df, kinship=nudged).fit()
    reference = EMLMM.from_formula("y ~ x", data=df, kinship=kinship).fit()
    np.testing.assert_allclose(fit_params(result), fit_params(reference), rtol=1e-6)


def test_kinship_must_be_positive_semidefinite(small):
    df, _ = small
    bad = np.eye(30)
    bad[0, 0] = -0.5
    with pytest.raises(ValueError, match=r"not positive semi-definite: its smallest eigenvalue "
                                         r"is -0.5"):
        EMLMM.from_formula("y ~ x", data=df, kinship=bad)


def test_kinship_must_not_be_zero(small):
    df, _ = small
    with pytest.raises(ValueError, match="kinship is zero"):
        EMLMM.from_formula("y ~ x", data=df, kinship=np.zeros((30, 30)))


def test_kinship_must_be_numeric(small):
    df, _ = small
    with pytest.raises(TypeError, match="numeric matrix"):
        EMLMM.from_formula("y ~ x", data=df, kinship=[["a"] * 30] * 30)


def test_labelled_kinship_is_aligned_by_label(small):
    df, kinship = small
    order = np.random.default_rng(0).permutation(kinship.index)
    shuffled = kinship.loc[order, order]
    extra = pd.DataFrame(np.eye(31), index=[*order, "other"], columns=[*order, "other"])
    extra.iloc[:30, :30] = shuffled.to_numpy()
    reference = EMLMM.from_formula("y ~ x", data=df, kinship=kinship).fit()
    for labelled in (shuffled, extra):
        result = EMLMM.from_formula("y ~ x", data=df, kinship=labelled).fit()
        np.testing.assert_allclose(fit_params(result), fit_params(reference), rtol=1e-12)
    arrays = EMLMM(df.y, df[["x"]].assign(const=1.0), kinship=shuffled).fit()
    np.testing.assert_allclose(arrays.sigma2_a, reference.sigma2_a, rtol=1e-12)


def test_labels_missing_from_the_kinship_are_listed(small):
    df, kinship = small
    with pytest.raises(ValueError, match=r"2 of the 30 individuals .* no row in the kinship: "
                                         r"'s00', 's01'"):
        EMLMM.from_formula("y ~ x", data=df, kinship=kinship.iloc[2:, 2:])
    renamed = kinship.rename(columns=lambda c: c.upper())
    with pytest.raises(ValueError, match="same labels on its rows and columns"):
        EMLMM.from_formula("y ~ x", data=df, kinship=renamed)


def test_missing_rows_drop_rows_and_columns_of_the_kinship(small):
    df, kinship = small
    holes = df.copy()
    holes.loc["s03", "y"] = np.nan
    holes.loc["s17", "x"] = np.nan
    result = EMLMM.from_formula("y ~ x", data=holes, kinship=kinship).fit()
    keep = [i for i in df.index if i not in ("s03", "s17")]
    reference = EMLMM.from_formula("y ~ x", data=df.loc[keep],
                                   kinship=kinship.loc[keep, keep].to_numpy()).fit()
    assert result.nobs == 28
    assert result.model.kinship.shape == (28, 28)
    np.testing.assert_allclose(fit_params(result), fit_params(reference), rtol=1e-12)
    assert list(result.random_effects.index) == keep
    unlabelled = EMLMM.from_formula("y ~ x", data=holes, kinship=kinship.to_numpy()).fit()
    np.testing.assert_allclose(fit_params(unlabelled), fit_params(reference), rtol=1e-12)


def test_missing_values_without_drop_are_an_error(small):
    df, kinship = small
    y = df.y.to_numpy().copy()
    y[4] = np.nan
    with pytest.raises(ValueError, match=r"endog has NaN or inf in 1 rows .*missing='drop'"):
        EMLMM(y, np.ones((30, 1)), kinship.to_numpy())
    dropped = EMLMM(y, np.ones((30, 1)), kinship.to_numpy(), missing="drop")
    assert dropped.kinship.shape == (29, 29)


def test_collinear_covariates_are_named(small):
    df, kinship = small
    df = df.assign(x2=2 * df.x - df.z)
    message = r"rank deficient \(rank 3 < 5 columns\): 'x2', 'I\(x \+ 1\)' are"
    with pytest.raises(ValueError, match=message):
        EMLMM.from_formula("y ~ x + z + x2 + I(x + 1)", data=df, kinship=kinship)


def test_too_few_observations(small):
    df, kinship = small
    few = df.iloc[:2]
    with pytest.raises(ValueError, match="2 observations are not enough for 2 fixed effects"):
        EMLMM.from_formula("y ~ x", data=few, kinship=kinship)


def test_constant_response_is_an_error(small):
    df, kinship = small
    with pytest.raises(ValueError, match="no variance to model"):
        EMLMM.from_formula("y ~ x", data=df.assign(y=4.0), kinship=kinship)


def test_exog_is_required(small):
    df, kinship = small
    with pytest.raises(ValueError, match="exog is required"):
        EMLMM(df.y, None, kinship)


def test_response_must_be_one_column(small):
    df, kinship = small
    with pytest.raises(ValueError, match="one column"):
        EMLMM(df[["y", "z"]].to_numpy(), np.ones((30, 1)), kinship.to_numpy())


def test_formula_sees_the_callers_namespace(small):
    df, kinship = small

    def shifted(values):
        return values + 10.0

    result = EMLMM.from_formula("y ~ shifted(x)", data=df, kinship=kinship).fit()
    assert "shifted(x)" in result.params.index


def test_an_exactly_symmetric_kinship_is_used_without_a_copy(small, monkeypatch):
    # An exactly symmetric kinship (a GRM, emlmm.kinship's) is used as given, read-only:
    # at n = 20,000 a copy is 3.2 GB. One symmetric to round-off only is symmetrised
    # into a copy, and the caller's array is never written. Small bands of rows check
    # the same thing.
    import importlib

    from emlmm._data import check_kinship

    df, kinship = small
    exact = kinship.to_numpy().copy()
    n = len(exact)
    for rows in (1 << 20, 3 * n):
        monkeypatch.setattr(importlib.import_module("emlmm._data"), "_BAND_ENTRIES", rows)
        checked = check_kinship(exact, n)
        assert np.shares_memory(checked, exact) and not checked.flags.writeable
        nudged = exact.copy()
        nudged[0, 1] += 1e-12
        before = nudged.copy()
        symmetrised = check_kinship(nudged, n)
        assert not np.shares_memory(symmetrised, nudged)
        np.testing.assert_array_equal(symmetrised, symmetrised.T)
        np.testing.assert_array_equal(nudged, before)
        bad = exact.copy()
        bad[n - 1, 2] += 0.5
        with pytest.raises(ValueError, match=rf"not symmetric: entry \[2, {n - 1}\] = "):
            check_kinship(bad, n)
    model = EMLMM.from_formula("y ~ x", data=df, kinship=exact)
    assert np.shares_memory(model.kinship, exact)
